//! The event queue: many requests in flight, driven by the caller's event loop.
//!
//! Requests submitted to a queue (from any thread) run on the thread that drains it, in
//! direct mode — the blocking path's sockets and system calls, but many futures at once, as
//! curl's multi interface runs many transfers on the thread calling `curl_multi_perform`.
//! The queue owns an epoll instance; its descriptor ([`Queue::fd`]) is readable whenever
//! there is work to do (a socket of one of its requests is ready, a timer or another thread
//! woke a request, a request was submitted, or events are waiting), so an event loop
//! (epoll, libuv, asyncio, select) can watch it like any socket and call [`Queue::drain`]
//! when it fires. A drain polls every request that can make progress and hands back the
//! events their completion produced, in one batch: no thread hop, no wake-up per request.
//!
//! Timers (the request timeouts) still run on the runtime's timer and reach a request
//! through its waker, which marks it ready and makes the descriptor readable.
//!
//! A queue is also a [`Host`] for background work: the driver of an HTTP/2 connection
//! opened by one of its requests runs here too ([`runtime::spawn_background`] during a
//! drain), so that the requests and their connection meet on the draining thread. Such a
//! task produces no event and is not counted as pending; when the queue is dropped, it
//! moves to the runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::direct;
use crate::error::{Error, ErrorKind, Result};
use crate::idmap::IdMap;
use crate::runtime::{self, BackgroundTask, Host, fork_generation};

/// One request (or body read) run by a queue; it reports its result through a [`Sink`].
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The most polls one drain makes before it returns (the descriptor stays readable when
/// work is left), so that one drain cannot hold the caller's loop for long.
const POLL_BUDGET: usize = 4096;

/// The token of the queue's own waker in its epoll set; requests use their ids.
const WAKE: mio::Token = mio::Token(usize::MAX);

thread_local! {
    /// Set while this thread runs a drain (of any queue).
    static DRAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Clears [`DRAINING`] when a drain returns or unwinds.
struct DrainingGuard;

impl Drop for DrainingGuard {
    fn drop(&mut self) {
        DRAINING.with(|d| d.set(false));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue of requests driven by whoever drains it; `E` is the event its requests report.
pub(crate) struct Queue<E: Send + 'static> {
    shared: Arc<Shared<E>>,
    exec: Mutex<Exec<E>>,
    handle: Handle,
    fd: RawFd,
    generation: u64,
}

/// What other threads (submitters, wakers, sinks) reach.
struct Shared<E> {
    state: Mutex<State<E>>,
    waker: mio::Waker,
    /// This queue's id as a [`Host`].
    host: u64,
}

/// Host ids of queues (0 is the runtime).
static NEXT_HOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<E: Send + 'static> Host for Shared<E> {
    fn host_id(&self) -> u64 {
        self.host
    }

    fn spawn_background(&self, task: BackgroundTask) {
        self.add(task, true);
    }
}

struct State<E> {
    next_id: usize,
    /// Submitted, not yet taken by a drain; `true`: a background task.
    new: Vec<(usize, Task, bool)>,
    /// Woken since the drain last looked.
    ready: Vec<usize>,
    /// Reported, not yet handed out.
    events: VecDeque<E>,
    /// A drain is running: it will look at `new`, `ready` and `events` before it returns.
    draining: bool,
    /// The waker was written since the last drain began: the descriptor is readable.
    signalled: bool,
}

impl<E> Shared<E> {
    /// Adds a task for the next drain (`background`: a [`Host`] task) and signals.
    fn add(&self, task: Task, background: bool) {
        let mut st = lock(&self.state);
        let id = st.next_id;
        st.next_id += 1;
        st.new.push((id, task, background));
        self.signal(&mut st);
    }

    /// Makes the descriptor readable unless a drain will look anyway (call with the state
    /// locked, after adding work).
    fn signal(&self, st: &mut State<E>) {
        if !st.draining && !st.signalled {
            st.signalled = true;
            let _ = self.waker.wake();
        }
    }
}

/// Where a request's completion reports to. Cheap to clone; usable from any thread.
pub(crate) struct Sink<E>(Arc<Shared<E>>);

impl<E> Clone for Sink<E> {
    fn clone(&self) -> Self {
        Sink(self.0.clone())
    }
}

impl<E> Sink<E> {
    pub(crate) fn push(&self, event: E) {
        let mut st = lock(&self.0.state);
        st.events.push_back(event);
        self.0.signal(&mut st);
    }
}

/// A request's waker: marks it ready (once until it is polled) and signals the queue.
struct TaskWaker<E> {
    id: usize,
    queued: AtomicBool,
    shared: Arc<Shared<E>>,
}

impl<E: Send + 'static> Wake for TaskWaker<E> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let mut st = lock(&self.shared.state);
            st.ready.push(self.id);
            self.shared.signal(&mut st);
        }
    }
}

struct Entry<E> {
    fut: Task,
    me: Arc<TaskWaker<E>>,
    waker: Waker,
    /// A [`Host`] task: no event, not pending, moved to the runtime with the queue gone.
    background: bool,
}

/// What only the draining thread touches.
struct Exec<E> {
    poll: mio::Poll,
    events: mio::Events,
    tasks: IdMap<usize, Entry<E>>,
    /// The descriptors in the epoll set (registered under the descriptor's number), with
    /// the wait they were registered for and the request waiting on them now (a closed one
    /// leaves the set by itself; a wrong guess costs one failed `epoll_ctl`).
    watched: IdMap<RawFd, (direct::WaitOn, usize)>,
    /// The thread that drained last ([`direct::thread_token`]; 0: none yet).
    drainer: u64,
    /// Background tasks among `tasks`.
    background: usize,
}

impl<E: Send + 'static> Exec<E> {
    /// Waits up to `timeout` for readiness and adds the requests it concerns to `ready`.
    fn collect(&mut self, timeout: Duration, ready: &mut Vec<usize>) {
        let res = loop {
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        direct::note_waited();
        if res.is_err() {
            direct::note_all_events();
        }
        for ev in self.events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            // Sockets are registered under their descriptor; the request waiting on it now
            // is looked up (a stale event for a finished one finds nothing or polls a
            // request spuriously, which is harmless).
            let fd = RawFd::try_from(ev.token().0).unwrap_or(-1);
            direct::note_event(fd, ev);
            if let Some((_, id)) = self.watched.get(&fd) {
                ready.push(*id);
            }
        }
    }

    /// Polls one request; a request waiting on a socket gets it watched (registered under
    /// its descriptor, which maps to the request).
    /// Returns false when the id is unknown (finished) or the request finished now.
    fn run(&mut self, id: usize) -> bool {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return false;
        };
        entry.me.queued.store(false, Ordering::Release);
        direct::clear_wait();
        let mut cx = Context::from_waker(&entry.waker);
        if entry.fut.as_mut().poll(&mut cx).is_ready() {
            direct::clear_wait();
            if let Some(e) = self.tasks.remove(&id) {
                self.background -= usize::from(e.background);
            }
            return false;
        }
        if let Some(on) = direct::take_wait() {
            let known = match self.watched.get_mut(&on.fd) {
                // The same socket waiting for the same thing (for this request or the next
                // one on its connection): still registered, edge-triggered, no system call.
                Some(w) if w.0 == on => {
                    w.1 = id;
                    return true;
                }
                Some(_) => true,
                None => false,
            };
            let token = mio::Token(usize::try_from(on.fd).unwrap_or(usize::MAX - 1));
            if direct::watch(self.poll.registry(), on.fd, token, on.wait, known).is_ok() {
                self.watched.insert(on.fd, (on, id));
            } else {
                self.watched.remove(&on.fd);
                // Cannot wait on it: poll again on the next pass rather than hang.
                entry_wake(self.tasks.get(&id));
            }
        }
        true
    }
}

fn entry_wake<E: Send + 'static>(entry: Option<&Entry<E>>) {
    if let Some(e) = entry {
        e.me.wake_by_ref();
    }
}

impl<E: Send + 'static> Queue<E> {
    /// A new, empty queue (an epoll instance and its waker).
    pub(crate) fn new() -> Result<Queue<E>> {
        let handle = runtime::handle()?;
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot create the queue's epoll instance: {e}"),
            )
        };
        let poll = mio::Poll::new().map_err(io)?;
        let waker = mio::Waker::new(poll.registry(), WAKE).map_err(io)?;
        let fd = poll.as_raw_fd();
        Ok(Queue {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    next_id: 0,
                    new: Vec::new(),
                    ready: Vec::new(),
                    events: VecDeque::new(),
                    draining: false,
                    signalled: false,
                }),
                waker,
                host: NEXT_HOST.fetch_add(1, Ordering::Relaxed),
            }),
            exec: Mutex::new(Exec {
                poll,
                events: mio::Events::with_capacity(256),
                tasks: IdMap::default(),
                watched: IdMap::default(),
                drainer: 0,
                background: 0,
            }),
            handle,
            fd,
            generation: fork_generation(),
        })
    }

    /// The descriptor an event loop watches for readability.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Where requests of this queue report their results.
    pub(crate) fn sink(&self) -> Sink<E> {
        Sink(self.shared.clone())
    }

    /// Adds a request; it starts at the next drain. Any thread.
    pub(crate) fn submit(&self, task: Task) {
        self.shared.add(task, false);
    }

    /// Requests not finished yet (submitted and not reported).
    pub(crate) fn pending(&self) -> usize {
        let n = lock(&self.shared.state)
            .new
            .iter()
            .filter(|(_, _, background)| !background)
            .count();
        let exec = lock(&self.exec);
        n + exec.tasks.len() - exec.background
    }

    /// Runs every request that can make progress and moves up to `max` reported events
    /// into `out`. Waits up to `timeout` for the first event when there is none. One
    /// thread drains at a time (others wait); refused on the library's own threads and in
    /// a forked child.
    pub(crate) fn drain(&self, out: &mut Vec<E>, max: usize, timeout: Duration) -> Result<()> {
        if runtime::on_runtime_thread() {
            return Err(Error::new(
                ErrorKind::WouldBlock,
                "a queue cannot be drained on a keepalive-agent thread (inside a callback)",
            ));
        }
        if fork_generation() != self.generation {
            return Err(Error::new(
                ErrorKind::Forked,
                "this queue was created before fork(); create a new one in the child",
            ));
        }
        if DRAINING.with(|d| d.replace(true)) {
            return Err(Error::new(
                ErrorKind::WouldBlock,
                "a queue cannot be drained from inside a drain (from a callback the drain runs)",
            ));
        }
        let _draining = DrainingGuard;
        let mut exec = lock(&self.exec);
        let me = direct::thread_token();
        if exec.drainer != me {
            exec.drainer = me;
            direct::forget_seen();
        }
        let _ctx = self.handle.enter();
        let _direct = direct::enter_direct();
        let _host = runtime::enter_host(self.shared.clone());
        let deadline = Instant::now() + timeout;
        {
            let mut st = lock(&self.shared.state);
            st.draining = true;
            st.signalled = false;
        }
        let mut ready = Vec::new();
        let mut polls = 0usize;
        // Readiness is read once per drain (and in waits): sockets that become ready after
        // a pass keep the descriptor readable, and the caller's loop comes back for them.
        exec.collect(Duration::ZERO, &mut ready);
        loop {
            let reported = {
                let mut st = lock(&self.shared.state);
                ready.append(&mut st.ready);
                for (id, fut, background) in st.new.drain(..) {
                    let me = Arc::new(TaskWaker {
                        id,
                        queued: AtomicBool::new(true),
                        shared: self.shared.clone(),
                    });
                    let waker = Waker::from(me.clone());
                    exec.background += usize::from(background);
                    exec.tasks.insert(
                        id,
                        Entry {
                            fut,
                            me,
                            waker,
                            background,
                        },
                    );
                    ready.push(id);
                }
                while out.len() < max {
                    match st.events.pop_front() {
                        Some(e) => out.push(e),
                        None => break,
                    }
                }
                !out.is_empty()
            };
            if out.len() >= max || polls >= POLL_BUDGET {
                break;
            }
            if ready.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if reported || left.is_zero() {
                    break;
                }
                // Wakers signal the descriptor while this thread sleeps on it.
                {
                    let mut st = lock(&self.shared.state);
                    if !st.ready.is_empty() || !st.new.is_empty() || !st.events.is_empty() {
                        continue;
                    }
                    st.draining = false;
                }
                exec.collect(left, &mut ready);
                let mut st = lock(&self.shared.state);
                st.draining = true;
                st.signalled = false;
                continue;
            }
            for id in ready.drain(..) {
                exec.run(id);
                polls += 1;
            }
        }
        let mut st = lock(&self.shared.state);
        st.draining = false;
        st.ready.append(&mut ready);
        if !st.ready.is_empty() || !st.new.is_empty() || !st.events.is_empty() {
            self.shared.signal(&mut st);
        }
        Ok(())
    }
}

impl<E: Send + 'static> Drop for Queue<E> {
    /// Drops the requests still in flight (each reports once, to nobody) and the events
    /// not handed out. In a forked child everything is forgotten instead: the sockets
    /// belong to the parent.
    fn drop(&mut self) {
        if fork_generation() != self.generation {
            let exec = std::mem::replace(
                &mut *lock(&self.exec),
                Exec {
                    poll: match mio::Poll::new() {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    events: mio::Events::with_capacity(1),
                    tasks: IdMap::default(),
                    watched: IdMap::default(),
                    drainer: 0,
                    background: 0,
                },
            );
            std::mem::forget(exec);
            std::mem::forget(std::mem::take(&mut lock(&self.shared.state).new));
            return;
        }
        let _ctx = self.handle.enter();
        // Dropping a request reports it (cancelled) to the sink: repeat until quiet. The
        // tasks hold the sink, so this also breaks the cycle through `Shared`. Background
        // tasks (connections' drivers) go on running on the runtime.
        loop {
            let tasks = std::mem::take(&mut lock(&self.exec).tasks);
            let new = std::mem::take(&mut lock(&self.shared.state).new);
            lock(&self.exec).background = 0;
            let (background, tasks): (Vec<_>, Vec<_>) =
                tasks.into_iter().partition(|(_, e)| e.background);
            let (background_new, new): (Vec<_>, Vec<_>) =
                new.into_iter().partition(|(_, _, background)| *background);
            for fut in background
                .into_iter()
                .map(|(_, e)| e.fut)
                .chain(background_new.into_iter().map(|(_, fut, _)| fut))
            {
                self.handle.spawn(fut);
            }
            let events = std::mem::take(&mut lock(&self.shared.state).events);
            if tasks.is_empty() && new.is_empty() && events.is_empty() {
                break;
            }
            drop((tasks, new, events));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn readable(fd: RawFd) -> bool {
        let p = mio::Poll::new().unwrap();
        let mut src = mio::unix::SourceFd(&fd);
        p.registry()
            .register(&mut src, mio::Token(0), mio::Interest::READABLE)
            .unwrap();
        let mut evs = mio::Events::with_capacity(1);
        let mut p = p;
        p.poll(&mut evs, Some(Duration::ZERO)).unwrap();
        !evs.is_empty()
    }

    #[test]
    fn submitted_work_makes_the_descriptor_readable_and_a_drain_reports_it() {
        let q: Queue<u32> = Queue::new().unwrap();
        assert!(!readable(q.fd()));
        let sink = q.sink();
        q.submit(Box::pin(async move { sink.push(7) }));
        assert!(readable(q.fd()));
        let mut out = Vec::new();
        q.drain(&mut out, 16, Duration::ZERO).unwrap();
        assert_eq!(out, vec![7]);
        assert!(!readable(q.fd()));
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn background_work_runs_in_the_drain_and_moves_to_the_runtime_with_the_queue_gone() {
        let q: Queue<u32> = Queue::new().unwrap();
        let sink = q.sink();
        let (tx, rx) = std::sync::mpsc::channel();
        let (go, gone) = tokio::sync::oneshot::channel::<()>();
        q.submit(Box::pin(async move {
            let host = runtime::host_id();
            let spawned = runtime::spawn_background(Box::pin(async move {
                let here = |tx: &std::sync::mpsc::Sender<_>| {
                    let _ = tx.send((std::thread::current().id(), runtime::on_runtime_thread()));
                };
                here(&tx);
                let _ = gone.await;
                here(&tx);
            }));
            assert!(host != 0 && spawned == host);
            sink.push(1);
        }));
        let mut out = Vec::new();
        q.drain(&mut out, 16, Duration::ZERO).unwrap();
        // The request's event only; its background task ran in the same drain, here.
        assert_eq!(out, vec![1]);
        assert_eq!(rx.try_recv().unwrap(), (std::thread::current().id(), false));
        assert_eq!(q.pending(), 0);
        // Outside a drain, background work goes to the runtime.
        assert_eq!(runtime::host_id(), 0);
        drop(q);
        go.send(()).unwrap();
        let (thread, on_runtime) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(on_runtime && thread != std::thread::current().id());
    }

    #[test]
    fn a_timer_wakes_the_queue_and_a_drain_waits_for_it() {
        let q: Queue<&'static str> = Queue::new().unwrap();
        let sink = q.sink();
        q.submit(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            sink.push("late");
        }));
        let mut out = Vec::new();
        q.drain(&mut out, 16, Duration::ZERO).unwrap();
        assert!(out.is_empty());
        assert_eq!(q.pending(), 1);
        q.drain(&mut out, 16, Duration::from_secs(5)).unwrap();
        assert_eq!(out, vec!["late"]);
    }

    #[test]
    fn events_beyond_max_stay_and_keep_the_descriptor_readable() {
        let q: Queue<usize> = Queue::new().unwrap();
        for i in 0..10 {
            let sink = q.sink();
            q.submit(Box::pin(async move { sink.push(i) }));
        }
        let mut out = Vec::new();
        q.drain(&mut out, 4, Duration::ZERO).unwrap();
        assert_eq!(out.len(), 4);
        assert!(readable(q.fd()));
        q.drain(&mut out, 100, Duration::ZERO).unwrap();
        out.sort_unstable();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_socket_wait_is_served_by_the_queue_on_the_draining_thread() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let q: Queue<Vec<u8>> = Queue::new().unwrap();
        let sink = q.sink();
        q.submit(Box::pin(async move {
            use tokio::io::AsyncReadExt;
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let mut sock = direct::Socket::connect_direct(s, addr).await.unwrap();
            let mut b = vec![0u8; 5];
            sock.read_exact(&mut b).await.unwrap();
            sink.push(b);
        }));
        let mut out = Vec::new();
        q.drain(&mut out, 1, Duration::ZERO).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut x = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        assert!(s.read(&mut x).is_err()); // nothing sent by the client
        q.drain(&mut out, 1, Duration::from_millis(20)).unwrap();
        assert!(out.is_empty());
        s.write_all(b"hello").unwrap();
        let start = Instant::now();
        while out.is_empty() && start.elapsed() < Duration::from_secs(5) {
            q.drain(&mut out, 1, Duration::from_secs(1)).unwrap();
        }
        assert_eq!(out, vec![b"hello".to_vec()]);
    }

    #[test]
    fn dropping_the_queue_drops_requests_in_flight() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let q: Queue<u8> = Queue::new().unwrap();
        let flag = Flag(dropped.clone());
        let sink = q.sink();
        q.submit(Box::pin(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            sink.push(1);
        }));
        let mut out = Vec::new();
        q.drain(&mut out, 1, Duration::ZERO).unwrap();
        assert!(!dropped.load(Ordering::SeqCst));
        drop(q);
        assert!(dropped.load(Ordering::SeqCst));
    }
}
