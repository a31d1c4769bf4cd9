//! Establishing connections: DNS, TCP with keep-alive options, TLS. Knows nothing of pooling.

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
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, ErrorKind, Result};
use crate::http::{Origin, Scheme};
use crate::runtime;

/// TCP settings taken from the agent's configuration.
#[derive(Clone, Debug)]
pub struct TcpSettings {
    /// `Some(idle)` sets SO_KEEPALIVE with TCP_KEEPIDLE = idle; `None` leaves it off.
    pub keepalive_idle: Option<Duration>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_probes: Option<u32>,
}

/// What one connect cost, phase by phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectTimings {
    pub dns: Duration,
    pub tcp: Duration,
    pub tls: Duration,
}

/// Byte counters shared between a connection's I/O and the requests that use it.
/// `bytes_read` tells whether any response byte arrived since a request was sent, which
/// is what decides whether a failed request on a reused connection may be retried.
#[derive(Debug, Default)]
pub struct IoProbe {
    bytes_read: AtomicU64,
}

impl IoProbe {
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}

/// A TCP stream that follows the thread polling it. Polled by a library thread, it is a
/// tokio stream driven by the reactor. Polled by a blocking caller inside
/// [`runtime::block_on`], it leaves the reactor and the caller does its own system calls
/// and waits on the socket itself, as libcurl does: the response wakes the caller
/// directly, with no other thread involved. The switch is an `epoll_ctl` each way and
/// happens only when the kind of poller changes.
pub struct Tcp(Sock, Blocked);

/// The wait epoch at which each direction last saw `EAGAIN` in direct mode.
#[derive(Default)]
struct Blocked {
    read: Option<u64>,
    write: Option<u64>,
}

const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// Where direct-mode reads land before being copied into hyper's buffer.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

enum Sock {
    Reactor(TcpStream),
    Direct(std::net::TcpStream),
    /// Only during a switch; a failed switch leaves it here and the connection errors.
    Moving,
}

impl Tcp {
    fn new(s: TcpStream) -> Tcp {
        Tcp(Sock::Reactor(s), Blocked::default())
    }

    /// Puts the socket in the mode the current thread needs.
    fn align(&mut self) -> io::Result<()> {
        let direct = runtime::direct_io_thread();
        match (&self.0, direct) {
            (Sock::Reactor(_), true) => {
                if let Sock::Reactor(s) = std::mem::replace(&mut self.0, Sock::Moving) {
                    self.0 = Sock::Direct(s.into_std()?);
                }
            }
            (Sock::Direct(_), false) => {
                if let Sock::Direct(s) = std::mem::replace(&mut self.0, Sock::Moving) {
                    self.0 = Sock::Reactor(TcpStream::from_std(s)?);
                }
            }
            (Sock::Moving, _) => return Err(io::Error::other("socket lost while switching modes")),
            _ => {}
        }
        Ok(())
    }

    /// A direct system call: `WouldBlock` becomes "wait for this socket" for the caller.
    /// After an `EAGAIN`, the call is not retried until a wait has happened.
    fn direct<T>(
        s: &std::net::TcpStream,
        interest: runtime::Wait,
        blocked: &mut Option<u64>,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(s);
        let epoch = runtime::wait_epoch();
        if *blocked == Some(epoch) {
            runtime::wait_for(fd, interest);
            return Poll::Pending;
        }
        loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *blocked = Some(epoch);
                    runtime::wait_for(fd, interest);
                    return Poll::Pending;
                }
                r => {
                    *blocked = None;
                    return Poll::Ready(r);
                }
            }
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.align()?;
        match &mut this.0 {
            Sock::Reactor(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Direct(s) => {
                // hyper hands us a fresh, uninitialised buffer each time; zeroing it (8 KiB or
                // more) per read would cost more than the read. Read into this thread's
                // scratch buffer instead and copy what arrived.
                let want = buf.remaining().min(SCRATCH_LEN);
                let n = SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let n = std::task::ready!(Tcp::direct(
                        s,
                        runtime::Wait::Read,
                        &mut this.1.read,
                        |mut s| io::Read::read(&mut s, &mut scratch[..want])
                    ))?;
                    buf.put_slice(&scratch[..n]);
                    Poll::Ready(Ok::<usize, io::Error>(n))
                });
                std::task::ready!(n)?;
                Poll::Ready(Ok(()))
            }
            Sock::Moving => Poll::Ready(Err(io::Error::other("socket lost"))),
        }
    }
}

impl Tcp {
    /// A write in the mode the current thread needs: `reactor` through tokio, `direct` as
    /// a system call.
    fn write_with<T>(
        &mut self,
        reactor: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
        direct: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        self.align()?;
        match &mut self.0 {
            Sock::Reactor(s) => reactor(Pin::new(s)),
            Sock::Direct(s) => Tcp::direct(s, runtime::Wait::Write, &mut self.1.write, direct),
            Sock::Moving => Poll::Ready(Err(io::Error::other("socket lost"))),
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(
            |s| s.poll_write(cx, buf),
            |mut s| io::Write::write(&mut s, buf),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(
            |s| s.poll_write_vectored(cx, bufs),
            |mut s| io::Write::write_vectored(&mut s, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Sock::Reactor(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Sock::Reactor(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Direct(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            Sock::Moving => Poll::Ready(Ok(())),
        }
    }
}

enum Transport {
    Tcp(Tcp),
    Tls(Box<TlsStream<Tcp>>),
}

/// A connected byte stream (plain or TLS) that counts what it reads.
pub struct Stream {
    transport: Transport,
    probe: Arc<IoProbe>,
}

impl Stream {
    pub fn probe(&self) -> Arc<IoProbe> {
        self.probe.clone()
    }

    /// Ready when the socket underneath has something to read (data, EOF or an error):
    /// for an idle connection, that means it is over. Registers with the reactor.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tcp = match &mut self.transport {
            Transport::Tcp(t) => t,
            Transport::Tls(s) => &mut s.get_mut().0,
        };
        tcp.align()?;
        match &tcp.0 {
            Sock::Reactor(s) => s.poll_read_ready(cx),
            // Only a blocking caller's thread sees direct mode, and it never waits here.
            _ => Poll::Ready(Ok(())),
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

async fn connect_tcp(addr: SocketAddr, tcp: &TcpSettings) -> io::Result<Tcp> {
    if runtime::direct_io_thread() {
        return connect_direct(addr, tcp).await;
    }
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    configure(socket2::SockRef::from(&sock), tcp)?;
    Ok(Tcp::new(sock.connect(addr).await?))
}

/// A blocking caller connects on its own, like the rest of its I/O: a non-blocking
/// `connect`, then its executor waits for the socket to become writable.
async fn connect_direct(addr: SocketAddr, tcp: &TcpSettings) -> io::Result<Tcp> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    configure(socket2::SockRef::from(&sock), tcp)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
            std::future::poll_fn(|_cx| {
                if let Some(e) = sock.take_error()? {
                    return Poll::Ready(Err(e));
                }
                match sock.peer_addr() {
                    Ok(_) => Poll::Ready(Ok(())),
                    Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                        runtime::wait_for(fd, runtime::Wait::Write);
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready(Err(e)),
                }
            })
            .await?;
        }
        Err(e) => return Err(e),
    }
    Ok(Tcp(Sock::Direct(sock.into()), Blocked::default()))
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
/// The caller bounds the whole thing with the connect timeout.
pub async fn connect(
    origin: &Origin,
    tcp: &TcpSettings,
    tls: Option<Arc<ClientConfig>>,
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
        match connect_tcp(addr, tcp).await {
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
