//! Scriptable loopback HTTP/1.1 and HTTP/2 test server for keepalive-agent's tests.
//!
//! The HTTP/1.1 handling is written by hand on tokio TCP so that faults (resets, half
//! bodies, stalls, malformed heads, ...) can be produced exactly. Behaviour is
//! scripted with query parameters of the request target; see `conn.rs`.
//!
//! The HTTP/2 listeners (`h2c_port`: prior knowledge, `h2_port`: TLS with ALPN `h2`) are
//! built on the `h2` crate. Each stream is scripted by query parameters of its `:path`
//! (see `h2.rs`), each connection by the [`H2Script`] in force when it was accepted
//! ([`Server::set_h2_script`], or `POST /h2?...` on the admin listener).
//!
//! # Admin listener
//!
//! Plain HTTP/1.1, not counted in the stats:
//! - `GET /stats`: [`Stats::to_json`].
//! - `POST /reset` (or `GET`): [`Server::reset`] (zeroes the stats, clears the h2 script).
//! - `POST /h2?max_streams=1&goaway_after=3&refuse_every=2&stall_conn_after=5`: replaces
//!   the h2 script of the next HTTP/2 connections with exactly the given parameters
//!   (`POST /h2` alone clears it; a `GET` with a query sets it too). `GET /h2` reads it.
//!   Answers the script in force as JSON, e.g. `{"max_streams":1,"goaway_after":null,
//!   "refuse_every":null,"stall_conn_after":null}`; 400 for an unknown parameter or a bad
//!   number.

mod certs;
mod conn;
mod h2;

use std::fmt::Write as _;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Snapshot of the counters over all counted (non-admin) listeners.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections currently open (stays accurate across `reset`).
    pub open: u64,
    /// High-water mark of `open` since start/reset.
    pub max_open: u64,
    /// Complete request heads parsed (HTTP/1.1) plus streams accepted (HTTP/2, including
    /// streams then refused by the h2 script).
    pub requests: u64,
    /// Connections the client closed first (EOF or reset seen by the server).
    pub client_closed: u64,
    /// Connections the server closed (FIN or RST).
    pub server_closed: u64,
    /// HTTP/2 streams the client reset (RST_STREAM from the client, any reason, e.g.
    /// CANCEL) before the server had finished them.
    pub streams_reset_by_client: u64,
    /// HTTP/2 streams refused by the h2 script: reset with REFUSED_STREAM because of
    /// `refuse_every`, or because they came after `goaway_after`'s graceful shutdown began.
    pub streams_refused: u64,
    /// Remote port of each accepted connection, in accept order.
    pub remote_ports: Vec<u16>,
    /// Per accepted connection, in accept order.
    pub connections: Vec<ConnInfo>,
}

/// Per-connection information.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Global accept index (0-based, never reset); equals the `X-Conn-Id` response header.
    pub id: u64,
    pub remote_port: u16,
    /// Requests (heads) seen on this connection; for HTTP/2, streams accepted.
    pub requests: u64,
    pub open: bool,
    pub closed_by_client: bool,
    pub tls: bool,
}

impl Stats {
    /// The stats as a JSON object (the format served by the admin `GET /stats`).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(256 + self.connections.len() * 112);
        let _ = write!(
            s,
            "{{\"accepted\":{},\"open\":{},\"max_open\":{},\"requests\":{},\"client_closed\":{},\"server_closed\":{},\"streams_reset_by_client\":{},\"streams_refused\":{},\"remote_ports\":[",
            self.accepted,
            self.open,
            self.max_open,
            self.requests,
            self.client_closed,
            self.server_closed,
            self.streams_reset_by_client,
            self.streams_refused
        );
        for (i, p) in self.remote_ports.iter().enumerate() {
            let _ = write!(s, "{}{p}", if i == 0 { "" } else { "," });
        }
        s.push_str("],\"connections\":[");
        for (i, c) in self.connections.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"id\":{},\"remote_port\":{},\"requests\":{},\"open\":{},\"closed_by_client\":{},\"tls\":{}}}",
                if i == 0 { "" } else { "," },
                c.id,
                c.remote_port,
                c.requests,
                c.open,
                c.closed_by_client,
                c.tls
            );
        }
        s.push_str("]}");
        s
    }
}

/// Per-connection script of the HTTP/2 listeners, taken by each h2 connection when it is
/// accepted (so a change applies to the next connections, not to open ones). All fields
/// `None` (the default) is plain HTTP/2. Streams are numbered 1, 2, ... per connection in
/// the order the server accepts them (every stream counts, refused ones too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2Script {
    /// `max_streams=N`: the SETTINGS_MAX_CONCURRENT_STREAMS the server advertises (none by
    /// default, i.e. unlimited). Streams beyond it are refused by the `h2` crate itself
    /// (RST_STREAM REFUSED_STREAM, not counted in `streams_refused`).
    pub max_streams: Option<u32>,
    /// `goaway_after=N`: when the N-th stream is accepted, start a graceful shutdown:
    /// GOAWAY(2^31-1, NO_ERROR) and a PING at once, then, when the PING is answered, a second
    /// GOAWAY(NO_ERROR) whose last-stream-id is the highest stream the server has received
    /// (the N-th unless the client had already sent more). Streams 1..=N are answered as
    /// scripted (a delayed one still completes); any later stream that reaches the server is
    /// reset with REFUSED_STREAM unprocessed (counted in `streams_refused`). The server closes
    /// the connection once streams 1..=N are done. `goaway_after=0` starts the shutdown right
    /// after the handshake (every stream refused).
    pub goaway_after: Option<u64>,
    /// `refuse_every=K`: every K-th stream (K, 2K, ...) is reset with REFUSED_STREAM before
    /// any processing (counted in `streams_refused`). 0 is off.
    pub refuse_every: Option<u64>,
    /// `stall_conn_after=N`: once N streams are finished (their last frame, END_STREAM or
    /// RST_STREAM, written to the socket; refused streams and those stalled by
    /// `stall_after` do not count), the server stops serving the connection altogether: no
    /// reads, no PING or SETTINGS answers, no further frames on any stream. The socket stays
    /// open until the client closes it (counted as closed by the client) or the server stops.
    /// `stall_conn_after=0` stalls as soon as the handshake is done.
    pub stall_conn_after: Option<u64>,
}

impl H2Script {
    /// Parses the query of an admin `/h2?...` target: exactly the given parameters are set.
    pub fn from_query(target: &str) -> Result<H2Script, String> {
        let mut sc = H2Script::default();
        for (k, v) in conn::query_pairs(target) {
            let num = || {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("bad number for {k}: {v:?}"))
            };
            match k.as_str() {
                "max_streams" => {
                    let n = num()?;
                    sc.max_streams =
                        Some(u32::try_from(n).map_err(|_| format!("max_streams too large: {n}"))?);
                }
                "goaway_after" => sc.goaway_after = Some(num()?),
                "refuse_every" => sc.refuse_every = Some(num()?).filter(|&k| k > 0),
                "stall_conn_after" => sc.stall_conn_after = Some(num()?),
                _ => return Err(format!("unknown parameter {k:?}")),
            }
        }
        Ok(sc)
    }

    /// The script as a JSON object (`null` for unset fields).
    pub fn to_json(&self) -> String {
        fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
            v.as_ref()
                .map_or_else(|| "null".to_string(), |n| n.to_string())
        }
        format!(
            "{{\"max_streams\":{},\"goaway_after\":{},\"refuse_every\":{},\"stall_conn_after\":{}}}",
            opt(&self.max_streams),
            opt(&self.goaway_after),
            opt(&self.refuse_every),
            opt(&self.stall_conn_after)
        )
    }
}

/// Appends `v` to `out` as a JSON string literal.
pub(crate) fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for ch in v.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(Default)]
struct Inner {
    stats: Stats,
    /// Bumped by `reset`; connections of older generations no longer update `connections`.
    generation: u64,
    next_id: u64,
    h2_script: H2Script,
}

/// Counters shared by all counted listeners.
#[derive(Default)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn accept(self: &Arc<Self>, remote_port: u16, tls: bool) -> ConnTrack {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        let generation = g.generation;
        let st = &mut g.stats;
        st.accepted += 1;
        st.open += 1;
        st.max_open = st.max_open.max(st.open);
        st.remote_ports.push(remote_port);
        st.connections.push(ConnInfo {
            id,
            remote_port,
            requests: 0,
            open: true,
            closed_by_client: false,
            tls,
        });
        ConnTrack {
            shared: Arc::clone(self),
            generation,
            index: st.connections.len() - 1,
            id,
            remote_port,
            requests: 0,
            done: false,
        }
    }

    fn snapshot(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub(crate) fn h2_script(&self) -> H2Script {
        self.lock().h2_script.clone()
    }

    pub(crate) fn set_h2_script(&self, script: H2Script) {
        self.lock().h2_script = script;
    }

    pub(crate) fn count_stream_reset_by_client(&self) {
        self.lock().stats.streams_reset_by_client += 1;
    }

    pub(crate) fn count_stream_refused(&self) {
        self.lock().stats.streams_refused += 1;
    }

    fn reset(&self) {
        let mut g = self.lock();
        g.generation += 1;
        g.h2_script = H2Script::default();
        let open = g.stats.open;
        g.stats = Stats {
            open,
            max_open: open,
            ..Stats::default()
        };
    }
}

/// Tracks one counted connection; keeps `open` accurate even if the task is dropped.
pub(crate) struct ConnTrack {
    pub(crate) shared: Arc<Shared>,
    generation: u64,
    index: usize,
    pub(crate) id: u64,
    pub(crate) remote_port: u16,
    requests: u64,
    done: bool,
}

impl ConnTrack {
    /// Records a parsed request head; returns the 1-based request number on this connection.
    pub(crate) fn on_request(&mut self) -> u64 {
        self.requests += 1;
        let mut g = self.shared.lock();
        g.stats.requests += 1;
        if g.generation == self.generation {
            g.stats.connections[self.index].requests = self.requests;
        }
        self.requests
    }

    /// Records the end of the connection (after the socket was closed).
    pub(crate) fn finish(mut self, by_client: bool) {
        self.record(Some(by_client));
    }

    fn record(&mut self, by_client: Option<bool>) {
        if self.done {
            return;
        }
        self.done = true;
        let mut g = self.shared.lock();
        g.stats.open = g.stats.open.saturating_sub(1);
        match by_client {
            Some(true) => g.stats.client_closed += 1,
            Some(false) => g.stats.server_closed += 1,
            None => {}
        }
        if g.generation == self.generation {
            let c = &mut g.stats.connections[self.index];
            c.open = false;
            c.closed_by_client = by_client == Some(true);
        }
    }
}

impl Drop for ConnTrack {
    fn drop(&mut self) {
        self.record(None);
    }
}

/// The running test server. Dropping it shuts everything down.
pub struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    http_port: u16,
    https_port: u16,
    https_tls12_port: u16,
    https_wrong_host_port: u16,
    https_expired_port: u16,
    https_self_signed_port: u16,
    h2_port: u16,
    h2c_port: u16,
    admin_port: u16,
    ca_pem: String,
    tmp_dir: PathBuf,
    ca_pem_path: PathBuf,
}

fn bind_loopback() -> TcpListener {
    let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.set_nonblocking(true).expect("set_nonblocking");
    TcpListener::from_std(l).expect("register listener")
}

fn unique_tmp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "keepalive-testserver-{}-{n}-{nanos}",
        std::process::id()
    ))
}

/// What a counted listener serves.
#[derive(Clone)]
enum Listener {
    /// HTTP/1.1, in clear or over TLS.
    Http1(Option<TlsAcceptor>),
    /// HTTP/2 with prior knowledge, no TLS.
    H2c,
    /// TLS requiring ALPN `h2`, then HTTP/2.
    H2Tls(Arc<rustls::ServerConfig>),
}

async fn accept_loop(listener: TcpListener, kind: Listener, shared: Arc<Shared>) {
    match kind {
        Listener::Http1(tls) => accept_loop_http1(listener, tls, shared).await,
        h2 => accept_loop_h2(listener, h2, shared).await,
    }
}

async fn accept_loop_h2(listener: TcpListener, kind: Listener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = match &kind {
            Listener::H2Tls(config) => Some(Arc::clone(config)),
            _ => None,
        };
        let mut track = shared.accept(peer.port(), tls.is_some());
        let script = shared.h2_script();
        tokio::spawn(async move {
            let by_client = match tls {
                None => h2::serve(tcp, script, &mut track).await,
                Some(config) => h2::serve_tls(tcp, config, script, &mut track).await,
            };
            track.finish(by_client);
        });
    }
}

async fn accept_loop_http1(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut track = shared.accept(peer.port(), tls.is_some());
        let tls = tls.clone();
        tokio::spawn(async move {
            let by_client = match tls {
                None => conn::serve(tcp, &mut track).await,
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => conn::serve(stream, &mut track).await,
                    // Handshake failures are almost always the client rejecting us.
                    Err(_) => true,
                },
            };
            track.finish(by_client);
        });
    }
}

async fn admin_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(conn::serve_admin(tcp, Arc::clone(&shared)));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

impl Server {
    /// Generates the PKI, binds all listeners on 127.0.0.1:0 and starts serving on a
    /// private tokio runtime (2 worker threads). Panics on failure.
    pub fn start() -> Server {
        let pki = certs::generate().expect("generate test certificates");
        let tmp_dir = unique_tmp_dir();
        std::fs::create_dir_all(&tmp_dir).expect("create temp dir");
        let ca_pem_path = tmp_dir.join("ca.pem");
        std::fs::write(&ca_pem_path, &pki.ca_pem).expect("write ca.pem");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keepalive-testserver")
            .enable_all()
            .build()
            .expect("build tokio runtime");
        let shared = Arc::new(Shared::default());
        let ports = {
            let _guard = runtime.enter();
            let counted = |kind: Listener| {
                let l = bind_loopback();
                let port = l.local_addr().expect("local_addr").port();
                runtime.spawn(accept_loop(l, kind, Arc::clone(&shared)));
                port
            };
            let acceptor = |id: &certs::Identity, tls12_only| {
                Listener::Http1(Some(TlsAcceptor::from(certs::server_config(
                    id,
                    tls12_only,
                    b"http/1.1",
                ))))
            };
            let ports = [
                counted(Listener::Http1(None)),
                counted(acceptor(&pki.good, false)),
                counted(acceptor(&pki.good, true)),
                counted(acceptor(&pki.wrong_host, false)),
                counted(acceptor(&pki.expired, false)),
                counted(acceptor(&pki.self_signed, false)),
                counted(Listener::H2Tls(certs::server_config(
                    &pki.good, false, b"h2",
                ))),
                counted(Listener::H2c),
            ];
            let admin = bind_loopback();
            let admin_port = admin.local_addr().expect("local_addr").port();
            runtime.spawn(admin_loop(admin, Arc::clone(&shared)));
            (ports, admin_port)
        };
        let (
            [
                http,
                https,
                tls12,
                wrong_host,
                expired,
                self_signed,
                h2,
                h2c,
            ],
            admin_port,
        ) = ports;
        Server {
            runtime: Some(runtime),
            shared,
            http_port: http,
            https_port: https,
            https_tls12_port: tls12,
            https_wrong_host_port: wrong_host,
            https_expired_port: expired,
            https_self_signed_port: self_signed,
            h2_port: h2,
            h2c_port: h2c,
            admin_port,
            ca_pem: pki.ca_pem,
            tmp_dir,
            ca_pem_path,
        }
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }
    /// TLS 1.2 + 1.3, leaf signed by the CA, SANs 127.0.0.1, ::1, localhost.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }
    /// TLS 1.2 only, same certificate as `https_port`.
    pub fn https_tls12_port(&self) -> u16 {
        self.https_tls12_port
    }
    /// Leaf signed by the CA whose only SAN is `wrong.host.invalid`.
    pub fn https_wrong_host_port(&self) -> u16 {
        self.https_wrong_host_port
    }
    /// Leaf signed by the CA, right SANs, valid 2019-01-01 .. 2020-01-01.
    pub fn https_expired_port(&self) -> u16 {
        self.https_expired_port
    }
    /// Self-signed leaf (not issued by the CA), right SANs.
    pub fn https_self_signed_port(&self) -> u16 {
        self.https_self_signed_port
    }
    /// HTTP/2 over TLS: same certificate and TLS versions as `https_port`, ALPN offers `h2`
    /// only; a client whose ClientHello does not offer `h2` gets a fatal
    /// `no_application_protocol` alert. Counted (with `tls: true`).
    pub fn h2_port(&self) -> u16 {
        self.h2_port
    }
    /// HTTP/2 in clear with prior knowledge (the client starts with the connection preface;
    /// no HTTP/1.1 upgrade). Counted.
    pub fn h2c_port(&self) -> u16 {
        self.h2c_port
    }
    /// Plain-HTTP admin listener (`GET /stats`, `POST /reset`, `POST /h2?...`); not counted.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }
    /// PEM of the generated CA.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// The CA PEM written to a file in a temp dir (removed on drop).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.snapshot()
    }

    /// Zeroes the counters and lists; `open` stays accurate and `max_open` restarts from it.
    /// Also clears the h2 script (like the admin `POST /reset`).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Sets the per-connection script of the next HTTP/2 connections (those already open
    /// keep theirs). `H2Script::default()` clears it.
    pub fn set_h2_script(&self, script: H2Script) {
        self.shared.set_h2_script(script);
    }

    /// The h2 script in force for the next HTTP/2 connections.
    pub fn h2_script(&self) -> H2Script {
        self.shared.h2_script()
    }

    /// Polls `stats()` every 5 ms until `pred` holds (true) or `timeout` passes (false).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The one-line JSON description printed by the `keepalive-testserver` binary.
    pub fn info_json(&self) -> String {
        let mut s = format!(
            "{{\"http_port\":{},\"https_port\":{},\"https_tls12_port\":{},\"https_wrong_host_port\":{},\"https_expired_port\":{},\"https_self_signed_port\":{},\"h2_port\":{},\"h2c_port\":{},\"admin_port\":{},\"ca_pem_path\":",
            self.http_port,
            self.https_port,
            self.https_tls12_port,
            self.https_wrong_host_port,
            self.https_expired_port,
            self.https_self_signed_port,
            self.h2_port,
            self.h2c_port,
            self.admin_port
        );
        json_str(&mut s, &self.ca_pem_path.to_string_lossy());
        s.push('}');
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Blocking is not allowed inside an async context.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
        let _ = std::fs::remove_dir_all(&self.tmp_dir);
    }
}
