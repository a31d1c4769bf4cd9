//! The process-wide tokio runtime, created lazily and rebuilt after `fork()`.
//!
//! A child made by `fork()` has none of the parent's threads, so the parent's runtime is
//! dead there. A `pthread_atfork` child handler bumps [`fork_generation`]; the next caller
//! builds a fresh runtime and leaks (never drops) the old one, whose threads do not exist.
//! Locks here are held only for a pointer copy; a lock found held after a fork (its owner
//! thread is gone) is reported as [`ErrorKind::Forked`] instead of hanging.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use tokio::runtime::{Handle, Runtime};

use crate::error::{Error, ErrorKind, Result};

/// Overrides the number of worker threads (default 2).
pub(crate) const ENV_WORKER_THREADS: &str = "KEEPALIVE_AGENT_WORKER_THREADS";
const DEFAULT_WORKERS: usize = 2;
const MAX_WORKERS: usize = 64;
/// Threads for tokio's blocking pool, which serves only name resolution
/// (`lookup_host` runs `getaddrinfo` there): enough for a few slow lookups at once.
const MAX_BLOCKING_THREADS: usize = 8;

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
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// To be called in the child after `fork()` (the FFI layer registers it with
/// `pthread_atfork`). Only an atomic increment: async-signal-safe.
pub(crate) fn note_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// True on the library's own worker threads (where blocking calls would deadlock).
pub(crate) fn on_runtime_thread() -> bool {
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
    pub(crate) fn new(value: T) -> Self {
        ForkMutex {
            inner: Mutex::new(value),
            generation: AtomicU64::new(fork_generation()),
        }
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, T>> {
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
            .max_blocking_threads(MAX_BLOCKING_THREADS)
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
        .max_blocking_threads(MAX_BLOCKING_THREADS)
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
pub(crate) fn handle() -> Result<Handle> {
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

/// A background task: what a [`Host`] or the runtime runs for the library itself.
pub(crate) type BackgroundTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Somewhere other than the runtime that runs background tasks on the thread driving it:
/// an event queue being drained. A connection whose driver runs there does its I/O on
/// that thread, with the requests that use it, instead of a runtime thread woken for
/// every request.
pub(crate) trait Host: Send + Sync {
    /// Never 0 (0 is the runtime).
    fn host_id(&self) -> u64;
    /// Runs `task` with the host's other tasks; if the host goes away first, the task
    /// moves to the runtime.
    fn spawn_background(&self, task: BackgroundTask);
}

thread_local! {
    /// The host this thread is driving now (an event queue in its drain), if any.
    static HOST: RefCell<Option<std::sync::Arc<dyn Host>>> = const { RefCell::new(None) };
}

/// Restores the previous host of the thread when dropped.
pub(crate) struct HostGuard(Option<std::sync::Arc<dyn Host>>);

impl Drop for HostGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        HOST.with(|h| *h.borrow_mut() = prev);
    }
}

/// Marks `host` as driven by this thread until the guard is dropped.
pub(crate) fn enter_host(host: std::sync::Arc<dyn Host>) -> HostGuard {
    HostGuard(HOST.with(|h| h.borrow_mut().replace(host)))
}

/// The id of the host this thread is driving (0: none; background work goes to the
/// runtime).
pub(crate) fn host_id() -> u64 {
    HOST.with(|h| h.borrow().as_ref().map_or(0, |h| h.host_id()))
}

/// Runs `task` on the host this thread is driving, or on the runtime (the caller must be
/// inside the runtime's context). Returns where: the host's id, or 0 for the runtime.
pub(crate) fn spawn_background(task: BackgroundTask) -> u64 {
    let host = HOST.with(|h| h.borrow().clone());
    match host {
        Some(h) => {
            h.spawn_background(task);
            h.host_id()
        }
        None => {
            tokio::spawn(task);
            0
        }
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
