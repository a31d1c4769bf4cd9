//! Establishing connections: DNS (through the agent's resolver), TCP with keep-alive
//! options and happy eyeballs, proxies (TLS to the proxy, `CONNECT` tunnels), TLS.
//! Knows nothing of pooling or of HTTP; the socket itself (and its two modes) lives in [`crate::direct`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::direct::{Mode, Socket};
use crate::dns::{Resolver, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Origin, Scheme};
use crate::proxy::Proxy;
use crate::trace::{TraceEvent, TraceKind, Tracer};

/// TCP settings taken from the agent's configuration.
#[derive(Clone, Debug)]
pub(crate) struct TcpSettings {
    /// `Some(idle)` sets SO_KEEPALIVE with TCP_KEEPIDLE = idle; `None` leaves it off.
    pub(crate) keepalive_idle: Option<Duration>,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_probes: Option<u32>,
}

/// What one connect cost, phase by phase.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConnectTimings {
    /// Where the addresses came from (`None` until resolved).
    pub(crate) dns_source: Option<Source>,
    pub(crate) dns: Duration,
    pub(crate) tcp: Duration,
    pub(crate) tls: Duration,
}

/// Byte counters shared between a connection's I/O and the requests that use it.
/// `bytes_read` tells whether any response byte arrived since a request was sent, which
/// is what decides whether a failed request on a reused connection may be retried.
#[derive(Debug, Default)]
pub(crate) struct IoProbe {
    bytes_read: AtomicU64,
}

impl IoProbe {
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}

enum Transport {
    Tcp(Socket),
    Tls(Box<TlsStream<Socket>>),
    /// TLS to the origin inside a `CONNECT` tunnel through TLS to an `https://` proxy.
    Tunnel(Box<TlsStream<TlsStream<Socket>>>),
}

/// A connected byte stream (plain or TLS) that counts what it reads.
pub(crate) struct Stream {
    transport: Transport,
    probe: Arc<IoProbe>,
}

impl Stream {
    pub(crate) fn probe(&self) -> Arc<IoProbe> {
        self.probe.clone()
    }

    /// Whether the TLS handshake with the origin chose HTTP/2 (ALPN `h2`).
    pub(crate) fn is_h2(&self) -> bool {
        let alpn = match &self.transport {
            Transport::Tcp(_) => None,
            Transport::Tls(s) => s.get_ref().1.alpn_protocol(),
            Transport::Tunnel(s) => s.get_ref().1.alpn_protocol(),
        };
        alpn == Some(b"h2")
    }

    /// Ready when the socket underneath has something to read (data, EOF or an error):
    /// for an idle connection, that means it is over. Registers with the reactor.
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Tcp(t) => t.poll_read_ready(cx),
            Transport::Tls(s) => s.get_mut().0.poll_read_ready(cx),
            Transport::Tunnel(s) => s.get_mut().0.get_mut().0.poll_read_ready(cx),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = match &mut this.transport {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Tunnel(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            this.probe.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Tunnel(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::Tunnel(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Tunnel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Tunnel(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Tunnel(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn configure(sock: socket2::SockRef<'_>, tcp: &TcpSettings) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if let Some(idle) = tcp.keepalive_idle {
        let mut ka = socket2::TcpKeepalive::new().with_time(idle);
        if let Some(iv) = tcp.keepalive_interval {
            ka = ka.with_interval(iv);
        }
        if let Some(n) = tcp.keepalive_probes {
            ka = ka.with_retries(n);
        }
        sock.set_tcp_keepalive(&ka)?;
    }
    Ok(())
}

async fn connect_tcp(addr: SocketAddr, tcp: &TcpSettings, mode: Mode) -> io::Result<Socket> {
    match mode {
        Mode::Direct => {
            use socket2::{Domain, Protocol, Type};
            let sock =
                socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            configure(socket2::SockRef::from(&sock), tcp)?;
            Socket::connect_direct(sock, addr).await
        }
        Mode::Reactor => {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            configure(socket2::SockRef::from(&sock), tcp)?;
            Ok(Socket::reactor(sock.connect(addr).await?))
        }
    }
}

/// Everything an agent needs to open connections, fixed when it is created.
#[derive(Debug)]
pub(crate) struct Connector {
    pub(crate) tcp: TcpSettings,
    pub(crate) resolver: Resolver,
    /// RFC 8305's connection-attempt delay.
    pub(crate) delay: Duration,
    /// The overall connect timeout (the caller enforces it; attempts get a share).
    pub(crate) timeout: Option<Duration>,
    /// Where connect and TLS events go.
    pub(crate) tracer: Tracer,
}

/// What a connection's events name: the origin and the connection's id.
#[derive(Clone, Copy)]
pub(crate) struct Named<'a> {
    pub(crate) origin: &'a Origin,
    pub(crate) id: u64,
}

impl Connector {
    fn connect_event(&self, n: Named<'_>, kind: TraceKind, addr: SocketAddr, e: Option<&Error>) {
        if self.tracer.wants(kind) {
            let mut ev = TraceEvent::new(kind, n.origin, n.id);
            ev.address = Some(addr);
            ev.error = e;
            self.tracer.emit(&ev);
        }
    }

    /// A handshake with `peer` completed (or failed).
    fn tls_event(
        &self,
        n: Named<'_>,
        done: std::result::Result<&rustls::ClientConnection, &Error>,
        peer: &str,
    ) {
        if self.tracer.wants(TraceKind::TlsDone) {
            let detail = match done {
                Ok(conn) => format!("{} with {peer}", crate::trace::tls_detail(conn)),
                Err(_) => format!("failed with {peer}"),
            };
            let mut ev = TraceEvent::new(TraceKind::TlsDone, n.origin, n.id);
            ev.detail = &detail;
            ev.error = done.err();
            self.tracer.emit(&ev);
        }
    }
}

fn connect_error(what: &str, addr: SocketAddr, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
        io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
        _ => ErrorKind::Connect,
    };
    let shown = addr.to_string();
    if what == shown {
        Error::new(kind, format!("connect to {what} failed: {e}"))
    } else {
        Error::new(kind, format!("connect to {what} ({addr}) failed: {e}"))
    }
}

/// How long one attempt may take: with more addresses to try, half of the connect
/// timeout (curl's rule), so that one silent address cannot use all of it; the last
/// address gets whatever remains (the caller's overall timeout).
fn attempt_timeout(overall: Option<Duration>, left: usize) -> Option<Duration> {
    overall.filter(|_| left > 1).map(|d| d / 2)
}

async fn attempt(
    addr: SocketAddr,
    tcp: &TcpSettings,
    mode: Mode,
    limit: Option<Duration>,
) -> io::Result<Socket> {
    match limit {
        Some(d) => tokio::time::timeout(d, connect_tcp(addr, tcp, mode))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} ms", d.as_millis()),
                ))
            }),
        None => connect_tcp(addr, tcp, mode).await,
    }
}

type Attempt<'a> = Pin<Box<dyn Future<Output = (SocketAddr, io::Result<Socket>)> + Send + 'a>>;

/// Happy eyeballs (RFC 8305): the addresses interleaved by family, one attempt started
/// every `delay` (or as soon as the previous one fails), the first connected socket wins
/// and the others are dropped (closed). One address is simply connected, in `mode`;
/// several race in the reactor (a direct-mode caller waits on one socket at a time), and
/// the winner moves to direct I/O when the caller polls it.
async fn connect_any(
    addrs: &[SocketAddr],
    c: &Connector,
    mode: Mode,
    what: &str,
    n: Named<'_>,
) -> Result<Socket> {
    if let [addr] = addrs {
        c.connect_event(n, TraceKind::ConnectStart, *addr, None);
        let res = attempt(*addr, &c.tcp, mode, None)
            .await
            .map_err(|e| connect_error(what, *addr, e));
        c.connect_event(n, TraceKind::ConnectDone, *addr, res.as_ref().err());
        return res;
    }
    let order = crate::dns::interleave(addrs);
    let mut next = 0;
    let mut running: Vec<Attempt<'_>> = Vec::new();
    let mut last_err: Option<Error> = None;
    let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
    std::future::poll_fn(|cx| {
        loop {
            // Start the next attempt when none runs or the delay has passed.
            if next < order.len() && (running.is_empty() || timer.as_mut().poll(cx).is_ready()) {
                let addr = order[next];
                let limit = attempt_timeout(c.timeout, order.len() - next);
                next += 1;
                c.connect_event(n, TraceKind::ConnectStart, addr, None);
                running.push(Box::pin(async move {
                    (addr, attempt(addr, &c.tcp, Mode::Reactor, limit).await)
                }));
                timer.as_mut().reset(tokio::time::Instant::now() + c.delay);
                continue;
            }
            let mut failed = false;
            let mut i = 0;
            while i < running.len() {
                match running[i].as_mut().poll(cx) {
                    Poll::Ready((addr, Ok(sock))) => {
                        c.connect_event(n, TraceKind::ConnectDone, addr, None);
                        return Poll::Ready(Ok(sock));
                    }
                    Poll::Ready((addr, Err(e))) => {
                        drop(running.swap_remove(i));
                        let e = connect_error(what, addr, e);
                        c.connect_event(n, TraceKind::ConnectDone, addr, Some(&e));
                        last_err = Some(e);
                        failed = true;
                    }
                    Poll::Pending => i += 1,
                }
            }
            if running.is_empty() && next >= order.len() {
                return Poll::Ready(Err(last_err
                    .take()
                    .unwrap_or_else(|| Error::new(ErrorKind::Connect, "no address"))));
            }
            if failed && next < order.len() {
                // A failure starts the next attempt at once.
                timer.as_mut().reset(tokio::time::Instant::now());
                continue;
            }
            if next < order.len() {
                // Registers the timer's waker.
                if timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    })
    .await
}

/// The largest proxy answer to `CONNECT` that is read.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// Opens a `CONNECT` tunnel to `origin` through `proxy` over `s`: the request (with the
/// proxy's credentials), then the proxy's answer head. Only a 2xx opens the tunnel; any
/// other answer is [`ErrorKind::Proxy`] with the proxy's status line.
async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    origin: &Origin,
    proxy: &Proxy,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = origin.authority();
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(a) = &proxy.auth {
        req.push_str("Proxy-Authorization: ");
        req.push_str(a.to_str().unwrap_or_default());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let io_err = |e: io::Error| {
        Error::new(
            ErrorKind::Proxy,
            format!(
                "the proxy {} failed during CONNECT to {authority}: {e}",
                proxy.url()
            ),
        )
    };
    s.write_all(req.as_bytes()).await.map_err(io_err)?;
    s.flush().await.map_err(io_err)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut buf).await.map_err(io_err)?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Proxy,
                format!(
                    "the proxy {} closed the connection instead of answering CONNECT to {authority}",
                    proxy.url()
                ),
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_CONNECT_HEAD {
            return Err(Error::new(
                ErrorKind::Proxy,
                format!(
                    "the proxy {} answered CONNECT with a head over {MAX_CONNECT_HEAD} bytes",
                    proxy.url()
                ),
            ));
        }
    };
    let line = head
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."));
    match status {
        Some(200..=299) if end == head.len() => Ok(()),
        Some(200..=299) => Err(Error::new(
            ErrorKind::Proxy,
            format!(
                "the proxy {} sent data after its answer to CONNECT; the tunnel cannot be used",
                proxy.url()
            ),
        )),
        Some(code) => {
            let hint = match code {
                407 if proxy.has_credentials() => {
                    " (the proxy did not accept the credentials of the proxy URL)"
                }
                407 => {
                    " (the proxy wants credentials: put them in the proxy URL, http://user:password@host:port, percent-encoded)"
                }
                _ => "",
            };
            Err(Error::new(
                ErrorKind::Proxy,
                format!(
                    "the proxy {} refused the tunnel to {authority}: {line}{hint}",
                    proxy.url()
                ),
            ))
        }
        None => Err(Error::new(
            ErrorKind::Proxy,
            format!(
                "the proxy {} answered CONNECT with something that is not HTTP/1.x: {:?}",
                proxy.url(),
                line.chars().take(100).collect::<String>()
            ),
        )),
    }
}

/// The configuration for TLS to a proxy: the proxy speaks HTTP/1.1 (`CONNECT` or the
/// absolute form), whatever the agent offers origins.
fn http1_only(config: Arc<ClientConfig>) -> Arc<ClientConfig> {
    if config.alpn_protocols.len() == 1 && config.alpn_protocols[0] == b"http/1.1" {
        return config;
    }
    let mut c = (*config).clone();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidUrl,
            format!("{host} is not a valid TLS server name: {e}"),
        )
    })
}

fn tls_error(peer: &str, e: io::Error) -> Error {
    let why = match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
        Some(r) => crate::tls::describe(r),
        None => e.to_string(),
    };
    Error::new(
        ErrorKind::Tls,
        format!("TLS handshake with {peer} failed: {why}"),
    )
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    config: &Arc<ClientConfig>,
    host: &str,
    peer: &str,
    s: S,
    (c, n): (&Connector, Named<'_>),
) -> Result<TlsStream<S>> {
    let res = TlsConnector::from(config.clone())
        .connect(server_name(host)?, s)
        .await
        .map_err(|e| tls_error(peer, e));
    match &res {
        Ok(s) => c.tls_event(n, Ok(s.get_ref().1), peer),
        Err(e) => c.tls_event(n, Err(e), peer),
    }
    res
}

/// Opens a connection to `origin`: resolve (cached), TCP with happy eyeballs, and then,
/// by the route: TLS to an `https://` proxy, a `CONNECT` tunnel for an https origin
/// behind a proxy, TLS to the origin. `mode` says which kind of thread will do the
/// socket's I/O (see [`crate::direct`]). The caller bounds the whole thing with the
/// connect timeout.
pub(crate) async fn connect(
    origin: &Origin,
    c: &Connector,
    tls: Option<Arc<ClientConfig>>,
    mode: Mode,
    id: u64,
) -> Result<(Stream, ConnectTimings)> {
    let n = Named { origin, id };
    let ev = (c, n);
    let mut t = ConnectTimings::default();
    let start = Instant::now();
    let proxy = origin.proxy.as_deref();
    let (host, port, what) = match proxy {
        Some(p) => (
            p.host.as_str(),
            p.port,
            format!("the proxy {}", p.authority()),
        ),
        None => (origin.host.as_str(), origin.port, origin.authority()),
    };
    let (addrs, source) = c.resolver.resolve(host, port).await?;
    t.dns_source = Some(source);
    if source == Source::Lookup {
        t.dns = start.elapsed();
    }
    let tcp_start = Instant::now();
    let sock = connect_any(&addrs, c, mode, &what, n).await?;
    t.tcp = tcp_start.elapsed();
    let config = || {
        tls.clone()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "no TLS config"))
    };

    let transport = match (proxy, origin.scheme) {
        (None, Scheme::Http) => Transport::Tcp(sock),
        (None, Scheme::Https) => {
            let tls_start = Instant::now();
            let s = handshake(&config()?, &origin.host, &origin.authority(), sock, ev).await?;
            t.tls = tls_start.elapsed();
            Transport::Tls(Box::new(s))
        }
        (Some(p), Scheme::Http) => match p.scheme {
            Scheme::Http => Transport::Tcp(sock),
            Scheme::Https => {
                let tls_start = Instant::now();
                let s = handshake(&http1_only(config()?), &p.host, &what, sock, ev).await?;
                t.tls = tls_start.elapsed();
                Transport::Tls(Box::new(s))
            }
        },
        (Some(p), Scheme::Https) => {
            let tls_start = Instant::now();
            let peer = format!("{} (through the proxy {})", origin.authority(), p.url());
            let transport = match p.scheme {
                Scheme::Http => {
                    let mut sock = sock;
                    tunnel(&mut sock, origin, p).await?;
                    Transport::Tls(Box::new(
                        handshake(&config()?, &origin.host, &peer, sock, ev).await?,
                    ))
                }
                Scheme::Https => {
                    let mut outer =
                        handshake(&http1_only(config()?), &p.host, &what, sock, ev).await?;
                    tunnel(&mut outer, origin, p).await?;
                    Transport::Tunnel(Box::new(
                        handshake(&config()?, &origin.host, &peer, outer, ev).await?,
                    ))
                }
            };
            t.tls = tls_start.elapsed();
            transport
        }
    };
    Ok((
        Stream {
            transport,
            probe: Arc::new(IoProbe::default()),
        },
        t,
    ))
}

/// A connector with no keep-alive probes, no cache and the default delay, for tests.
#[cfg(test)]
pub(crate) fn test_connector() -> Connector {
    Connector {
        tcp: TcpSettings {
            keepalive_idle: None,
            keepalive_interval: None,
            keepalive_probes: None,
        },
        resolver: Resolver::new(Vec::new(), None),
        delay: Duration::from_millis(250),
        timeout: Some(Duration::from_secs(10)),
        tracer: Tracer::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_url;

    /// Events of test connections name this origin.
    fn unnamed() -> Named<'static> {
        static O: std::sync::OnceLock<Arc<Origin>> = std::sync::OnceLock::new();
        Named {
            origin: O.get_or_init(|| parse_url("http://127.0.0.1:1/").unwrap().origin),
            id: 0,
        }
    }

    fn tcp(idle: Option<u64>) -> TcpSettings {
        TcpSettings {
            keepalive_idle: idle.map(Duration::from_secs),
            keepalive_interval: None,
            keepalive_probes: None,
        }
    }

    fn connector(idle: Option<u64>) -> Connector {
        Connector {
            tcp: tcp(idle),
            resolver: Resolver::new(Vec::new(), None),
            delay: Duration::from_millis(250),
            timeout: Some(Duration::from_secs(10)),
            tracer: Tracer::default(),
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn keep_alive_probes_are_set_only_when_asked() {
        for idle in [None, Some(7)] {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            configure(socket2::SockRef::from(&s), &tcp(idle)).unwrap();
            assert!(s.tcp_nodelay().unwrap());
            assert_eq!(s.keepalive().unwrap(), idle.is_some());
            if let Some(secs) = idle {
                assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(secs));
            }
        }
    }

    #[test]
    fn a_refused_connect_names_the_origin_and_has_its_own_kind() {
        run(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            let o = parse_url(&format!("http://127.0.0.1:{port}/"))
                .unwrap()
                .origin;
            for mode in [Mode::Reactor, Mode::Direct] {
                let e = match connect(&o, &connector(None), None, mode, 0).await {
                    Err(e) => e,
                    Ok(_) => panic!("connected to a closed port"),
                };
                assert_eq!(e.kind(), ErrorKind::ConnectRefused, "{mode:?}");
                assert!(e.message().contains(&format!("127.0.0.1:{port}")), "{e}");
            }
        });
    }

    #[test]
    fn bytes_read_are_counted() {
        run(async {
            use tokio::io::AsyncReadExt;
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let t = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                std::io::Write::write_all(&mut s, b"12345").unwrap();
            });
            let o = parse_url(&format!("http://127.0.0.1:{port}/"))
                .unwrap()
                .origin;
            let (mut s, _) = connect(&o, &connector(Some(1)), None, Mode::Reactor, 0)
                .await
                .unwrap();
            let probe = s.probe();
            let mut b = Vec::new();
            s.read_to_end(&mut b).await.unwrap();
            assert_eq!(probe.bytes_read(), 5);
            t.join().unwrap();
        });
    }

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    /// to it hangs (a black hole, on loopback).
    fn black_hole(ip: &str) -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        let l = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        l.bind(&addr.into()).unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut fill = Vec::new();
        // The queue holds backlog + 1; a couple more for good measure (non-blocking).
        for _ in 0..3 {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            fill.push(std::net::TcpStream::from(s));
        }
        std::thread::sleep(Duration::from_millis(50));
        (l, fill, addr)
    }

    #[test]
    fn happy_eyeballs_moves_on_from_a_silent_address() {
        run(async {
            let (_hole, _fill, dead) = black_hole("127.0.0.1");
            let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let live_addr = live.local_addr().unwrap();
            for mode in [Mode::Reactor, Mode::Direct] {
                let c = connector(None);
                let t = Instant::now();
                let r = if mode == Mode::Direct {
                    // Direct mode is entered by block_on on a caller's thread.
                    let rt = crate::runtime::handle().unwrap();
                    let addrs = [dead, live_addr];
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            crate::direct::block_on(&rt, |m| async move {
                                connect_any(&addrs, &c, m, "test", unnamed()).await
                            })
                        })
                        .join()
                        .unwrap()
                    })
                } else {
                    connect_any(&[dead, live_addr], &c, mode, "test", unnamed()).await
                };
                let sock = r.unwrap();
                let elapsed = t.elapsed();
                assert!(
                    elapsed >= Duration::from_millis(200),
                    "{mode:?}: {elapsed:?}"
                );
                assert!(elapsed < Duration::from_secs(3), "{mode:?}: {elapsed:?}");
                drop(sock);
            }
        });
    }

    #[test]
    fn a_refused_address_starts_the_next_at_once() {
        run(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let closed = l.local_addr().unwrap();
            drop(l);
            let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut c = connector(None);
            c.delay = Duration::from_secs(30);
            let t = Instant::now();
            connect_any(
                &[closed, live.local_addr().unwrap()],
                &c,
                Mode::Reactor,
                "test",
                unnamed(),
            )
            .await
            .unwrap();
            assert!(t.elapsed() < Duration::from_secs(5));
            // All refused: the last error, with its own kind.
            let e = connect_any(&[closed, closed], &c, Mode::Reactor, "test", unnamed())
                .await
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::ConnectRefused);
        });
    }

    #[test]
    fn attempts_get_half_the_timeout_but_the_last_gets_the_rest() {
        let d = Some(Duration::from_secs(10));
        assert_eq!(attempt_timeout(d, 3), Some(Duration::from_secs(5)));
        assert_eq!(attempt_timeout(d, 1), None);
        assert_eq!(attempt_timeout(None, 3), None);
    }

    /// A one-shot scripted proxy: reads the request head, answers `reply`, returns the head.
    fn scripted_proxy(reply: &'static [u8]) -> (u16, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&b[..n]);
            }
            s.write_all(reply).unwrap();
            String::from_utf8(head).unwrap()
        });
        (port, t)
    }

    fn proxied(url: &str, proxy: &str) -> Origin {
        parse_url(url).unwrap().origin.with_proxy(Some(Arc::new(
            crate::proxy::parse_proxy_url(proxy, "proxy").unwrap(),
        )))
    }

    #[test]
    fn a_tunnel_sends_connect_with_credentials_and_reads_the_answer() {
        run(async {
            let (port, t) = scripted_proxy(b"HTTP/1.1 200 Connection established\r\n\r\n");
            let o = proxied(
                "https://origin.test:8443/",
                &format!("http://u%40x:p%3Aw@127.0.0.1:{port}"),
            );
            let c = connector(None);
            let mut sock = connect_any(
                &[format!("127.0.0.1:{port}").parse().unwrap()],
                &c,
                Mode::Reactor,
                "p",
                unnamed(),
            )
            .await
            .unwrap();
            tunnel(&mut sock, &o, o.proxy.as_ref().unwrap())
                .await
                .unwrap();
            let head = t.join().unwrap();
            assert!(
                head.starts_with("CONNECT origin.test:8443 HTTP/1.1\r\nHost: origin.test:8443\r\n"),
                "{head}"
            );
            let creds = crate::proxy::base64(b"u@x:p:w");
            assert!(
                head.contains(&format!("Proxy-Authorization: Basic {creds}\r\n")),
                "{head}"
            );
        });
    }

    #[test]
    fn a_refused_tunnel_has_its_own_kind_and_says_what_the_proxy_answered() {
        run(async {
            for (reply, want) in [
                (
                    &b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"[..],
                    "wants credentials",
                ),
                (&b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"[..], "403 Forbidden"),
                (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "not HTTP"),
                (&b"HTTP/1.1 200 OK\r\n\r\nsurprise"[..], "sent data after"),
            ] {
                let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
                let (port, t) = scripted_proxy(reply);
                let o = proxied("https://origin.test/", &format!("http://127.0.0.1:{port}"));
                let e = match connect(&o, &connector(None), None, Mode::Reactor, 0).await {
                    Err(e) => e,
                    Ok(_) => panic!("tunnel opened"),
                };
                t.join().unwrap();
                assert_eq!(e.kind(), ErrorKind::Proxy, "{e}");
                assert!(e.message().contains(want), "{e}");
                assert!(e.message().contains(&format!("127.0.0.1:{port}")), "{e}");
            }
        });
    }
}
