//! The agent: its entry points (blocking, async with a callback, Rust `async`), the
//! completion guard that calls an async request's callback exactly once, and the retry
//! loop that takes a connection from the pool, runs one exchange on it, and gives it back.

use std::pin::Pin;
use std::sync::{Arc, Condvar, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::oneshot;

use crate::conn::Conn;
use crate::connect::{Connector, TcpSettings};
use crate::direct::{self, Mode};
use crate::dns::{Resolver, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::exchange::{self, BodyReader, Drive, Failure, Head};
use crate::h2::{Pick, Sessions, StreamLease};
use crate::http::{Origin, Request, Response, ReuseHint, Scheme, Timings, micros};
use crate::idmap::IdMap;
use crate::options::{Config, HttpVersion, Options};
use crate::pool::{Checkout, Discard, Pool, SlotGuard};
use crate::queue::Task;
use crate::runtime::{self, ForkMutex};
use crate::stats::Stats;
use crate::tls::ClientIdentity;
use crate::trace::{CloseReason, TraceEvent, TraceKind};

/// How long `close` waits for connections to finish closing and callbacks to run.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Calls {
    next: u64,
    pending: IdMap<u64, oneshot::Sender<()>>,
    running: usize,
    /// Calls run by event queues: only a drain of their queue can end them, so `close`
    /// does not wait for them (nor for the connections they hold).
    queued: usize,
    closed: bool,
}

struct Inner {
    cfg: Arc<Config>,
    pool: Arc<Pool<Conn>>,
    h2: Arc<Sessions>,
    connector: Connector,
    extra_roots: Vec<CertificateDer<'static>>,
    identity: Option<ClientIdentity>,
    tls: OnceLock<Arc<ClientConfig>>,
    calls: ForkMutex<Calls>,
    calls_done: Condvar,
}

/// An HTTP/1.1 client with a keep-alive connection pool. Cheap to share: all methods take
/// `&self` and may be called from any number of threads.
pub struct Agent {
    inner: Arc<Inner>,
}

impl Agent {
    /// Validates `opts` (applying the environment switch) and creates an agent. Nothing
    /// connects until the first request.
    pub fn new(opts: &Options) -> Result<Agent> {
        Self::with_config(opts.validate()?)
    }

    /// Creates an agent from an already validated configuration.
    pub fn with_config(cfg: Config) -> Result<Agent> {
        let extra_roots = crate::tls::extra_roots(&cfg)?;
        let identity = crate::tls::client_identity(&cfg)?;
        let tcp = TcpSettings {
            keepalive_idle: cfg
                .keep_alive
                .then(|| Duration::from_secs(cfg.keep_alive_idle_secs())),
            keepalive_interval: cfg.keep_alive_interval,
            keepalive_probes: cfg.keep_alive_probes,
        };
        let connector = Connector {
            tcp,
            resolver: Resolver::new(cfg.resolve.clone(), cfg.dns_cache),
            delay: cfg.happy_eyeballs_delay,
            timeout: cfg.connect_timeout,
            tracer: cfg.tracer.clone(),
        };
        let cfg = Arc::new(cfg);
        Ok(Agent {
            inner: Arc::new(Inner {
                pool: Pool::new(cfg.clone()),
                h2: Sessions::new(cfg.clone()),
                cfg,
                connector,
                extra_roots,
                identity,
                tls: OnceLock::new(),
                calls: ForkMutex::new(Calls::default()),
                calls_done: Condvar::new(),
            }),
        })
    }

    /// The effective configuration (after defaults and the environment switch).
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Sends a request and reads the whole response. Must be polled inside this library's
    /// runtime (see [`runtime::handle`]); the blocking and callback forms do that for you.
    pub async fn request(&self, req: Request) -> Result<Response> {
        run(self.inner.clone(), req, Mode::Reactor).await
    }

    /// Sends a request and blocks the calling thread until the response is complete.
    /// Refused with [`ErrorKind::WouldBlock`] on the library's own threads.
    pub fn request_blocking(&self, req: Request) -> Result<Response> {
        let inner = self.inner.clone();
        blocking(move |mode| run(inner, req, mode))
    }

    /// Sends a request and blocks until its response head has arrived; the body is then
    /// read from the returned stream. Refused on the library's own threads.
    pub fn request_stream_blocking(&self, req: Request) -> Result<ResponseStream> {
        let inner = self.inner.clone();
        blocking(move |mode| async move { ResponseStream::open(inner, &req, mode).await })
    }

    /// Starts a request and returns its id at once. `done` runs exactly once, on a library
    /// thread: with the response, with an error, or with [`ErrorKind::Cancelled`] when the
    /// request is cancelled or the agent is closed first.
    pub fn request_async<F>(&self, req: Request, done: F) -> Result<u64>
    where
        F: FnOnce(Result<Response>) + Send + 'static,
    {
        let inner = self.inner.clone();
        self.spawn_call(move || run(inner, req, Mode::Reactor), done)
    }

    /// As [`Agent::request_async`], but `done` gets the response as a stream as soon as
    /// its head has arrived.
    pub fn request_stream_async<F>(&self, req: Request, done: F) -> Result<u64>
    where
        F: FnOnce(Result<ResponseStream>) + Send + 'static,
    {
        let inner = self.inner.clone();
        self.spawn_call(
            move || async move { ResponseStream::open(inner, &req, Mode::Reactor).await },
            done,
        )
    }

    /// Starts a request to be run by an event queue (see [`crate::queue`]): returns its id
    /// and the task to submit, which runs in direct mode on the draining thread. `done`
    /// gets the result exactly once, as for [`Agent::request_async`]; closing the agent
    /// cancels the task but does not wait for it (its queue reports it at the next drain).
    pub(crate) fn request_task<F>(&self, req: Request, done: F) -> Result<(u64, Task)>
    where
        F: FnOnce(Result<Response>) + Send + 'static,
    {
        let inner = self.inner.clone();
        self.call(move || run(inner, req, Mode::Direct), done, false)
    }

    /// As [`Agent::request_task`], with the response as a stream once its head arrived.
    pub(crate) fn request_stream_task<F>(&self, req: Request, done: F) -> Result<(u64, Task)>
    where
        F: FnOnce(Result<ResponseStream>) + Send + 'static,
    {
        let inner = self.inner.clone();
        self.call(
            move || async move { ResponseStream::open(inner, &req, Mode::Direct).await },
            done,
            false,
        )
    }

    /// Runs `fut` as a cancellable call on the runtime; `done` gets its result exactly once.
    fn spawn_call<T, F, Fut>(
        &self,
        make: impl FnOnce() -> Fut + Send + 'static,
        done: F,
    ) -> Result<u64>
    where
        T: Send + 'static,
        F: FnOnce(Result<T>) + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let handle = runtime::handle()?;
        let (id, task) = self.call(make, done, true)?;
        handle.spawn(task);
        Ok(id)
    }

    /// Registers a cancellable call and returns the task that runs the future `make`
    /// builds, so that `done` gets its result exactly once. The future is built inside the
    /// task, already on the heap (request futures are a few KiB: moving them costs). With
    /// `waited`, [`Agent::close`] waits for the call to end.
    fn call<T, F, Fut>(
        &self,
        make: impl FnOnce() -> Fut + Send + 'static,
        done: F,
        waited: bool,
    ) -> Result<(u64, Task)>
    where
        T: Send + 'static,
        F: FnOnce(Result<T>) + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let id = {
            let mut calls = self.inner.calls.lock()?;
            if calls.closed {
                return Err(Error::new(ErrorKind::Cancelled, "the agent was closed"));
            }
            calls.next += 1;
            let id = calls.next;
            calls.pending.insert(id, cancel_tx);
            if waited {
                calls.running += 1;
            } else {
                calls.queued += 1;
            }
            id
        };
        let completion = Completion {
            inner: self.inner.clone(),
            id,
            done: Some(done),
            waited,
            _result: std::marker::PhantomData,
        };
        Ok((
            id,
            Box::pin(async move {
                let mut completion = completion;
                // A cancelled request is counted by its `Tally`, dropped with its future.
                let res = tokio::select! {
                    biased;
                    r = make() => r,
                    _ = cancel_rx => Err(Error::new(ErrorKind::Cancelled, "request cancelled")),
                };
                completion.finish(res);
            }),
        ))
    }

    /// Opens connections to the origin of `url` in the background and pools them, until it
    /// has `count` (idle, busy or opening), within `max_sockets`; for cold starts. Over
    /// TLS the handshakes are done too. When the origin speaks HTTP/2, one connection is
    /// opened (it carries every request). Nothing is opened with keep-alive off (a
    /// connection could serve one request only). Failures are not reported here (the
    /// requests that follow report theirs; events show them).
    pub fn preconnect(&self, url: &str, count: u32) -> Result<()> {
        let target = crate::http::parse_url(url)?;
        if !self.inner.cfg.keep_alive || count == 0 {
            return Ok(());
        }
        let handle = runtime::handle()?;
        let origin = self.inner.route(&target.origin);
        let inner = self.inner.clone();
        handle.spawn(async move { inner.preconnect(origin, count as usize).await });
        Ok(())
    }

    /// Cancels an async request. Returns false if it already completed (or never existed);
    /// a completed request's connection is never affected.
    pub fn cancel(&self, id: u64) -> bool {
        let Ok(mut calls) = self.inner.calls.lock() else {
            return false;
        };
        match calls.pending.remove(&id) {
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }

    /// Counters and gauges of the whole agent.
    pub fn stats(&self) -> Stats {
        self.inner.with_h2_idle(self.inner.pool.stats(), None)
    }

    /// Counters and gauges of one origin, given as a URL (`http://host:port`).
    pub fn origin_stats(&self, url: &str) -> Result<Stats> {
        let target = crate::http::parse_url(url)?;
        let origin = self.inner.route(&target.origin);
        let s = self.inner.pool.origin_stats(&origin);
        Ok(self.inner.with_h2_idle(s, Some(&origin)))
    }

    /// Cancels every async request (their callbacks run with `Cancelled`), closes every
    /// connection, and waits (bounded) until the callbacks have run and the sockets are
    /// closed — except on a library thread, where waiting could deadlock.
    pub fn close(&self) {
        let wait = if runtime::on_runtime_thread() {
            Duration::ZERO
        } else {
            CLOSE_WAIT
        };
        let mut deadline = Instant::now() + wait;
        if let Ok(mut calls) = self.inner.calls.lock() {
            if std::mem::replace(&mut calls.closed, true) {
                return; // closed already (explicitly, then again by Drop)
            }
            if calls.queued > 0 {
                // Their connections close when their queue next drains (or is freed).
                deadline = Instant::now();
            }
            for (_, tx) in calls.pending.drain() {
                let _ = tx.send(());
            }
            while calls.running > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                calls = match self.inner.calls_done.wait_timeout(calls, left) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        self.inner.h2.close();
        self.inner
            .pool
            .close(deadline.saturating_duration_since(Instant::now()));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.close();
    }
}

/// How many times an HTTP/2 request is sent again after the server refused its stream or
/// went away before processing it.
const MAX_REFUSED: u32 = 10;

/// What holds a response while its body is read: an HTTP/1.1 connection lent by the pool,
/// or a stream of an HTTP/2 session.
enum Lease {
    H1(Conn),
    H2(StreamLease),
}

impl Lease {
    fn bytes_read(&self) -> u64 {
        match self {
            Lease::H1(c) => c.bytes_read(),
            Lease::H2(_) => 0,
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        if let Lease::H1(c) = self {
            c.set_mode(mode);
        }
    }
}

impl Drive for Lease {
    async fn drive<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        match self {
            Lease::H1(c) => c.drive(fut).await,
            Lease::H2(_) => Some(fut.await),
        }
    }
}

/// A connection just opened: HTTP/1.1 for this request, or a new HTTP/2 session.
enum Opened {
    H1(Conn),
    H2,
}

/// Calls the completion callback exactly once: with the result, or — if the task is
/// dropped first (cancelled, runtime gone, panic) — with `Cancelled` / `Panic`.
struct Completion<T, F: FnOnce(Result<T>)> {
    inner: Arc<Inner>,
    id: u64,
    done: Option<F>,
    /// Counted in `Calls::running` (waited for by `close`).
    waited: bool,
    _result: std::marker::PhantomData<fn(T)>,
}

impl<T, F: FnOnce(Result<T>)> Completion<T, F> {
    fn finish(&mut self, res: Result<T>) {
        if let Some(done) = self.done.take() {
            // From here on the request cannot be cancelled: `cancel` reports it finished.
            if let Ok(mut calls) = self.inner.calls.lock() {
                calls.pending.remove(&self.id);
            }
            done(res);
        }
    }
}

impl<T, F: FnOnce(Result<T>)> Drop for Completion<T, F> {
    fn drop(&mut self) {
        if self.done.is_some() {
            let err = if std::thread::panicking() {
                Error::new(ErrorKind::Panic, "a panic ended the request task")
            } else {
                Error::new(ErrorKind::Cancelled, "request cancelled")
            };
            self.finish(Err(err));
        }
        if let Ok(mut calls) = self.inner.calls.lock() {
            if !self.waited {
                calls.queued -= 1;
                return;
            }
            calls.running -= 1;
            if calls.running == 0 {
                self.inner.calls_done.notify_all();
            }
        }
    }
}

/// Runs a request future on the calling thread: on its own sockets with `block_on`, or —
/// inside another tokio runtime, where `block_on` is not allowed — on ours, waiting for it.
/// Refused on the library's own threads.
fn blocking<T, Fut>(make: impl FnOnce(Mode) -> Fut + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    if runtime::on_runtime_thread() {
        return Err(would_block());
    }
    let handle = runtime::handle()?;
    if tokio::runtime::Handle::try_current().is_ok() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let _ = tx.send(make(Mode::Reactor).await);
        });
        return rx
            .recv()
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "request task vanished")));
    }
    direct::block_on(&handle, make)
}

fn would_block() -> Error {
    Error::new(
        ErrorKind::WouldBlock,
        "blocking call refused on a keepalive-agent thread (inside a completion callback); use the async API",
    )
}

/// Counts one request in the statistics exactly once: as a success, as a failure, or —
/// dropped before either (cancelled, aborted) — as a failure.
struct Tally {
    inner: Arc<Inner>,
    origin: Arc<Origin>,
    done: bool,
}

impl Tally {
    fn failed(&mut self, e: &Error) {
        self.done = true;
        self.inner.pool.record(&self.origin, |s| {
            s.requests += 1;
            s.errors += 1;
            s.timeouts += u64::from(e.is_timeout());
        });
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if !self.done {
            self.failed(&Error::new(ErrorKind::Cancelled, "request cancelled"));
        }
    }
}

/// A response whose head has arrived and whose body is read piece by piece. Reading it to
/// the end gives its connection back to the pool; dropping it before the end aborts it (the
/// connection is closed, never reused). The overall timeout of the request covers the
/// whole stream; `body_timeout` the gap between two pieces.
pub struct ResponseStream {
    inner: Arc<Inner>,
    origin: Arc<Origin>,
    head: Response,
    hint: ReuseHint,
    /// The connection and the body's reader, until the end or a failure.
    open: Option<(Lease, BodyReader)>,
    /// Socket bytes read before the request was sent (see [`ResponseStream::buffered`]).
    bytes_before: u64,
    start: Instant,
    timeout: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
    tally: Tally,
    /// The failure that ended the stream, returned again by later reads.
    failed: Option<Error>,
}

impl ResponseStream {
    /// Sends the request (retrying a stale connection when it may) and reads its head. The
    /// request's timeout covers the head and every later read.
    async fn open(inner: Arc<Inner>, req: &Request, mode: Mode) -> Result<ResponseStream> {
        Self::open_in(inner, req, mode, true).await
    }

    /// As [`ResponseStream::open`]; without `deadline`, the caller bounds the whole exchange.
    async fn open_in(
        inner: Arc<Inner>,
        req: &Request,
        mode: Mode,
        deadline: bool,
    ) -> Result<ResponseStream> {
        let start = Instant::now();
        let origin = inner.route(&req.target.origin);
        let mut tally = Tally {
            inner: inner.clone(),
            origin: origin.clone(),
            done: false,
        };
        let deadline = req
            .timeout
            .filter(|_| deadline)
            .map(|t| tokio::time::Instant::now() + t);
        // The attempts' future is made in each arm, not kept in a local moved into one of
        // them: a moved-from local keeps its storage in the state machine, which would then
        // hold the future twice (each request's task was 14 KiB, moved to the heap).
        let opened = match deadline {
            Some(d) => tokio::time::timeout_at(d, inner.attempts(req, &origin, start, mode))
                .await
                .unwrap_or_else(|_| Err(timed_out(req.timeout))),
            None => inner.attempts(req, &origin, start, mode).await,
        };
        let (conn, head, bytes_before) = match opened {
            Ok(o) => o,
            Err(e) => {
                tally.failed(&e);
                return Err(e);
            }
        };
        Ok(ResponseStream {
            origin,
            inner,
            head: head.response,
            hint: head.hint,
            open: Some((conn, head.body)),
            bytes_before,
            start,
            timeout: req.timeout,
            deadline,
            tally,
            failed: None,
        })
    }

    /// Status, version, headers, whether the connection was reused, and timings (the
    /// total is set when the body has been read); the body is empty.
    pub fn head(&self) -> &Response {
        &self.head
    }

    /// The trailer fields that followed the body (`None` until the body has been read to
    /// its end, and when there are none).
    pub fn trailers(&self) -> Option<&http::HeaderMap> {
        self.head.trailers.as_deref()
    }

    /// Whether the whole body has been read (or the stream failed).
    pub fn is_finished(&self) -> bool {
        self.open.is_none()
    }

    /// Bytes read from the socket for this response that the caller has not received yet
    /// (including the response head): what the engine holds for this stream.
    pub fn buffered(&self) -> u64 {
        self.open.as_ref().map_or(0, |(conn, reader)| {
            (conn.bytes_read() - self.bytes_before).saturating_sub(reader.total())
        })
    }

    /// The next piece of the body (`None` at the end). For use inside this library's
    /// runtime (see [`Agent::request`]).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        self.next_in(Mode::Reactor).await
    }

    /// The next piece of the body, for a task run by an event queue (direct mode).
    pub(crate) async fn next_chunk_queued(&mut self) -> Result<Option<Bytes>> {
        self.next_in(Mode::Direct).await
    }

    /// The next piece of the body, blocking the calling thread (`None` at the end).
    /// Refused on the library's own threads.
    pub fn next_chunk_blocking(&mut self) -> Result<Option<Bytes>> {
        if self.open.is_none() {
            return self.ended();
        }
        if runtime::on_runtime_thread() {
            return Err(would_block());
        }
        // Lend the stream to a future that owns it, and take it back.
        let mut me = std::mem::replace(self, self.placeholder());
        let (res, back) = blocking(move |mode| async move {
            let r = me.next_in(mode).await;
            Ok((r, me))
        })?;
        *self = back;
        res
    }

    /// An empty stream standing in while the real one is lent out.
    fn placeholder(&self) -> ResponseStream {
        ResponseStream {
            inner: self.inner.clone(),
            origin: self.origin.clone(),
            head: empty_response(),
            hint: self.hint,
            open: None,
            bytes_before: 0,
            start: self.start,
            timeout: None,
            deadline: None,
            tally: Tally {
                inner: self.inner.clone(),
                origin: self.origin.clone(),
                done: true,
            },
            failed: None,
        }
    }

    fn ended(&self) -> Result<Option<Bytes>> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    async fn next_in(&mut self, mode: Mode) -> Result<Option<Bytes>> {
        let Some((conn, reader)) = self.open.as_mut() else {
            return self.ended();
        };
        conn.set_mode(mode);
        let fut = reader.next(conn);
        let next = match self.deadline {
            Some(d) => tokio::time::timeout_at(d, fut)
                .await
                .unwrap_or_else(|_| Err(timed_out(self.timeout))),
            None => fut.await,
        };
        match next {
            Ok(Some(b)) => Ok(Some(b)),
            Ok(None) => {
                self.finish().await;
                Ok(None)
            }
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// Reads the rest of the body and returns the whole response: the body in one buffer,
    /// or with `pieces` in the pieces it arrived in ([`Request::pieces`]).
    async fn read_to_end(&mut self, mode: Mode, pieces: bool) -> Result<Response> {
        let Some((conn, reader)) = self.open.as_mut() else {
            return Err(self
                .ended()
                .err()
                .unwrap_or_else(|| Error::new(ErrorKind::Internal, "the body was already read")));
        };
        conn.set_mode(mode);
        let fut = reader.read_all_in(conn, pieces);
        let body = match self.deadline {
            Some(d) => tokio::time::timeout_at(d, fut)
                .await
                .unwrap_or_else(|_| Err(timed_out(self.timeout))),
            None => fut.await,
        };
        match body {
            Ok((body, rest)) => {
                self.finish().await;
                let mut response = std::mem::replace(&mut self.head, empty_response());
                response.body = body;
                response.rest = rest;
                Ok(response)
            }
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// The body is complete: the connection goes back to the pool if it may be reused.
    async fn finish(&mut self) {
        let Some((lease, mut reader)) = self.open.take() else {
            return;
        };
        if let Some(t) = reader.trailers.take() {
            self.head.trailers = Some(Box::new(t));
        }
        let pool = &self.inner.pool;
        let mut conn = match lease {
            Lease::H1(c) => c,
            Lease::H2(stream) => {
                drop(stream);
                let reused = self.head.reused;
                pool.record(&self.origin, |s| {
                    s.requests += 1;
                    s.reused_requests += u64::from(reused);
                });
                self.tally.done = true;
                self.head.timings.total_us = micros(self.start.elapsed());
                return;
            }
        };
        let mut keep = pool.idle_timeout(&conn, self.hint);
        if keep.is_some() && !conn.ready_for_next().await {
            keep = None;
        }
        let reused = self.head.reused;
        // Counted as a success under the pool lock that takes the connection back.
        pool.release(&self.origin, conn, keep, |s| {
            s.requests += 1;
            s.reused_requests += u64::from(reused);
        });
        self.tally.done = true;
        self.head.timings.total_us = micros(self.start.elapsed());
    }

    fn fail(&mut self, e: Error) {
        if let Some((lease, _)) = self.open.take() {
            let conn = match lease {
                Lease::H1(c) => c,
                Lease::H2(stream) => {
                    // Dropped before its end, the stream is reset (RST_STREAM CANCEL); the
                    // session and its other streams go on.
                    drop(stream);
                    self.tally.failed(&e);
                    self.failed = Some(e);
                    return;
                }
            };
            let why = match e.kind() {
                // The request's own deadline: the connection is closed, as when the deadline
                // passes before the head, but not counted against the connection.
                ErrorKind::Timeout => None,
                _ if e.is_timeout() => Some(Discard::Timeout),
                _ => Some(Discard::Error),
            };
            match why {
                Some(why) => self.inner.pool.discard(&self.origin, conn, why),
                None => drop(conn),
            }
        }
        self.tally.failed(&e);
        self.failed = Some(e);
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        // Before its end: the connection is closed (dropped), and the tally counts the
        // request as failed.
        self.open = None;
    }
}

fn empty_response() -> Response {
    Response {
        status: 0,
        version: http::Version::HTTP_11,
        headers: http::HeaderMap::new(),
        body: Bytes::new(),
        reused: false,
        timings: Timings::default(),
        trailers: None,
        rest: Vec::new(),
    }
}

fn timed_out(timeout: Option<Duration>) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "request timed out after {} ms",
            timeout.map_or(0, |t| t.as_millis())
        ),
    )
}

/// One whole-message request: a stream read to its end.
async fn run(inner: Arc<Inner>, req: Request, mode: Mode) -> Result<Response> {
    // One timer for the whole exchange. When it fires, the stream (or the attempt) is
    // dropped: its tally counts the request as failed, and the timeout is added here.
    // (Each arm makes its own future: see `ResponseStream::open_in`.)
    match req.timeout {
        Some(t) => match tokio::time::timeout(t, whole(&inner, &req, mode)).await {
            Ok(r) => r,
            Err(_) => {
                inner
                    .pool
                    .record(&inner.route(&req.target.origin), |s| s.timeouts += 1);
                Err(timed_out(req.timeout))
            }
        },
        None => whole(&inner, &req, mode).await,
    }
}

/// A whole request: its head, then its body read to the end.
async fn whole(inner: &Arc<Inner>, req: &Request, mode: Mode) -> Result<Response> {
    let mut stream = ResponseStream::open_in(inner.clone(), req, mode, false).await?;
    stream.read_to_end(mode, req.pieces).await
}

/// Runs `futs` to completion together (a small `join_all`).
async fn futures_join_all<F: Future<Output = bool>>(futs: Vec<F>) {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

impl Inner {
    /// The pool's statistics with its HTTP/2 connections counted right: a session holds its
    /// pool slot while it is open, and without a stream in flight it is idle, not active.
    fn with_h2_idle(&self, mut s: Stats, origin: Option<&Arc<Origin>>) -> Stats {
        let idle = self.h2.idle(origin) as u64;
        s.active = s.active.saturating_sub(idle);
        s.idle += idle;
        s
    }

    /// The pool key of `origin`: itself, or with the proxy its connections go through.
    fn route(&self, origin: &Arc<Origin>) -> Arc<Origin> {
        let proxies = &self.cfg.proxies;
        if !proxies.any() {
            return origin.clone();
        }
        match proxies.for_origin(origin) {
            Some(p) => Arc::new(origin.with_proxy(Some(p))),
            None => origin.clone(),
        }
    }

    fn tls_config(&self) -> Result<Arc<ClientConfig>> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let c = crate::tls::client_config(&self.cfg, &self.extra_roots, self.identity.as_ref())?;
        Ok(self.tls.get_or_init(|| c).clone())
    }

    /// Whether requests to `origin` may go as HTTP/2 streams: over TLS unless HTTP/1.1 is
    /// asked for, on plain http only with prior knowledge, never in the absolute form
    /// through a plain-http proxy.
    fn h2_possible(&self, origin: &Origin) -> bool {
        match (self.cfg.http_version, origin.scheme) {
            (HttpVersion::Http1, _) => false,
            (_, Scheme::Https) => true,
            (HttpVersion::H2cPriorKnowledge, Scheme::Http) => origin.proxy.is_none(),
            (_, Scheme::Http) => false,
        }
    }

    fn sent_event(&self, origin: &Origin, req: &Request, id: u64, reused: bool, h2: bool) {
        let t = &self.cfg.tracer;
        if t.wants(TraceKind::RequestSent) {
            let version = if h2 { "2" } else { "1.1" };
            let detail = format!("{} {} HTTP/{version}", req.method, req.target.path);
            let mut ev = TraceEvent::new(TraceKind::RequestSent, origin, id);
            ev.reused = reused;
            ev.version = if h2 { 20 } else { 11 };
            ev.detail = &detail;
            if t.headers() {
                ev.headers = Some(&req.headers);
            }
            t.emit(&ev);
        }
    }

    fn head_event(&self, origin: &Origin, id: u64, head: &Head) {
        let t = &self.cfg.tracer;
        if t.wants(TraceKind::ResponseHead) {
            let r = &head.response;
            let mut ev = TraceEvent::new(TraceKind::ResponseHead, origin, id);
            ev.status = r.status;
            ev.version = if r.version == http::Version::HTTP_2 {
                20
            } else {
                11
            };
            ev.reused = r.reused;
            if t.headers() {
                ev.headers = Some(&r.headers);
            }
            t.emit(&ev);
        }
    }

    /// A request goes again because of `e` (on connection `id`).
    fn retry_event(&self, origin: &Origin, id: u64, e: &Error) {
        let t = &self.cfg.tracer;
        if t.wants(TraceKind::Retry) {
            let detail = e.message().to_string();
            let mut ev = TraceEvent::new(TraceKind::Retry, origin, id);
            ev.detail = &detail;
            ev.error = Some(e);
            t.emit(&ev);
        }
    }

    /// Takes a connection (or an HTTP/2 stream), sends the request and reads the response
    /// head; once more on a new connection when a reused one turned out stale and the
    /// request may be repeated, and again (up to [`MAX_REFUSED`] times) when an HTTP/2
    /// server refused the stream or went away before processing it. Returns what holds
    /// the response, the head (with the body's reader), and the socket bytes read on that
    /// connection before this request.
    async fn attempts(
        &self,
        req: &Request,
        origin: &Arc<Origin>,
        start: Instant,
        mode: Mode,
    ) -> Result<(Lease, Head, u64)> {
        let mut fresh = false;
        let mut refused = 0;
        let mut refused_by = None;
        let affinity = match mode {
            Mode::Direct => direct::thread_token(),
            Mode::Reactor => 0,
        };
        let h2 = self.h2_possible(origin);
        // The connect phases of a connection this request opened, for its timings.
        let mut opened = Timings::default();
        // The first attempt starts with the request (`start` was read just before); a
        // retry reads the clock again.
        let mut first = true;
        loop {
            let queue_start = if std::mem::take(&mut first) {
                start
            } else {
                Instant::now()
            };
            let mut connecting = None;
            if h2 {
                let changed = self.h2.changed();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                match self.h2.pick(origin)? {
                    Pick::Stream(mut lease) => {
                        self.pool.record(origin, |s| s.h2_streams += 1);
                        let id = lease.connection_id();
                        self.sent_event(origin, req, id, lease.reused, true);
                        let t = Timings {
                            queued_us: micros(queue_start.elapsed()),
                            ..opened
                        };
                        match exchange::start_h2(&mut lease, origin, req, &self.cfg, start, t).await
                        {
                            Ok(head) => {
                                self.head_event(origin, id, &head);
                                return Ok((Lease::H2(lease), head, 0));
                            }
                            Err(Failure::Refused(e, gone)) => {
                                // A session that refuses this request twice is done taking
                                // streams (a GOAWAY is on its way), not just full.
                                let key = lease.session_key();
                                if gone.0 || refused_by == Some(key) {
                                    lease.retire();
                                }
                                refused_by = Some(key);
                                drop(lease);
                                if refused < MAX_REFUSED && req.body.rewind() {
                                    refused += 1;
                                    self.pool.record(origin, |s| s.retries += 1);
                                    self.retry_event(origin, id, &e);
                                    continue;
                                }
                                return Err(e);
                            }
                            Err(Failure::NotSent) => continue,
                            Err(Failure::Failed(e) | Failure::Stale(e)) => return Err(e),
                        }
                    }
                    Pick::Wait => {
                        changed.await;
                        continue;
                    }
                    Pick::Open(c) => connecting = c,
                }
            }
            let checkout = self.pool.acquire(origin, fresh, affinity).await?;
            let mut t = Timings {
                queued_us: micros(queue_start.elapsed()),
                ..Timings::default()
            };
            let (mut conn, reused) = match checkout {
                Checkout::Reused(c) => (c, true),
                Checkout::Connect(slot) => {
                    // Boxed: connecting (resolving, racing addresses, TLS) is the largest
                    // state of a request by far, and needed only for a new connection;
                    // inline, it made every request's future (moved a few times on its
                    // way to the heap) several KiB larger.
                    match Box::pin(self.open(slot, &mut t, mode, connecting.is_some())).await? {
                        Opened::H1(c) => {
                            if connecting.is_some() {
                                self.h2.http1_only(origin);
                            }
                            (c, false)
                        }
                        Opened::H2 => {
                            opened = t;
                            continue;
                        }
                    }
                }
            };
            drop(connecting);
            conn.set_mode(mode);
            let before = conn.bytes_read();
            let id = conn.id();
            self.sent_event(origin, req, id, reused, false);
            let failure =
                match exchange::start(&mut conn, origin, req, &self.cfg, reused, start, t).await {
                    Ok(head) => {
                        self.head_event(origin, id, &head);
                        return Ok((Lease::H1(conn), head, before));
                    }
                    Err(f) => f,
                };
            let discard = |e: &Error| {
                if e.is_timeout() {
                    Discard::Timeout
                } else {
                    Discard::Error
                }
            };
            match failure {
                Failure::NotSent => {
                    drop(conn);
                    continue;
                }
                Failure::Failed(e) | Failure::Refused(e, _) => {
                    self.pool.discard(origin, conn, discard(&e));
                    return Err(e);
                }
                Failure::Stale(e) => {
                    self.pool.discard(origin, conn, discard(&e));
                    let replayable = req.is_retryable() && req.body.rewind();
                    if !fresh && self.cfg.retry_stale && replayable {
                        self.pool.record(origin, |s| s.retries += 1);
                        self.retry_event(origin, id, &e);
                        fresh = true;
                        continue;
                    }
                    let why = if !req.is_retryable() {
                        "the method is not idempotent and there is no Idempotency-Key"
                    } else if !replayable {
                        "the request body is a stream that cannot be rewound"
                    } else {
                        "retrying is off"
                    };
                    return Err(Error::new(
                        ErrorKind::StaleConnection,
                        format!(
                            "reused connection to {origin} failed before any response byte ({}); not retried: {why}",
                            e.message()
                        ),
                    ));
                }
            }
        }
    }

    /// See [`Agent::preconnect`]: the first connection alone (it may turn out HTTP/2),
    /// then the others at once.
    async fn preconnect(&self, origin: Arc<Origin>, count: usize) {
        let may_h2 = self.h2_possible(&origin);
        let Some(first) = self.pool.reserve_up_to(&origin, count) else {
            return;
        };
        if !self.warm(first, may_h2).await {
            return;
        }
        let mut rest = Vec::new();
        while let Some(slot) = self.pool.reserve_up_to(&origin, count) {
            rest.push(self.warm(slot, false));
        }
        futures_join_all(rest).await;
    }

    /// Opens one connection with `slot` and pools it idle. False when no more are wanted:
    /// it failed, or it is an HTTP/2 session.
    async fn warm(&self, slot: SlotGuard<Conn>, may_h2: bool) -> bool {
        let origin = slot.origin().clone();
        let mut t = Timings::default();
        // Bounded as any request's connect is (connect_timeout_msecs).
        match self.open(slot, &mut t, Mode::Reactor, may_h2).await {
            Ok(Opened::H1(conn)) => {
                let keep = Some(self.cfg.free_socket_timeout);
                self.pool.release(&origin, conn, keep, |_| {});
                true
            }
            _ => false,
        }
    }

    /// Opens a connection with a slot from the pool: an HTTP/2 session when `may_h2` and
    /// TLS chose `h2` (or with prior knowledge), which keeps the slot until it ends;
    /// otherwise an HTTP/1.1 connection registered in the pool.
    async fn open(
        &self,
        slot: SlotGuard<Conn>,
        t: &mut Timings,
        mode: Mode,
        may_h2: bool,
    ) -> Result<Opened> {
        let origin: Arc<Origin> = slot.origin().clone();
        let tls = match (origin.scheme, origin.proxy.as_ref().map(|p| p.scheme)) {
            (Scheme::Https, _) | (_, Some(Scheme::Https)) => Some(self.tls_config()?),
            _ => None,
        };
        let id = crate::conn::next_id();
        let (stream, ct) = Conn::connect(&origin, &self.connector, tls, mode, id).await?;
        match ct.dns_source {
            Some(Source::Lookup) => self.pool.record(&origin, |s| s.dns_lookups += 1),
            Some(Source::Cache) => self.pool.record(&origin, |s| s.dns_cache_hits += 1),
            _ => {}
        }
        t.dns_us = micros(ct.dns);
        t.connect_us = micros(ct.tcp);
        t.tls_us = micros(ct.tls);
        let prior_knowledge = self.cfg.http_version == HttpVersion::H2cPriorKnowledge
            && origin.scheme == Scheme::Http;
        if may_h2 && (stream.is_h2() || prior_knowledge) {
            let pool = self.pool.clone();
            let o = origin.clone();
            let tracer = self.cfg.tracer.clone();
            self.h2
                .add(&origin, id, stream, slot, move || {
                    pool.record(&o, |s| s.connections_closed += 1);
                    if tracer.wants(TraceKind::ConnectionClosed) {
                        let mut ev = TraceEvent::new(TraceKind::ConnectionClosed, &o, id);
                        ev.detail = CloseReason::Http2Ended.describe();
                        tracer.emit(&ev);
                    }
                })
                .await?;
            self.pool.record(&origin, |s| {
                s.connections_opened += 1;
                s.h2_connections += 1;
            });
            return Ok(Opened::H2);
        }
        if self.cfg.http_version == HttpVersion::Http2 && origin.scheme == Scheme::Https {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{origin} did not choose HTTP/2 by ALPN (http_version = http2)"),
            ));
        }
        let conn = Conn::handshake(stream, mode, id)
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, crate::error::chain_message(&e)))?;
        Ok(Opened::H1(self.pool.register(slot, conn)?))
    }
}
