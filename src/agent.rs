//! The agent: options, TLS, a pool, and the request path over hyper's HTTP/1.1 client
//! connection API. Blocking, async-with-callback, and Rust `async` entry points.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::oneshot;

use crate::connect::{self, TcpSettings};
use crate::error::{Error, ErrorKind, Result, chain_message, find_io_error};
use crate::http::{Origin, Request, Response, ReuseHint, Scheme, Timings, micros, reuse_hint};
use crate::options::{Config, Options};
use crate::pool::{Checkout, Conn, Discard, Driver, Pool, SlotGuard, Stats};
use crate::runtime::{self, ForkMutex};

/// How long `close` waits for connections to finish closing and callbacks to run.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a finished connection may take to become ready for its next request before
/// it is given up (it is normally a few microseconds).
const READY_WAIT: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Calls {
    next: u64,
    pending: HashMap<u64, oneshot::Sender<()>>,
    running: usize,
    closed: bool,
}

struct Inner {
    cfg: Arc<Config>,
    pool: Arc<Pool>,
    tcp: TcpSettings,
    extra_roots: Vec<CertificateDer<'static>>,
    tls: OnceLock<Arc<ClientConfig>>,
    user_agent: HeaderValue,
    calls: ForkMutex<Calls>,
    calls_done: Condvar,
    closed: std::sync::atomic::AtomicBool,
}

/// An HTTP/1.1 client with a keep-alive connection pool. Cheap to share: all methods take
/// `&self` and may be called from any number of threads.
pub struct Agent {
    inner: Arc<Inner>,
}

/// A failed exchange: `Stale` failures happened on a reused connection before any
/// response byte arrived, and may be retried.
enum Failure {
    Stale(Error),
    Other(Error),
    /// The connection ended before anything was sent: safe to retry for any method.
    NotSent,
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
        let user_agent = HeaderValue::from_str(&cfg.user_agent)
            .map_err(|_| Error::invalid_option("user_agent is not a valid header value"))?;
        let tcp = TcpSettings {
            keepalive_idle: cfg
                .keep_alive
                .then(|| Duration::from_secs(cfg.keep_alive_idle_secs())),
            keepalive_interval: cfg.keep_alive_interval,
            keepalive_probes: cfg.keep_alive_probes,
        };
        let cfg = Arc::new(cfg);
        Ok(Agent {
            inner: Arc::new(Inner {
                pool: Pool::new(cfg.clone()),
                cfg,
                tcp,
                extra_roots,
                tls: OnceLock::new(),
                user_agent,
                calls: ForkMutex::new(Calls::default()),
                calls_done: Condvar::new(),
                closed: std::sync::atomic::AtomicBool::new(false),
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
        run(self.inner.clone(), req).await
    }

    /// Sends a request and blocks the calling thread until the response is complete.
    /// Refused with [`ErrorKind::WouldBlock`] on the library's own threads.
    pub fn request_blocking(&self, req: Request) -> Result<Response> {
        if runtime::on_runtime_thread() {
            return Err(Error::new(
                ErrorKind::WouldBlock,
                "blocking request refused on a keepalive-agent thread (inside a completion callback); use the async API",
            ));
        }
        let handle = runtime::handle()?;
        let inner = self.inner.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            // Inside another tokio runtime, `block_on` is not allowed: run on ours and wait.
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            handle.spawn(async move {
                let _ = tx.send(run(inner, req).await);
            });
            return rx
                .recv()
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "request task vanished")));
        }
        runtime::block_on(&handle, run(inner, req))
    }

    /// Starts a request and returns its id at once. `done` runs exactly once, on a library
    /// thread: with the response, with an error, or with [`ErrorKind::Cancelled`] when the
    /// request is cancelled or the agent is closed first.
    pub fn request_async<F>(&self, req: Request, done: F) -> Result<u64>
    where
        F: FnOnce(Result<Response>) + Send + 'static,
    {
        let handle = runtime::handle()?;
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let id = {
            let mut calls = self.inner.calls.lock()?;
            if calls.closed {
                return Err(Error::new(ErrorKind::Cancelled, "the agent was closed"));
            }
            calls.next += 1;
            let id = calls.next;
            calls.pending.insert(id, cancel_tx);
            calls.running += 1;
            id
        };
        let completion = Completion {
            inner: self.inner.clone(),
            id,
            done: Some(done),
        };
        let inner = self.inner.clone();
        handle.spawn(async move {
            let mut completion = completion;
            let origin = req.target.origin.clone();
            let res = tokio::select! {
                r = run(inner.clone(), req) => r,
                _ = cancel_rx => {
                    inner.pool.record(&origin, |s| {
                        s.requests += 1;
                        s.errors += 1;
                    });
                    Err(Error::new(ErrorKind::Cancelled, "request cancelled"))
                }
            };
            completion.finish(res);
        });
        Ok(id)
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
        self.inner.pool.stats()
    }

    /// Counters and gauges of one origin, given as a URL (`http://host:port`).
    pub fn origin_stats(&self, url: &str) -> Result<Stats> {
        let target = crate::http::parse_url(url)?;
        Ok(self.inner.pool.origin_stats(&target.origin))
    }

    /// Cancels every async request (their callbacks run with `Cancelled`), closes every
    /// connection, and waits (bounded) until the callbacks have run and the sockets are
    /// closed — except on a library thread, where waiting could deadlock.
    pub fn close(&self) {
        if self
            .inner
            .closed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return; // closed already (explicitly, then again by Drop)
        }
        let wait = if runtime::on_runtime_thread() {
            Duration::ZERO
        } else {
            CLOSE_WAIT
        };
        let deadline = Instant::now() + wait;
        if let Ok(mut calls) = self.inner.calls.lock() {
            calls.closed = true;
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

/// Calls the completion callback exactly once: with the result, or — if the task is
/// dropped first (cancelled, runtime gone, panic) — with `Cancelled` / `Panic`.
struct Completion<F: FnOnce(Result<Response>)> {
    inner: Arc<Inner>,
    id: u64,
    done: Option<F>,
}

impl<F: FnOnce(Result<Response>)> Completion<F> {
    fn finish(&mut self, res: Result<Response>) {
        if let Some(done) = self.done.take() {
            // From here on the request cannot be cancelled: `cancel` reports it finished.
            if let Ok(mut calls) = self.inner.calls.lock() {
                calls.pending.remove(&self.id);
            }
            done(res);
        }
    }
}

impl<F: FnOnce(Result<Response>)> Drop for Completion<F> {
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
            calls.running -= 1;
            if calls.running == 0 {
                self.inner.calls_done.notify_all();
            }
        }
    }
}

async fn run(inner: Arc<Inner>, req: Request) -> Result<Response> {
    let start = Instant::now();
    let fut = inner.attempts(&req, start);
    let res = match req.timeout {
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("request timed out after {} ms", t.as_millis()),
            ))
        }),
        None => fut.await,
    };
    inner.pool.record(&req.target.origin, |s| {
        s.requests += 1;
        match &res {
            Ok(r) => s.reused_requests += u64::from(r.reused),
            Err(e) => {
                s.errors += 1;
                s.timeouts += u64::from(e.is_timeout());
            }
        }
    });
    res
}

impl Inner {
    fn tls_config(&self) -> Result<Arc<ClientConfig>> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let c = crate::tls::client_config(&self.cfg, &self.extra_roots)?;
        Ok(self.tls.get_or_init(|| c).clone())
    }

    async fn attempts(&self, req: &Request, start: Instant) -> Result<Response> {
        let origin = &req.target.origin;
        let mut fresh = false;
        loop {
            let queue_start = Instant::now();
            let checkout = self.pool.acquire(origin, fresh).await?;
            let mut t = Timings {
                queued_us: micros(queue_start.elapsed()),
                ..Timings::default()
            };
            let (conn, reused) = match checkout {
                Checkout::Reused(c) => (c, true),
                Checkout::Connect(slot) => (self.connect(slot, &mut t).await?, false),
            };
            match self.exchange(conn, req, reused, start, t).await {
                Ok(r) => return Ok(r),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::NotSent) => continue,
                Err(Failure::Stale(e)) => {
                    if !fresh && self.cfg.retry_stale && req.is_retryable() {
                        self.pool.record(origin, |s| s.retries += 1);
                        fresh = true;
                        continue;
                    }
                    let why = if req.is_retryable() {
                        "retrying is off"
                    } else {
                        "the method is not idempotent and there is no Idempotency-Key"
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

    async fn connect(&self, slot: SlotGuard, t: &mut Timings) -> Result<Conn> {
        let origin: Arc<Origin> = slot.origin().clone();
        let tls = match origin.scheme {
            Scheme::Https => Some(self.tls_config()?),
            Scheme::Http => None,
        };
        let fut = connect::connect(&origin, &self.tcp, tls);
        let (stream, ct) = match self.cfg.connect_timeout {
            Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| {
                Error::new(
                    ErrorKind::ConnectTimeout,
                    format!(
                        "connect to {} timed out after {} ms",
                        origin.authority(),
                        d.as_millis()
                    ),
                )
            })??,
            None => fut.await?,
        };
        t.dns_us = micros(ct.dns);
        t.connect_us = micros(ct.tcp);
        t.tls_us = micros(ct.tls);
        let probe = stream.probe();
        let (sender, driver) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, chain_message(&e)))?;
        self.pool.register(slot, sender, Box::pin(driver), probe)
    }

    fn discard(&self, conn: Conn, why: Discard) {
        self.pool.record(&conn.origin, |s| match why {
            Discard::Timeout => s.connections_timed_out += 1,
            Discard::Error => s.connections_errored += 1,
        });
        drop(conn);
    }

    /// Whether (and for how long) the connection may idle in the pool after this response.
    fn keep_for(&self, conn: &Conn, parts: &http::response::Parts) -> Option<Option<Duration>> {
        if !self.cfg.keep_alive || conn.expired(self.cfg.max_socket_lifetime, Instant::now()) {
            return None;
        }
        match reuse_hint(parts.version, &parts.headers) {
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

    async fn exchange(
        &self,
        mut conn: Conn,
        req: &Request,
        reused: bool,
        start: Instant,
        mut t: Timings,
    ) -> std::result::Result<Response, Failure> {
        let before = conn.probe.bytes_read();
        if !crate::pool::adopt_driver(&mut conn.driver).await {
            return Err(Failure::NotSent);
        }
        let sender = match conn.sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => return Err(Failure::NotSent),
        };
        let hreq = req.to_hyper(self.cfg.keep_alive, &self.user_agent);
        t.sent_us = micros(start.elapsed());
        let fut = sender.send_request(hreq);
        let fut = crate::pool::drive(&mut conn.driver, fut);
        let head = match self.cfg.headers_timeout {
            Some(d) => match tokio::time::timeout(d, fut).await {
                Ok(r) => r,
                Err(_) => {
                    self.discard(conn, Discard::Timeout);
                    return Err(Failure::Other(Error::new(
                        ErrorKind::HeadersTimeout,
                        format!("no complete response head within {} ms", d.as_millis()),
                    )));
                }
            },
            None => fut.await,
        };
        let head = match head {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(map_hyper_error(&e)),
            None => Err(Error::new(
                ErrorKind::ConnectionClosed,
                "connection closed before the response head",
            )),
        };
        let resp = match head {
            Ok(r) => r,
            Err(err) => {
                let nothing_received = conn.probe.bytes_read() == before;
                self.discard(conn, Discard::Error);
                let stale_kind = matches!(
                    err.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionClosed
                        | ErrorKind::BrokenPipe
                );
                return Err(if reused && nothing_received && stale_kind {
                    Failure::Stale(err)
                } else {
                    Failure::Other(err)
                });
            }
        };
        t.ttfb_us = micros(start.elapsed());
        let (parts, mut body) = resp.into_parts();
        let body = match read_body(&mut body, &mut conn.driver, &parts, &self.cfg).await {
            Ok(b) => b,
            Err(e) => {
                let why = if e.is_timeout() {
                    Discard::Timeout
                } else {
                    Discard::Error
                };
                self.discard(conn, why);
                return Err(Failure::Other(e));
            }
        };
        let keep = self.keep_for(&conn, &parts);
        let keep = match (keep, conn.sender.as_mut()) {
            (Some(k), Some(sender)) if !sender.is_ready() => {
                let ready = crate::pool::drive(&mut conn.driver, sender.ready());
                match tokio::time::timeout(READY_WAIT, ready).await {
                    Ok(Some(Ok(()))) => Some(k),
                    _ => None,
                }
            }
            (k, Some(_)) => k,
            (_, None) => None,
        };
        self.pool.release(conn, keep);
        t.total_us = micros(start.elapsed());
        Ok(Response {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
            reused,
            timings: t,
        })
    }
}

/// Reads a whole body, enforcing the gap timeout and the size cap.
async fn read_body(
    body: &mut Incoming,
    driver: &mut Option<Driver>,
    parts: &http::response::Parts,
    cfg: &Config,
) -> Result<Bytes> {
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |n: u64| {
        Error::new(
            ErrorKind::ResponseTooLarge,
            format!(
                "response body of {n}+ bytes exceeds max_response_bytes = {}",
                cfg.max_response_bytes.unwrap_or(0)
            ),
        )
    };
    if let (Some(n), Some(max)) = (declared, cfg.max_response_bytes) {
        if n > max {
            return Err(too_large(n));
        }
    }
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total: u64 = 0;
    loop {
        let next = crate::pool::drive(driver, body.frame());
        let frame = match cfg.body_timeout {
            Some(d) => tokio::time::timeout(d, next).await.map_err(|_| {
                Error::new(
                    ErrorKind::BodyTimeout,
                    format!("no body data for {} ms", d.as_millis()),
                )
            })?,
            None => next.await,
        };
        let Some(frame) = frame else {
            return Err(Error::new(
                ErrorKind::ConnectionClosed,
                "connection closed before the response body was complete",
            ));
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(map_hyper_error(&e)),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
        };
        total += data.len() as u64;
        if cfg.max_response_bytes.is_some_and(|m| total > m) {
            return Err(too_large(total));
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let cap = declared.map_or(f.len() + data.len(), |n| n as usize);
                let mut b = BytesMut::with_capacity(cap.min(64 << 20));
                b.extend_from_slice(f);
                b.extend_from_slice(&data);
                rest = Some(b);
            }
            (Some(_), Some(b)) => b.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// Maps a hyper error to our kinds by what happened on the wire.
fn map_hyper_error(e: &hyper::Error) -> Error {
    let msg = chain_message(e);
    if let Some(io) = find_io_error(e) {
        let kind = match io.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorKind::ConnectionReset
            }
            std::io::ErrorKind::BrokenPipe => ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof => ErrorKind::ConnectionClosed,
            _ if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => ErrorKind::Tls,
            _ => ErrorKind::ConnectionReset,
        };
        return Error::new(kind, msg);
    }
    let kind = if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        ErrorKind::ConnectionClosed
    } else if e.is_parse() || e.is_parse_status() {
        ErrorKind::Protocol
    } else if e.is_body_write_aborted() {
        ErrorKind::BrokenPipe
    } else {
        ErrorKind::Protocol
    };
    Error::new(kind, msg)
}
