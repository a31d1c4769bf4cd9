//! Hand-written HTTP/1.1 connection handling with scriptable faults.
//!
//! Query parameters of the request target (combinable, values percent-decoded):
//! `status`, `bytes`, `chunked`, `chunks`, `chunk_delay_ms`, `delay_ms`/`sleep_ms`,
//! `head_delay_ms`, `close`, `ka`, `ka_raw`, `idle_close_ms`, `idle_rst_ms`, `rst`,
//! `fin`, `rst_if_reused`, `fin_if_reused`, `rst_mid`, `fin_mid`, `echo`, `cl`,
//! `bad_status`, `bad_header`, `big_headers`, `infinite`.
//!
//! The HTTP/2 listeners (`h2.rs`) share the query syntax, the body pattern and the echo
//! format defined here.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use crate::{ConnTrack, Shared, json_str};

const MAX_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 8 * 1024;
pub(crate) const DEFAULT_BODY: &[u8] = b"hello, world\n";
/// Largest body slice written at once.
pub(crate) const SLICE: usize = 64 * 1024;
const INFINITE_CHUNK: usize = 4096;
const INFINITE_LIMIT: u64 = 256 * 1024 * 1024;

/// Access to the underlying TCP socket (for SO_LINGER).
pub(crate) trait HasTcp {
    fn tcp(&self) -> &TcpStream;
}

impl HasTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl HasTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

pub(crate) trait Io: AsyncRead + AsyncWrite + HasTcp + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + HasTcp + Unpin + Send> Io for T {}

/// Why reading a request failed.
enum ReadErr {
    /// EOF or I/O error: the client went away.
    Gone,
    /// Head larger than `MAX_HEAD`.
    TooLarge,
    /// Malformed request.
    Bad,
    /// The script said to reset the connection in the middle of the request body.
    Abort,
}

impl From<io::Error> for ReadErr {
    fn from(_: io::Error) -> Self {
        ReadErr::Gone
    }
}

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) version: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any `name` header contains the comma-separated token `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the client asked for the connection to be closed after this exchange.
    fn wants_close(&self) -> bool {
        self.has_token("connection", "close")
            || (self.version == "HTTP/1.0" && !self.has_token("connection", "keep-alive"))
    }
}

/// Offset just past the blank line ending the head, if present.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line_start > 0 && (line.is_empty() || line == b"\r") {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next()?.split_ascii_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return None;
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
    })
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value` pairs of the query of `target` (percent-decoded, in order; a bare `key`
/// has the value ""; anything after `#` is ignored).
pub(crate) fn query_pairs(target: &str) -> Vec<(String, String)> {
    let Some((_, query)) = target.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

/// Whether a flag parameter's value turns it on (anything but `0`, `false`, `no`).
pub(crate) fn flag_value(v: &str) -> bool {
    !matches!(v.trim(), "0" | "false" | "no")
}

/// `len` bytes of the a..z body pattern starting at body offset `from` (`len` <= `SLICE`).
pub(crate) fn pattern_slice(from: u64, len: usize) -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    let p = PATTERN.get_or_init(|| (0..SLICE + 26).map(|i| b'a' + (i % 26) as u8).collect());
    let start = (from % 26) as usize;
    &p[start..start + len]
}

/// The scripted behaviour of one request.
#[derive(Default)]
struct Script {
    status: Option<u16>,
    bytes: Option<u64>,
    chunked: bool,
    chunks: Option<u64>,
    chunk_delay_ms: u64,
    delay_ms: u64,
    head_delay_ms: u64,
    close: bool,
    ka: Option<String>,
    ka_raw: Option<String>,
    idle_close_ms: Option<u64>,
    idle_rst_ms: Option<u64>,
    rst: bool,
    fin: bool,
    rst_if_reused: bool,
    fin_if_reused: bool,
    rst_mid: bool,
    fin_mid: bool,
    echo: bool,
    cl: Option<u64>,
    bad_status: bool,
    bad_header: bool,
    big_headers: Option<u64>,
    infinite: bool,
    /// Reset the connection after this many request body bytes.
    body_rst_after: Option<u64>,
}

impl Script {
    fn parse(target: &str) -> Script {
        let mut s = Script::default();
        for (k, v) in query_pairs(target) {
            let num = v.trim().parse::<u64>().ok();
            let flag = flag_value(&v);
            match k.as_str() {
                "status" => s.status = v.trim().parse().ok(),
                "bytes" => s.bytes = num,
                "chunked" => s.chunked = flag,
                "chunks" => s.chunks = num,
                "chunk_delay_ms" => s.chunk_delay_ms = num.unwrap_or(0),
                "delay_ms" | "sleep_ms" => s.delay_ms = num.unwrap_or(0),
                "head_delay_ms" => s.head_delay_ms = num.unwrap_or(0),
                "close" => s.close = flag,
                "ka" => s.ka = Some(v),
                "ka_raw" => s.ka_raw = Some(v),
                "idle_close_ms" => s.idle_close_ms = num,
                "idle_rst_ms" => s.idle_rst_ms = num,
                "rst" => s.rst = flag,
                "fin" => s.fin = flag,
                "rst_if_reused" => s.rst_if_reused = flag,
                "fin_if_reused" => s.fin_if_reused = flag,
                "rst_mid" => s.rst_mid = flag,
                "fin_mid" => s.fin_mid = flag,
                "echo" => s.echo = flag,
                "cl" => s.cl = num,
                "bad_status" => s.bad_status = flag,
                "bad_header" => s.bad_header = flag,
                "big_headers" => s.big_headers = num,
                "infinite" => s.infinite = flag,
                "body_rst_after" => s.body_rst_after = num,
                _ => {}
            }
        }
        s
    }
}

/// A response body: literal bytes or `len` bytes of the a..z pattern.
enum Body {
    Bytes(Vec<u8>),
    Pattern(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Pattern(n) => *n,
        }
    }

    fn slice(&self, from: u64, to: u64) -> Cow<'_, [u8]> {
        match self {
            Body::Bytes(b) => Cow::Borrowed(&b[from as usize..to as usize]),
            // Callers never ask for more than `SLICE` bytes at once.
            Body::Pattern(_) => Cow::Borrowed(pattern_slice(from, (to - from) as usize)),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// What to do with the connection after a response.
enum After {
    KeepAlive,
    Fin,
    Rst,
}

struct Conn<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: Io> Conn<S> {
    /// Reads more bytes into `buf`; `Ok(0)` is EOF. Cancel-safe.
    /// Waits `ms`, watching the connection meanwhile: a client that closes or resets it ends
    /// the wait with an error at once (so the open-connection count drops when the client
    /// goes, not when the script next writes). Bytes the client sends meanwhile are kept.
    async fn pause(&mut self, ms: u64) -> io::Result<()> {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                r = self.fill() => match r {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client closed")),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                },
            }
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(16 * 1024);
        self.io.read_buf(&mut self.buf).await
    }

    async fn read_head(&mut self) -> Result<Request, ReadErr> {
        loop {
            // Tolerate stray CRLFs between requests.
            let skip = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.buf.drain(..skip);
            if let Some(end) = find_head_end(&self.buf) {
                let head: Vec<u8> = self.buf.drain(..end).collect();
                return parse_head(&head).ok_or(ReadErr::Bad);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(ReadErr::TooLarge);
            }
            if self.fill().await? == 0 {
                return Err(ReadErr::Gone);
            }
        }
    }

    async fn read_line(&mut self) -> Result<String, ReadErr> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            if self.buf.len() > MAX_LINE {
                return Err(ReadErr::Bad);
            }
            if self.fill().await? == 0 {
                return Err(ReadErr::Gone);
            }
        }
    }

    async fn discard(&mut self, mut n: u64, seen: &mut BodySeen) -> Result<(), ReadErr> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(ReadErr::Gone);
            }
            let mut take = n.min(self.buf.len() as u64);
            if let Some(limit) = seen.abort_after {
                take = take.min(limit.saturating_sub(seen.len));
                if take == 0 {
                    return Err(ReadErr::Abort);
                }
            }
            seen.add(&self.buf[..take as usize]);
            self.buf.drain(..take as usize);
            n -= take;
        }
        Ok(())
    }

    /// Reads and discards the request body; returns its length and FNV-1a hash.
    async fn read_body(
        &mut self,
        req: &Request,
        abort_after: Option<u64>,
    ) -> Result<BodySeen, ReadErr> {
        let mut seen = BodySeen::new(abort_after);
        let len = self.read_body_into(req, &mut seen).await?;
        debug_assert_eq!(len, seen.len);
        Ok(seen)
    }

    async fn read_body_into(&mut self, req: &Request, seen: &mut BodySeen) -> Result<u64, ReadErr> {
        if req.has_token("transfer-encoding", "chunked") {
            let mut total = 0;
            loop {
                let line = self.read_line().await?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16).map_err(|_| ReadErr::Bad)?;
                if size == 0 {
                    while !self.read_line().await?.is_empty() {}
                    return Ok(total);
                }
                self.discard(size, seen).await?;
                total += size;
                if !self.read_line().await?.is_empty() {
                    return Err(ReadErr::Bad);
                }
            }
        }
        match req.header("content-length") {
            None => Ok(0),
            Some(v) => {
                let n = v.trim().parse::<u64>().map_err(|_| ReadErr::Bad)?;
                self.discard(n, seen).await?;
                Ok(n)
            }
        }
    }

    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.io.write_all(data).await?;
        self.io.flush().await
    }

    /// Writes body bytes `from..to`, as one chunk when `chunked`.
    async fn write_range(
        &mut self,
        body: &Body,
        from: u64,
        to: u64,
        chunked: bool,
    ) -> io::Result<()> {
        if from >= to {
            return Ok(());
        }
        if chunked {
            self.io
                .write_all(format!("{:x}\r\n", to - from).as_bytes())
                .await?;
        }
        let mut pos = from;
        while pos < to {
            let end = to.min(pos + SLICE as u64);
            self.io.write_all(&body.slice(pos, end)).await?;
            pos = end;
        }
        if chunked {
            self.io.write_all(b"\r\n").await?;
        }
        self.io.flush().await
    }

    /// Sends a minimal response (used for errors and the admin listener).
    async fn simple(&mut self, status: u16, body: &str, close: bool) -> io::Result<()> {
        let mut h = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reason(status),
            body.len()
        );
        if close {
            h.push_str("Connection: close\r\n");
        }
        h.push_str("\r\n");
        h.push_str(body);
        self.send(h.as_bytes()).await
    }

    /// Graceful close: TLS close_notify (if TLS) and FIN.
    async fn close_fin(mut self) {
        let _ = timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }

    /// Abortive close: SO_LINGER 0, then drop, which sends RST.
    fn close_rst(self) {
        let _ = socket2::SockRef::from(self.io.tcp()).set_linger(Some(Duration::ZERO));
    }

    async fn close(self, how: After) {
        match how {
            After::Rst => self.close_rst(),
            _ => self.close_fin().await,
        }
    }
}

/// What the server saw of a request body: its length and FNV-1a 64 hash (so a test can
/// check a large upload arrived intact without the server keeping it).
pub(crate) struct BodySeen {
    pub(crate) len: u64,
    pub(crate) fnv: u64,
    abort_after: Option<u64>,
}

impl BodySeen {
    pub(crate) fn new(abort_after: Option<u64>) -> BodySeen {
        BodySeen {
            len: 0,
            fnv: 0xcbf2_9ce4_8422_2325,
            abort_after,
        }
    }

    pub(crate) fn add(&mut self, data: &[u8]) {
        for &b in data {
            self.fnv = (self.fnv ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.len += data.len() as u64;
    }
}

/// The JSON served by `echo=1`: method, target, version, headers as received (in order),
/// `body_len`, `body_fnv` (FNV-1a 64, 16 hex digits) and the client's `remote_port`.
pub(crate) fn echo_json(req: &Request, body: &BodySeen, remote_port: u16) -> String {
    let body_len = body.len;
    let body_fnv = body.fnv;
    let mut s = String::from("{\"method\":");
    json_str(&mut s, &req.method);
    s.push_str(",\"target\":");
    json_str(&mut s, &req.target);
    s.push_str(",\"version\":");
    json_str(&mut s, &req.version);
    s.push_str(",\"headers\":[");
    for (i, (n, v)) in req.headers.iter().enumerate() {
        s.push_str(if i == 0 { "[" } else { ",[" });
        json_str(&mut s, n);
        s.push(',');
        json_str(&mut s, v);
        s.push(']');
    }
    let _ = write!(
        s,
        "],\"body_len\":{body_len},\"body_fnv\":\"{body_fnv:016x}\",\"remote_port\":{remote_port}}}"
    );
    s
}

/// Writes the scripted response; returns what to do with the connection afterwards.
async fn respond<S: Io>(
    c: &mut Conn<S>,
    req: &Request,
    body: &BodySeen,
    sc: &Script,
    track: &ConnTrack,
    n: u64,
) -> io::Result<After> {
    if sc.delay_ms > 0 {
        c.pause(sc.delay_ms).await?;
    }
    let reused = n > 1;
    if sc.rst || (sc.rst_if_reused && reused) {
        return Ok(After::Rst);
    }
    if sc.fin || (sc.fin_if_reused && reused) {
        return Ok(After::Fin);
    }

    let status = sc.status.unwrap_or(200);
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let is_head = req.method.eq_ignore_ascii_case("HEAD");
    let (body, ctype) = if bodiless {
        (Body::Bytes(Vec::new()), "text/plain")
    } else if sc.echo {
        let json = echo_json(req, body, track.remote_port);
        (Body::Bytes(json.into_bytes()), "application/json")
    } else if let Some(n) = sc.bytes {
        (Body::Pattern(n), "text/plain")
    } else {
        (Body::Bytes(DEFAULT_BODY.to_vec()), "text/plain")
    };
    let len = body.len();
    let chunked = (sc.chunked || sc.infinite) && sc.cl.is_none() && !bodiless;
    let client_close = req.wants_close();
    let close_after = sc.close || client_close || sc.cl.is_some() || sc.bad_status || sc.bad_header;

    let mut h = if sc.bad_status {
        String::from("HTTP/1.1 abc OK\r\n")
    } else {
        format!("HTTP/1.1 {status} {}\r\n", reason(status))
    };
    let status_line_len = h.len();
    let _ = write!(h, "Content-Type: {ctype}\r\n");
    if let Some(cl) = sc.cl {
        let _ = write!(h, "Content-Length: {cl}\r\n");
    } else if chunked {
        h.push_str("Transfer-Encoding: chunked\r\n");
    } else if !bodiless {
        let _ = write!(h, "Content-Length: {len}\r\n");
    }
    let _ = write!(
        h,
        "X-Remote-Port: {}\r\nX-Conn-Requests: {n}\r\nX-Conn-Id: {}\r\n",
        track.remote_port, track.id
    );
    if sc.close || client_close {
        h.push_str("Connection: close\r\n");
    } else if req.version == "HTTP/1.0" {
        h.push_str("Connection: keep-alive\r\n");
    }
    if let Some(ka) = &sc.ka {
        let _ = write!(h, "Keep-Alive: timeout={ka}\r\n");
    }
    if let Some(raw) = &sc.ka_raw {
        let _ = write!(h, "Keep-Alive: {raw}\r\n");
    }
    if let Some(total) = sc.big_headers {
        let start = h.len() as u64;
        let mut i = 0;
        while (h.len() as u64) - start < total {
            let remaining = (total - (h.len() as u64 - start)) as usize;
            let pad = remaining.saturating_sub(16).clamp(1, 1000);
            let _ = write!(h, "X-Pad-{i}: {}\r\n", "x".repeat(pad));
            i += 1;
        }
    }
    if sc.bad_header {
        h.push_str("X-Bad-Header-Without-Colon\r\n");
    }
    h.push_str("\r\n");

    if sc.head_delay_ms > 0 {
        c.send(&h.as_bytes()[..status_line_len]).await?;
        c.pause(sc.head_delay_ms).await?;
        c.send(&h.as_bytes()[status_line_len..]).await?;
    } else {
        c.send(h.as_bytes()).await?;
    }
    let done = if close_after {
        After::Fin
    } else {
        After::KeepAlive
    };
    if is_head || bodiless {
        return Ok(done);
    }

    if sc.infinite {
        let data = Body::Pattern(INFINITE_CHUNK as u64);
        let mut sent = 0;
        while sent < INFINITE_LIMIT {
            if sent > 0 && sc.chunk_delay_ms > 0 {
                c.pause(sc.chunk_delay_ms).await?;
            }
            c.write_range(&data, 0, INFINITE_CHUNK as u64, true).await?;
            sent += INFINITE_CHUNK as u64;
        }
        c.send(b"0\r\n\r\n").await?;
        return Ok(done);
    }

    if sc.rst_mid || sc.fin_mid {
        c.write_range(&body, 0, len / 2, chunked).await?;
        // Let the bytes leave the send buffer before a possible RST discards them.
        sleep(Duration::from_millis(20)).await;
        return Ok(if sc.rst_mid { After::Rst } else { After::Fin });
    }

    if chunked {
        let k = sc.chunks.unwrap_or(1).clamp(1, len.max(1));
        for i in 0..k {
            if i > 0 && sc.chunk_delay_ms > 0 {
                c.pause(sc.chunk_delay_ms).await?;
            }
            c.write_range(&body, len * i / k, len * (i + 1) / k, true)
                .await?;
        }
        if len > 0 && sc.chunk_delay_ms > 0 {
            c.pause(sc.chunk_delay_ms).await?;
        }
        c.send(b"0\r\n\r\n").await?;
    } else {
        c.write_range(&body, 0, len, false).await?;
    }
    Ok(done)
}

/// Serves one counted connection; returns true if the client closed first.
pub(crate) async fn serve<S: Io>(io: S, track: &mut ConnTrack) -> bool {
    let mut c = Conn {
        io,
        buf: Vec::new(),
    };
    loop {
        let req = match c.read_head().await {
            Ok(r) => r,
            Err(ReadErr::Gone) => return true,
            Err(e) => {
                let status = if matches!(e, ReadErr::TooLarge) {
                    431
                } else {
                    400
                };
                let _ = c.simple(status, "{}", true).await;
                c.close_fin().await;
                return false;
            }
        };
        let n = track.on_request();
        let sc = Script::parse(&req.target);
        if req.version != "HTTP/1.0"
            && req.has_token("expect", "100-continue")
            && c.send(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
        {
            return true;
        }
        let body = match c.read_body(&req, sc.body_rst_after).await {
            Ok(seen) => seen,
            Err(ReadErr::Gone) => return true,
            Err(ReadErr::Abort) => {
                c.close_rst();
                return false;
            }
            Err(_) => {
                let _ = c.simple(400, "{}", true).await;
                c.close_fin().await;
                return false;
            }
        };
        match respond(&mut c, &req, &body, &sc, track, n).await {
            Ok(After::KeepAlive) => {}
            Ok(how) => {
                c.close(how).await;
                return false;
            }
            // A failed write means the client is gone.
            Err(_) => return true,
        }
        let idle = match (sc.idle_close_ms, sc.idle_rst_ms) {
            (_, Some(ms)) => Some((ms, After::Rst)),
            (Some(ms), None) => Some((ms, After::Fin)),
            (None, None) => None,
        };
        if let Some((ms, how)) = idle
            && c.buf.is_empty()
        {
            match timeout(Duration::from_millis(ms), c.fill()).await {
                Err(_) => {
                    c.close(how).await;
                    return false;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Serves one admin connection: `GET /stats`, `POST|GET /reset`, `POST|GET /h2[?...]`.
pub(crate) async fn serve_admin(io: TcpStream, shared: Arc<Shared>) {
    let mut c = Conn {
        io,
        buf: Vec::new(),
    };
    loop {
        let req = match c.read_head().await {
            Ok(r) => r,
            Err(ReadErr::Gone) => return,
            Err(_) => {
                let _ = c.simple(400, "{\"error\":\"bad request\"}", true).await;
                return c.close_fin().await;
            }
        };
        if c.read_body(&req, None).await.is_err() {
            return;
        }
        let path = req.target.split(['?', '#']).next().unwrap_or("");
        let (status, body) = match path {
            "/stats" => (200, shared.snapshot().to_json()),
            "/reset" => {
                shared.reset();
                (200, "{}".to_string())
            }
            "/h2" if req.target.contains('?') || req.method.eq_ignore_ascii_case("POST") => {
                match crate::H2Script::from_query(&req.target) {
                    Ok(script) => {
                        let json = script.to_json();
                        shared.set_h2_script(script);
                        (200, json)
                    }
                    Err(e) => {
                        let mut body = String::from("{\"error\":");
                        json_str(&mut body, &e);
                        body.push('}');
                        (400, body)
                    }
                }
            }
            "/h2" => (200, shared.h2_script().to_json()),
            _ => (404, "{\"error\":\"not found\"}".to_string()),
        };
        let close = req.wants_close();
        if c.simple(status, &body, close).await.is_err() {
            return;
        }
        if close {
            return c.close_fin().await;
        }
    }
}
