//! The request/response model: URL parsing, header validation, the response handed back.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

use crate::error::{Error, ErrorKind, Result};
use crate::options::MAX_MSECS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// A pool key: scheme, host (without IPv6 brackets, lowercased), port, and the proxy its
/// connections go through (set by the agent from its proxy settings; `parse_url` leaves
/// it empty). Built by [`Origin::new`] and read-only after: it carries the hash of its
/// fields, computed once (keyed SipHash, as a `HashMap` would), so that the pool's
/// several lookups per request hash one integer.
#[derive(Clone, Debug)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    key: u64,
}

impl PartialEq for Origin {
    fn eq(&self, other: &Origin) -> bool {
        self.key == other.key
            && self.port == other.port
            && self.scheme == other.scheme
            && self.host == other.host
            && self.proxy == other.proxy
    }
}

impl Eq for Origin {}

impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.key);
    }
}

impl Origin {
    pub fn new(
        scheme: Scheme,
        host: String,
        port: u16,
        proxy: Option<Arc<crate::proxy::Proxy>>,
    ) -> Origin {
        use std::hash::BuildHasher;
        static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let key = KEYS
            .get_or_init(Default::default)
            .hash_one((scheme, &host, port, &proxy));
        Origin {
            scheme,
            host,
            port,
            proxy,
            key,
        }
    }

    /// The same origin reached through `proxy`.
    pub fn with_proxy(&self, proxy: Option<Arc<crate::proxy::Proxy>>) -> Origin {
        Origin::new(self.scheme, self.host.clone(), self.port, proxy)
    }

    /// `host:port` as it appears in a URL (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn default_port(scheme: Scheme) -> u16 {
        match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{s}://{}", self.authority())?;
        if let Some(p) = &self.proxy {
            write!(f, " (through the proxy {})", p.url())?;
        }
        Ok(())
    }
}

/// A parsed request URL: where to connect and what to put in the request line.
#[derive(Clone, Debug)]
pub struct Target {
    pub origin: Arc<Origin>,
    /// Origin-form request target (`/path?query`).
    pub path: Uri,
    /// The `Host` header value (port only when not the scheme's default).
    pub host: HeaderValue,
}

fn url_error(url: &str, why: impl fmt::Display) -> Error {
    let shown: String = url.chars().take(200).collect();
    Error::new(
        ErrorKind::InvalidUrl,
        format!("invalid URL {shown:?}: {why}"),
    )
}

/// Parses an absolute `http://` or `https://` URL. A fragment is dropped (it is never
/// sent); credentials in the URL are refused (send an `Authorization` header).
pub fn parse_url(url: &str) -> Result<Target> {
    thread_local! {
        /// The last URL parsed on this thread and its target: programs mostly repeat the
        /// same URL, and a clone shares what the parse would allocate again.
        static LAST: std::cell::RefCell<Option<(Box<str>, Target)>> =
            const { std::cell::RefCell::new(None) };
    }
    let hit = LAST.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(u, _)| &**u == url)
            .map(|(_, t)| t.clone())
    });
    if let Some(t) = hit {
        return Ok(t);
    }
    let t = parse_url_uncached(url)?;
    LAST.with(|l| *l.borrow_mut() = Some((url.into(), t.clone())));
    Ok(t)
}

fn parse_url_uncached(url: &str) -> Result<Target> {
    let without_fragment = url.split('#').next().unwrap_or("");
    let uri: Uri = without_fragment
        .parse()
        .map_err(|e: http::uri::InvalidUri| url_error(url, e))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(s) => return Err(url_error(url, format!("unsupported scheme {s:?}"))),
        None => {
            return Err(url_error(
                url,
                "expected an absolute http:// or https:// URL",
            ));
        }
    };
    let authority = uri.authority().ok_or_else(|| url_error(url, "no host"))?;
    if authority.as_str().contains('@') {
        return Err(url_error(
            url,
            "credentials in the URL are not supported; send an Authorization header",
        ));
    }
    // `http::Uri` is lenient about brackets; split the authority ourselves: either
    // `[IPv6]` or a host without brackets or colons, then an optional `:port`.
    let auth = authority.as_str();
    let (raw_host, port_text) = if let Some(inner) = auth.strip_prefix('[') {
        let (ip, rest) = inner
            .split_once(']')
            .ok_or_else(|| url_error(url, "unclosed '[' in the host"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(url_error(url, format!("[{ip}] is not an IPv6 address")));
        }
        let port = match rest {
            "" => None,
            r => Some(
                r.strip_prefix(':')
                    .ok_or_else(|| url_error(url, format!("unexpected {r:?} after the host")))?,
            ),
        };
        (&auth[..ip.len() + 2], port)
    } else {
        let (host, port) = match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        };
        if host.contains(['[', ']', ':']) {
            return Err(url_error(url, "brackets or colons in the host"));
        }
        (host, port)
    };
    if raw_host.is_empty() {
        return Err(url_error(url, "empty host"));
    }
    let host = raw_host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = match port_text {
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(url_error(url, format!("bad port {p:?}"))),
        },
        None => Origin::default_port(scheme),
    };
    let path: Uri = match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() && pq.as_str().starts_with('/') => {
            Uri::from_maybe_shared(Bytes::copy_from_slice(pq.as_str().as_bytes()))
        }
        Some(pq) if pq.as_str().starts_with('?') => Uri::try_from(format!("/{}", pq.as_str())),
        _ => Ok(Uri::from_static("/")),
    }
    .map_err(|e| url_error(url, e))?;
    let host_header = if port == Origin::default_port(scheme) {
        HeaderValue::from_str(raw_host)
    } else {
        HeaderValue::from_str(&format!("{raw_host}:{port}"))
    }
    .map_err(|e| url_error(url, e))?;
    Ok(Target {
        origin: Arc::new(Origin::new(scheme, host, port, None)),
        path,
        host: host_header,
    })
}

/// Validates a method: an HTTP token (RFC 9110), so it cannot smuggle bytes into the
/// request line.
pub fn parse_method(method: &str) -> Result<Method> {
    if method.is_empty() {
        return Err(Error::invalid_argument("method is empty"));
    }
    Method::from_bytes(method.as_bytes()).map_err(|_| {
        Error::invalid_argument(format!(
            "method {:?} is not an HTTP token",
            method.chars().take(40).collect::<String>()
        ))
    })
}

/// Validates one header. CR, LF, NUL and other control bytes are refused in values;
/// names must be tokens.
pub fn parse_header(name: &[u8], value: &[u8]) -> Result<(HeaderName, HeaderValue)> {
    let n = HeaderName::from_bytes(name).map_err(|_| {
        Error::invalid_argument(format!(
            "header name {:?} is not an HTTP token",
            String::from_utf8_lossy(&name[..name.len().min(60)])
        ))
    })?;
    let v = HeaderValue::from_bytes(value).map_err(|_| {
        Error::invalid_argument(format!(
            "header {n}: value contains CR, LF, NUL or another control character"
        ))
    })?;
    Ok((n, v))
}

/// Converts a per-request timeout (0 = none) after range checking.
pub fn request_timeout(msecs: u32) -> Result<Option<Duration>> {
    match msecs {
        0 => Ok(None),
        v if v > MAX_MSECS => Err(Error::invalid_argument(format!(
            "timeout_msecs = {v} is out of range (0..={MAX_MSECS}, 0 = none)"
        ))),
        v => Ok(Some(Duration::from_millis(u64::from(v)))),
    }
}

/// A request body produced piece by piece: curl's read callback, a file, a generator.
pub trait BodySource: Send {
    /// Fills `buf` with the next bytes: `Ready(Ok(n))` with `n > 0`, `Ready(Ok(0))` at the
    /// end, `Pending` after arranging for `cx`'s waker to be woken, or an error (which fails
    /// the request with [`ErrorKind::BodySource`]). Called on the thread that drives the
    /// request (the caller's own for a blocking request).
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// The body's length when known: sent as `Content-Length`. `None`: chunked.
    fn length(&self) -> Option<u64>;
    /// Starts again from the first byte, for a transparent retry. False (the default):
    /// the source cannot be replayed, and a stale connection fails the request instead.
    fn rewind(&mut self) -> bool {
        false
    }
}

/// A request body source shared by the request and its retries.
pub type SharedSource = Arc<Mutex<Box<dyn BodySource>>>;

/// A request body: bytes (always replayable) or a source read piece by piece.
#[derive(Clone)]
pub enum Body {
    Bytes(Bytes),
    Source(SharedSource),
}

impl Default for Body {
    fn default() -> Self {
        Body::Bytes(Bytes::new())
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
            Body::Source(_) => f.write_str("Body::Source"),
        }
    }
}

impl Body {
    /// A body from a source.
    pub fn source(src: impl BodySource + 'static) -> Body {
        Body::Source(Arc::new(Mutex::new(Box::new(src))))
    }

    /// Gets the body ready to be sent again (a retry); false when it cannot be.
    pub(crate) fn rewind(&self) -> bool {
        match self {
            Body::Bytes(_) => true,
            Body::Source(s) => s.lock().unwrap_or_else(|p| p.into_inner()).rewind(),
        }
    }
}

/// Marks an error that a caller's [`BodySource`] reported, so that it maps to
/// [`ErrorKind::BodySource`] however hyper wraps it.
#[derive(Debug)]
pub(crate) struct SourceFailed(pub(crate) String);

impl fmt::Display for SourceFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceFailed {}

/// The most a body source is asked for at once.
const SOURCE_CHUNK: usize = 64 * 1024;

/// hyper's view of a request body.
pub(crate) enum ReqBody {
    Full(Option<Bytes>),
    Source {
        src: SharedSource,
        /// Bytes still to come when the length is known.
        remaining: Option<u64>,
        sent: u64,
    },
}

impl ReqBody {
    fn source_error(msg: String) -> io::Error {
        io::Error::other(SourceFailed(msg))
    }
}

impl hyper::body::Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(hyper::body::Frame::data(b))),
            ),
            ReqBody::Source {
                src,
                remaining,
                sent,
            } => {
                if *remaining == Some(0) {
                    return Poll::Ready(None);
                }
                let want = remaining.map_or(SOURCE_CHUNK, |r| r.min(SOURCE_CHUNK as u64) as usize);
                let mut buf = bytes::BytesMut::zeroed(want);
                let polled = src
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .poll_read(cx, &mut buf);
                match polled {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Self::source_error(format!(
                        "the request body source failed after {sent} bytes: {e}"
                    ))))),
                    Poll::Ready(Ok(0)) => match remaining {
                        Some(r) => Poll::Ready(Some(Err(Self::source_error(format!(
                            "the request body source ended after {sent} bytes, {r} short of its length"
                        ))))),
                        None => Poll::Ready(None),
                    },
                    Poll::Ready(Ok(n)) if n > want => {
                        Poll::Ready(Some(Err(Self::source_error(format!(
                            "the request body source returned {n} bytes for a {want}-byte buffer"
                        )))))
                    }
                    Poll::Ready(Ok(n)) => {
                        buf.truncate(n);
                        *sent += n as u64;
                        if let Some(r) = remaining {
                            *r -= n as u64;
                        }
                        Poll::Ready(Some(Ok(hyper::body::Frame::data(buf.freeze()))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            ReqBody::Source { remaining, .. } => *remaining == Some(0),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ReqBody::Full(b) => {
                hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            ReqBody::Source {
                remaining: Some(r), ..
            } => hyper::body::SizeHint::with_exact(*r),
            ReqBody::Source { .. } => hyper::body::SizeHint::default(),
        }
    }
}

/// A validated request, ready for the pool.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub target: Target,
    pub headers: HeaderMap,
    pub body: Body,
    /// Overall deadline: queueing, connecting, sending and reading.
    pub timeout: Option<Duration>,
    /// Keep a whole response's body in the pieces it arrived in ([`Response::rest`])
    /// instead of copying them into one buffer: set for the C ABI, whose response makes
    /// the body contiguous only when it is asked for that way, so that a binding can copy
    /// the pieces straight into a buffer of its own (one copy instead of two).
    pub(crate) pieces: bool,
}

impl Request {
    pub fn new(method: &str, url: &str) -> Result<Request> {
        Ok(Request {
            method: parse_method(method)?,
            target: parse_url(url)?,
            headers: HeaderMap::new(),
            body: Body::default(),
            timeout: None,
            pieces: false,
        })
    }

    pub fn header(mut self, name: &str, value: &str) -> Result<Request> {
        let (n, v) = parse_header(name.as_bytes(), value.as_bytes())?;
        self.headers.append(n, v);
        Ok(self)
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = Body::Bytes(body.into());
        self
    }

    /// A body read piece by piece from `src` (chunked unless it knows its length).
    pub fn body_source(mut self, src: impl BodySource + 'static) -> Request {
        self.body = Body::source(src);
        self
    }

    pub fn timeout(mut self, timeout: Option<Duration>) -> Request {
        self.timeout = timeout;
        self
    }

    /// Whether a failure before the first response byte may be retried on a new connection:
    /// idempotent methods (RFC 9110 §9.2.2), or any method with an `Idempotency-Key`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        ) || self.headers.contains_key("idempotency-key")
    }

    /// Builds the hyper request. `keep_alive` false adds `Connection: close`; `host`
    /// adds the `Host` header the URL gives when the caller has none (HTTP/1.1).
    pub(crate) fn to_hyper(
        &self,
        keep_alive: bool,
        user_agent: &HeaderValue,
        host: bool,
    ) -> http::Request<ReqBody> {
        let (body, body_len) = match &self.body {
            Body::Bytes(b) => (ReqBody::Full(Some(b.clone())), Some(b.len() as u64)),
            Body::Source(src) => {
                let length = src.lock().unwrap_or_else(|p| p.into_inner()).length();
                let body = ReqBody::Source {
                    src: src.clone(),
                    remaining: length,
                    sent: 0,
                };
                (body, length)
            }
        };
        let mut req = http::Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.target.path.clone();
        let h = req.headers_mut();
        h.reserve(self.headers.len() + 3);
        if host && !self.headers.contains_key(HOST) {
            h.insert(HOST, self.target.host.clone());
        }
        if !self.headers.contains_key(http::header::USER_AGENT) {
            h.insert(http::header::USER_AGENT, user_agent.clone());
        }
        for (k, v) in &self.headers {
            h.append(k, v.clone());
        }
        if !keep_alive {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        // An empty body of a method that normally has one says so (RFC 9110 §8.6); hyper
        // sends no framing at all for it.
        if body_len == Some(0)
            && matches!(self.method, Method::POST | Method::PUT | Method::PATCH)
            && !self.headers.contains_key(http::header::CONTENT_LENGTH)
            && !self.headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        req
    }
}

/// Per-response timings in microseconds. Phase durations (`queued_us`, `dns_us`,
/// `connect_us`, `tls_us`) are 0 when the phase did not happen (a reused connection has
/// no connect); `sent_us`, `ttfb_us` and `total_us` count from the start of the request,
/// as curl's `CURLINFO_PRETRANSFER_TIME`, `CURLINFO_STARTTRANSFER_TIME` and
/// `CURLINFO_TOTAL_TIME` do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub queued_us: u64,
    pub dns_us: u64,
    pub connect_us: u64,
    pub tls_us: u64,
    pub sent_us: u64,
    pub ttfb_us: u64,
    pub total_us: u64,
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A complete response: head, whole body, and how it was obtained.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// True when the request went out on a connection that had served an earlier request.
    pub reused: bool,
    pub timings: Timings,
    /// Trailer fields after the body (HTTP/2, or a chunked HTTP/1.1 body); `None` until the
    /// body has been read to its end, and when there are none.
    pub trailers: Option<Box<HeaderMap>>,
    /// The rest of the body after `body`, piece by piece, for a request that asked for
    /// [`Request::pieces`] (the C ABI's); empty otherwise, when `body` is the whole body.
    pub(crate) rest: Vec<Bytes>,
}

impl Response {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.get(name)
    }

    /// HTTP version as a number: 10, 11 or 20.
    pub fn version_number(&self) -> u32 {
        match self.version {
            Version::HTTP_09 => 9,
            Version::HTTP_10 => 10,
            Version::HTTP_11 => 11,
            Version::HTTP_2 => 20,
            Version::HTTP_3 => 30,
            _ => 0,
        }
    }
}

/// What a response says about reusing its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReuseHint {
    /// `Connection: close`, or HTTP/1.0 without keep-alive.
    Close,
    /// Keep it; `Some(t)` is a `Keep-Alive: timeout=t` hint.
    Keep(Option<Duration>),
}

/// Reads `Connection` and `Keep-Alive` from a response head. A malformed `Keep-Alive`
/// header is ignored (SPEC §6.11).
pub fn reuse_hint(version: Version, headers: &HeaderMap) -> ReuseHint {
    let mut close = version == Version::HTTP_10;
    for v in headers.get_all(CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let t = token.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                return ReuseHint::Close;
            }
            if t.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    if close {
        return ReuseHint::Close;
    }
    ReuseHint::Keep(
        headers
            .get("keep-alive")
            .and_then(|v| parse_keep_alive_timeout(v.as_bytes())),
    )
}

/// Parses the `timeout=N` parameter (seconds) of a `Keep-Alive` header.
pub fn parse_keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    let s = std::str::from_utf8(value).ok()?;
    for part in s.split(',') {
        let mut kv = part.splitn(2, '=');
        let k = kv.next()?.trim();
        if k.eq_ignore_ascii_case("timeout") {
            let v = kv.next()?.trim().trim_matches('"');
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 9 {
                return None;
            }
            return v.parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_url_is_reused_and_others_are_parsed() {
        let a = parse_url("http://Example.com:8080/a?x=1").unwrap();
        let b = parse_url("http://Example.com:8080/a?x=1").unwrap();
        assert_eq!(a.origin, b.origin);
        assert_eq!(
            (a.path.to_string(), a.host.clone()),
            (b.path.to_string(), b.host)
        );
        let c = parse_url("https://example.com/b").unwrap();
        assert_eq!(c.path, "/b");
        assert_eq!(c.origin.port, 443);
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(
            parse_url("ftp://example.com/").is_err(),
            "errors are not remembered"
        );
        let d = parse_url("http://Example.com:8080/a?x=1").unwrap();
        assert_eq!(d.origin.host, "example.com");
        assert_eq!(d.path, "/a?x=1");
    }

    #[test]
    fn urls_parse_into_origin_path_and_host() {
        let t = parse_url("http://127.0.0.1:8080/a/b?x=1#frag").unwrap();
        assert_eq!(t.origin.scheme, Scheme::Http);
        assert_eq!(t.origin.host, "127.0.0.1");
        assert_eq!(t.origin.port, 8080);
        assert_eq!(t.path, "/a/b?x=1");
        assert_eq!(t.host, "127.0.0.1:8080");

        let t = parse_url("HTTPS://Example.COM").unwrap();
        assert_eq!(t.origin.scheme, Scheme::Https);
        assert_eq!(t.origin.host, "example.com");
        assert_eq!(t.origin.port, 443);
        assert_eq!(t.path, "/");
        assert_eq!(t.host, "Example.COM");

        let t = parse_url("http://[::1]:9/?q").unwrap();
        assert_eq!(t.origin.host, "::1");
        assert_eq!(t.origin.authority(), "[::1]:9");
        assert_eq!(t.host, "[::1]:9");
        assert_eq!(t.path, "/?q");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "",
            "not a url",
            "/relative",
            "ftp://host/",
            "http://",
            "http://user:pw@host/",
            "http://host:0/",
            "http://host:99999/",
            "http://ho st/",
            "http://host/\r\nX: y",
            "http://[::1]8080/",
            "http://a[::1]:8080/",
            "http://[example.com]/",
            "http://[::1/",
        ] {
            let e = parse_url(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{url:?}");
        }
    }

    #[test]
    fn header_injection_is_refused() {
        assert!(parse_header(b"X-Ok", b"fine value").is_ok());
        for (n, v) in [
            (&b"X-A"[..], &b"a\r\nInjected: 1"[..]),
            (b"X-A", b"a\nb"),
            (b"X-A", b"a\0b"),
            (b"X A", b"v"),
            (b"X-A\r\n", b"v"),
            (b"", b"v"),
        ] {
            let e = parse_header(n, v).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
        assert!(parse_method("GET").is_ok());
        assert!(parse_method("PROPFIND").is_ok());
        for m in ["", "GE T", "GET\r\n", "G(ET"] {
            assert_eq!(
                parse_method(m).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn keep_alive_hints() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert_eq!(reuse_hint(Version::HTTP_11, &h(&[])), ReuseHint::Keep(None));
        assert_eq!(
            reuse_hint(Version::HTTP_11, &h(&[("connection", "Close")])),
            ReuseHint::Close
        );
        assert_eq!(reuse_hint(Version::HTTP_10, &h(&[])), ReuseHint::Close);
        assert_eq!(
            reuse_hint(Version::HTTP_10, &h(&[("connection", "keep-alive")])),
            ReuseHint::Keep(None)
        );
        assert_eq!(
            reuse_hint(
                Version::HTTP_11,
                &h(&[("keep-alive", "timeout=3, max=100")])
            ),
            ReuseHint::Keep(Some(Duration::from_secs(3)))
        );
        for bad in [
            "timeout=",
            "timeout=abc",
            "timeout=-1",
            "max=5",
            "timeout=1.5",
            "garbage",
        ] {
            assert_eq!(parse_keep_alive_timeout(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn retryable_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(Request::new(m, "http://h/").unwrap().is_retryable(), "{m}");
        }
        let post = Request::new("POST", "http://h/").unwrap();
        assert!(!post.is_retryable());
        assert!(
            post.header("Idempotency-Key", "abc")
                .unwrap()
                .is_retryable()
        );
    }

    #[test]
    fn absurd_timeouts_are_refused() {
        assert_eq!(request_timeout(0).unwrap(), None);
        assert_eq!(request_timeout(5).unwrap(), Some(Duration::from_millis(5)));
        assert_eq!(
            request_timeout(u32::MAX).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
