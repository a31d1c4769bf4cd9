//! A view inside (SPEC §8 `events` / `event_mask`): what the engine does with connections
//! and requests, as events — connect start and done, TLS done, request sent, response
//! head, retry, connection closed, queued and dequeued.
//!
//! One mechanism, surfaced three ways: a caller's sink (the C callback, which the Python
//! and Node bindings forward to `logging` and `diagnostics_channel`), and
//! `KEEPALIVE_AGENT_DEBUG=1`, which prints them to stderr in the manner of `curl -v`.
//! Off, an event costs one branch on a field of the agent's configuration. Header values
//! are carried only when asked for ([`WITH_HEADERS`]), and credentials never.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::error::Error;
use crate::http::Origin;

/// What happened. The C values are `AGENT_TRACE_*`; bit `1 << kind` selects it in a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// A request waits for a connection (the `max_sockets` limits are reached).
    Queued = 0,
    /// A queued request got a connection or the right to open one.
    Dequeued = 1,
    /// A TCP connection attempt to one address starts.
    ConnectStart = 2,
    /// That attempt connected, or failed (`error`).
    ConnectDone = 3,
    /// A TLS handshake completed (`detail`: version, ALPN, new or resumed session).
    TlsDone = 4,
    /// A request goes out on a connection (`reused`: the connection served one before).
    RequestSent = 5,
    /// A response head arrived (`status`, `version`).
    ResponseHead = 6,
    /// A request is sent again (`detail`: why).
    Retry = 7,
    /// A connection closed (`detail`: why).
    ConnectionClosed = 8,
}

impl TraceKind {
    pub(crate) const ALL: [TraceKind; 9] = [
        TraceKind::Queued,
        TraceKind::Dequeued,
        TraceKind::ConnectStart,
        TraceKind::ConnectDone,
        TraceKind::TlsDone,
        TraceKind::RequestSent,
        TraceKind::ResponseHead,
        TraceKind::Retry,
        TraceKind::ConnectionClosed,
    ];

    pub fn bit(self) -> u32 {
        1 << self as u32
    }

    /// Lower-case name, as the bindings publish it (`connect_start`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TraceKind::Queued => "queued",
            TraceKind::Dequeued => "dequeued",
            TraceKind::ConnectStart => "connect_start",
            TraceKind::ConnectDone => "connect_done",
            TraceKind::TlsDone => "tls_done",
            TraceKind::RequestSent => "request_sent",
            TraceKind::ResponseHead => "response_head",
            TraceKind::Retry => "retry",
            TraceKind::ConnectionClosed => "connection_closed",
        }
    }
}

/// Every kind.
pub(crate) const ALL_KINDS: u32 = (1 << TraceKind::ALL.len()) - 1;
/// Mask bit: request-sent and response-head events carry the headers (credentials and
/// cookies redacted).
pub(crate) const WITH_HEADERS: u32 = 1 << 31;

/// Header names whose values never appear in an event.
const REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CloseReason {
    /// Nobody said: the request holding it ended without giving it back.
    #[default]
    Unfinished = 0,
    ServerClosed,
    IdleTimeout,
    Lifetime,
    KeepAliveOff,
    NotReusable,
    PoolFull,
    Evicted,
    Error,
    Timeout,
    AgentClosed,
    Http2Ended,
}

impl CloseReason {
    /// Every reason, in the order of their values.
    const ALL: [CloseReason; 12] = [
        CloseReason::Unfinished,
        CloseReason::ServerClosed,
        CloseReason::IdleTimeout,
        CloseReason::Lifetime,
        CloseReason::KeepAliveOff,
        CloseReason::NotReusable,
        CloseReason::PoolFull,
        CloseReason::Evicted,
        CloseReason::Error,
        CloseReason::Timeout,
        CloseReason::AgentClosed,
        CloseReason::Http2Ended,
    ];

    pub(crate) fn from_u8(v: u8) -> CloseReason {
        Self::ALL.get(usize::from(v)).copied().unwrap_or_default()
    }

    pub fn describe(self) -> &'static str {
        match self {
            CloseReason::Unfinished => "its request ended before the response was read to the end",
            CloseReason::ServerClosed => "the server closed it",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::Lifetime => "max_socket_lifetime reached",
            CloseReason::KeepAliveOff => "keep-alive is off",
            CloseReason::NotReusable => {
                "the response did not allow reuse (Connection: close or a short Keep-Alive timeout)"
            }
            CloseReason::PoolFull => "max_free_sockets idle connections are kept already",
            CloseReason::Evicted => "room for another origin (max_total_sockets)",
            CloseReason::Error => "a request on it failed",
            CloseReason::Timeout => "a request on it timed out",
            CloseReason::AgentClosed => "the agent was closed",
            CloseReason::Http2Ended => {
                "the HTTP/2 connection ended (idle, lifetime, GOAWAY or error)"
            }
        }
    }
}

/// One event. Borrowed: a sink copies what it keeps.
#[derive(Debug)]
pub struct TraceEvent<'a> {
    pub kind: TraceKind,
    pub origin: &'a Origin,
    /// The connection's id in this process (0: none yet, as for `Queued`).
    pub connection: u64,
    /// The address connected to (connect events).
    pub address: Option<SocketAddr>,
    pub status: u16,
    /// 11 or 20 once known, else 0.
    pub version: u8,
    pub reused: bool,
    pub error: Option<&'a Error>,
    /// Words for people: the request line, the TLS parameters, a reason.
    pub detail: &'a str,
    /// Only with [`WITH_HEADERS`] (see [`Tracer::headers`]).
    pub headers: Option<&'a HeaderMap>,
}

impl<'a> TraceEvent<'a> {
    pub fn new(kind: TraceKind, origin: &'a Origin, connection: u64) -> TraceEvent<'a> {
        TraceEvent {
            kind,
            origin,
            connection,
            address: None,
            status: 0,
            version: 0,
            reused: false,
            error: None,
            detail: "",
            headers: None,
        }
    }
}

/// Receives events, on whichever thread they happen (a library thread, or a caller's in
/// the blocking path). It must be quick and must not block.
pub type Sink = Arc<dyn Fn(&TraceEvent<'_>) + Send + Sync>;

/// A caller's sink as an option value (printable, so that options stay `Debug`).
#[derive(Clone, Default)]
pub struct Events(pub Option<Sink>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Events({})",
            if self.0.is_some() { "set" } else { "none" }
        )
    }
}

/// An agent's event settings. Cheap to test: [`Tracer::wants`] is one load and a branch
/// when nothing listens.
#[derive(Clone, Default)]
pub struct Tracer {
    sink: Option<Sink>,
    /// Kinds delivered to `sink` (and the [`WITH_HEADERS`] bit).
    mask: u32,
    /// `KEEPALIVE_AGENT_DEBUG`: every event also goes to stderr.
    stderr: bool,
    /// Union of what `sink` and stderr want.
    wanted: u32,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sink", &self.sink.is_some())
            .field("mask", &self.mask)
            .field("stderr", &self.stderr)
            .finish()
    }
}

/// The variable that prints events to stderr.
pub const ENV_DEBUG: &str = "KEEPALIVE_AGENT_DEBUG";

impl Tracer {
    /// `sink` gets the kinds in `mask` (0: every kind).
    pub fn new(sink: Option<Sink>, mask: u32, stderr: bool) -> Tracer {
        let mask = if mask & ALL_KINDS == 0 {
            mask | ALL_KINDS
        } else {
            mask
        };
        let wanted =
            if sink.is_some() { mask & ALL_KINDS } else { 0 } | if stderr { ALL_KINDS } else { 0 };
        Tracer {
            sink,
            mask,
            stderr,
            wanted,
        }
    }

    /// Whether `KEEPALIVE_AGENT_DEBUG` asks for stderr output (`1`, `true`, any case).
    pub fn debug_from_env(get: impl Fn(&str) -> Option<String>) -> bool {
        get(ENV_DEBUG).is_some_and(|v| {
            let v = v.trim();
            v == "1" || v.eq_ignore_ascii_case("true")
        })
    }

    #[inline]
    pub fn wants(&self, kind: TraceKind) -> bool {
        self.wanted & kind.bit() != 0
    }

    /// Whether events should carry headers (the sink asked for them).
    pub fn headers(&self) -> bool {
        self.sink.is_some() && self.mask & WITH_HEADERS != 0
    }

    pub fn emit(&self, ev: &TraceEvent<'_>) {
        if self.stderr {
            eprintln!("{}", curl_style(ev));
        }
        if let Some(sink) = &self.sink {
            if self.mask & ev.kind.bit() != 0 {
                sink(ev);
            }
        }
    }
}

/// Headers as `Name: value` lines, credentials and cookies redacted.
pub fn header_lines(headers: &HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        let shown = if REDACTED.contains(&name.as_str()) {
            "[redacted]"
        } else {
            value.to_str().unwrap_or("[binary]")
        };
        let _ = write!(out, "{name}: {shown}\r\n");
    }
    out
}

/// `curl -v`'s way: `*` for the engine's own doings, `>` what is sent, `<` what came.
pub fn curl_style(ev: &TraceEvent<'_>) -> String {
    let o = ev.origin;
    let c = ev.connection;
    let addr = ev
        .address
        .map(|a| {
            let fam = if a.is_ipv6() { "IPv6" } else { "IPv4" };
            format!("{} port {} ({fam})", a.ip(), a.port())
        })
        .unwrap_or_default();
    let mut line = match ev.kind {
        TraceKind::Queued => format!("* {o}: request queued, waiting for a connection"),
        TraceKind::Dequeued => format!("* {o}: request dequeued ({})", ev.detail),
        TraceKind::ConnectStart => format!("*   Trying {addr} for {o} (#{c})..."),
        TraceKind::ConnectDone => match ev.error {
            None => format!("* Connected to {addr} for {o} (#{c})"),
            Some(e) => format!("* connect to {addr} failed: {}", e.message()),
        },
        TraceKind::TlsDone => format!("* TLS handshake done with {o} (#{c}): {}", ev.detail),
        TraceKind::RequestSent => format!(
            "> {} (#{c}, {})",
            ev.detail,
            if ev.reused {
                "reused"
            } else {
                "new connection"
            }
        ),
        TraceKind::ResponseHead => format!(
            "< HTTP/{} {} (#{c})",
            if ev.version == 20 { "2" } else { "1.1" },
            ev.status
        ),
        TraceKind::Retry => format!("* {o}: retrying (#{c}): {}", ev.detail),
        TraceKind::ConnectionClosed => format!("* Connection #{c} to {o} closed: {}", ev.detail),
    };
    if let Some(h) = ev.headers {
        let mark = if ev.kind == TraceKind::RequestSent {
            "> "
        } else {
            "< "
        };
        for l in header_lines(h).lines() {
            line.push('\n');
            line.push_str(mark);
            line.push_str(l);
        }
    }
    line
}

/// Words for a TLS session: `TLSv1.3, ALPN h2, resumed`.
pub(crate) fn tls_detail(conn: &rustls::ClientConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "none".to_string());
    let session = match conn.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "new session",
    };
    format!("{version}, ALPN {alpn}, {session}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn origin() -> Origin {
        (*crate::http::parse_url("http://127.0.0.1:8080/")
            .unwrap()
            .origin)
            .clone()
    }

    #[test]
    fn the_mask_selects_kinds_and_zero_means_all() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sink: Sink = Arc::new(move |e: &TraceEvent<'_>| s.lock().unwrap().push(e.kind));
        let t = Tracer::new(Some(sink.clone()), TraceKind::Retry.bit(), false);
        assert!(t.wants(TraceKind::Retry));
        assert!(!t.wants(TraceKind::Queued));
        assert!(!t.headers());
        let o = origin();
        t.emit(&TraceEvent::new(TraceKind::Queued, &o, 0));
        t.emit(&TraceEvent::new(TraceKind::Retry, &o, 1));
        assert_eq!(*seen.lock().unwrap(), vec![TraceKind::Retry]);
        let all = Tracer::new(Some(sink), WITH_HEADERS, false);
        assert!(TraceKind::ALL.iter().all(|k| all.wants(*k)));
        assert!(all.headers());
        let off = Tracer::default();
        assert!(TraceKind::ALL.iter().all(|k| !off.wants(*k)));
    }

    #[test]
    fn credentials_and_cookies_are_never_shown() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("proxy-authorization", "Basic c2VjcmV0".parse().unwrap());
        h.insert("cookie", "s=secret".parse().unwrap());
        h.insert("x-trace", "visible".parse().unwrap());
        let lines = header_lines(&h);
        assert!(
            !lines.contains("secret") && !lines.contains("c2VjcmV0"),
            "{lines}"
        );
        assert!(lines.contains("x-trace: visible\r\n"));
        assert_eq!(lines.matches("[redacted]").count(), 3);
    }

    #[test]
    fn stderr_lines_read_like_curl() {
        let o = origin();
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut e = TraceEvent::new(TraceKind::ConnectStart, &o, 7);
        e.address = Some(addr);
        assert_eq!(
            curl_style(&e),
            "*   Trying 127.0.0.1 port 8080 (IPv4) for http://127.0.0.1:8080 (#7)..."
        );
        let mut e = TraceEvent::new(TraceKind::RequestSent, &o, 7);
        e.detail = "GET / HTTP/1.1";
        e.reused = true;
        assert_eq!(curl_style(&e), "> GET / HTTP/1.1 (#7, reused)");
        let mut e = TraceEvent::new(TraceKind::ConnectionClosed, &o, 7);
        e.detail = CloseReason::IdleTimeout.describe();
        assert_eq!(
            curl_style(&e),
            "* Connection #7 to http://127.0.0.1:8080 closed: idle timeout"
        );
        assert!(Tracer::debug_from_env(|_| Some("1".into())));
        assert!(Tracer::debug_from_env(|_| Some("TRUE".into())));
        assert!(!Tracer::debug_from_env(|_| Some("0".into())));
        assert!(!Tracer::debug_from_env(|_| None));
    }

    #[test]
    fn close_reasons_round_trip() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(CloseReason::from_u8(i as u8), *r);
        }
        assert_eq!(CloseReason::from_u8(200), CloseReason::Unfinished);
    }
}
