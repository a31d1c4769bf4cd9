//! keepalive-agent: an HTTP/1.1 client engine with a keep-alive connection pool, shared by
//! C, C++, Python and Node programs through the C ABI in [`ffi`].
//!
//! Layers (arrows point down only; the core never imports `ffi`):
//!
//! - [`ffi`]: the C ABI — `extern "C"` functions, panic boundary, NULL checks, codes.
//! - [`agent`]: the request path (checkout, send, read, release, stale retry, timeouts).
//! - [`pool`]: per-origin idle lists, limits, queue, idle timers, statistics.
//! - [`http`]: URL parsing, header validation, the response model, server hints.
//! - [`connect`] and [`tls`]: DNS, TCP with keep-alive options, rustls.
//! - [`options`]: validated options and the environment switch.
//! - [`runtime`]: the process-wide tokio runtime, rebuilt after `fork()`.
//! - [`error`]: one error type.

pub mod agent;
pub mod connect;
pub mod error;
pub mod ffi;
pub mod http;
pub mod options;
pub mod pool;
pub mod runtime;
pub mod tls;

pub use agent::Agent;
pub use error::{Error, ErrorKind, Result};
pub use http::{Request, Response, Timings};
pub use options::{Config, Options, Scheduling};
pub use pool::Stats;
