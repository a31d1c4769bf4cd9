//! The connection pool of one agent: slots, the wait queue, per-origin idle lists (lifo or
//! fifo), limits, idle deadlines and statistics. It hands connections out and takes them
//! back; it never touches a socket, so it is tested here with a fake connection type.
//!
//! Accounting: every connection, from the moment its connect starts until its socket is
//! closed, holds one *slot* in its origin and one in the agent (`max_sockets`,
//! `max_total_sockets`), so the limits hold for sockets, not just for requests. A
//! connection closed to make room for another origin keeps its slot until its socket is
//! closed ([`Owner::ended`]); the slot then goes to the oldest waiting request.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::conn::{Conn, Owner};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Origin, ReuseHint};
use crate::idmap::IdMap;
use crate::options::{Config, Scheduling};
use crate::runtime::ForkMutex;
use crate::stats::Stats;
use crate::trace::{CloseReason, TraceEvent, TraceKind};

/// How many of the newest idle connections are searched for the caller's own one.
const AFFINITY_SCAN: usize = 64;

/// What the pool needs of a connection.
pub(crate) trait Pooled: Send + Sized + 'static {
    fn id(&self) -> u64;
    fn created(&self) -> Instant;
    /// Counted as opened: from now on the connection reports its end to `owner`; with
    /// `monitor`, something watches it while it is idle.
    fn attach(&mut self, owner: Weak<dyn Owner>, origin: Arc<Origin>, monitor: bool);
    /// Going idle; the pool wants it closed at `idle_until`.
    fn park(&mut self, idle_until: Option<Instant>);
    /// Coming back into use. False: it ended while idle, or cannot take a request.
    fn unpark(&mut self) -> bool;
    /// Whether it can carry another request (checked when it is given back).
    fn is_open(&self) -> bool;
    /// Who parked it last (a thread token, 0 for none): see [`Pool::acquire`].
    fn affinity(&self) -> u64 {
        0
    }
    /// Why it is about to be closed (reported with its end; the first reason wins).
    fn close_because(&self, why: CloseReason);
}

impl Pooled for Conn {
    fn id(&self) -> u64 {
        Conn::id(self)
    }
    fn created(&self) -> Instant {
        Conn::created(self)
    }
    fn attach(&mut self, owner: Weak<dyn Owner>, origin: Arc<Origin>, monitor: bool) {
        Conn::attach(self, owner, origin, monitor)
    }
    fn park(&mut self, idle_until: Option<Instant>) {
        Conn::park(self, idle_until)
    }
    fn unpark(&mut self) -> bool {
        Conn::unpark(self)
    }
    fn is_open(&self) -> bool {
        Conn::is_open(self)
    }
    fn affinity(&self) -> u64 {
        Conn::affinity(self)
    }
    fn close_because(&self, why: CloseReason) {
        Conn::close_because(self, why)
    }
}

struct Idle<C> {
    conn: C,
    /// When the pool closes it (free-socket timeout or the server's hint).
    until: Option<Instant>,
}

enum Grant<C> {
    Conn(C),
    Slot,
}

struct Waiter<C> {
    id: u64,
    origin: Arc<Origin>,
    tx: oneshot::Sender<Grant<C>>,
}

struct OriginState<C> {
    idle: VecDeque<Idle<C>>,
    /// Slots held by this origin (connecting + active + idle).
    slots: usize,
    queued: usize,
    stats: Stats,
}

impl<C> Default for OriginState<C> {
    fn default() -> Self {
        OriginState {
            idle: VecDeque::new(),
            slots: 0,
            queued: 0,
            stats: Stats::default(),
        }
    }
}

struct State<C> {
    origins: IdMap<Arc<Origin>, OriginState<C>>,
    slots: usize,
    waiters: VecDeque<Waiter<C>>,
    next_waiter: u64,
    /// Connections being closed to make room for other origins.
    retiring: HashSet<u64>,
    closed: bool,
    /// Counters for requests that failed before reaching an origin entry.
    stray: Stats,
}

impl<C> Default for State<C> {
    fn default() -> Self {
        State {
            origins: IdMap::default(),
            slots: 0,
            waiters: VecDeque::new(),
            next_waiter: 0,
            retiring: HashSet::new(),
            closed: false,
            stray: Stats::default(),
        }
    }
}

/// How a request gets its connection.
pub(crate) enum Checkout<C: Pooled> {
    /// An idle connection, ready for a request.
    Reused(C),
    /// A slot to open a new connection with.
    Connect(SlotGuard<C>),
}

/// A reserved slot. Dropped without [`Pool::register`], it is given back.
pub(crate) struct SlotGuard<C: Pooled> {
    pool: Arc<Pool<C>>,
    origin: Arc<Origin>,
    armed: bool,
}

impl<C: Pooled> SlotGuard<C> {
    pub(crate) fn origin(&self) -> &Arc<Origin> {
        &self.origin
    }
}

impl<C: Pooled> Drop for SlotGuard<C> {
    fn drop(&mut self) {
        if self.armed {
            if let Ok(mut st) = self.pool.lock() {
                self.pool.free_slot(&mut st, &self.origin);
            }
        }
    }
}

/// A queued request's place in line. Dropped before the grant was taken (timeout,
/// cancel), it leaves the queue, and gives back whatever was already granted to it: a grant
/// is sent under the pool lock, so under that lock it is either still queued or its grant
/// sits in the channel.
struct WaitGuard<'a, C: Pooled> {
    pool: &'a Pool<C>,
    id: u64,
    origin: Arc<Origin>,
    rx: Option<oneshot::Receiver<Grant<C>>>,
}

impl<C: Pooled> WaitGuard<'_, C> {
    async fn wait(&mut self) -> std::result::Result<Grant<C>, oneshot::error::RecvError> {
        let rx = self.rx.as_mut().expect("waited once");
        let grant = rx.await;
        self.rx = None;
        grant
    }
}

impl<C: Pooled> Drop for WaitGuard<'_, C> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut unused_conn = None;
        if let Ok(mut st) = self.pool.lock() {
            if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(pos);
                if let Some(o) = st.origins.get_mut(&self.origin) {
                    o.queued -= 1;
                }
            } else {
                match rx.try_recv() {
                    Ok(Grant::Slot) => self.pool.free_slot(&mut st, &self.origin),
                    Ok(Grant::Conn(c)) => unused_conn = Some(c),
                    Err(_) => {}
                }
            }
        }
        // Closed outside the lock; its end then frees the slot.
        drop(unused_conn);
    }
}

pub(crate) struct Pool<C: Pooled> {
    cfg: Arc<Config>,
    state: ForkMutex<State<C>>,
    drained: Condvar,
}

/// Why a finished request's connection is not given back to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Discard {
    Error,
    Timeout,
}

impl<C: Pooled> Pool<C> {
    pub(crate) fn new(cfg: Arc<Config>) -> Arc<Pool<C>> {
        Arc::new(Pool {
            cfg,
            state: ForkMutex::new(State::default()),
            drained: Condvar::new(),
        })
    }

    /// Locks the state. In a child after `fork()`, the parent's connections and waiters
    /// are forgotten (leaked, never touched) and the pool starts empty.
    fn lock(&self) -> Result<MutexGuard<'_, State<C>>> {
        self.state.lock()
    }

    fn can_open(&self, st: &State<C>, origin: &Origin) -> bool {
        let per_origin = st.origins.get(origin).map_or(0, |o| o.slots);
        self.cfg.max_sockets.is_none_or(|m| per_origin < m)
            && self.cfg.max_total_sockets.is_none_or(|m| st.slots < m)
    }

    fn take_slot(&self, st: &mut State<C>, origin: &Arc<Origin>) {
        st.slots += 1;
        st.origins.entry(origin.clone()).or_default().slots += 1;
    }

    fn free_slot(&self, st: &mut State<C>, origin: &Arc<Origin>) {
        st.slots -= 1;
        if let Some(o) = st.origins.get_mut(origin) {
            o.slots -= 1;
        }
        self.dispatch_slots(st);
        if st.slots == 0 {
            self.drained.notify_all();
        }
    }

    /// Gives free slots to queued requests, oldest first, skipping those whose origin is
    /// at its own limit.
    fn dispatch_slots(&self, st: &mut State<C>) {
        let mut i = 0;
        while i < st.waiters.len() {
            if self.cfg.max_total_sockets.is_some_and(|m| st.slots >= m) {
                break;
            }
            let origin = st.waiters[i].origin.clone();
            if !self.can_open(st, &origin) {
                i += 1;
                continue;
            }
            let w = st.waiters.remove(i).expect("index in range");
            if let Some(o) = st.origins.get_mut(&origin) {
                o.queued -= 1;
            }
            self.take_slot(st, &origin);
            if w.tx.send(Grant::Slot).is_err() {
                // The waiter left; its slot goes back.
                st.slots -= 1;
                if let Some(o) = st.origins.get_mut(&origin) {
                    o.slots -= 1;
                }
            }
        }
    }

    /// Closes the oldest idle connection of another origin so that a request blocked only
    /// by `max_total_sockets` can open one once the socket is closed (as Node's
    /// `http.Agent` does). At most one retirement per waiting request is in progress.
    fn evict_for(&self, st: &mut State<C>, origin: &Arc<Origin>) {
        if st.retiring.len() > st.waiters.len() {
            return;
        }
        let victim = st
            .origins
            .iter()
            .filter(|(k, o)| *k != origin && !o.idle.is_empty())
            .map(|(k, _)| k.clone())
            .next();
        let Some(victim) = victim else {
            return;
        };
        let o = st.origins.get_mut(&victim).expect("victim exists");
        let idle = o.idle.pop_front().expect("victim has idle");
        st.retiring.insert(idle.conn.id());
        idle.conn.close_because(CloseReason::Evicted);
        drop(idle); // closes it; its end frees the slot
    }

    fn expired(&self, conn: &C, now: Instant) -> bool {
        self.cfg
            .max_socket_lifetime
            .is_some_and(|l| now.duration_since(conn.created()) >= l)
    }

    /// Why an idle connection may no longer be handed out, if it may not.
    fn stale(&self, conn: &C, until: Option<Instant>, now: Instant) -> Option<CloseReason> {
        if until.is_some_and(|d| d <= now) {
            Some(CloseReason::IdleTimeout)
        } else if self.expired(conn, now) {
            Some(CloseReason::Lifetime)
        } else {
            None
        }
    }

    fn pop_idle(&self, o: &mut OriginState<C>, affinity: u64) -> Option<C> {
        let now = Instant::now();
        if affinity != 0 && self.cfg.scheduling == Scheduling::Lifo {
            // The most recent connection this caller parked, if it is among the newest idle
            // ones (a bounded look under the lock).
            let newest = o.idle.len().saturating_sub(AFFINITY_SCAN);
            if let Some(pos) = (newest..o.idle.len())
                .rev()
                .find(|&i| o.idle[i].conn.affinity() == affinity)
            {
                let idle = o.idle.remove(pos).expect("index in range");
                let mut c = idle.conn;
                if let Some(why) = self.stale(&c, idle.until, now) {
                    c.close_because(why);
                } else if c.unpark() {
                    return Some(c);
                }
            }
        }
        loop {
            let idle = match self.cfg.scheduling {
                Scheduling::Lifo => o.idle.pop_back(),
                Scheduling::Fifo => o.idle.pop_front(),
            }?;
            let mut c = idle.conn;
            if let Some(why) = self.stale(&c, idle.until, now) {
                c.close_because(why);
                continue; // dropped: closed, its end frees the slot
            }
            if c.unpark() {
                return Some(c);
            }
        }
    }

    /// Gets a connection for `origin`: an idle one (unless `fresh`), a slot to open one,
    /// or a place in the queue until either is available. With lifo scheduling, an idle
    /// connection last parked with the same non-zero `affinity` is preferred (a blocking
    /// thread gets its own connection back, its socket still registered with the thread's
    /// epoll instance).
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        fresh: bool,
        affinity: u64,
    ) -> Result<Checkout<C>> {
        let (rx, id) = {
            let mut st = self.lock()?;
            if st.closed {
                return Err(Error::new(ErrorKind::Cancelled, "the agent was closed"));
            }
            if !fresh {
                let o = st.origins.entry(origin.clone()).or_default();
                if let Some(conn) = self.pop_idle(o, affinity) {
                    return Ok(Checkout::Reused(conn));
                }
            }
            let queued_here = st.origins.get(origin).is_some_and(|o| o.queued > 0);
            let blocked_by_total = !self.can_open(&st, origin)
                && self
                    .cfg
                    .max_sockets
                    .is_none_or(|m| st.origins.get(origin).map_or(0, |o| o.slots) < m);
            if !queued_here && self.can_open(&st, origin) {
                self.take_slot(&mut st, origin);
                return Ok(Checkout::Connect(SlotGuard {
                    pool: self.clone(),
                    origin: origin.clone(),
                    armed: true,
                }));
            }
            let (tx, rx) = oneshot::channel();
            st.next_waiter += 1;
            let id = st.next_waiter;
            st.waiters.push_back(Waiter {
                id,
                origin: origin.clone(),
                tx,
            });
            st.origins.entry(origin.clone()).or_default().queued += 1;
            if blocked_by_total {
                self.evict_for(&mut st, origin);
            }
            (rx, id)
        };
        let tracer = &self.cfg.tracer;
        if tracer.wants(TraceKind::Queued) {
            tracer.emit(&TraceEvent::new(TraceKind::Queued, origin, 0));
        }
        let mut guard = WaitGuard {
            pool: self,
            id,
            origin: origin.clone(),
            rx: Some(rx),
        };
        let grant = guard.wait().await;
        if tracer.wants(TraceKind::Dequeued) {
            let (id, detail) = match &grant {
                Ok(Grant::Conn(c)) => (c.id(), "a connection was handed over"),
                Ok(Grant::Slot) => (0, "a connection may be opened"),
                Err(_) => (0, "the agent was closed"),
            };
            let mut ev = TraceEvent::new(TraceKind::Dequeued, origin, id);
            ev.detail = detail;
            tracer.emit(&ev);
        }
        match grant {
            Ok(Grant::Conn(mut c)) => {
                c.unpark(); // handed over before it was parked: only clears its timers
                Ok(Checkout::Reused(c))
            }
            Ok(Grant::Slot) => Ok(Checkout::Connect(SlotGuard {
                pool: self.clone(),
                origin: origin.clone(),
                armed: true,
            })),
            Err(_) => Err(Error::new(
                ErrorKind::Cancelled,
                "the agent was closed while the request was queued",
            )),
        }
    }

    /// A slot to open one more connection to `origin`, while it has fewer than `total`
    /// (idle, busy or opening) and no request waits for it, within the limits; for
    /// pre-warming, which never queues.
    pub(crate) fn reserve_up_to(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        total: usize,
    ) -> Option<SlotGuard<C>> {
        let mut st = self.lock().ok()?;
        let (slots, queued) = st
            .origins
            .get(origin)
            .map_or((0, 0), |o| (o.slots, o.queued));
        if st.closed || slots >= total || queued > 0 || !self.can_open(&st, origin) {
            return None;
        }
        self.take_slot(&mut st, origin);
        Some(SlotGuard {
            pool: self.clone(),
            origin: origin.clone(),
            armed: true,
        })
    }

    /// Turns a slot and a connection just opened with it into a pooled connection: counts
    /// it as opened and attaches it to this pool (watched while idle when keep-alive is
    /// on).
    pub(crate) fn register(self: &Arc<Self>, mut slot: SlotGuard<C>, mut conn: C) -> Result<C> {
        // The connection keeps the pool's own key for its origin, not the request's copy:
        // what an idle connection holds is then shared, not one more allocation each.
        let origin = {
            let mut st = self.lock()?;
            let key = match st.origins.get_key_value(&slot.origin) {
                Some((k, _)) => k.clone(),
                None => slot.origin.clone(),
            };
            st.origins
                .entry(key.clone())
                .or_default()
                .stats
                .connections_opened += 1;
            key
        };
        slot.armed = false;
        let owner: Weak<dyn Owner> = Arc::downgrade(self) as Weak<dyn Owner>;
        conn.attach(owner, origin, self.cfg.keep_alive);
        Ok(conn)
    }

    /// Whether (and for how long) a connection may idle in the pool after a response with
    /// this reuse hint: `None` = close it; `Some(None)` = no idle timeout. A server's
    /// `Keep-Alive: timeout=N` is capped, less the buffer, and never longer than the
    /// free-socket timeout.
    pub(crate) fn idle_timeout(&self, conn: &C, hint: ReuseHint) -> Option<Option<Duration>> {
        if !self.cfg.keep_alive || self.expired(conn, Instant::now()) {
            return None;
        }
        match hint {
            ReuseHint::Close => None,
            ReuseHint::Keep(None) => Some(self.cfg.free_socket_timeout),
            ReuseHint::Keep(Some(hint)) => {
                let hint = hint.min(self.cfg.max_keep_alive_timeout);
                let usable = hint
                    .checked_sub(self.cfg.keep_alive_timeout_buffer)
                    .filter(|d| !d.is_zero())?;
                Some(Some(
                    self.cfg
                        .free_socket_timeout
                        .map_or(usable, |f| f.min(usable)),
                ))
            }
        }
    }

    /// Gives a connection of `origin` back after a complete response. `keep` is what
    /// [`Pool::idle_timeout`] decided (`None`: close it); `record` counts the request in
    /// the statistics, under the same lock.
    pub(crate) fn release(
        &self,
        origin: &Arc<Origin>,
        mut conn: C,
        keep: Option<Option<Duration>>,
        record: impl FnOnce(&mut Stats),
    ) {
        let keep = keep.filter(|_| self.cfg.keep_alive && conn.is_open());
        if keep.is_none() {
            conn.close_because(if !self.cfg.keep_alive {
                CloseReason::KeepAliveOff
            } else if !conn.is_open() {
                CloseReason::ServerClosed
            } else if self.expired(&conn, Instant::now()) {
                CloseReason::Lifetime
            } else {
                CloseReason::NotReusable
            });
        }
        // Parked before the lock is taken (it touches the connection's own locks); a
        // connection handed to a waiter is simply unparked by it.
        let parked = keep.map(|idle_timeout| {
            let until = idle_timeout.map(|t| Instant::now() + t);
            conn.park(until);
            until
        });
        let rejected = match self.lock() {
            Ok(mut st) => {
                match st.origins.get_mut(origin) {
                    Some(o) => record(&mut o.stats),
                    None => record(&mut st.stray),
                }
                match parked {
                    Some(until) => self.keep_idle(&mut st, origin, conn, until),
                    None => Some(conn),
                }
            }
            Err(_) => Some(conn),
        };
        // Closed outside the lock (an unwatched connection reports its end).
        drop(rejected);
    }

    /// Hands a parked connection to the oldest waiter for its origin, or keeps it idle;
    /// returns it when it is not wanted.
    fn keep_idle(
        &self,
        st: &mut State<C>,
        origin: &Arc<Origin>,
        mut conn: C,
        until: Option<Instant>,
    ) -> Option<C> {
        if st.closed {
            conn.close_because(CloseReason::AgentClosed);
            return Some(conn);
        }
        // A queued request for this origin gets it first (oldest first).
        while let Some(pos) = st.waiters.iter().position(|w| &w.origin == origin) {
            let w = st.waiters.remove(pos).expect("index in range");
            if let Some(o) = st.origins.get_mut(origin) {
                o.queued -= 1;
            }
            match w.tx.send(Grant::Conn(conn)) {
                Ok(()) => return None,
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Slot) => unreachable!("sent a connection"),
            }
        }
        // Requests for other origins are blocked by the agent-wide limit: close this one
        // to make room rather than keep it idle.
        if self.cfg.max_total_sockets.is_some_and(|m| st.slots >= m)
            && st.retiring.len() < st.waiters.len()
        {
            st.retiring.insert(conn.id());
            conn.close_because(CloseReason::Evicted);
            return Some(conn); // closed: its end frees the slot
        }
        let o = st.origins.entry(origin.clone()).or_default();
        if o.idle.len() >= self.cfg.max_free_sockets {
            conn.close_because(CloseReason::PoolFull);
            return Some(conn);
        }
        o.idle.push_back(Idle { conn, until });
        None
    }

    /// Drops a connection whose request failed, counting why.
    pub(crate) fn discard(&self, origin: &Arc<Origin>, conn: C, why: Discard) {
        self.record(origin, |s| match why {
            Discard::Timeout => s.connections_timed_out += 1,
            Discard::Error => s.connections_errored += 1,
        });
        conn.close_because(match why {
            Discard::Timeout => CloseReason::Timeout,
            Discard::Error => CloseReason::Error,
        });
        drop(conn);
    }

    /// Records a finished request in the origin's counters.
    pub(crate) fn record(&self, origin: &Arc<Origin>, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut st) = self.lock() {
            match st.origins.get_mut(origin) {
                Some(o) => f(&mut o.stats),
                None => f(&mut st.stray),
            }
        }
    }

    /// Statistics for the whole agent.
    pub(crate) fn stats(&self) -> Stats {
        let Ok(st) = self.lock() else {
            return Stats::default();
        };
        let mut total = st.stray;
        for o in st.origins.values() {
            total.add(&origin_stats(o));
        }
        total
    }

    /// Statistics for one origin (all zero if it was never used).
    pub(crate) fn origin_stats(&self, origin: &Origin) -> Stats {
        let Ok(st) = self.lock() else {
            return Stats::default();
        };
        st.origins.get(origin).map(origin_stats).unwrap_or_default()
    }

    /// Closes the pool: idle connections close now, queued requests fail with
    /// `Cancelled`, active connections close when their request ends. Waits up to
    /// `wait` for every connection to be gone.
    pub(crate) fn close(&self, wait: Duration) {
        let Ok(mut st) = self.lock() else {
            return;
        };
        st.closed = true;
        st.waiters.clear();
        for o in st.origins.values_mut() {
            o.queued = 0;
            for idle in &o.idle {
                idle.conn.close_because(CloseReason::AgentClosed);
            }
            o.idle.clear();
        }
        let deadline = std::time::Instant::now() + wait;
        while st.slots > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.drained.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl<C: Pooled> Owner for Pool<C> {
    /// Closes an idle connection whose deadline has passed (if it is still idle).
    fn idle_timer(&self, origin: &Arc<Origin>, id: u64) -> bool {
        let Ok(mut st) = self.lock() else {
            return true;
        };
        let now = Instant::now();
        let Some(o) = st.origins.get_mut(origin) else {
            return false;
        };
        match o.idle.iter().position(|i| i.conn.id() == id) {
            Some(pos) if o.idle[pos].until.is_some_and(|d| d <= now) => {
                o.idle[pos].conn.close_because(CloseReason::IdleTimeout);
                o.idle.remove(pos);
                true
            }
            _ => false,
        }
    }

    /// A connection's socket is closed: its slot is free.
    fn ended(&self, origin: &Arc<Origin>, id: u64, why: CloseReason) {
        let tracer = &self.cfg.tracer;
        if tracer.wants(TraceKind::ConnectionClosed) {
            let mut ev = TraceEvent::new(TraceKind::ConnectionClosed, origin, id);
            ev.detail = why.describe();
            tracer.emit(&ev);
        }
        let Ok(mut st) = self.lock() else {
            return;
        };
        if let Some(o) = st.origins.get_mut(origin) {
            o.stats.connections_closed += 1;
            if let Some(pos) = o.idle.iter().position(|i| i.conn.id() == id) {
                o.idle.remove(pos);
            }
        }
        st.retiring.remove(&id);
        self.free_slot(&mut st, origin);
    }
}

fn origin_stats<C>(o: &OriginState<C>) -> Stats {
    let mut s = o.stats;
    s.idle = o.idle.len() as u64;
    s.active = (o.slots - o.idle.len()) as u64;
    s.queued = o.queued as u64;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;
    use std::sync::Mutex;

    /// A connection without a socket. Dropping it records its id, as a real connection's
    /// close would reach its monitor; the test then reports the end, as the monitor does.
    struct Fake {
        id: u64,
        created: Instant,
        open: bool,
        usable: bool,
        parked: Option<Option<Instant>>,
        affinity: u64,
        why: Mutex<Option<CloseReason>>,
        dropped: Arc<Mutex<Vec<u64>>>,
        reasons: Arc<Mutex<Vec<(u64, CloseReason)>>>,
    }

    impl Pooled for Fake {
        fn id(&self) -> u64 {
            self.id
        }
        fn created(&self) -> Instant {
            self.created
        }
        fn attach(&mut self, _: Weak<dyn Owner>, _: Arc<Origin>, _: bool) {}
        fn park(&mut self, idle_until: Option<Instant>) {
            self.parked = Some(idle_until);
        }
        fn unpark(&mut self) -> bool {
            self.parked = None;
            self.usable
        }
        fn is_open(&self) -> bool {
            self.open
        }
        fn affinity(&self) -> u64 {
            self.affinity
        }
        fn close_because(&self, why: CloseReason) {
            self.why.lock().unwrap().get_or_insert(why);
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.dropped.lock().unwrap().push(self.id);
            let why = self.why.lock().unwrap().unwrap_or_default();
            self.reasons.lock().unwrap().push((self.id, why));
        }
    }

    struct Bench {
        pool: Arc<Pool<Fake>>,
        dropped: Arc<Mutex<Vec<u64>>>,
        reasons: Arc<Mutex<Vec<(u64, CloseReason)>>>,
        next: u64,
    }

    impl Bench {
        fn new(f: impl FnOnce(&mut Options)) -> Bench {
            let mut o = Options::default();
            f(&mut o);
            Bench {
                pool: Pool::new(Arc::new(o.validate_with_env(|_| None).unwrap())),
                dropped: Arc::default(),
                reasons: Arc::default(),
                next: 0,
            }
        }

        fn fake(&mut self) -> Fake {
            self.next += 1;
            Fake {
                id: self.next,
                created: Instant::now(),
                open: true,
                usable: true,
                parked: None,
                affinity: 0,
                why: Mutex::new(None),
                dropped: self.dropped.clone(),
                reasons: self.reasons.clone(),
            }
        }

        /// Acquires for `origin`, opening a fake connection when given a slot.
        async fn get(&mut self, origin: &Arc<Origin>) -> (Fake, bool) {
            match self.pool.acquire(origin, false, 0).await.unwrap() {
                Checkout::Reused(c) => (c, true),
                Checkout::Connect(slot) => {
                    let c = self.fake();
                    (self.pool.register(slot, c).unwrap(), false)
                }
            }
        }

        /// What a monitor does after a connection it watches was dropped: report the end.
        fn report_ends(&self, origin: &Arc<Origin>) -> usize {
            let ids: Vec<u64> = std::mem::take(&mut *self.dropped.lock().unwrap());
            let reasons = self.reasons.lock().unwrap().clone();
            for id in &ids {
                let why = reasons.iter().find(|(i, _)| i == id).map(|r| r.1);
                self.pool.ended(origin, *id, why.unwrap_or_default());
            }
            ids.len()
        }

        fn keep(&self) -> Option<Option<Duration>> {
            Some(self.pool.cfg.free_socket_timeout)
        }
    }

    fn origin(port: u16) -> Arc<Origin> {
        crate::http::parse_url(&format!("http://127.0.0.1:{port}/"))
            .unwrap()
            .origin
    }

    #[tokio::test(start_paused = true)]
    async fn max_sockets_queues_in_order_and_hands_over_released_connections() {
        let mut b = Bench::new(|o| o.max_sockets = Some(1));
        let a = origin(1);
        let (c1, reused) = b.get(&a).await;
        assert!(!reused);
        let pool = b.pool.clone();
        let waiters: Vec<_> = (0..2)
            .map(|i| {
                let (pool, a) = (pool.clone(), a.clone());
                tokio::spawn(async move {
                    // Staggered so that the queue order is known.
                    tokio::time::sleep(Duration::from_millis(i)).await;
                    match pool.acquire(&a, false, 0).await.unwrap() {
                        Checkout::Reused(c) => c.id,
                        Checkout::Connect(_) => panic!("max_sockets = 1 gives no second slot"),
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pool.stats().queued, 2);
        assert_eq!(pool.stats().active, 1);
        let id = c1.id;
        pool.release(&a, c1, b.keep(), |_| {});
        let first = waiters.into_iter().next().unwrap().await.unwrap();
        assert_eq!(first, id, "the oldest waiter gets the released connection");
        assert_eq!(pool.stats().queued, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lifo_gives_a_caller_back_its_own_connection_first() {
        for (scheduling, want_own) in [(0, true), (1, false)] {
            let mut b = Bench::new(|o| o.scheduling = Some(scheduling));
            let a = origin(1);
            let (mut c1, _) = b.get(&a).await;
            let (mut c2, _) = b.get(&a).await;
            let (mut c3, _) = b.get(&a).await;
            c1.affinity = 7;
            c2.affinity = 8;
            c3.affinity = 9;
            let ids = [c1.id, c2.id, c3.id];
            for c in [c1, c2, c3] {
                b.pool.release(&a, c, b.keep(), |_| {});
            }
            // Caller 7 gets its own (not the last released, c3) with lifo; fifo keeps
            // its order (c1 first anyway, so ask as caller 8).
            let who = if want_own { 7 } else { 8 };
            let c = match b.pool.acquire(&a, false, who).await.unwrap() {
                Checkout::Reused(c) => c,
                Checkout::Connect(_) => panic!("three idle connections"),
            };
            assert_eq!(c.id, ids[0], "scheduling {scheduling}");
            // A caller with no connection of its own gets the lifo/fifo choice.
            let c = match b.pool.acquire(&a, false, 42).await.unwrap() {
                Checkout::Reused(c) => c,
                Checkout::Connect(_) => panic!("two idle connections"),
            };
            assert_eq!(c.id, if want_own { ids[2] } else { ids[1] });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lifo_reuses_the_last_released_and_fifo_the_first() {
        for (scheduling, want_first) in [(0, false), (1, true)] {
            let mut b = Bench::new(|o| o.scheduling = Some(scheduling));
            let a = origin(1);
            let (c1, _) = b.get(&a).await;
            let (c2, _) = b.get(&a).await;
            let (id1, id2) = (c1.id, c2.id);
            b.pool.release(&a, c1, b.keep(), |_| {});
            b.pool.release(&a, c2, b.keep(), |_| {});
            assert_eq!(b.pool.stats().idle, 2);
            let (c, reused) = b.get(&a).await;
            assert!(reused);
            assert_eq!(c.id, if want_first { id1 } else { id2 });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_free_sockets_closes_the_extra_idle_connections() {
        let mut b = Bench::new(|o| o.max_free_sockets = Some(1));
        let a = origin(1);
        let (c1, _) = b.get(&a).await;
        let (c2, _) = b.get(&a).await;
        let id2 = c2.id;
        b.pool.release(&a, c1, b.keep(), |_| {});
        b.pool.release(&a, c2, b.keep(), |_| {});
        assert_eq!(*b.dropped.lock().unwrap(), vec![id2]);
        assert_eq!(b.report_ends(&a), 1);
        let s = b.pool.stats();
        assert_eq!((s.idle, s.active, s.connections_closed), (1, 0, 1));
    }

    #[tokio::test]
    async fn reserving_for_prewarming_stops_at_the_total_and_the_limits() {
        let mut b = Bench::new(|o| o.max_sockets = Some(3));
        let a = origin(1);
        let (c1, _) = b.get(&a).await;
        let s1 = b.pool.reserve_up_to(&a, 2).expect("one more up to 2");
        assert!(
            b.pool.reserve_up_to(&a, 2).is_none(),
            "2 exist (one opening)"
        );
        let s2 = b.pool.reserve_up_to(&a, 10).expect("max_sockets 3");
        assert!(
            b.pool.reserve_up_to(&a, 10).is_none(),
            "max_sockets reached"
        );
        drop(s2); // given back
        let f = b.fake();
        let c2 = b.pool.register(s1, f).unwrap();
        b.pool.release(&a, c2, b.keep(), |_| {});
        b.pool.release(&a, c1, b.keep(), |_| {});
        let s = b.pool.stats();
        assert_eq!((s.idle, s.active, s.connections_opened), (2, 0, 2));
        assert!(b.pool.reserve_up_to(&a, 3).is_some());
    }

    #[tokio::test]
    async fn closed_connections_say_why_in_their_events() {
        let seen: Arc<Mutex<Vec<(TraceKind, u64, String)>>> = Arc::default();
        let s2 = seen.clone();
        let sink: crate::trace::Sink = Arc::new(move |e: &TraceEvent<'_>| {
            s2.lock()
                .unwrap()
                .push((e.kind, e.connection, e.detail.to_string()));
        });
        let mut b = Bench::new(|o| {
            o.max_free_sockets = Some(1);
            o.events = crate::trace::Events(Some(sink));
        });
        let a = origin(1);
        let (c1, _) = b.get(&a).await;
        let (c2, _) = b.get(&a).await;
        let (c3, _) = b.get(&a).await;
        let (id2, id3) = (c2.id, c3.id);
        b.pool.release(&a, c1, b.keep(), |_| {});
        b.pool.release(&a, c2, b.keep(), |_| {}); // one idle is kept already
        b.pool.discard(&a, c3, Discard::Error);
        assert_eq!(b.report_ends(&a), 2);
        let closed: Vec<(u64, String)> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.0 == TraceKind::ConnectionClosed)
            .map(|e| (e.1, e.2.clone()))
            .collect();
        assert_eq!(
            closed,
            vec![
                (id2, CloseReason::PoolFull.describe().to_string()),
                (id3, CloseReason::Error.describe().to_string()),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_past_its_timeout_is_not_handed_out() {
        let mut b = Bench::new(|o| o.free_socket_timeout_msecs = Some(4000));
        let a = origin(1);
        let (c1, _) = b.get(&a).await;
        let id = c1.id;
        b.pool.release(&a, c1, b.keep(), |_| {});
        tokio::time::advance(Duration::from_millis(3999)).await;
        assert!(!b.pool.idle_timer(&a, id), "not due yet");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(b.pool.idle_timer(&a, id), "due: the pool lets it go");
        assert_eq!(b.pool.stats().idle, 0);
        // A connection whose timer has not fired yet is skipped at checkout all the same.
        let (c2, _) = b.get(&a).await;
        let id2 = c2.id;
        b.pool.release(&a, c2, b.keep(), |_| {});
        tokio::time::advance(Duration::from_secs(5)).await;
        let (c3, reused) = b.get(&a).await;
        assert!(!reused);
        assert_ne!(c3.id, id2);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_hints_are_capped_less_the_buffer_and_within_the_free_timeout() {
        let mut b = Bench::new(|o| {
            o.free_socket_timeout_msecs = Some(4000);
            o.keep_alive_timeout_buffer_msecs = Some(1000);
            o.max_keep_alive_timeout_msecs = Some(600_000);
        });
        let c = b.fake();
        let s = Duration::from_secs;
        let p = &b.pool;
        assert_eq!(p.idle_timeout(&c, ReuseHint::Keep(None)), Some(Some(s(4))));
        assert_eq!(
            p.idle_timeout(&c, ReuseHint::Keep(Some(s(3)))),
            Some(Some(s(2)))
        );
        assert_eq!(
            p.idle_timeout(&c, ReuseHint::Keep(Some(s(1)))),
            None,
            "hint - buffer <= 0"
        );
        assert_eq!(
            p.idle_timeout(&c, ReuseHint::Keep(Some(s(100)))),
            Some(Some(s(4)))
        );
        assert_eq!(p.idle_timeout(&c, ReuseHint::Close), None);
        let mut b2 = Bench::new(|o| {
            o.free_socket_timeout_msecs = Some(0); // none
            o.max_keep_alive_timeout_msecs = Some(10_000);
        });
        let c2 = b2.fake();
        assert_eq!(
            b2.pool.idle_timeout(&c2, ReuseHint::Keep(Some(s(3600)))),
            Some(Some(s(9))),
            "capped at 10 s, less the 1 s buffer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_past_its_lifetime_is_not_reused() {
        let mut b = Bench::new(|o| o.max_socket_lifetime_msecs = Some(1000));
        let a = origin(1);
        let (c1, _) = b.get(&a).await;
        b.pool.release(&a, c1, b.keep(), |_| {});
        tokio::time::advance(Duration::from_millis(1000)).await;
        let (c2, reused) = b.get(&a).await;
        assert!(!reused, "expired in the idle list");
        assert_eq!(
            b.pool.idle_timeout(&c2, ReuseHint::Keep(None)),
            Some(Some(Duration::from_secs(4)))
        );
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(
            b.pool.idle_timeout(&c2, ReuseHint::Keep(None)),
            None,
            "expired on release"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_total_sockets_evicts_another_origins_idle_connection() {
        let mut b = Bench::new(|o| o.max_total_sockets = Some(1));
        let (a, z) = (origin(1), origin(2));
        let (c1, _) = b.get(&a).await;
        let id1 = c1.id;
        b.pool.release(&a, c1, b.keep(), |_| {});
        let pool = b.pool.clone();
        let z2 = z.clone();
        let waiter = tokio::spawn(async move { pool.acquire(&z2, false, 0).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            *b.dropped.lock().unwrap(),
            vec![id1],
            "the idle one is closed for room"
        );
        assert_eq!(
            b.pool.stats().queued,
            1,
            "but its slot is held until the socket is closed"
        );
        b.report_ends(&a);
        let slot = waiter.await.unwrap();
        assert!(
            matches!(slot, Checkout::Connect(_)),
            "then the waiting origin gets the slot"
        );
        assert_eq!(b.pool.origin_stats(&z).active, 1);
        drop(slot);
        assert_eq!(b.pool.stats().active, 0, "an unused slot is given back");
        assert_eq!(b.pool.origin_stats(&a).connections_closed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unusable_or_closed_connections_are_never_handed_out() {
        let mut b = Bench::new(|_| {});
        let a = origin(1);
        let (mut c1, _) = b.get(&a).await;
        c1.usable = false; // ended while idle
        b.pool.release(&a, c1, b.keep(), |_| {});
        let (mut c2, reused) = b.get(&a).await;
        assert!(!reused);
        c2.open = false; // closed by the response
        b.pool.release(&a, c2, b.keep(), |_| {});
        assert_eq!(b.pool.stats().idle, 0);
        assert_eq!(b.report_ends(&a), 2);
        assert_eq!(b.pool.stats().active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn close_fails_queued_requests_and_refuses_new_ones() {
        let mut b = Bench::new(|o| o.max_sockets = Some(1));
        let a = origin(1);
        let (_c1, _) = b.get(&a).await;
        let pool = b.pool.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { pool.acquire(&a2, false, 0).await.err() });
        tokio::time::sleep(Duration::from_millis(1)).await;
        b.pool.close(Duration::ZERO);
        let e = waiter.await.unwrap().expect("the queued request fails");
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        let e = b.pool.acquire(&a, false, 0).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let mut b = Bench::new(|o| o.max_sockets = Some(1));
        let a = origin(1);
        let (c1, _) = b.get(&a).await;
        let r = tokio::time::timeout(Duration::from_millis(5), b.pool.acquire(&a, false, 0)).await;
        assert!(r.is_err());
        assert_eq!(b.pool.stats().queued, 0);
        b.pool.release(&a, c1, b.keep(), |_| {});
        assert_eq!(b.pool.stats().idle, 1, "nobody waits: it goes idle");
    }
}
