//! HTTP/2 sessions of one agent: one connection per origin carries many requests at once,
//! each a stream. The second kind of connection next to [`crate::conn`]: where an
//! HTTP/1.1 connection is lent to one request at a time by the pool, a session is shared,
//! and a request takes a [`StreamLease`] on it while it runs.
//!
//! A session is made from a connection whose TLS handshake chose `h2` by ALPN (or, with
//! prior knowledge, a plain one). It keeps the pool slot it was opened with, so
//! `max_sockets` and `max_total_sockets` count it like any connection. hyper's HTTP/2
//! state machine runs on a runtime task (the session's monitor), which also sends PINGs
//! while the connection is idle (`keep_alive_msecs`), retires it when they go unanswered,
//! closes it after the free-socket timeout with no stream, and stops handing it out after
//! its lifetime or a GOAWAY. Knows nothing of requests or HTTP semantics beyond streams.
//!
//! A connection opened by a request of an event queue has its monitor run by that queue
//! (a [`runtime::Host`]) instead: the requests, the connection's I/O (direct system calls
//! on the draining thread) and hyper's tasks all run in the queue's drain, with no runtime
//! thread woken per request. Such a session serves only that queue's requests (a blocking
//! or callback caller must not wait on a loop that may not be draining); freed, the queue
//! hands the monitor to the runtime, which retires the session.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connect::Stream;
use crate::error::{Error, ErrorKind, Result, chain_message};
use crate::http::{Origin, ReqBody};
use crate::idmap::IdMap;
use crate::options::Config;
use crate::{direct, runtime};

pub(crate) type Sender = http2::SendRequest<ReqBody>;
type H2Connection = http2::Connection<TokioIo<Stream>, ReqBody, Inline>;

/// A PING that gets no answer within this long (at least) retires the connection.
const MIN_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request gets from [`Sessions::pick`].
pub(crate) enum Pick {
    /// A stream on a session with room for it.
    Stream(StreamLease),
    /// Every session of the origin is full and no other may be opened, or a connection
    /// that may turn out to speak HTTP/2 is being opened: wait for [`Sessions::changed`]
    /// and pick again.
    Wait,
    /// Open a connection. With a guard, this request is the one connecting to an origin
    /// that may speak HTTP/2: others wait for it rather than open their own.
    Open(Option<Connecting>),
}

/// Per-origin state.
#[derive(Default)]
struct OriginState {
    sessions: Vec<Arc<Session>>,
    /// Connections being opened that may turn out to speak HTTP/2, by the host (see
    /// [`Session::host`]) their session will run on.
    connecting: Vec<u64>,
    /// The server answered ALPN without `h2`: requests go to the HTTP/1.1 pool at once.
    http1_only: bool,
}

struct State {
    origins: IdMap<Arc<Origin>, OriginState>,
    closed: bool,
}

/// The HTTP/2 sessions of one agent, by origin.
pub(crate) struct Sessions {
    cfg: Arc<Config>,
    state: Mutex<State>,
    /// Signalled when a stream ends, a session comes or goes, or a connect finishes.
    changed: Notify,
}

/// One HTTP/2 connection.
pub(crate) struct Session {
    /// The connection's id in this process (as an HTTP/1.1 connection's).
    id: u64,
    /// Where its monitor runs ([`runtime::host_id`]): 0, the runtime, serving every
    /// caller; otherwise an event queue, serving only the requests that queue runs.
    host: u64,
    origin: Arc<Origin>,
    /// Every stream's `:authority` (`host:port` of the origin), made once.
    authority: Option<http::uri::Authority>,
    /// The master handle; `None` once the session is retired (no new streams).
    sender: Mutex<Option<Sender>>,
    in_flight: Mutex<usize>,
    /// hyper's dispatch task for this connection, polled by the monitor; `pick` reads the
    /// server's current `SETTINGS_MAX_CONCURRENT_STREAMS` from it (when the monitor is not
    /// polling it at that instant; otherwise the value the monitor saw last).
    /// `None` once the connection has ended: dropping hyper's task hands every request
    /// still queued in it back, cancelled (and such a request is sent again elsewhere).
    conn: Mutex<Option<Pin<Box<H2Connection>>>>,
    /// The server's stream limit as last read.
    max_streams: std::sync::atomic::AtomicUsize,
    /// Streams started on it so far (a stream after the first is "reused").
    started: AtomicU64,
    created: Instant,
    /// Wakes the monitor (a stream ended: maybe the idle timer starts).
    wake: Notify,
    /// One stream only (keep-alive off): retired as soon as that stream is handed out.
    single_use: bool,
    /// hyper's tasks for this connection (its HTTP/2 driver, one per request waiting for
    /// its response head, one per request body still being sent), run by the monitor.
    tasks: Inline,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request's hold on one stream of a session. Dropped, the stream's place is free again.
pub(crate) struct StreamLease {
    session: Arc<Session>,
    sessions: Arc<Sessions>,
    pub(crate) sender: Sender,
    /// Whether the session carried a stream before this one.
    pub(crate) reused: bool,
}

impl StreamLease {
    /// Which session this stream is on (for telling two leases' sessions apart).
    pub(crate) fn session_key(&self) -> usize {
        Arc::as_ptr(&self.session) as usize
    }

    /// The id of the connection this stream is on.
    pub(crate) fn connection_id(&self) -> u64 {
        self.session.id
    }

    /// The origin's `host:port` as an HTTP/2 `:authority` (None if it is not a valid
    /// one, which a parsed URL's origin always is).
    pub(crate) fn authority(&self) -> Option<&http::uri::Authority> {
        self.session.authority.as_ref()
    }

    /// No new stream goes to this session (after a GOAWAY or a refused stream).
    pub(crate) fn retire(&self) {
        self.session.retire();
        self.sessions.changed.notify_waiters();
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        let left = {
            let mut n = lock(&self.session.in_flight);
            *n -= 1;
            *n
        };
        if left == 0 {
            self.session.wake.notify_one();
        }
        self.sessions.changed.notify_waiters();
    }
}

/// Held by the request that opens a connection to an origin that may speak HTTP/2.
pub(crate) struct Connecting {
    sessions: Arc<Sessions>,
    origin: Arc<Origin>,
    host: u64,
}

impl Drop for Connecting {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.sessions.state);
            if let Some(o) = st.origins.get_mut(&self.origin) {
                if let Some(i) = o.connecting.iter().position(|h| *h == self.host) {
                    o.connecting.swap_remove(i);
                }
            }
        }
        self.sessions.changed.notify_waiters();
    }
}

impl Session {
    fn retire(&self) {
        lock(&self.sender).take();
    }

    /// Retires the session when it has no stream in flight, or anyway with `always`. The
    /// check and the retirement happen under the sender's lock, which [`Sessions::pick`]
    /// holds while it counts a new stream: no stream can start in between.
    fn retire_if(&self, always: bool) -> bool {
        let mut sender = lock(&self.sender);
        if always || *lock(&self.in_flight) == 0 {
            sender.take();
            true
        } else {
            false
        }
    }

    fn usable(&self) -> bool {
        lock(&self.sender).as_ref().is_some_and(|s| !s.is_closed())
    }
}

impl Sessions {
    pub(crate) fn new(cfg: Arc<Config>) -> Arc<Sessions> {
        Arc::new(Sessions {
            cfg,
            state: Mutex::new(State {
                origins: IdMap::default(),
                closed: false,
            }),
            changed: Notify::new(),
        })
    }

    /// A future that completes at the next change (create it before [`Sessions::pick`],
    /// so that no change between the two is missed).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// A stream for `origin`, or what to do instead, among the sessions of the host the
    /// calling thread drives (see [`Session::host`]).
    pub(crate) fn pick(self: &Arc<Self>, origin: &Arc<Origin>) -> Result<Pick> {
        let host = runtime::host_id();
        let mut st = lock(&self.state);
        if st.closed {
            return Err(Error::new(ErrorKind::Cancelled, "the agent was closed"));
        }
        let max_sockets = self.cfg.max_sockets;
        let o = st.origins.entry(origin.clone()).or_default();
        if o.http1_only {
            return Ok(Pick::Open(None));
        }
        o.sessions.retain(|s| s.usable());
        for s in o.sessions.iter().filter(|s| s.host == host) {
            let guard = lock(&s.sender);
            let Some(sender) = guard.as_ref() else {
                continue;
            };
            let mut n = lock(&s.in_flight);
            let room = match s.conn.try_lock().as_deref() {
                Ok(Some(c)) => {
                    let m = c.as_ref().get_ref().current_max_send_streams();
                    s.max_streams.store(m, Ordering::Relaxed);
                    m
                }
                _ => s.max_streams.load(Ordering::Relaxed),
            }
            .max(1);
            if *n < room {
                *n += 1;
                let reused = s.started.fetch_add(1, Ordering::Relaxed) > 0;
                let lease = StreamLease {
                    session: s.clone(),
                    sessions: self.clone(),
                    sender: sender.clone(),
                    reused,
                };
                drop(n);
                drop(guard);
                if s.single_use {
                    s.retire();
                }
                return Ok(Pick::Stream(lease));
            }
        }
        if o.connecting.contains(&host) {
            return Ok(Pick::Wait);
        }
        if max_sockets.is_some_and(|m| o.sessions.len() >= m) {
            return Ok(Pick::Wait);
        }
        o.connecting.push(host);
        Ok(Pick::Open(Some(Connecting {
            sessions: self.clone(),
            origin: origin.clone(),
            host,
        })))
    }

    /// The server of `origin` chose HTTP/1.1: its requests go to the pool from now on.
    pub(crate) fn http1_only(&self, origin: &Arc<Origin>) {
        lock(&self.state)
            .origins
            .entry(origin.clone())
            .or_default()
            .http1_only = true;
    }

    /// Makes a session of a connection whose TLS chose `h2` (or that has prior
    /// knowledge): hyper's handshake, then the monitor task, which owns `keep` (the pool
    /// slot, given back when the connection ends) and calls `ended` once then.
    pub(crate) async fn add(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        id: u64,
        stream: Stream,
        keep: impl Send + 'static,
        ended: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        let tasks = Inline::default();
        let mut b = http2::Builder::new(tasks.clone());
        b.timer(TokioTimer::new());
        if self.cfg.keep_alive {
            let every = Duration::from_millis(u64::from(self.cfg.keep_alive_msecs));
            b.keep_alive_interval(every)
                .keep_alive_timeout((every * 2).max(MIN_PING_TIMEOUT))
                .keep_alive_while_idle(true);
        }
        let (sender, conn) = b
            .handshake::<_, ReqBody>(TokioIo::new(stream))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("HTTP/2 handshake: {}", chain_message(&e)),
                )
            })?;
        // The monitor runs where `spawn_background` below puts it.
        let host = runtime::host_id();
        let session = Arc::new(Session {
            id,
            host,
            authority: http::uri::Authority::try_from(origin.authority()).ok(),
            origin: origin.clone(),
            sender: Mutex::new(Some(sender)),
            in_flight: Mutex::new(0),
            max_streams: std::sync::atomic::AtomicUsize::new(conn.current_max_send_streams()),
            conn: Mutex::new(Some(Box::pin(conn))),
            started: AtomicU64::new(0),
            created: Instant::now(),
            wake: Notify::new(),
            single_use: !self.cfg.keep_alive,
            tasks,
        });
        {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(Error::new(ErrorKind::Cancelled, "the agent was closed"));
            }
            st.origins
                .entry(origin.clone())
                .or_default()
                .sessions
                .push(session.clone());
        }
        let sessions = self.clone();
        runtime::spawn_background(Box::pin(async move {
            let _keep = keep;
            sessions.monitor(&session).await;
            lock(&session.conn).take();
            sessions.remove(&session);
            ended();
        }));
        self.changed.notify_waiters();
        Ok(())
    }

    /// Drives the connection until it ends; retires it when it has been idle for the
    /// free-socket timeout or has lived its lifetime (then it ends once its last stream
    /// does: hyper closes a connection that has no stream and no handle left).
    async fn monitor(&self, s: &Arc<Session>) {
        // hyper's dispatch task, polled here (under its lock, which `pick` only tries).
        let conn = std::future::poll_fn(|cx| {
            let mut guard = lock(&s.conn);
            let Some(c) = guard.as_mut() else {
                return std::task::Poll::Ready(());
            };
            let r = c.as_mut().poll(cx).map(|_| ());
            s.max_streams.store(
                c.as_ref().get_ref().current_max_send_streams(),
                Ordering::Relaxed,
            );
            r
        });
        let mut conn = std::pin::pin!(conn);
        // hyper's own tasks for this connection run here too (see [`Inline`]).
        let mut tasks = InlineTasks::new(s.tasks.clone());
        let idle_limit = self.cfg.free_socket_timeout;
        let lifetime = self.cfg.max_socket_lifetime.map(|d| s.created + d);
        let mut retired = false;
        loop {
            if s.host != 0 && !retired && !direct::on_direct_thread() {
                // Its queue is gone and the runtime runs it now: no request can pick it
                // any more, so it closes once its last stream ends.
                s.retire();
                retired = true;
                self.changed.notify_waiters();
            }
            let deadline = if retired {
                None
            } else {
                let idle = *lock(&s.in_flight) == 0;
                [
                    idle_limit.filter(|_| idle).map(|d| Instant::now() + d),
                    lifetime,
                ]
                .into_iter()
                .flatten()
                .min()
            };
            let woken = s.wake.notified();
            let check_host = s.host != 0 && !retired;
            let run_tasks = std::future::poll_fn(|cx| {
                if check_host && !direct::on_direct_thread() {
                    return std::task::Poll::Ready(()); // handed to the runtime: see above
                }
                let _ = tasks.poll(cx);
                std::task::Poll::<()>::Pending
            });
            tokio::select! {
                _ = &mut conn => break,
                _ = run_tasks => {}
                _ = woken => continue,
                _ = sleep_until(deadline) => {
                    let expired = lifetime.is_some_and(|l| Instant::now() >= l);
                    if s.retire_if(expired) {
                        retired = true;
                        self.changed.notify_waiters();
                    }
                }
            }
        }
        // The dispatch ended (GOAWAY, an error, or nothing left to send). Dropping it lets
        // go of its handle on the connection; the streams still in flight finish, or fail,
        // in hyper's tasks, which end with the connection.
        lock(&s.conn).take();
        std::future::poll_fn(|cx| tasks.poll(cx)).await;
    }

    fn remove(&self, s: &Arc<Session>) {
        s.retire();
        if let Some(o) = lock(&self.state).origins.get_mut(&s.origin) {
            o.sessions.retain(|x| !Arc::ptr_eq(x, s));
        }
        self.changed.notify_waiters();
    }

    /// Open sessions without a stream in flight (of one origin, or all).
    pub(crate) fn idle(&self, origin: Option<&Arc<Origin>>) -> usize {
        let st = lock(&self.state);
        st.origins
            .iter()
            .filter(|(o, _)| origin.is_none_or(|want| *o == want))
            .flat_map(|(_, o)| o.sessions.iter())
            .filter(|s| *lock(&s.in_flight) == 0)
            .count()
    }

    /// Retires every session (agent free): in-flight streams finish or fail on their own.
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        for o in st.origins.values() {
            for s in &o.sessions {
                s.retire();
                s.wake.notify_one();
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// hyper's executor for one session: what hyper would spawn on the runtime (the HTTP/2
/// connection's driver, a task per request that waits for its response head, a task per
/// request body being sent) is handed to the session's monitor, which polls it in its own
/// task. A response then wakes the monitor and the request's caller, not a new task on
/// another runtime thread in between.
#[derive(Clone, Default)]
pub(crate) struct Inline {
    shared: Arc<InlineShared>,
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct InlineShared {
    /// Tasks handed over, not yet taken by the monitor.
    inbox: Mutex<Vec<Task>>,
    /// Slots woken since the monitor last looked.
    ready: Mutex<Vec<usize>>,
    /// The monitor's waker.
    monitor: Mutex<Option<Waker>>,
}

impl InlineShared {
    fn wake_monitor(&self) {
        if let Some(w) = lock(&self.monitor).as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<F> hyper::rt::Executor<F> for Inline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        lock(&self.shared.inbox).push(Box::pin(fut));
        self.shared.wake_monitor();
    }
}

/// Wakes one task slot: marks it ready and wakes the monitor.
struct SlotWaker {
    slot: usize,
    shared: Arc<InlineShared>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.shared.ready).push(self.slot);
        self.shared.wake_monitor();
    }
}

/// The monitor's side of [`Inline`]: the tasks in slots, each polled only when woken.
///
/// Run by a queue, the monitor polls in direct mode: a task whose socket would block
/// leaves a wait for the queue ([`direct::take_wait`]) instead of a waker with the
/// reactor, and the queue's readiness wakes the monitor, not the task. So a task that left
/// such a wait is polled again at the monitor's next poll (`io`); and when the mode
/// changes (the queue went away, the runtime polls now), every task is polled once, to
/// register with the reactor.
struct InlineTasks {
    shared: Arc<InlineShared>,
    slots: Vec<Option<(Task, Waker)>>,
    free: Vec<usize>,
    /// Swapped with the shared inbox and ready list, so that neither allocates per round.
    new: Vec<Task>,
    ready: Vec<usize>,
    /// Tasks waiting on a socket in direct mode.
    io: Vec<usize>,
    /// Whether the last poll was in direct mode.
    direct: bool,
}

/// Polls per [`InlineTasks::poll`] before yielding to the runtime.
const INLINE_BUDGET: usize = 1024;

impl InlineTasks {
    fn new(inline: Inline) -> InlineTasks {
        InlineTasks {
            shared: inline.shared,
            slots: Vec::new(),
            free: Vec::new(),
            new: Vec::new(),
            ready: Vec::new(),
            io: Vec::new(),
            direct: false,
        }
    }

    /// Polls every task that is new or was woken. Ready when no task is left.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut m = lock(&self.shared.monitor);
            if !m.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *m = Some(cx.waker().clone());
            }
        }
        let mut budget = INLINE_BUDGET;
        let direct = direct::on_direct_thread();
        if direct != self.direct {
            self.direct = direct;
            self.io.clear();
            self.io
                .extend((0..self.slots.len()).filter(|i| self.slots[*i].is_some()));
        }
        // `io` (tasks waiting on their socket, or every task after a change of mode) is
        // polled in the first round only: a task that waits again goes back to it.
        let mut first = true;
        loop {
            std::mem::swap(&mut *lock(&self.shared.inbox), &mut self.new);
            std::mem::swap(&mut *lock(&self.shared.ready), &mut self.ready);
            if std::mem::take(&mut first) {
                self.ready.append(&mut self.io);
            }
            for task in self.new.drain(..) {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                let waker = Waker::from(Arc::new(SlotWaker {
                    slot,
                    shared: self.shared.clone(),
                }));
                self.slots[slot] = Some((task, waker));
                self.ready.push(slot);
            }
            if self.ready.is_empty() {
                if self.free.len() == self.slots.len() {
                    return Poll::Ready(()); // every slot is free
                }
                return Poll::Pending;
            }
            for slot in self.ready.drain(..) {
                let Some(Some((task, waker))) = self.slots.get_mut(slot) else {
                    continue; // woken after it finished
                };
                let before = if direct { direct::take_wait() } else { None };
                let done = task
                    .as_mut()
                    .poll(&mut Context::from_waker(waker))
                    .is_ready();
                if direct {
                    match direct::take_wait() {
                        Some(on) => {
                            if !done && !self.io.contains(&slot) {
                                self.io.push(slot);
                            }
                            direct::put_wait(Some(on));
                        }
                        None => direct::put_wait(before),
                    }
                }
                if done {
                    self.slots[slot] = None;
                    self.free.push(slot);
                }
                budget = budget.saturating_sub(1);
            }
            if budget == 0 {
                // Fair to the runtime's other tasks: come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}
