//! One HTTP/1.1 connection: hyper's handshake over a connected [`Stream`], the driver
//! polled inline by the request that holds it, parking and unparking as it goes idle and
//! back into use, compaction of a long-idle connection down to its socket, and the idle
//! monitor task that notices a server's close and fires the idle timer.
//!
//! A connection knows nothing of pools. It reports its life to an [`Owner`] (held weakly):
//! when its idle timer fires and when it has ended (socket closed). HTTP/2 connections are
//! the other kind, shared by many requests: see [`crate::h2`].

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connect::{ConnectTimings, Connector, IoProbe, Stream, connect};
use crate::direct::Mode;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Origin, ReqBody};
use crate::trace::CloseReason;

pub(crate) type Sender = http1::SendRequest<ReqBody>;
/// hyper's protocol state machine for one connection. It is polled by the request that
/// holds the connection (inline, on that request's thread: no hand-off per request) and,
/// while the connection is idle, by its monitor task (to notice a server close at once).
pub(crate) type Driver = Pin<Box<http1::Connection<TokioIo<Stream>, ReqBody>>>;

/// How long an idle connection parked by a blocking caller stays unwatched before the
/// monitor takes it back into the reactor. A caller making back-to-back requests reuses it
/// well within this; a server close is still noticed long before SPEC's 200 ms.
const ADOPT_AFTER: Duration = Duration::from_millis(20);

/// How long a connection stays idle before it sheds hyper's buffers and channel (about
/// 25 KiB) and keeps only its socket; the next request rebuilds them, which costs a few
/// allocations — nothing next to an idle gap this long.
const COMPACT_AFTER: Duration = Duration::from_millis(100);

/// While a connection turns over quickly (parked again within [`HOT`] of its last park),
/// its monitor checks back this often instead of being woken by every park: a request
/// then costs no wake-up of a library thread.
const RECHECK: Duration = Duration::from_millis(100);
const HOT: Duration = Duration::from_secs(1);

/// How late the monitor may honour a new, earlier deadline rather than be woken for it
/// (idle close, compaction and adoption tolerate it; adoption stays well within SPEC's
/// 200 ms: [`ADOPT_AFTER`] plus this).
const LATE_OK: Duration = Duration::from_millis(80);

/// How long a finished connection may take to become ready for its next request before
/// it is given up (it is normally a few microseconds).
const READY_WAIT: Duration = Duration::from_millis(100);

/// The most hyper reads ahead of the request that holds the connection (its read buffer):
/// with the piece being handed over, what the engine holds per response stream, whatever
/// the body's size. It also bounds a response head.
const READ_WINDOW: usize = 256 * 1024;

/// Connection ids, unique in the process: owners find their connections by id.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Whoever keeps a connection (the pool) hears about its life through this. A connection
/// holds its owner weakly and never calls it with a lock of its own held.
pub(crate) trait Owner: Send + Sync {
    /// The idle deadline given to [`Conn::park`] has passed. Returns true when the owner
    /// has let the connection go (the monitor then closes it).
    fn idle_timer(&self, origin: &Arc<Origin>, id: u64) -> bool;
    /// The connection has ended: its socket is closed, for `why`.
    fn ended(&self, origin: &Arc<Origin>, id: u64, why: CloseReason);
}

/// A new connection id (unique in the process), taken before connecting so that connect
/// events name the connection.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[derive(Default)]
struct Timers {
    /// When the owner wants this idle connection closed; `None` while it serves a request.
    idle_until: Option<Instant>,
    /// When the monitor should take over a driver that a blocking caller parked (its
    /// socket is then in direct mode and nobody watches it).
    adopt_at: Option<Instant>,
    /// When an idle connection sheds hyper's buffers (see [`Ctl::compact`]).
    compact_at: Option<Instant>,
    /// What the monitor is currently sleeping until.
    armed: Option<Instant>,
    /// When the connection was last parked (see [`RECHECK`]).
    last_park: Option<Instant>,
}

impl Timers {
    fn next(&self) -> Option<Instant> {
        [self.idle_until, self.adopt_at, self.compact_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the monitor must be woken to honour a new, earlier time.
    fn needs_wake(&self) -> bool {
        match (self.next(), self.armed) {
            (Some(n), Some(a)) => n + LATE_OK < a,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// An idle connection's state, held for the monitor: hyper's side, or after compaction the
/// bare socket.
enum Parked {
    Live(Driver, Sender),
    Bare(Stream),
}

/// Shared between a connection and its monitor task.
struct Ctl {
    id: u64,
    /// Why it closes ([`CloseReason`] as u8): the first to say wins.
    reason: AtomicU8,
    timers: Mutex<Timers>,
    notify: Notify,
    close: AtomicBool,
    /// The connection's machinery while it is idle; `None` while a request holds it or
    /// after it ended.
    parked: Mutex<Option<Parked>>,
    /// The monitor's waker, for parking a driver without waking the monitor.
    monitor_waker: Mutex<Option<std::task::Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctl {
    fn update_timers(&self, f: impl FnOnce(&mut Timers)) {
        let mut t = lock(&self.timers);
        f(&mut t);
        let wake = t.needs_wake();
        drop(t);
        if wake {
            self.notify.notify_one();
        }
    }

    /// Called by the monitor before it sleeps. A due adoption is consumed here: the
    /// monitor polls the parked driver on every pass.
    fn arm(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut t = lock(&self.timers);
        if t.adopt_at.is_some_and(|a| a <= now) {
            t.adopt_at = None;
        }
        let hot = t.last_park.is_some_and(|p| now.duration_since(p) < HOT);
        t.armed = t.next().or(hot.then(|| now + RECHECK));
        t.armed
    }

    /// Whether a driver parked in direct mode is still left to its blocking caller (the
    /// monitor must not poll it, which would move its socket into the reactor).
    fn adoption_pending(&self) -> bool {
        lock(&self.timers).adopt_at.is_some()
    }

    fn idle_due(&self) -> bool {
        lock(&self.timers)
            .idle_until
            .is_some_and(|d| d <= Instant::now())
    }

    /// Whether compaction is due now (and consumes it).
    fn take_due_compaction(&self) -> bool {
        let mut t = lock(&self.timers);
        if t.compact_at.is_some_and(|c| c <= Instant::now()) {
            t.compact_at = None;
            true
        } else {
            false
        }
    }

    /// Sheds hyper's buffers and channel of an idle connection: keeps only the socket
    /// (taken back with `Connection::into_parts`, which does no I/O), to be rebuilt at the
    /// next checkout. False when the connection must close instead (unread bytes arrived).
    fn compact(&self) -> bool {
        let mut parked = lock(&self.parked);
        let Some(Parked::Live(driver, _sender)) = parked.take() else {
            return true; // in use, or compacted already
        };
        let parts = Pin::into_inner(driver).into_parts();
        if parts.read_buf.is_empty() {
            *parked = Some(Parked::Bare(parts.io.into_inner()));
            drop(parked);
            crate::memory::note_compaction();
            true
        } else {
            false
        }
    }

    /// Records why the connection closes, unless a reason was given already.
    fn close_because(&self, why: CloseReason) {
        let _ = self.reason.compare_exchange(
            CloseReason::Unfinished as u8,
            why as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn reason(&self) -> CloseReason {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// One connection. A request that holds it polls its driver inline; while it is idle its
/// machinery is parked with the monitor task.
pub(crate) struct Conn {
    driver: Option<Driver>,
    /// `None` while parked (and after the connection ended).
    sender: Option<Sender>,
    probe: Arc<IoProbe>,
    ctl: Arc<Ctl>,
    created: Instant,
    /// Who polls this connection while a request holds it.
    mode: Mode,
    /// Set by [`Conn::attach`]: who hears of this connection's end.
    owner: Option<(Weak<dyn Owner>, Arc<Origin>)>,
    /// Whether a monitor task watches it (connections that can be pooled). Without one,
    /// dropping the connection reports its end to the owner directly.
    monitored: bool,
    /// The thread that parked it in direct mode ([`crate::direct::thread_token`]; 0:
    /// none): the pool prefers to give it back to that thread.
    affinity: u64,
}

impl Conn {
    /// Connects to `origin` within the connect timeout (DNS, TCP, proxy, TLS), before any
    /// HTTP: the caller chooses HTTP/1.1 ([`Conn::handshake`]) or HTTP/2 by what TLS chose.
    pub(crate) async fn connect(
        origin: &Origin,
        connector: &Connector,
        tls: Option<Arc<rustls::ClientConfig>>,
        mode: Mode,
        id: u64,
    ) -> Result<(Stream, ConnectTimings)> {
        let fut = connect(origin, connector, tls, mode, id);
        match connector.timeout {
            Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| {
                Error::new(
                    ErrorKind::ConnectTimeout,
                    format!("connect to {origin} timed out after {} ms", d.as_millis()),
                )
            })?,
            None => fut.await,
        }
    }

    /// hyper's HTTP/1 handshake over a connected stream. Not yet attached to an owner.
    pub(crate) async fn handshake(stream: Stream, mode: Mode, id: u64) -> hyper::Result<Conn> {
        let probe = stream.probe();
        let (sender, driver) = http1::Builder::new()
            .max_buf_size(READ_WINDOW)
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(Conn {
            driver: Some(Box::pin(driver)),
            sender: Some(sender),
            probe,
            ctl: Arc::new(Ctl {
                id,
                reason: AtomicU8::new(CloseReason::Unfinished as u8),
                timers: Mutex::new(Timers::default()),
                notify: Notify::new(),
                close: AtomicBool::new(false),
                parked: Mutex::new(None),
                monitor_waker: Mutex::new(None),
            }),
            created: Instant::now(),
            mode,
            owner: None,
            monitored: false,
            affinity: 0,
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.ctl.id
    }

    /// Why it will close (the first reason given wins; none: [`CloseReason::Unfinished`]).
    pub(crate) fn close_because(&self, why: CloseReason) {
        self.ctl.close_because(why);
    }

    /// See [`Conn::affinity`](Conn#structfield.affinity).
    pub(crate) fn affinity(&self) -> u64 {
        self.affinity
    }

    pub(crate) fn created(&self) -> Instant {
        self.created
    }

    /// Bytes read from the socket so far (see [`IoProbe`]).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.probe.bytes_read()
    }

    /// Who will poll this connection for the request that now holds it.
    pub(crate) fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// From now on the connection reports its end to `owner`. With `monitor`, a task
    /// watches it whenever it is idle (needs the runtime's context).
    pub(crate) fn attach(&mut self, owner: Weak<dyn Owner>, origin: Arc<Origin>, monitor: bool) {
        if monitor {
            tokio::spawn(run_monitor(self.ctl.clone(), owner.clone(), origin.clone()));
        }
        self.monitored = monitor;
        self.owner = Some((owner, origin));
    }

    /// Whether hyper can still send a request on it (its request channel is open).
    pub(crate) fn is_open(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Hands the connection's machinery to the monitor as it goes idle; the owner wants it
    /// closed at `idle_until`. In direct mode the socket stays as it is for the blocking
    /// caller's next request and the monitor adopts it after [`ADOPT_AFTER`]; otherwise
    /// the driver is polled once here with the monitor's waker, so that the socket's
    /// readiness (a server close) wakes the monitor — without waking the monitor now.
    pub(crate) fn park(&mut self, idle_until: Option<Instant>) {
        let (Some(mut d), Some(s)) = (self.driver.take(), self.sender.take()) else {
            self.ctl.close_because(CloseReason::ServerClosed);
            self.ctl.request_close(); // it has ended: the monitor reports it
            return;
        };
        match self.mode {
            Mode::Direct => {
                *lock(&self.ctl.parked) = Some(Parked::Live(d, s));
            }
            Mode::Reactor => {
                let waker = lock(&self.ctl.monitor_waker).clone();
                match waker {
                    None => {
                        *lock(&self.ctl.parked) = Some(Parked::Live(d, s));
                        self.ctl.notify.notify_one();
                    }
                    Some(w) => {
                        let mut parked = lock(&self.ctl.parked);
                        if d.as_mut().poll(&mut Context::from_waker(&w)).is_pending() {
                            *parked = Some(Parked::Live(d, s));
                        } else {
                            drop(parked);
                            drop((d, s)); // ended while being parked
                            self.ctl.close_because(CloseReason::ServerClosed);
                            self.ctl.request_close();
                        }
                    }
                }
            }
        }
        let direct = self.mode == Mode::Direct;
        self.affinity = if direct {
            crate::direct::thread_token()
        } else {
            0
        };
        self.ctl.update_timers(|t| {
            let now = Instant::now();
            t.idle_until = idle_until;
            t.compact_at = Some(now + COMPACT_AFTER);
            t.last_park = Some(now);
            if direct {
                t.adopt_at = Some(now + ADOPT_AFTER);
            }
        });
    }

    /// Takes the machinery back from the monitor for a request, rebuilding hyper's side of
    /// a compacted connection. False when the connection has ended or cannot take a
    /// request now.
    pub(crate) fn unpark(&mut self) -> bool {
        self.ctl.update_timers(|t| {
            t.idle_until = None;
            t.compact_at = None;
        });
        if self.driver.is_some() {
            return self.sender.as_ref().is_some_and(|s| s.is_ready());
        }
        let parked = lock(&self.ctl.parked).take();
        match parked {
            None => false,
            Some(Parked::Live(d, s)) => {
                let ready = !s.is_closed() && s.is_ready();
                self.driver = Some(d);
                self.sender = Some(s);
                ready
            }
            Some(Parked::Bare(stream)) => match handshake_now(stream) {
                // A rebuilt sender is not "ready" until its driver is first polled.
                Some((s, d)) => {
                    self.driver = Some(d);
                    self.sender = Some(s);
                    true
                }
                None => false,
            },
        }
    }

    /// Polls the driver once, so that an end it has not noticed yet (a server's FIN while
    /// the connection was parked in direct mode) shows before a request is sent on it.
    /// False: the connection has ended.
    ///
    /// The poll is made without a waker. The request that follows polls the driver again
    /// before it waits ([`Conn::send`]), with its task's waker; a waker registered here
    /// would only be woken by that request's own `send_request`, for one more poll of the
    /// whole request that finds nothing to do.
    pub(crate) fn adopt(&mut self) -> bool {
        if let Some(d) = self.driver.as_mut() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if d.as_mut().poll(&mut cx).is_ready() {
                self.driver = None;
            }
        }
        self.driver.is_some()
    }

    /// Hands `req` to hyper and polls the connection until the response head arrives.
    /// `None`: the connection was already closed, or ended before the head.
    pub(crate) async fn send(
        &mut self,
        req: http::Request<ReqBody>,
    ) -> Option<hyper::Result<http::Response<hyper::body::Incoming>>> {
        let sender = self.sender.as_mut().filter(|s| !s.is_closed())?;
        let fut = sender.send_request(req);
        self.drive(fut).await
    }

    /// Polls `fut` to completion while also polling the connection's driver on the same
    /// task, so the request's bytes are written and read without waking another thread.
    /// `None`: the connection ended and `fut` can no longer complete.
    pub(crate) async fn drive<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        let driver = &mut self.driver;
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
            // What the driver just read (the head, a piece of the body) completes `fut` now,
            // in this poll, rather than in the next one its wake-up would cost: a poll of
            // every layer of the request above this one.
            fut.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// After a complete response: waits (briefly) until hyper can take the next request
    /// on this connection. False: it cannot, and must not be pooled.
    pub(crate) async fn ready_for_next(&mut self) -> bool {
        let Some(sender) = self.sender.as_mut() else {
            return false;
        };
        if sender.is_ready() {
            return true;
        }
        let ready = sender.ready();
        let driver = &mut self.driver;
        let drive = async move {
            let mut ready = std::pin::pin!(ready);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = ready.as_mut().poll(cx) {
                    return Poll::Ready(r.is_ok());
                }
                match driver.as_mut().map(|d| d.as_mut().poll(cx)) {
                    Some(Poll::Pending) => ready.as_mut().poll(cx).map(|r| r.is_ok()),
                    _ => Poll::Ready(false),
                }
            })
            .await
        };
        matches!(tokio::time::timeout(READY_WAIT, drive).await, Ok(true))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The driver (and with it the socket) is dropped here if a request held it; a
        // parked one is dropped by the monitor, which then reports the end.
        self.driver = None;
        self.sender = None;
        if self.monitored {
            self.ctl.request_close();
        } else if let Some((owner, origin)) = self.owner.take() {
            if let Some(o) = owner.upgrade() {
                o.ended(&origin, self.ctl.id, self.ctl.reason());
            }
        }
    }
}

/// hyper's HTTP/1 handshake over an already connected stream. It does no I/O, so its
/// future completes on the first poll.
fn handshake_now(stream: Stream) -> Option<(Sender, Driver)> {
    let fut = http1::Builder::new()
        .max_buf_size(READ_WINDOW)
        .handshake(TokioIo::new(stream));
    let mut fut = std::pin::pin!(fut);
    match fut
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(Ok((sender, driver))) => Some((sender, Box::pin(driver))),
        _ => None,
    }
}

/// Watches one connection for its whole life: polls its parked driver while it is idle
/// (so a server's FIN or RST ends it at once), fires the idle and compaction timers, and
/// obeys close requests. A request that takes the connection polls the driver inline;
/// parking it again wakes this task only when it has to.
async fn run_monitor(ctl: Arc<Ctl>, owner: Weak<dyn Owner>, origin: Arc<Origin>) {
    loop {
        let armed = ctl.arm();
        if ctl.close.load(Ordering::Acquire) {
            break;
        }
        let sleep = async move {
            match armed {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let idle_end = std::future::poll_fn(|cx| {
            {
                let mut w = lock(&ctl.monitor_waker);
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            let mut parked = lock(&ctl.parked);
            match parked.as_mut() {
                // Left to its blocking caller until adoption is due.
                Some(Parked::Live(..)) if ctl.adoption_pending() => Poll::Pending,
                Some(Parked::Live(d, _)) => d.as_mut().poll(cx).map(|_| ()),
                // Anything readable on an idle bare socket (EOF, RST, stray bytes) ends it.
                Some(Parked::Bare(s)) => s.poll_read_ready(cx).map(|_| ()),
                None => Poll::Pending, // in use; parking it again notifies us
            }
        });
        tokio::select! {
            biased;
            _ = ctl.notify.notified() => {}
            _ = idle_end => {
                ctl.close_because(CloseReason::ServerClosed);
                break;
            }
            _ = sleep => {
                if ctl.idle_due() {
                    match owner.upgrade() {
                        Some(o) if !o.idle_timer(&origin, ctl.id) => {}
                        _ => {
                            ctl.close_because(CloseReason::IdleTimeout);
                            break;
                        }
                    }
                }
                if ctl.take_due_compaction() && !ctl.compact() {
                    ctl.close_because(CloseReason::ServerClosed);
                    break;
                }
            }
        }
    }
    // Closes the socket if the connection is parked here (a request holding it drops it).
    drop(lock(&ctl.parked).take());
    if let Some(o) = owner.upgrade() {
        o.ended(&origin, ctl.id, ctl.reason());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Scheme, parse_url};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// Answers `n` requests on one connection with a 2-byte body, then closes it (`close`)
    /// or waits for the client to close it.
    fn server(n: usize, close: bool) -> (u16, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for _ in 0..n {
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap() == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .unwrap();
            }
            if !close {
                let mut rest = Vec::new();
                let _ = std::io::Read::read_to_end(&mut r, &mut rest);
            }
        });
        (port, h)
    }

    #[derive(Default)]
    struct Recorder {
        ended: Mutex<Vec<u64>>,
        reasons: Mutex<Vec<CloseReason>>,
        timers: Mutex<Vec<u64>>,
        let_go: AtomicBool,
    }

    impl Owner for Recorder {
        fn idle_timer(&self, _: &Arc<Origin>, id: u64) -> bool {
            lock(&self.timers).push(id);
            self.let_go.load(Ordering::SeqCst)
        }
        fn ended(&self, _: &Arc<Origin>, id: u64, why: CloseReason) {
            lock(&self.reasons).push(why);
            lock(&self.ended).push(id);
        }
    }

    async fn open(port: u16) -> (Conn, Arc<Origin>) {
        let t = parse_url(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert_eq!(t.origin.scheme, Scheme::Http);
        let (stream, _) = connect(
            &t.origin,
            &crate::connect::test_connector(),
            None,
            Mode::Reactor,
            0,
        )
        .await
        .unwrap();
        (
            Conn::handshake(stream, Mode::Reactor, next_id())
                .await
                .unwrap(),
            t.origin,
        )
    }

    fn get() -> http::Request<ReqBody> {
        http::Request::builder()
            .uri("/")
            .header("host", "x")
            .body(ReqBody::Full(None))
            .unwrap()
    }

    async fn exchange_once(c: &mut Conn) {
        use http_body_util::BodyExt;
        assert!(c.adopt());
        let resp = c.send(get()).await.unwrap().unwrap();
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(f) = c.drive(body.frame()).await.unwrap() {
            got.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(got, b"ok");
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn parked_connection_is_compacted_then_rebuilt_for_the_next_request() {
        rt().block_on(async {
            let (port, srv) = server(2, false);
            let (mut c, origin) = open(port).await;
            let owner = Arc::new(Recorder::default());
            let weak: Weak<dyn Owner> = Arc::downgrade(&owner) as Weak<dyn Owner>;
            c.attach(weak, origin, true);
            exchange_once(&mut c).await;
            assert!(c.ready_for_next().await);
            c.park(None);
            tokio::time::sleep(COMPACT_AFTER * 2).await;
            assert!(matches!(*lock(&c.ctl.parked), Some(Parked::Bare(_))));
            assert!(c.unpark(), "a compacted connection is rebuilt");
            exchange_once(&mut c).await;
            drop(c);
            srv.join().unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                lock(&owner.ended).len(),
                1,
                "the monitor reports the end once"
            );
        });
    }

    #[test]
    fn a_server_close_while_idle_is_reported_by_the_monitor() {
        rt().block_on(async {
            let (port, srv) = server(1, true);
            let (mut c, origin) = open(port).await;
            let id = c.id();
            let owner = Arc::new(Recorder::default());
            c.attach(Arc::downgrade(&owner) as Weak<dyn Owner>, origin, true);
            exchange_once(&mut c).await;
            c.park(None);
            srv.join().unwrap(); // the server closes after one response
            for _ in 0..100 {
                if !lock(&owner.ended).is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(*lock(&owner.ended), vec![id]);
            assert_eq!(*lock(&owner.reasons), vec![CloseReason::ServerClosed]);
            assert!(!c.unpark(), "an ended connection cannot be taken back");
        });
    }

    #[test]
    fn the_idle_timer_asks_the_owner_and_closes_when_let_go() {
        rt().block_on(async {
            let (port, srv) = server(1, false);
            let (mut c, origin) = open(port).await;
            let owner = Arc::new(Recorder::default());
            owner.let_go.store(true, Ordering::SeqCst);
            c.attach(Arc::downgrade(&owner) as Weak<dyn Owner>, origin, true);
            exchange_once(&mut c).await;
            c.park(Some(Instant::now() + Duration::from_millis(20)));
            for _ in 0..100 {
                if !lock(&owner.ended).is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(lock(&owner.timers).len(), 1);
            assert_eq!(lock(&owner.ended).len(), 1);
            assert_eq!(*lock(&owner.reasons), vec![CloseReason::IdleTimeout]);
            srv.join().unwrap();
        });
    }

    #[test]
    fn an_unmonitored_connection_reports_its_end_when_dropped() {
        rt().block_on(async {
            let (port, srv) = server(1, false);
            let (mut c, origin) = open(port).await;
            let owner = Arc::new(Recorder::default());
            c.attach(Arc::downgrade(&owner) as Weak<dyn Owner>, origin, false);
            exchange_once(&mut c).await;
            let id = c.id();
            drop(c);
            assert_eq!(*lock(&owner.ended), vec![id]);
            srv.join().unwrap();
        });
    }
}
