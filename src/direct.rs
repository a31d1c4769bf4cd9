//! The blocking path in one room: [`block_on`], the per-thread epoll poller and its waker,
//! and [`Socket`], the TCP socket that follows the thread polling it.
//!
//! A blocking caller runs its request future on its own thread inside [`block_on`]. Sockets
//! it polls leave tokio's reactor and do their own system calls; when one would block, the
//! caller waits on it with its own epoll instance, like a libcurl easy handle: the response
//! wakes the caller directly, with no other thread involved. Timers and other wake-ups from
//! the runtime's threads reach it through an eventfd (or `unpark` when no socket is
//! involved).
//!
//! Which kind of thread is polling is known only here: [`block_on`] hands its future a
//! [`Mode`], and the other rooms carry that value as a parameter. A [`Socket`] switches
//! between the reactor and direct I/O when the kind of thread polling it changes (an
//! `epoll_ctl` each way): a connection parked by a blocking caller and later watched by its
//! idle monitor goes back to the reactor that way.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use crate::runtime::fork_generation;

/// Who drives a request's I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A library thread: sockets are registered with tokio's reactor.
    Reactor,
    /// A blocking caller inside [`block_on`]: sockets do their own system calls and the
    /// caller waits on them with its own epoll instance.
    Direct,
}

/// When [`block_on`] cannot wait on a socket (its epoll failed), it polls again after this
/// long instead of spinning.
const WAIT_FAILED_SLEEP: Duration = Duration::from_micros(100);

/// The most a direct-mode read asks of the kernel at once (the size of the scratch buffer).
const SCRATCH_LEN: usize = 64 * 1024;

/// What a direct-mode socket waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    Read,
    Write,
    /// Both: the same poll wanted to read and to write (a body still being sent while the
    /// response arrives).
    Both,
}

/// One socket's wait, as the executor sees it. `sock` identifies the socket itself (its
/// descriptor number may be reused after a close): an executor that registered this very
/// socket before need not register it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaitOn {
    pub(crate) fd: RawFd,
    pub(crate) wait: Wait,
    pub(crate) sock: u64,
}

/// Socket identities (see [`WaitOn`]).
static NEXT_SOCK: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Set while this thread runs [`block_on`]: sockets polled here do direct I/O.
    static DIRECT: Cell<bool> = const { Cell::new(false) };
    /// The socket the last poll of [`block_on`]'s future is waiting for.
    static WAIT_FD: Cell<Option<WaitOn>> = const { Cell::new(None) };
    /// This thread's epoll instance for direct waits, made on first use (and again in a
    /// forked child, whose copy would be shared with the parent).
    static POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
    /// Where direct-mode reads land before being copied into hyper's buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// True while this thread polls in direct mode (inside [`block_on`] or a queue's drain).
pub(crate) fn on_direct_thread() -> bool {
    DIRECT.with(Cell::get)
}

/// Called by a direct-mode socket that would block: the executor waits for it.
fn wait_for(on: WaitOn) {
    WAIT_FD.with(|w| {
        let merged = match w.get() {
            Some(prev) if prev.fd == on.fd && prev.sock == on.sock && prev.wait != on.wait => {
                WaitOn {
                    wait: Wait::Both,
                    ..on
                }
            }
            _ => on,
        };
        w.set(Some(merged));
    });
}

/// Numbers the waits of every direct executor, so that each wait has a value of its own.
/// A socket that saw `EAGAIN` at epoch `e` of the thread polling it skips further system
/// calls until that thread has waited again: nothing can have arrived that a wait would
/// not have reported. (Per thread: another thread's waits say nothing about this one's
/// sockets.)
static WAIT_EPOCH: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's last wait (0: none yet).
    static EPOCH: Cell<u64> = const { Cell::new(0) };
}

fn wait_epoch() -> u64 {
    EPOCH.with(Cell::get)
}

/// Records that this thread has just waited.
fn waited() {
    EPOCH.with(|e| e.set(WAIT_EPOCH.fetch_add(1, Ordering::Relaxed)));
}

/// Descriptors above this are not tracked in [`SEEN`]: their reads are retried after every
/// wait, as before the tracking.
const SEEN_MAX_FD: usize = 1 << 16;

thread_local! {
    /// Per descriptor, the epoch of this thread's last wait that reported an event for it
    /// (0: none). A socket whose read came back drained (`EAGAIN`, or fewer bytes than asked
    /// for) is not read again until a wait reports it: its registrations are
    /// edge-triggered, so anything arriving after that read raises a new event. Without
    /// this, a socket was read again after every wait of its thread, whichever sockets that
    /// wait reported: with 64 connections on one queue, two `recv`s per request found
    /// nothing.
    static SEEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// The epoch of this thread's last wait that could not say which sockets it reported
    /// (it failed): every tracked socket counts as reported then.
    static SEEN_ALL: Cell<u64> = const { Cell::new(0) };
}

/// For an executor, after [`note_waited`]: its wait reported `event` for `fd`. An end of
/// the stream (FIN, RST, an error) is reported once but stays: from then on that socket is
/// always read (a read returns the end), as tokio never clears a closed state either.
pub(crate) fn note_event(fd: RawFd, event: &mio::event::Event) {
    let ended = event.is_read_closed() || event.is_error();
    note_fd(fd, if ended { u64::MAX } else { wait_epoch() });
}

/// For a new socket on this thread: what an earlier socket with the same number saw does
/// not apply.
fn forget_fd(fd: RawFd) {
    if let Ok(i) = usize::try_from(fd) {
        SEEN.with(|s| {
            if let Some(e) = s.borrow_mut().get_mut(i) {
                *e = 0;
            }
        });
    }
}

fn note_fd(fd: RawFd, epoch: u64) {
    match usize::try_from(fd) {
        Ok(i) if i < SEEN_MAX_FD => SEEN.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() <= i {
                s.resize(i + 1, 0);
            }
            s[i] = epoch;
        }),
        _ => {}
    }
}

/// For an executor, after [`note_waited`]: its wait failed or could not tell which sockets
/// are ready, so every socket is read again.
pub(crate) fn note_all_events() {
    SEEN_ALL.with(|a| a.set(wait_epoch()));
}

/// For an executor whose sockets were last polled on another thread (a queue drained by
/// another thread than last time): that thread's waits saw their events, this one's
/// [`SEEN`] did not, so every socket is read again once.
pub(crate) fn forget_seen() {
    let epoch = WAIT_EPOCH.fetch_add(1, Ordering::Relaxed);
    SEEN_ALL.with(|a| a.set(epoch));
}

/// Whether a wait of this thread after epoch `since` reported `fd` (or could not tell).
fn seen_after(fd: RawFd, since: u64) -> bool {
    if SEEN_ALL.with(Cell::get) > since {
        return true;
    }
    match usize::try_from(fd) {
        Ok(i) if i < SEEN_MAX_FD => SEEN.with(|s| s.borrow().get(i).is_some_and(|&e| e > since)),
        _ => true,
    }
}

/// Registers `fd` with `registry` under `token` for `wait`, edge-triggered. `known` says
/// whether it was registered before (then `EPOLL_CTL_MOD` re-arms it and reports data
/// already there); either guess is corrected when wrong (the fd was closed and its number
/// reused, or it is new).
pub(crate) fn watch(
    registry: &mio::Registry,
    fd: RawFd,
    token: mio::Token,
    wait: Wait,
    known: bool,
) -> io::Result<()> {
    let interest = match wait {
        Wait::Read => mio::Interest::READABLE,
        Wait::Write => mio::Interest::WRITABLE,
        Wait::Both => mio::Interest::READABLE | mio::Interest::WRITABLE,
    };
    let mut source = mio::unix::SourceFd(&fd);
    let first = if known {
        registry.reregister(&mut source, token, interest)
    } else {
        registry.register(&mut source, token, interest)
    };
    if first.is_err() {
        let second = registry.register(&mut source, token, interest);
        if second.is_err() {
            registry.reregister(&mut source, token, interest)?;
        }
    }
    Ok(())
}

/// For another executor of direct-mode futures (the event queue): marks this thread as
/// polling direct sockets until the guard drops.
pub(crate) fn enter_direct() -> DirectGuard {
    DirectGuard(DIRECT.with(|d| d.replace(true)))
}

/// A token of the calling thread (never 0), so that a blocking caller can be given back
/// the connection it used last: that socket is still registered with its epoll instance.
pub(crate) fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: Cell<u64> = const { Cell::new(0) };
    }
    TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

/// For another executor: forgets what the last poll waited for, before polling.
pub(crate) fn clear_wait() {
    WAIT_FD.with(|w| w.set(None));
}

/// For another executor: the socket the future just polled is waiting for, if any.
pub(crate) fn take_wait() -> Option<WaitOn> {
    WAIT_FD.with(Cell::take)
}

/// For an executor inside a future (hyper's tasks run by an HTTP/2 session's monitor):
/// puts back what [`take_wait`] took, for the executor polling the whole future.
pub(crate) fn put_wait(on: Option<WaitOn>) {
    WAIT_FD.with(|w| w.set(on));
}

/// For another executor: to be called after each of its `epoll_wait`s, so that sockets
/// that saw `EAGAIN` try their system calls again.
pub(crate) fn note_waited() {
    waited();
}

const SOCKET: mio::Token = mio::Token(0);
const WAKE: mio::Token = mio::Token(1);

struct Poller {
    poll: mio::Poll,
    events: mio::Events,
    waker: Arc<mio::Waker>,
    generation: u64,
    /// The socket registered last, left registered (edge-triggered): the next wait on the
    /// same socket for the same thing needs no system call, since anything arriving after
    /// its `EAGAIN` raises a new edge; another wait on its descriptor is one
    /// `EPOLL_CTL_MOD`. A closed socket leaves the epoll set by itself.
    registered: Option<WaitOn>,
}

impl Poller {
    fn new() -> io::Result<Poller> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        Ok(Poller {
            poll,
            events: mio::Events::with_capacity(4),
            waker,
            generation: fork_generation(),
            registered: None,
        })
    }

    /// Blocks until `fd` is ready for `wait` or the waker fires.
    fn wait(&mut self, on: WaitOn) -> io::Result<()> {
        if self.registered != Some(on) {
            let known = self.registered.is_some_and(|r| r.fd == on.fd);
            self.registered = None;
            watch(self.poll.registry(), on.fd, SOCKET, on.wait, known)?;
            self.registered = Some(on);
        }
        let res = loop {
            match self.poll.poll(&mut self.events, None) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        waited();
        // (A failed wait is handled by `block_on`: every socket is read again.)
        // Only `on` is registered under SOCKET now; an event left from a socket registered
        // before it is counted for `on` (one read too many, never one too few: that other
        // socket is registered again, which reports what is there, when it next waits).
        for e in self.events.iter().filter(|e| e.token() == SOCKET) {
            note_event(on.fd, e);
        }
        res
    }
}

const RUNNING: u8 = 0;
const PARKED: u8 = 1;
const POLLING: u8 = 2;

struct ThreadWaker {
    thread: std::thread::Thread,
    woken: AtomicBool,
    state: AtomicU8,
    poll_waker: Option<Arc<mio::Waker>>,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        match self.state.load(Ordering::SeqCst) {
            PARKED => self.thread.unpark(),
            POLLING => {
                if let Some(w) = &self.poll_waker {
                    let _ = w.wake();
                }
            }
            _ => {} // running: it polls again before waiting
        }
    }
}

/// Restores the thread's mode when `block_on` returns or unwinds.
pub(crate) struct DirectGuard(bool);

impl Drop for DirectGuard {
    fn drop(&mut self) {
        DIRECT.with(|d| d.set(self.0));
        WAIT_FD.with(|w| w.set(None));
    }
}

/// Runs the future made by `make` to completion on the calling thread, inside the
/// runtime's context. `make` learns the [`Mode`] its sockets will run in: `Direct`, unless
/// this thread could not get an epoll instance (then `Reactor`, and this thread parks
/// until a runtime thread wakes it).
pub(crate) fn block_on<F: Future>(handle: &Handle, make: impl FnOnce(Mode) -> F) -> F::Output {
    let _ctx = handle.enter();
    let generation = fork_generation();
    let poll_waker = POLLER.with(|p| {
        let mut p = p.borrow_mut();
        if p.as_ref().is_some_and(|p| p.generation != generation) {
            // A forked child's copy of the parent's epoll: leave it alone.
            std::mem::forget(p.take());
        }
        if p.is_none() {
            *p = Poller::new().ok();
        }
        p.as_ref().map(|p| p.waker.clone())
    });
    let mode = if poll_waker.is_some() {
        Mode::Direct
    } else {
        Mode::Reactor
    };
    let _guard = DirectGuard(DIRECT.with(|d| d.replace(mode == Mode::Direct)));
    let me = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
        state: AtomicU8::new(RUNNING),
        poll_waker,
    });
    let waker = Waker::from(me.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(make(mode));
    loop {
        WAIT_FD.with(|w| w.set(None));
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        match WAIT_FD.with(Cell::take) {
            Some(on) => {
                me.state.store(POLLING, Ordering::SeqCst);
                if !me.woken.load(Ordering::SeqCst) {
                    let res = POLLER.with(|p| match p.borrow_mut().as_mut() {
                        Some(p) => p.wait(on),
                        None => Ok(()),
                    });
                    if res.is_err() {
                        waited();
                        note_all_events();
                        std::thread::sleep(WAIT_FAILED_SLEEP);
                    }
                }
            }
            None => {
                me.state.store(PARKED, Ordering::SeqCst);
                while !me.woken.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            }
        }
        me.state.store(RUNNING, Ordering::SeqCst);
        me.woken.store(false, Ordering::SeqCst);
    }
}

/// A TCP socket that follows the thread polling it: a tokio stream driven by the reactor
/// on a library thread, a plain non-blocking socket with its own system calls inside
/// [`block_on`].
pub(crate) struct Socket {
    sock: Sock,
    blocked: Blocked,
    /// This socket's identity (see [`WaitOn`]).
    id: u64,
}

/// The wait epoch at which each direction last saw `EAGAIN` in direct mode.
#[derive(Default)]
struct Blocked {
    read: Option<u64>,
    write: Option<u64>,
}

enum Sock {
    Reactor(TcpStream),
    Direct(std::net::TcpStream),
    /// Only during a switch; a failed switch leaves it here and the connection errors.
    Moving,
}

impl Socket {
    /// A socket connected through the reactor.
    pub(crate) fn reactor(s: TcpStream) -> Socket {
        forget_fd(s.as_raw_fd());
        Socket {
            sock: Sock::Reactor(s),
            blocked: Blocked::default(),
            id: NEXT_SOCK.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Connects a non-blocking socket on the calling thread: a blocking caller connects on
    /// its own, like the rest of its I/O, and its executor waits for the socket to become
    /// writable.
    pub(crate) async fn connect_direct(
        sock: socket2::Socket,
        addr: SocketAddr,
    ) -> io::Result<Socket> {
        sock.set_nonblocking(true)?;
        forget_fd(sock.as_raw_fd());
        let id = NEXT_SOCK.fetch_add(1, Ordering::Relaxed);
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                let fd = sock.as_raw_fd();
                std::future::poll_fn(|_cx| {
                    if let Some(e) = sock.take_error()? {
                        return Poll::Ready(Err(e));
                    }
                    match sock.peer_addr() {
                        Ok(_) => Poll::Ready(Ok(())),
                        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                            wait_for(WaitOn {
                                fd,
                                wait: Wait::Write,
                                sock: id,
                            });
                            Poll::Pending
                        }
                        Err(e) => Poll::Ready(Err(e)),
                    }
                })
                .await?;
            }
            Err(e) => return Err(e),
        }
        Ok(Socket {
            sock: Sock::Direct(sock.into()),
            blocked: Blocked::default(),
            id,
        })
    }

    /// Puts the socket in the mode of the thread polling it.
    fn align(&mut self) -> io::Result<()> {
        match (&self.sock, on_direct_thread()) {
            (Sock::Reactor(_), true) => {
                if let Sock::Reactor(s) = std::mem::replace(&mut self.sock, Sock::Moving) {
                    self.sock = Sock::Direct(s.into_std()?);
                    // What it saw before its time in the reactor says nothing now.
                    self.blocked = Blocked::default();
                }
            }
            (Sock::Direct(_), false) => {
                if let Sock::Direct(s) = std::mem::replace(&mut self.sock, Sock::Moving) {
                    self.sock = Sock::Reactor(TcpStream::from_std(s)?);
                }
            }
            (Sock::Moving, _) => return Err(io::Error::other("socket lost while switching modes")),
            _ => {}
        }
        Ok(())
    }

    /// A direct system call: `WouldBlock` becomes "wait for this socket" for the caller.
    /// After an `EAGAIN`, a write is not retried until a wait has happened, and a read
    /// until a wait has reported this socket (see [`SEEN`]).
    fn direct<T>(
        s: &std::net::TcpStream,
        id: u64,
        interest: Wait,
        blocked: &mut Option<u64>,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let on = WaitOn {
            fd: s.as_raw_fd(),
            wait: interest,
            sock: id,
        };
        let epoch = wait_epoch();
        if let Some(since) = *blocked {
            let wait = if interest == Wait::Read {
                !seen_after(on.fd, since)
            } else {
                since == epoch
            };
            if wait {
                wait_for(on);
                return Poll::Pending;
            }
        }
        loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *blocked = Some(epoch);
                    wait_for(on);
                    return Poll::Pending;
                }
                r => {
                    *blocked = None;
                    return Poll::Ready(r);
                }
            }
        }
    }

    /// A write in the mode the current thread needs: `reactor` through tokio, `direct` as
    /// a system call.
    fn write_with<T>(
        &mut self,
        reactor: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
        direct: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        self.align()?;
        match &mut self.sock {
            Sock::Reactor(s) => reactor(Pin::new(s)),
            Sock::Direct(s) => {
                Socket::direct(s, self.id, Wait::Write, &mut self.blocked.write, direct)
            }
            Sock::Moving => Poll::Ready(Err(io::Error::other("socket lost"))),
        }
    }

    /// Ready when the socket has something to read (data, EOF or an error): for an idle
    /// connection, that means it is over. Registers with the reactor; only library threads
    /// (the idle monitor) wait here.
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.align()?;
        match &self.sock {
            Sock::Reactor(s) => s.poll_read_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.align()?;
        match &mut this.sock {
            Sock::Reactor(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Direct(s) => {
                // hyper hands us a fresh, uninitialised buffer each time; zeroing it (8 KiB or
                // more) per read would cost more than the read. Read into this thread's
                // scratch buffer instead and copy what arrived.
                let want = buf.remaining().min(SCRATCH_LEN);
                let blocked = &mut this.blocked.read;
                let n = SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let n = std::task::ready!(Socket::direct(
                        s,
                        this.id,
                        Wait::Read,
                        blocked,
                        |mut s| io::Read::read(&mut s, &mut scratch[..want])
                    ))?;
                    buf.put_slice(&scratch[..n]);
                    Poll::Ready(Ok::<usize, io::Error>(n))
                });
                let n = std::task::ready!(n)?;
                if n > 0 && n < want {
                    // Fewer bytes than asked for: the socket is drained (an edge-triggered
                    // wait reports what comes next), as after an `EAGAIN`.
                    *blocked = Some(wait_epoch());
                }
                Poll::Ready(Ok(()))
            }
            Sock::Moving => Poll::Ready(Err(io::Error::other("socket lost"))),
        }
    }
}

impl AsyncWrite for Socket {
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
        match &mut self.get_mut().sock {
            Sock::Reactor(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().sock {
            Sock::Reactor(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Direct(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            Sock::Moving => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn listener() -> (std::net::TcpListener, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[test]
    fn block_on_runs_direct_and_restores_the_thread() {
        let rt = crate::runtime::handle().unwrap();
        assert!(!on_direct_thread());
        let (mode, inside) = block_on(&rt, |mode| async move { (mode, on_direct_thread()) });
        assert_eq!(mode, Mode::Direct);
        assert!(inside);
        assert!(!on_direct_thread());
    }

    #[test]
    fn a_direct_socket_talks_and_moves_to_the_reactor_and_back() {
        let rt = crate::runtime::handle().unwrap();
        let (l, addr) = listener();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 5];
            for _ in 0..2 {
                std::io::Read::read_exact(&mut s, &mut b).unwrap();
                std::io::Write::write_all(&mut s, &b).unwrap();
            }
        });
        // Connect and talk on this thread, with its own epoll.
        let mut sock = block_on(&rt, |_| async move {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            let mut sock = Socket::connect_direct(s, addr).await?;
            sock.write_all(b"hello").await?;
            let mut b = [0u8; 5];
            sock.read_exact(&mut b).await?;
            assert_eq!(&b, b"hello");
            io::Result::Ok(sock)
        })
        .unwrap();
        assert!(matches!(sock.sock, Sock::Direct(_)));
        // A library thread takes it over: the socket moves into the reactor.
        let sock2 = rt
            .block_on(async move {
                tokio::spawn(async move {
                    sock.write_all(b"again").await?;
                    let mut b = [0u8; 5];
                    sock.read_exact(&mut b).await?;
                    assert_eq!(&b, b"again");
                    io::Result::Ok(sock)
                })
                .await
            })
            .unwrap()
            .unwrap();
        assert!(matches!(sock2.sock, Sock::Reactor(_)));
        echo.join().unwrap();
    }

    #[test]
    fn a_refused_direct_connect_is_an_error() {
        let rt = crate::runtime::handle().unwrap();
        let (l, addr) = listener();
        drop(l);
        let r = block_on(&rt, |_| async move {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            Socket::connect_direct(s, addr).await.map(|_| ())
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    }
}
