//! keepalive-agent: an HTTP/1.1 client engine with a keep-alive connection pool, shared by
//! C, C++, Python and Node programs through the C ABI in `ffi`.
//!
//! `ARCHITECTURE.md` at the top of the repository describes the rooms below, what each may
//! import, and the path of a request through them. Arrows point down only:
//!
//! - `ffi`: the C ABI — `extern "C"` functions, panic boundary, NULL checks, codes. All the
//!   code the compiler cannot check for memory safety is there, and only there.
//! - `agent`: entry points (blocking, async), the completion guard, the retry loop.
//! - `exchange`: one request/response on one connection; keep or close.
//! - `pool`: slots, the wait queue, idle lists, limits, statistics; no sockets.
//! - `conn`: one connection: handshake, drive, park, compaction, idle monitor.
//! - `connect`: TCP with keep-alive options and happy eyeballs, proxy tunnels, TLS.
//! - `direct`: the blocking path: `block_on`, the per-thread poller, the direct-mode socket.
//! - `http`, `options`, `stats`, `tls`, `dns`, `proxy`, `trace`, `runtime`, `error`: the
//!   model, validated options, counters, rustls configuration, the resolver and its cache,
//!   proxy settings, events from inside, the process-wide runtime, one error type.
//!
//! The Rust API is what this file re-exports; everything else is private to the crate.

mod agent;
mod conn;
mod connect;
mod direct;
mod dns;
mod error;
mod exchange;
pub mod ffi;
mod h2;
mod http;
mod idmap;
mod memory;
mod options;
mod pool;
mod proxy;
mod queue;
mod runtime;
mod stats;
mod tls;
mod trace;

pub use agent::{Agent, ResponseStream};
pub use error::{Error, ErrorKind, Result};
pub use http::{Body, BodySource, Origin, Request, Response, Scheme, Target, Timings};
pub use http::{parse_header, parse_method, parse_url, request_timeout};
pub use options::limit_by_name as limit;
pub use options::{Config, HttpVersion, Options, Scheduling};
pub use proxy::{NoProxy, Proxies, Proxy};
pub use stats::Stats;
pub use trace::{CloseReason, Sink, TraceEvent, TraceKind, Tracer};
