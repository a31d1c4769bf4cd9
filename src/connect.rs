//! Establishing connections: DNS, TCP with keep-alive options, TLS. Knows nothing of
//! pooling or of HTTP; the socket itself (and its two modes) lives in [`crate::direct`].

use std::io;
use std::net::{IpAddr, SocketAddr};
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
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Origin, Scheme};

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

    /// Ready when the socket underneath has something to read (data, EOF or an error):
    /// for an idle connection, that means it is over. Registers with the reactor.
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Tcp(t) => t.poll_read_ready(cx),
            Transport::Tls(s) => s.get_mut().0.poll_read_ready(cx),
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
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The addresses of `origin`, and whether a name lookup was needed (not for IP literals).
async fn resolve(origin: &Origin) -> Result<(Vec<SocketAddr>, bool)> {
    if let Ok(ip) = origin.host.parse::<IpAddr>() {
        return Ok((vec![SocketAddr::new(ip, origin.port)], false));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((origin.host.as_str(), origin.port))
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Dns,
                format!("cannot resolve {}: {e}", origin.host),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::new(
            ErrorKind::Dns,
            format!("{} resolved to no address", origin.host),
        ));
    }
    Ok((addrs, true))
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

fn connect_error(origin: &Origin, addr: SocketAddr, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
        _ => ErrorKind::Connect,
    };
    Error::new(
        kind,
        format!("connect to {} ({addr}) failed: {e}", origin.authority()),
    )
}

/// Opens a connection to `origin`: every resolved address in turn, then TLS for https.
/// `mode` says which kind of thread will do the socket's I/O (see [`crate::direct`]).
/// The caller bounds the whole thing with the connect timeout.
pub(crate) async fn connect(
    origin: &Origin,
    tcp: &TcpSettings,
    tls: Option<Arc<ClientConfig>>,
    mode: Mode,
) -> Result<(Stream, ConnectTimings)> {
    let mut t = ConnectTimings::default();
    let start = Instant::now();
    let (addrs, looked_up) = resolve(origin).await?;
    if looked_up {
        t.dns = start.elapsed();
    }

    let tcp_start = Instant::now();
    let mut last_err = None;
    let mut stream = None;
    for addr in addrs {
        match connect_tcp(addr, tcp, mode).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(connect_error(origin, addr, e)),
        }
    }
    let stream = match stream {
        Some(s) => s,
        None => {
            return Err(last_err.unwrap_or_else(|| Error::new(ErrorKind::Connect, "no address")));
        }
    };
    t.tcp = tcp_start.elapsed();

    let transport = match origin.scheme {
        Scheme::Http => Transport::Tcp(stream),
        Scheme::Https => {
            let config = tls.ok_or_else(|| Error::new(ErrorKind::Internal, "no TLS config"))?;
            let tls_start = Instant::now();
            let name = ServerName::try_from(origin.host.clone()).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidUrl,
                    format!("{} is not a valid TLS server name: {e}", origin.host),
                )
            })?;
            let s = TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Tls,
                        format!("TLS handshake with {} failed: {e}", origin.authority()),
                    )
                })?;
            t.tls = tls_start.elapsed();
            Transport::Tls(Box::new(s))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_url;

    fn tcp(idle: Option<u64>) -> TcpSettings {
        TcpSettings {
            keepalive_idle: idle.map(Duration::from_secs),
            keepalive_interval: None,
            keepalive_probes: None,
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
    fn ip_literals_need_no_lookup_and_names_do() {
        run(async {
            let o = parse_url("http://127.0.0.1:8/").unwrap().origin;
            let (addrs, looked_up) = resolve(&o).await.unwrap();
            assert_eq!(addrs, vec!["127.0.0.1:8".parse().unwrap()]);
            assert!(!looked_up);
            let o = parse_url("http://localhost:8/").unwrap().origin;
            let (addrs, looked_up) = resolve(&o).await.unwrap();
            assert!(looked_up);
            assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8));
        });
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
                let e = match connect(&o, &tcp(None), None, mode).await {
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
            let (mut s, _) = connect(&o, &tcp(Some(1)), None, Mode::Reactor)
                .await
                .unwrap();
            let probe = s.probe();
            let mut b = Vec::new();
            s.read_to_end(&mut b).await.unwrap();
            assert_eq!(probe.bytes_read(), 5);
            t.join().unwrap();
        });
    }
}
