//! Scriptable loopback HTTP/1.1 test server for keepalive-agent's tests.
//!
//! The HTTP handling is written by hand on tokio TCP so that faults (resets, half
//! bodies, stalls, malformed heads, ...) can be produced exactly. Behaviour is
//! scripted with query parameters of the request target; see `conn.rs`.

mod certs;
mod conn;

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
    /// Complete request heads parsed.
    pub requests: u64,
    /// Connections the client closed first (EOF or reset seen by the server).
    pub client_closed: u64,
    /// Connections the server closed (FIN or RST).
    pub server_closed: u64,
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
    /// Requests (heads) seen on this connection.
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
            "{{\"accepted\":{},\"open\":{},\"max_open\":{},\"requests\":{},\"client_closed\":{},\"server_closed\":{},\"remote_ports\":[",
            self.accepted,
            self.open,
            self.max_open,
            self.requests,
            self.client_closed,
            self.server_closed
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

    fn reset(&self) {
        let mut g = self.lock();
        g.generation += 1;
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
    shared: Arc<Shared>,
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

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
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
            let counted = |tls: Option<TlsAcceptor>| {
                let l = bind_loopback();
                let port = l.local_addr().expect("local_addr").port();
                runtime.spawn(accept_loop(l, tls, Arc::clone(&shared)));
                port
            };
            let acceptor = |id: &certs::Identity, tls12_only| {
                Some(TlsAcceptor::from(certs::server_config(id, tls12_only)))
            };
            let ports = [
                counted(None),
                counted(acceptor(&pki.good, false)),
                counted(acceptor(&pki.good, true)),
                counted(acceptor(&pki.wrong_host, false)),
                counted(acceptor(&pki.expired, false)),
                counted(acceptor(&pki.self_signed, false)),
            ];
            let admin = bind_loopback();
            let admin_port = admin.local_addr().expect("local_addr").port();
            runtime.spawn(admin_loop(admin, Arc::clone(&shared)));
            (ports, admin_port)
        };
        let ([http, https, tls12, wrong_host, expired, self_signed], admin_port) = ports;
        Server {
            runtime: Some(runtime),
            shared,
            http_port: http,
            https_port: https,
            https_tls12_port: tls12,
            https_wrong_host_port: wrong_host,
            https_expired_port: expired,
            https_self_signed_port: self_signed,
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
    /// Plain-HTTP admin listener (`GET /stats`, `POST /reset`); not counted.
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
    pub fn reset(&self) {
        self.shared.reset();
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
            "{{\"http_port\":{},\"https_port\":{},\"https_tls12_port\":{},\"https_wrong_host_port\":{},\"https_expired_port\":{},\"https_self_signed_port\":{},\"admin_port\":{},\"ca_pem_path\":",
            self.http_port,
            self.https_port,
            self.https_tls12_port,
            self.https_wrong_host_port,
            self.https_expired_port,
            self.https_self_signed_port,
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
