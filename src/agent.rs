//! The agent: its entry points (blocking, async with a callback, Rust `async`), the
//! completion guard that calls an async request's callback exactly once, and the retry
//! loop that takes a connection from the pool, runs one exchange on it, and gives it back.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::oneshot;

use crate::conn::Conn;
use crate::connect::TcpSettings;
use crate::direct::{self, Mode};
use crate::error::{Error, ErrorKind, Result};
use crate::exchange::{Failure, exchange};
use crate::http::{Origin, Request, Response, Scheme, Timings, micros};
use crate::options::{Config, Options};
use crate::pool::{Checkout, Discard, Pool, SlotGuard};
use crate::runtime::{self, ForkMutex};
use crate::stats::Stats;

/// How long `close` waits for connections to finish closing and callbacks to run.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Calls {
    next: u64,
    pending: HashMap<u64, oneshot::Sender<()>>,
    running: usize,
    closed: bool,
}

struct Inner {
    cfg: Arc<Config>,
    pool: Arc<Pool<Conn>>,
    tcp: TcpSettings,
    extra_roots: Vec<CertificateDer<'static>>,
    tls: OnceLock<Arc<ClientConfig>>,
    user_agent: HeaderValue,
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
                let _ = tx.send(run(inner, req, Mode::Reactor).await);
            });
            return rx
                .recv()
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "request task vanished")));
        }
        direct::block_on(&handle, |mode| run(inner, req, mode))
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
                r = run(inner.clone(), req, Mode::Reactor) => r,
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
        let wait = if runtime::on_runtime_thread() {
            Duration::ZERO
        } else {
            CLOSE_WAIT
        };
        let deadline = Instant::now() + wait;
        if let Ok(mut calls) = self.inner.calls.lock() {
            if std::mem::replace(&mut calls.closed, true) {
                return; // closed already (explicitly, then again by Drop)
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

/// One request, start to end: the retry loop within the overall deadline, then the
/// request's line in the statistics.
async fn run(inner: Arc<Inner>, req: Request, mode: Mode) -> Result<Response> {
    let start = Instant::now();
    let fut = inner.attempts(&req, start, mode);
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

    /// Takes a connection, runs the exchange, gives the connection back; once more on a
    /// new connection when a reused one turned out stale and the request may be repeated.
    async fn attempts(&self, req: &Request, start: Instant, mode: Mode) -> Result<Response> {
        let origin = &req.target.origin;
        let mut fresh = false;
        loop {
            let queue_start = Instant::now();
            let checkout = self.pool.acquire(origin, fresh).await?;
            let mut t = Timings {
                queued_us: micros(queue_start.elapsed()),
                ..Timings::default()
            };
            let (mut conn, reused) = match checkout {
                Checkout::Reused(c) => (c, true),
                Checkout::Connect(slot) => (self.open(slot, &mut t, mode).await?, false),
            };
            conn.set_mode(mode);
            let failure = match exchange(
                &mut conn,
                req,
                &self.cfg,
                &self.user_agent,
                reused,
                start,
                t,
            )
            .await
            {
                Ok(done) => {
                    let mut keep = self.pool.idle_timeout(&conn, done.hint);
                    if keep.is_some() && !conn.ready_for_next().await {
                        keep = None;
                    }
                    self.pool.release(origin, conn, keep);
                    let mut response = done.response;
                    response.timings.total_us = micros(start.elapsed());
                    return Ok(response);
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
                Failure::Failed(e) => {
                    self.pool.discard(origin, conn, discard(&e));
                    return Err(e);
                }
                Failure::Stale(e) => {
                    self.pool.discard(origin, conn, discard(&e));
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

    /// Opens a connection with a slot from the pool and registers it there.
    async fn open(&self, slot: SlotGuard<Conn>, t: &mut Timings, mode: Mode) -> Result<Conn> {
        let origin: Arc<Origin> = slot.origin().clone();
        let tls = match origin.scheme {
            Scheme::Https => Some(self.tls_config()?),
            Scheme::Http => None,
        };
        let (conn, ct) =
            Conn::open(&origin, &self.tcp, tls, self.cfg.connect_timeout, mode).await?;
        t.dns_us = micros(ct.dns);
        t.connect_us = micros(ct.tcp);
        t.tls_us = micros(ct.tls);
        self.pool.register(slot, conn)
    }
}
