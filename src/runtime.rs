//! The process-wide tokio runtime, created lazily and rebuilt after `fork()`.
//!
//! A child made by `fork()` has none of the parent's threads, so the parent's runtime is
//! dead there. A `pthread_atfork` child handler bumps [`fork_generation`]; the next caller
//! builds a fresh runtime and leaks (never drops) the old one, whose threads do not exist.
//! Locks here are held only for a pointer copy; a lock found held after a fork (its owner
//! thread is gone) is reported as [`ErrorKind::Forked`] instead of hanging.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use crate::error::{Error, ErrorKind, Result};

/// Overrides the number of worker threads (default 2).
pub const ENV_WORKER_THREADS: &str = "KEEPALIVE_AGENT_WORKER_THREADS";
const DEFAULT_WORKERS: usize = 2;
const MAX_WORKERS: usize = 64;

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
const NONE: u64 = u64::MAX;
static RUNTIME_GENERATION: AtomicU64 = AtomicU64::new(NONE);

struct Slot {
    generation: u64,
    handle: Handle,
    /// Kept so the runtime stays reachable (it is intentionally never dropped).
    _runtime: &'static Runtime,
}

static RUNTIME: Mutex<Option<Slot>> = Mutex::new(None);

thread_local! {
    static ON_RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// How many times this process (or its ancestors since the library loaded) has forked.
pub fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// To be called in the child after `fork()` (the FFI layer registers it with
/// `pthread_atfork`). Only an atomic increment: async-signal-safe.
pub fn note_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// True on the library's own worker threads (where blocking calls would deadlock).
pub fn on_runtime_thread() -> bool {
    ON_RUNTIME_THREAD.with(Cell::get)
}

/// Locks `m`, which was last known to be consistent in `generation`. In a forked child
/// (generation changed) the lock may be held by a thread that no longer exists: then
/// `try_lock` is used and a held lock is an error rather than a hang.
pub(crate) fn fork_safe_lock<'a, T>(
    m: &'a Mutex<T>,
    same_generation: bool,
) -> Result<MutexGuard<'a, T>> {
    if same_generation {
        return Ok(m.lock().unwrap_or_else(|p| p.into_inner()));
    }
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(Error::new(
            ErrorKind::Forked,
            "a lock was held by another thread when this process forked; create a new agent in the child",
        )),
    }
}

/// A mutex whose contents are forgotten (leaked, never dropped or touched) in a child
/// process after `fork()`: they belong to the parent's threads and sockets.
pub(crate) struct ForkMutex<T: Default> {
    inner: Mutex<T>,
    generation: AtomicU64,
}

impl<T: Default> ForkMutex<T> {
    pub fn new(value: T) -> Self {
        ForkMutex {
            inner: Mutex::new(value),
            generation: AtomicU64::new(fork_generation()),
        }
    }

    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        let generation = fork_generation();
        let same = self.generation.load(Ordering::Acquire) == generation;
        let mut guard = fork_safe_lock(&self.inner, same)?;
        if !same {
            std::mem::forget(std::mem::take(&mut *guard));
            self.generation.store(generation, Ordering::Release);
        }
        Ok(guard)
    }
}

fn worker_threads() -> usize {
    std::env::var(ENV_WORKER_THREADS)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| (1..=MAX_WORKERS).contains(&n))
        .unwrap_or(DEFAULT_WORKERS)
}

fn build() -> Result<&'static Runtime> {
    let err =
        |e: std::io::Error| Error::new(ErrorKind::Internal, format!("cannot start runtime: {e}"));
    let workers = worker_threads();
    if workers == 1 {
        // One thread: a current-thread scheduler on a dedicated thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(8)
            .enable_all()
            .build()
            .map_err(err)?;
        let rt: &'static Runtime = Box::leak(Box::new(rt));
        std::thread::Builder::new()
            .name("keepalive-agent".into())
            .spawn(move || {
                ON_RUNTIME_THREAD.with(|c| c.set(true));
                rt.block_on(std::future::pending::<()>())
            })
            .map_err(err)?;
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("keepalive-agent")
        .max_blocking_threads(8)
        .enable_all()
        .on_thread_start(|| ON_RUNTIME_THREAD.with(|c| c.set(true)))
        .build()
        .map_err(err)?;
    // Never dropped: after a fork its threads are gone and dropping would hang.
    Ok(Box::leak(Box::new(rt)))
}

thread_local! {
    /// This thread's copy of the current handle: the common case takes no lock.
    static HANDLE: RefCell<Option<(u64, Handle)>> = const { RefCell::new(None) };
}

/// The handle of this process's runtime, building it on first use and after a fork.
pub fn handle() -> Result<Handle> {
    let generation = fork_generation();
    let cached = HANDLE.with(|h| match &*h.borrow() {
        Some((g, handle)) if *g == generation => Some(handle.clone()),
        _ => None,
    });
    if let Some(h) = cached {
        return Ok(h);
    }
    let h = shared_handle(generation)?;
    HANDLE.with(|c| {
        if let Some(old) = c.borrow_mut().replace((generation, h.clone())) {
            if old.0 != generation {
                std::mem::forget(old); // the parent's, after a fork
            }
        }
    });
    Ok(h)
}

fn shared_handle(generation: u64) -> Result<Handle> {
    let same =
        matches!(RUNTIME_GENERATION.load(Ordering::Acquire), g if g == generation || g == NONE);
    let mut slot = fork_safe_lock(&RUNTIME, same)?;
    if let Some(s) = &*slot {
        if s.generation == generation {
            return Ok(s.handle.clone());
        }
    }
    let rt = build()?;
    let handle = rt.handle().clone();
    if let Some(old) = slot.take() {
        // The parent's runtime handle: its threads do not exist here. Leak it.
        std::mem::forget(old);
    }
    *slot = Some(Slot {
        generation,
        handle: handle.clone(),
        _runtime: rt,
    });
    RUNTIME_GENERATION.store(generation, Ordering::Release);
    Ok(handle)
}

/// What a direct-mode socket waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Read,
    Write,
}

thread_local! {
    /// Set while this thread runs [`block_on`]: sockets polled here do direct I/O.
    static DIRECT: Cell<bool> = const { Cell::new(false) };
    /// The socket the last poll of [`block_on`]'s future is waiting for.
    static WAIT_FD: Cell<Option<(RawFd, Wait)>> = const { Cell::new(None) };
    /// This thread's epoll instance for direct waits, made on first use (and again in a
    /// forked child, whose copy would be shared with the parent).
    static POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
}

/// Whether sockets polled on this thread should do their own I/O (inside [`block_on`]).
pub fn direct_io_thread() -> bool {
    DIRECT.with(Cell::get)
}

/// Called by a direct-mode socket that would block: the executor waits for it.
pub fn wait_for(fd: RawFd, wait: Wait) {
    WAIT_FD.with(|w| w.set(Some((fd, wait))));
}

/// Counts the waits of every direct executor. A socket that saw `EAGAIN` at epoch `e`
/// skips further system calls until the epoch moves on: nothing can have arrived that a
/// wait would not have reported.
static WAIT_EPOCH: AtomicU64 = AtomicU64::new(0);

pub fn wait_epoch() -> u64 {
    WAIT_EPOCH.load(Ordering::Acquire)
}

const SOCKET: mio::Token = mio::Token(0);
const WAKE: mio::Token = mio::Token(1);

struct Poller {
    poll: mio::Poll,
    events: mio::Events,
    waker: Arc<mio::Waker>,
    generation: u64,
    /// The socket registered last (left registered: the next wait on it is one
    /// `EPOLL_CTL_MOD`; a closed socket leaves the epoll set by itself).
    registered: Option<RawFd>,
}

impl Poller {
    fn new() -> std::io::Result<Poller> {
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
    fn wait(&mut self, fd: RawFd, wait: Wait) -> std::io::Result<()> {
        let interest = match wait {
            Wait::Read => mio::Interest::READABLE,
            Wait::Write => mio::Interest::WRITABLE,
        };
        let mut source = mio::unix::SourceFd(&fd);
        let registry = self.poll.registry();
        // MOD re-arms the edge-triggered registration and reports data already there; it
        // fails if the fd is not in the set (first use, or the socket was closed since).
        let first = if self.registered == Some(fd) {
            registry.reregister(&mut source, SOCKET, interest)
        } else {
            registry.register(&mut source, SOCKET, interest)
        };
        if first.is_err() {
            let second = registry.register(&mut source, SOCKET, interest);
            if second.is_err() {
                registry.reregister(&mut source, SOCKET, interest)?;
            }
        }
        self.registered = Some(fd);
        let res = loop {
            match self.poll.poll(&mut self.events, None) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        WAIT_EPOCH.fetch_add(1, Ordering::AcqRel);
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
struct DirectGuard(bool);

impl Drop for DirectGuard {
    fn drop(&mut self) {
        DIRECT.with(|d| d.set(self.0));
        WAIT_FD.with(|w| w.set(None));
    }
}

/// Runs `fut` to completion on the calling thread, inside the runtime's context. Sockets
/// the future polls switch to direct I/O (see `connect::Tcp`) and this thread waits on
/// them itself with its own epoll instance, like a libcurl easy handle: a response wakes
/// the caller directly. Timers and other wake-ups from the runtime's threads reach it
/// through an eventfd (or `unpark` when no socket is involved).
pub fn block_on<F: Future>(handle: &Handle, fut: F) -> F::Output {
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
    let _guard = DirectGuard(DIRECT.with(|d| d.replace(poll_waker.is_some())));
    let me = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
        state: AtomicU8::new(RUNNING),
        poll_waker,
    });
    let waker = Waker::from(me.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        WAIT_FD.with(|w| w.set(None));
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        match WAIT_FD.with(Cell::take) {
            Some((fd, wait)) => {
                me.state.store(POLLING, Ordering::SeqCst);
                if !me.woken.load(Ordering::SeqCst) {
                    let res = POLLER.with(|p| match p.borrow_mut().as_mut() {
                        Some(p) => p.wait(fd, wait),
                        None => Ok(()),
                    });
                    if res.is_err() {
                        // Could not wait on the socket: poll again after a short sleep.
                        std::thread::sleep(Duration::from_micros(100));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_shared_and_threads_are_marked() {
        let h = handle().unwrap();
        let h2 = handle().unwrap();
        assert_eq!(h.id(), h2.id());
        assert!(!on_runtime_thread());
        let on = h.block_on(async { tokio::spawn(async { on_runtime_thread() }).await });
        assert!(on.unwrap());
    }

    #[test]
    fn fork_safe_lock_reports_a_held_lock_in_a_new_generation() {
        let m = Mutex::new(1);
        let _held = m.lock().unwrap();
        let e = fork_safe_lock(&m, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forked);
    }
}
