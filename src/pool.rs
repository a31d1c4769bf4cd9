//! The connection pool of one agent: slots, the wait queue, per-origin idle lists (lifo or
//! fifo), limits, idle deadlines and statistics. It hands connections out and takes them
//! back; it never touches a socket, so it is tested here with a fake connection type.
//!
//! Accounting: every connection, from the moment its connect starts until its socket is
//! closed, holds one *slot* in its origin and one in the agent (`max_sockets`,
//! `max_total_sockets`), so the limits hold for sockets, not just for requests. A
//! connection closed to make room for another origin keeps its slot until its socket is
//! closed ([`Owner::ended`]); the slot then goes to the oldest waiting request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::conn::{Conn, Owner};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Origin, ReuseHint};
use crate::options::{Config, Scheduling};
use crate::runtime::ForkMutex;
use crate::stats::Stats;

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
    origins: HashMap<Arc<Origin>, OriginState<C>>,
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
            origins: HashMap::new(),
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
        drop(idle); // closes it; its end frees the slot
    }

    fn expired(&self, conn: &C, now: Instant) -> bool {
        self.cfg
            .max_socket_lifetime
            .is_some_and(|l| now.duration_since(conn.created()) >= l)
    }

    fn pop_idle(&self, o: &mut OriginState<C>) -> Option<C> {
        let now = Instant::now();
        loop {
            let idle = match self.cfg.scheduling {
                Scheduling::Lifo => o.idle.pop_back(),
                Scheduling::Fifo => o.idle.pop_front(),
            }?;
            let mut c = idle.conn;
            if idle.until.is_some_and(|d| d <= now) || self.expired(&c, now) {
                continue; // dropped: closed, its end frees the slot
            }
            if c.unpark() {
                return Some(c);
            }
        }
    }

    /// Gets a connection for `origin`: an idle one (unless `fresh`), a slot to open one,
    /// or a place in the queue until either is available.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        fresh: bool,
    ) -> Result<Checkout<C>> {
        let (rx, id) = {
            let mut st = self.lock()?;
            if st.closed {
                return Err(Error::new(ErrorKind::Cancelled, "the agent was closed"));
            }
            if !fresh {
                let o = st.origins.entry(origin.clone()).or_default();
                if let Some(conn) = self.pop_idle(o) {
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
        let mut guard = WaitGuard {
            pool: self,
            id,
            origin: origin.clone(),
            rx: Some(rx),
        };
        match guard.wait().await {
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

    /// Turns a slot and a connection just opened with it into a pooled connection: counts
    /// it as opened and attaches it to this pool (watched while idle when keep-alive is
    /// on).
    pub(crate) fn register(self: &Arc<Self>, mut slot: SlotGuard<C>, mut conn: C) -> Result<C> {
        let origin = slot.origin.clone();
        {
            let mut st = self.lock()?;
            st.origins
                .entry(origin.clone())
                .or_default()
                .stats
                .connections_opened += 1;
        }
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
    /// [`Pool::idle_timeout`] decided (`None`: close it).
    pub(crate) fn release(
        &self,
        origin: &Arc<Origin>,
        mut conn: C,
        keep: Option<Option<Duration>>,
    ) {
        let Some(idle_timeout) = keep.filter(|_| self.cfg.keep_alive) else {
            drop(conn); // closed before taking the lock (an unwatched connection reports its end)
            return;
        };
        let Ok(mut st) = self.lock() else {
            return;
        };
        if st.closed || !conn.is_open() {
            return;
        }
        // A queued request for this origin gets it first (oldest first).
        while let Some(pos) = st.waiters.iter().position(|w| &w.origin == origin) {
            let w = st.waiters.remove(pos).expect("index in range");
            if let Some(o) = st.origins.get_mut(origin) {
                o.queued -= 1;
            }
            match w.tx.send(Grant::Conn(conn)) {
                Ok(()) => return,
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
            return; // dropped: closed, and its end frees the slot
        }
        let o = st.origins.entry(origin.clone()).or_default();
        if o.idle.len() >= self.cfg.max_free_sockets {
            return;
        }
        let until = idle_timeout.map(|t| Instant::now() + t);
        conn.park(until);
        o.idle.push_back(Idle { conn, until });
    }

    /// Drops a connection whose request failed, counting why.
    pub(crate) fn discard(&self, origin: &Arc<Origin>, conn: C, why: Discard) {
        self.record(origin, |s| match why {
            Discard::Timeout => s.connections_timed_out += 1,
            Discard::Error => s.connections_errored += 1,
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
                o.idle.remove(pos);
                true
            }
            _ => false,
        }
    }

    /// A connection's socket is closed: its slot is free.
    fn ended(&self, origin: &Arc<Origin>, id: u64) {
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
