//! One error type for the whole engine. The FFI layer maps [`ErrorKind`] to C codes.

use std::fmt;

/// What went wrong, at the granularity callers act on. Every kind has a stable C code
/// (see `ffi::code`), a Node-style name where one applies, and a message in [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A NULL pointer, a non-UTF-8 string, a header with CR/LF/NUL, a method that is not a token.
    InvalidArgument,
    /// The URL could not be parsed, or its scheme is not http/https.
    InvalidUrl,
    /// An option value is out of range or unknown (refused when the agent is created).
    InvalidOption,
    /// A looked-up item (header, header index, in-flight request id) does not exist.
    NotFound,
    /// The host name did not resolve.
    Dns,
    /// The server refused the TCP connection.
    ConnectRefused,
    /// DNS + TCP + TLS did not finish within `connect_timeout_msecs`.
    ConnectTimeout,
    /// Any other failure to establish the TCP connection.
    Connect,
    /// The proxy refused the `CONNECT` tunnel (its status line is in the message), or
    /// broke off before answering.
    Proxy,
    /// The TLS handshake failed (certificate, hostname, protocol).
    Tls,
    /// The response head did not arrive within `headers_timeout_msecs`.
    HeadersTimeout,
    /// The gap between two body chunks exceeded `body_timeout_msecs`.
    BodyTimeout,
    /// The request's overall deadline (`timeout_msecs`) passed.
    Timeout,
    /// The peer reset the connection while a request was in progress.
    ConnectionReset,
    /// The peer closed the connection (EOF) before the response was complete.
    ConnectionClosed,
    /// Writing the request failed because the peer had closed its side.
    BrokenPipe,
    /// A reused connection failed before the first response byte and the request was not retryable.
    StaleConnection,
    /// The server reset the request's HTTP/2 stream (`RST_STREAM`); its reason is in the
    /// message. The connection and its other streams go on.
    StreamReset,
    /// The response violated HTTP/1.1 (malformed status line, headers, framing).
    Protocol,
    /// The response body exceeded `max_response_bytes`.
    ResponseTooLarge,
    /// The caller's request body source failed, or gave fewer bytes than its length.
    BodySource,
    /// The request was cancelled, or its agent was freed while it was in flight.
    Cancelled,
    /// A blocking call was made from a library thread (inside a completion callback).
    WouldBlock,
    /// The agent cannot be used in this process (after `fork()` with its lock held).
    Forked,
    /// A panic was caught at the boundary.
    Panic,
    /// Anything else: a bug or resource exhaustion.
    Internal,
}

/// An error with its kind and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub fn invalid_option(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidOption, message)
    }

    /// Whether this is one of the timeout kinds (counted as `timeouts` in the stats).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectTimeout
                | ErrorKind::HeadersTimeout
                | ErrorKind::BodyTimeout
                | ErrorKind::Timeout
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Walks an error's source chain looking for an `io::Error`.
pub(crate) fn find_io_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

/// Renders an error and its sources as `outer: inner: innermost`.
pub(crate) fn chain_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_message_joins_sources_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let msg = chain_message(&io);
        assert_eq!(msg, "reset by peer");
        assert_eq!(
            find_io_error(&io).map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[test]
    fn timeouts_are_classified() {
        assert!(Error::new(ErrorKind::HeadersTimeout, "x").is_timeout());
        assert!(!Error::new(ErrorKind::ConnectionReset, "x").is_timeout());
    }
}
