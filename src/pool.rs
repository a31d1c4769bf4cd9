//! The connection pool of one agent: per-origin idle lists, limits, a FIFO queue of waiting
//! requests, idle timers and statistics. It hands out connections and takes them back; it
//! does not know how a request is sent.
//!
//! Accounting: every connection, from the moment its connect starts until its driver task
//! has closed the socket, holds one *slot* in its origin and one in the agent
//! (`max_sockets`, `max_total_sockets`), so the limits hold for sockets, not just for
//! requests. A connection closed to make room for another origin keeps its slot until its
//! socket is closed; the slot then goes to the oldest waiting request.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, oneshot};

use crate::connect::{IoProbe, Stream};
use crate::error::{Error, ErrorKind, Result};
use crate::http::Origin;
use crate::options::{Config, Scheduling};
use crate::runtime::ForkMutex;

pub(crate) type Sender = http1::SendRequest<Full<Bytes>>;
/// hyper's protocol state machine for one connection. It is polled by the request that
/// holds the connection (inline, on that request's thread: no hand-off per request) and,
/// while the connection is idle, by its monitor task (to notice a server close at once).
pub(crate) type Driver = Pin<Box<http1::Connection<TokioIo<Stream>, Full<Bytes>>>>;

/// Counters and gauges of an agent or of one origin (SPEC §4, `agent_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections established (TCP, and TLS where it applies).
    pub connections_opened: u64,
    /// Connections that ended, for any reason.
    pub connections_closed: u64,
    /// Connections dropped because a request on them timed out.
    pub connections_timed_out: u64,
    /// Connections dropped because a request on them failed.
    pub connections_errored: u64,
    /// Requests started (a retry is not a new request).
    pub requests: u64,
    /// Requests sent on a connection that had served an earlier request.
    pub reused_requests: u64,
    /// Transparent retries after a stale reused connection.
    pub retries: u64,
    /// Requests that failed with a timeout code.
    pub timeouts: u64,
    /// Requests that failed with any code (timeouts and cancellations included).
    pub errors: u64,
    /// Connections connecting or serving a request.
    pub active: u64,
    /// Connections idle in the pool.
    pub idle: u64,
    /// Requests waiting for a connection.
    pub queued: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.connections_opened += o.connections_opened;
        self.connections_closed += o.connections_closed;
        self.connections_timed_out += o.connections_timed_out;
        self.connections_errored += o.connections_errored;
        self.requests += o.requests;
        self.reused_requests += o.reused_requests;
        self.retries += o.retries;
        self.timeouts += o.timeouts;
        self.errors += o.errors;
        self.active += o.active;
        self.idle += o.idle;
        self.queued += o.queued;
    }
}

#[derive(Default)]
struct TimerState {
    /// When the pool wants this idle connection closed; `None` while it serves a request.
    wanted: Option<Instant>,
    /// When the monitor should take over an idle driver that a blocking caller parked
    /// (its socket is then in direct mode and nobody watches it).
    adopt_at: Option<Instant>,
    /// When an idle connection sheds hyper's buffers (see [`Pool::compact`]).
    compact_at: Option<Instant>,
    /// What the driver is currently sleeping until.
    armed: Option<Instant>,
}

impl TimerState {
    fn next(&self) -> Option<Instant> {
        [self.wanted, self.adopt_at, self.compact_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the monitor must be woken to honour a new, earlier time.
    fn needs_wake(&self) -> bool {
        match (self.next(), self.armed) {
            (Some(n), Some(a)) => n < a,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// How long an idle connection parked by a blocking caller stays unwatched before the
/// monitor takes it back into the reactor. A caller making back-to-back requests reuses it
/// well within this; a server close is still noticed long before SPEC's 200 ms.
const ADOPT_AFTER: Duration = Duration::from_millis(20);

/// How long a connection stays idle before it sheds hyper's buffers and channel (about
/// 25 KiB) and keeps only its socket; the next request rebuilds them, which costs a few
/// allocations — nothing next to an idle gap this long.
const COMPACT_AFTER: Duration = Duration::from_millis(100);

/// An idle connection's state, held for the monitor: hyper's driver, or after compaction
/// the bare socket.
enum Parked {
    Live(Driver),
    Bare(Stream),
}

/// Shared between a pooled connection and its driver task.
struct ConnCtl {
    id: u64,
    timer: Mutex<TimerState>,
    notify: Notify,
    close: AtomicBool,
    /// Set when the pool closes this connection to make room for another origin: its slot
    /// frees (and goes to the waiting request) once the socket is actually closed.
    retiring: AtomicBool,
    /// The driver while the connection is idle; `None` while a request holds it or after
    /// the connection ended.
    driver: Mutex<Option<Parked>>,
    /// The monitor task's waker, for parking the driver without waking the monitor.
    monitor_waker: Mutex<Option<std::task::Waker>>,
}

impl ConnCtl {
    fn lock_timer(&self) -> MutexGuard<'_, TimerState> {
        self.timer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the idle deadline; wakes the driver only when it must fire earlier than armed.
    /// Sets the idle deadline (`None` when the connection goes into use); an idle
    /// connection is also scheduled for compaction.
    fn set_idle_deadline(&self, deadline: Option<Instant>, idle: bool) {
        let mut t = self.lock_timer();
        t.wanted = deadline;
        t.compact_at = idle.then(|| Instant::now() + COMPACT_AFTER);
        let wake = t.needs_wake();
        drop(t);
        if wake {
            self.notify.notify_one();
        }
    }

    /// Asks the monitor to take the parked driver back after [`ADOPT_AFTER`].
    fn adopt_later(&self) {
        let mut t = self.lock_timer();
        t.adopt_at = Some(Instant::now() + ADOPT_AFTER);
        let wake = t.needs_wake();
        drop(t);
        if wake {
            self.notify.notify_one();
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.lock_timer().wanted
    }

    /// Whether compaction is due now (and consumes it).
    fn take_due_compaction(&self) -> bool {
        let mut t = self.lock_timer();
        if t.compact_at.is_some_and(|c| c <= Instant::now()) {
            t.compact_at = None;
            true
        } else {
            false
        }
    }

    /// Called by the monitor before it sleeps. A due adoption is consumed here: the
    /// monitor polls the parked driver on every pass.
    fn arm(&self) -> Option<Instant> {
        let mut t = self.lock_timer();
        if t.adopt_at.is_some_and(|a| a <= Instant::now()) {
            t.adopt_at = None;
        }
        t.armed = t.next();
        t.armed
    }

    fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    fn lock_driver(&self) -> MutexGuard<'_, Option<Parked>> {
        self.driver.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_monitor_waker(&self) -> MutexGuard<'_, Option<std::task::Waker>> {
        self.monitor_waker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection checked out of the pool (or freshly made), owned by one request. The
/// request polls `driver` itself while it waits for its response.
pub(crate) struct Conn {
    pub driver: Option<Driver>,
    /// `None` only while the connection is compacted (idle in the pool).
    pub sender: Option<Sender>,
    pub probe: Arc<IoProbe>,
    pub origin: Arc<Origin>,
    ctl: Arc<ConnCtl>,
    created: Instant,
    /// Requests this connection served before the current one.
    pub served: u64,
    /// Set for connections that can never be pooled (the agent has keep-alive off): no
    /// monitor task watches them, and dropping one reports the close to this pool itself.
    unmonitored: Option<Weak<Pool>>,
}

impl Conn {
    /// Whether `max_socket_lifetime` retired this connection.
    pub fn expired(&self, lifetime: Option<Duration>, now: Instant) -> bool {
        lifetime.is_some_and(|l| now.duration_since(self.created) >= l)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Not returned to the pool: the driver (and with it the socket) is dropped here;
        // the monitor task (or, without one, this drop) reports the close to the pool.
        // An unmonitored connection is never in the pool, so the pool lock is not held here.
        self.driver = None;
        match self.unmonitored.take() {
            Some(pool) => {
                if let Some(p) = pool.upgrade() {
                    p.closed(&self.origin, &self.ctl);
                }
            }
            None => self.ctl.request_close(),
        }
    }
}

impl Conn {
    /// Hands the driver back to the monitor task before the connection goes idle.
    ///
    /// The driver is polled once here with the monitor's waker, so that the socket's
    /// readiness (a server close) wakes the monitor, without waking the monitor now: a
    /// request costs no wake-up of another thread.
    fn park_driver(&mut self) {
        let Some(mut d) = self.driver.take() else {
            return;
        };
        if crate::runtime::direct_io_thread() {
            // A blocking caller: leave the socket in direct mode for its next request and
            // let the monitor take it back if it stays idle.
            *self.ctl.lock_driver() = Some(Parked::Live(d));
            self.ctl.adopt_later();
            return;
        }
        let waker = self.ctl.lock_monitor_waker().clone();
        let Some(waker) = waker else {
            *self.ctl.lock_driver() = Some(Parked::Live(d));
            self.ctl.notify.notify_one();
            return;
        };
        let mut slot = self.ctl.lock_driver();
        if d.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            *slot = Some(Parked::Live(d));
        } else {
            drop(slot);
            drop(d); // ended while being parked: the monitor reports it
            self.ctl.request_close();
        }
    }

    /// Takes the driver from the monitor task, rebuilding hyper's side of a compacted
    /// connection. `None`: the connection has ended; `Some(true)`: freshly rebuilt.
    fn unpark_driver(&mut self) -> Option<bool> {
        if self.driver.is_some() {
            return Some(false);
        }
        let parked = self.ctl.lock_driver().take();
        match parked? {
            Parked::Live(d) => {
                self.driver = Some(d);
                Some(false)
            }
            Parked::Bare(stream) => {
                let (sender, driver) = handshake_now(stream)?;
                self.sender = Some(sender);
                self.driver = Some(driver);
                Some(true)
            }
        }
    }
}

/// hyper's HTTP/1 handshake over an already connected stream. It does no I/O, so its
/// future completes on the first poll.
pub(crate) fn handshake_now(stream: Stream) -> Option<(Sender, Driver)> {
    let fut = http1::Builder::new().handshake(TokioIo::new(stream));
    let mut fut = std::pin::pin!(fut);
    match fut
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(Ok((sender, driver))) => Some((sender, Box::pin(driver))),
        _ => None,
    }
}

/// Polls the driver once with the current task's waker, so that what it waits on (the
/// socket, the request channel) wakes this task rather than the idle monitor. `false`:
/// the connection has ended.
pub(crate) async fn adopt_driver(driver: &mut Option<Driver>) -> bool {
    std::future::poll_fn(|cx| {
        if let Some(d) = driver.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                *driver = None;
            }
        }
        Poll::Ready(driver.is_some())
    })
    .await
}

/// Polls `fut` to completion while also polling the connection's driver on the same task,
/// so the request's bytes are written and read without waking another thread. `None`:
/// the connection ended and `fut` can no longer complete.
pub(crate) async fn drive<T>(
    driver: &mut Option<Driver>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        let Some(d) = driver.as_mut() else {
            return Poll::Ready(None);
        };
        if d.as_mut().poll(cx).is_ready() {
            // The connection ended; hyper has handed any in-flight exchange its error.
            *driver = None;
            return Poll::Ready(match fut.as_mut().poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            });
        }
        Poll::Pending
    })
    .await
}

struct Idle {
    conn: Conn,
}

enum Grant {
    Conn(Conn),
    Slot,
}

struct Waiter {
    id: u64,
    origin: Arc<Origin>,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct OriginState {
    idle: VecDeque<Idle>,
    /// Slots held by this origin (connecting + active + idle).
    slots: usize,
    queued: usize,
    stats: Stats,
}

#[derive(Default)]
struct State {
    origins: HashMap<Arc<Origin>, OriginState>,
    slots: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// Connections being closed to make room for other origins.
    retiring: usize,
    closed: bool,
    /// Counters for requests that failed before reaching an origin entry.
    stray: Stats,
}

/// How a request gets its connection.
pub(crate) enum Checkout {
    /// An idle connection, ready for a request.
    Reused(Conn),
    /// A slot to open a new connection with.
    Connect(SlotGuard),
}

/// A reserved slot. Dropped without [`Pool::register`], it is given back.
pub(crate) struct SlotGuard {
    pool: Arc<Pool>,
    origin: Arc<Origin>,
    armed: bool,
}

impl SlotGuard {
    pub fn origin(&self) -> &Arc<Origin> {
        &self.origin
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Ok(mut st) = self.pool.lock() {
                self.pool.free_slot(&mut st, &self.origin);
            }
        }
    }
}

/// Removes a queued request's entry if it stops waiting (timeout, cancel).
/// A queued request's place in line. Dropped before the grant was taken (timeout,
/// cancel), it leaves the queue, and gives back whatever was already granted to it: a grant
/// is sent under the pool lock, so under that lock it is either still queued or its grant
/// sits in the channel.
struct WaitGuard<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    origin: Arc<Origin>,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl WaitGuard<'_> {
    async fn wait(&mut self) -> std::result::Result<Grant, oneshot::error::RecvError> {
        let rx = self.rx.as_mut().expect("waited once");
        let grant = rx.await;
        self.rx = None;
        grant
    }
}

impl Drop for WaitGuard<'_> {
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
        // Closed outside the lock; its monitor then frees the slot.
        drop(unused_conn);
    }
}

pub(crate) struct Pool {
    cfg: Arc<Config>,
    state: ForkMutex<State>,
    drained: Condvar,
    next_conn: AtomicU64,
    me: Weak<Pool>,
}

/// Why a finished request's connection should not go back to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Discard {
    Error,
    Timeout,
}

impl Pool {
    pub fn new(cfg: Arc<Config>) -> Arc<Pool> {
        Arc::new_cyclic(|me| Pool {
            cfg,
            state: ForkMutex::new(State::default()),
            drained: Condvar::new(),
            next_conn: AtomicU64::new(1),
            me: me.clone(),
        })
    }

    fn arc(&self) -> Arc<Pool> {
        self.me.upgrade().expect("pool alive while borrowed")
    }

    /// Locks the state. In a child after `fork()`, the parent's connections and waiters
    /// are forgotten (leaked, never touched) and the pool starts empty.
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock()
    }

    fn can_open(&self, st: &State, origin: &Origin) -> bool {
        let per_origin = st.origins.get(origin).map_or(0, |o| o.slots);
        self.cfg.max_sockets.is_none_or(|m| per_origin < m)
            && self.cfg.max_total_sockets.is_none_or(|m| st.slots < m)
    }

    fn take_slot(&self, st: &mut State, origin: &Arc<Origin>) {
        st.slots += 1;
        st.origins.entry(origin.clone()).or_default().slots += 1;
    }

    fn free_slot(&self, st: &mut State, origin: &Arc<Origin>) {
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
    fn dispatch_slots(&self, st: &mut State) {
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
    fn evict_for(&self, st: &mut State, origin: &Arc<Origin>) {
        if st.retiring > st.waiters.len() {
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
        idle.conn.ctl.retiring.store(true, Ordering::Release);
        st.retiring += 1;
        drop(idle); // requests the close
    }

    fn pop_idle(&self, o: &mut OriginState) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let idle = match self.cfg.scheduling {
                Scheduling::Lifo => o.idle.pop_back(),
                Scheduling::Fifo => o.idle.pop_front(),
            }?;
            let mut c = idle.conn;
            // A rebuilt sender is not "ready" until its driver is first polled.
            let usable = c.unpark_driver().is_some_and(|rebuilt| {
                c.sender
                    .as_ref()
                    .is_some_and(|s| !s.is_closed() && (rebuilt || s.is_ready()))
            });
            let stale = !usable
                || c.ctl.idle_deadline().is_some_and(|d| d <= now)
                || c.expired(self.cfg.max_socket_lifetime, now);
            if stale {
                // Dropping requests the close; the driver frees the slot.
                continue;
            }
            c.ctl.set_idle_deadline(None, false);
            return Some(c);
        }
    }

    /// Gets a connection for `origin`: an idle one (unless `fresh`), a slot to open one,
    /// or a place in the queue until either is available.
    pub async fn acquire(&self, origin: &Arc<Origin>, fresh: bool) -> Result<Checkout> {
        let rx = {
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
                    pool: self.arc(),
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
        let (rx, id) = rx;
        let pool = self.arc();
        let mut guard = WaitGuard {
            pool: &pool,
            id,
            origin: origin.clone(),
            rx: Some(rx),
        };
        match guard.wait().await {
            Ok(Grant::Conn(mut c)) => {
                c.ctl.set_idle_deadline(None, false);
                c.unpark_driver();
                Ok(Checkout::Reused(c))
            }
            Ok(Grant::Slot) => Ok(Checkout::Connect(SlotGuard {
                pool: self.arc(),
                origin: origin.clone(),
                armed: true,
            })),
            Err(_) => Err(Error::new(
                ErrorKind::Cancelled,
                "the agent was closed while the request was queued",
            )),
        }
    }

    /// Turns a slot and a finished handshake into a pooled connection, and starts the task
    /// that drives it. Counts the connection as opened.
    pub fn register(
        &self,
        mut slot: SlotGuard,
        sender: Sender,
        driver: Driver,
        probe: Arc<IoProbe>,
    ) -> Result<Conn> {
        let ctl = Arc::new(ConnCtl {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            timer: Mutex::new(TimerState::default()),
            notify: Notify::new(),
            close: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            driver: Mutex::new(None),
            monitor_waker: Mutex::new(None),
        });
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
        let unmonitored = if self.cfg.keep_alive {
            tokio::spawn(monitor(self.me.clone(), origin.clone(), ctl.clone()));
            None
        } else {
            Some(self.me.clone())
        };
        Ok(Conn {
            driver: Some(driver),
            sender: Some(sender),
            probe,
            origin,
            ctl,
            created: Instant::now(),
            served: 0,
            unmonitored,
        })
    }

    /// Gives a connection back after a complete response. `keep` is the idle timeout to
    /// use, or `None` when the connection must not be reused.
    pub fn release(&self, mut conn: Conn, keep: Option<Option<Duration>>) {
        let (Some(idle_timeout), None) = (keep, &conn.unmonitored) else {
            drop(conn); // closed, before taking the lock (an unmonitored drop takes it)
            return;
        };
        let Ok(mut st) = self.lock() else {
            return;
        };
        conn.served += 1;
        if st.closed || conn.sender.as_ref().is_none_or(|s| s.is_closed()) {
            return;
        }
        // A queued request for this origin gets it first (oldest first).
        while let Some(pos) = st.waiters.iter().position(|w| w.origin == conn.origin) {
            let w = st.waiters.remove(pos).expect("index in range");
            if let Some(o) = st.origins.get_mut(&conn.origin) {
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
            && st.retiring < st.waiters.len()
        {
            conn.ctl.retiring.store(true, Ordering::Release);
            st.retiring += 1;
            return; // dropped: closed by its driver, which then frees the slot
        }
        let o = st.origins.entry(conn.origin.clone()).or_default();
        if o.idle.len() >= self.cfg.max_free_sockets {
            return;
        }
        conn.park_driver();
        conn.ctl
            .set_idle_deadline(idle_timeout.map(|t| Instant::now() + t), true);
        o.idle.push_back(Idle { conn });
    }

    /// Records a finished request in the origin's counters.
    pub fn record(&self, origin: &Arc<Origin>, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut st) = self.lock() {
            match st.origins.get_mut(origin) {
                Some(o) => f(&mut o.stats),
                None => f(&mut st.stray),
            }
        }
    }

    /// Called by a driver when its timer fires: closes the connection if it is still idle
    /// and past its deadline.
    fn expire(&self, origin: &Arc<Origin>, id: u64) -> bool {
        let Ok(mut st) = self.lock() else {
            return true;
        };
        let now = Instant::now();
        let Some(o) = st.origins.get_mut(origin) else {
            return false;
        };
        match o.idle.iter().position(|i| i.conn.ctl.id == id) {
            Some(pos)
                if o.idle[pos]
                    .conn
                    .ctl
                    .idle_deadline()
                    .is_some_and(|d| d <= now) =>
            {
                o.idle.remove(pos);
                true
            }
            _ => false,
        }
    }

    /// Sheds hyper's buffers and channel of a connection that has stayed idle: keeps only
    /// the socket (taken back with `Connection::into_parts`, which does no I/O), to be
    /// rebuilt by the next checkout. A connection with unread bytes is closed instead.
    fn compact(&self, origin: &Arc<Origin>, ctl: &ConnCtl) {
        let Ok(mut st) = self.lock() else {
            return;
        };
        let Some(idle) = st
            .origins
            .get_mut(origin)
            .and_then(|o| o.idle.iter_mut().find(|i| i.conn.ctl.id == ctl.id))
        else {
            return; // in use again
        };
        let mut slot = ctl.lock_driver();
        let Some(Parked::Live(driver)) = slot.take() else {
            return;
        };
        let parts = Pin::into_inner(driver).into_parts();
        if parts.read_buf.is_empty() {
            *slot = Some(Parked::Bare(parts.io.into_inner()));
            idle.conn.sender = None;
        } else {
            drop(slot);
            ctl.request_close(); // unexpected bytes from an idle connection
        }
    }

    /// Called by a driver when its connection has ended.
    fn closed(&self, origin: &Arc<Origin>, ctl: &ConnCtl) {
        let Ok(mut st) = self.lock() else {
            return;
        };
        if let Some(o) = st.origins.get_mut(origin) {
            o.stats.connections_closed += 1;
            if let Some(pos) = o.idle.iter().position(|i| i.conn.ctl.id == ctl.id) {
                o.idle.remove(pos);
            }
        }
        if ctl.retiring.load(Ordering::Acquire) {
            st.retiring -= 1;
        }
        self.free_slot(&mut st, origin);
    }

    /// Statistics for the whole agent.
    pub fn stats(&self) -> Stats {
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
    pub fn origin_stats(&self, origin: &Origin) -> Stats {
        let Ok(st) = self.lock() else {
            return Stats::default();
        };
        st.origins.get(origin).map(origin_stats).unwrap_or_default()
    }

    /// Closes the pool: idle connections close now, queued requests fail with
    /// `Cancelled`, active connections close when their request ends. Waits up to
    /// `wait` for every connection to be gone.
    pub fn close(&self, wait: Duration) {
        let Ok(mut st) = self.lock() else {
            return;
        };
        st.closed = true;
        st.waiters.clear();
        for o in st.origins.values_mut() {
            o.queued = 0;
            o.idle.clear();
        }
        let deadline = Instant::now() + wait;
        while st.slots > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
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

fn origin_stats(o: &OriginState) -> Stats {
    let mut s = o.stats;
    s.idle = o.idle.len() as u64;
    s.active = (o.slots - o.idle.len()) as u64;
    s.queued = o.queued as u64;
    s
}

/// Watches one connection for its whole life: polls its driver while it is idle (so a
/// server's FIN or RST takes it out of the pool at once), fires the idle timer, and obeys
/// close requests. A request that checks the connection out takes the driver and polls it
/// inline; handing it back wakes this task.
async fn monitor(pool: Weak<Pool>, origin: Arc<Origin>, ctl: Arc<ConnCtl>) {
    loop {
        let armed = ctl.arm();
        if ctl.close.load(Ordering::Acquire) {
            break;
        }
        let sleep = async move {
            match armed {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let idle_driver = std::future::poll_fn(|cx| {
            {
                let mut w = ctl.lock_monitor_waker();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            let mut slot = ctl.lock_driver();
            match slot.as_mut() {
                Some(Parked::Live(d)) => d.as_mut().poll(cx).map(|_| ()),
                // Anything readable on an idle bare socket (EOF, RST, stray bytes) ends it.
                Some(Parked::Bare(s)) => s.poll_read_ready(cx).map(|_| ()),
                None => Poll::Pending, // in use; handing it back notifies us
            }
        });
        tokio::select! {
            biased;
            _ = ctl.notify.notified() => {}
            _ = idle_driver => break,
            _ = sleep => {
                match pool.upgrade() {
                    Some(p) if !p.expire(&origin, ctl.id) => {
                        if ctl.take_due_compaction() {
                            p.compact(&origin, &ctl);
                        }
                    }
                    _ => break,
                }
            }
        }
    }
    // Closes the socket if the driver is parked here (a request holding it drops it).
    drop(ctl.lock_driver().take());
    if let Some(p) = pool.upgrade() {
        p.closed(&origin, &ctl);
    }
}
