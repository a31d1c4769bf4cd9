//! HTTP/2 connections (the `h2` crate, server side) with scriptable faults.
//!
//! # Per-stream script
//!
//! Query parameters of the `:path`, combinable, same syntax as the HTTP/1.1 listeners
//! (percent-decoded; a flag is on unless its value is `0`, `false` or `no`):
//!
//! - (none): `200`, `content-type: text/plain`, body `hello, world\n`.
//! - `status=N`: the final status (default 200; 204 and 304 have no body). A 1xx status is
//!   sent as an interim (informational) HEADERS frame, followed by the usual 200 response.
//! - `bytes=N`: a body of N bytes of the a..z pattern (`abc...zabc...`, like HTTP/1.1),
//!   sent as flow control allows in pieces of at most 64 KiB taken from one static buffer
//!   (constant memory, whatever N).
//! - `echo=1`: the JSON of the HTTP/1.1 `echo`: `{"method","target" (the :path),"version":
//!   "HTTP/2.0","headers" (the regular header fields received, names lower-case, grouped by
//!   name in the order each name first appeared — the order of `http::HeaderMap`),
//!   "body_len","body_fnv","remote_port"}` followed by the extra keys `"authority"` (the
//!   :authority, or null), `"scheme"` (or null) and `"stream_id"`; `content-type:
//!   application/json`.
//! - `delay_ms=N` (or `sleep_ms=N`): wait N ms before the response head (a client reset
//!   meanwhile ends the stream and is counted).
//! - `rst=REASON`: reset the stream (RST_STREAM with that error code) before any head and
//!   without reading the request body. REASON is a name, case-insensitive, `-` or `_`:
//!   `no_error`, `protocol_error`, `internal_error`, `flow_control_error`,
//!   `settings_timeout`, `stream_closed`, `frame_size_error`, `refused_stream`, `cancel`,
//!   `compression_error`, `connect_error`, `enhance_your_calm`, `inadequate_security`,
//!   `http_1_1_required`; or a number (`rst=8` is CANCEL); anything else is INTERNAL_ERROR.
//! - `rst_after=N`: send the head (with the full `content-length`) and the first N body
//!   bytes, wait until the connection has written them, then RST_STREAM INTERNAL_ERROR.
//! - `stall_after=N`: send the head (full `content-length`) and the first N body bytes,
//!   then nothing more on this stream: no END_STREAM, no reset. The stream and the
//!   connection stay open (other streams keep working) until the client resets the stream
//!   or the connection ends.
//! - `trailers=1`: end the body with a trailers HEADERS frame `x-checksum: <FNV-1a 64 of
//!   the body sent, 16 hex digits>` (the format of `body_fnv`) instead of END_STREAM on the
//!   last DATA frame.
//!
//! Every response head carries `x-remote-port`, `x-conn-id`, `x-conn-requests` (this
//! stream's number on its connection, 1-based) and `x-stream-id`. The request body is read
//! to its end (its flow-control capacity released as it arrives) before any response.
//!
//! # Per-connection script
//!
//! See [`H2Script`]: `max_streams`, `goaway_after`, `refuse_every`, `stall_conn_after`.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_rustls::LazyConfigAcceptor;

use crate::conn::{self, BodySeen, DEFAULT_BODY, SLICE};
use crate::{ConnTrack, H2Script, Shared, json_str};

/// Send capacity asked for at a time.
const RESERVE: u64 = 4 * SLICE as u64;

/// A fatal `no_application_protocol` TLS alert record (sent to a client not offering h2).
const NO_APPLICATION_PROTOCOL_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78];

/// The scripted behaviour of one stream.
#[derive(Default)]
struct StreamScript {
    status: Option<u16>,
    bytes: Option<u64>,
    echo: bool,
    delay_ms: u64,
    rst: Option<Reason>,
    rst_after: Option<u64>,
    stall_after: Option<u64>,
    trailers: bool,
}

fn parse_reason(v: &str) -> Reason {
    let v = v.trim().to_ascii_uppercase().replace('-', "_");
    if let Ok(n) = v.parse::<u32>() {
        return Reason::from(n);
    }
    match v.as_str() {
        "NO_ERROR" => Reason::NO_ERROR,
        "PROTOCOL_ERROR" => Reason::PROTOCOL_ERROR,
        "FLOW_CONTROL_ERROR" => Reason::FLOW_CONTROL_ERROR,
        "SETTINGS_TIMEOUT" => Reason::SETTINGS_TIMEOUT,
        "STREAM_CLOSED" => Reason::STREAM_CLOSED,
        "FRAME_SIZE_ERROR" => Reason::FRAME_SIZE_ERROR,
        "REFUSED_STREAM" => Reason::REFUSED_STREAM,
        "CANCEL" => Reason::CANCEL,
        "COMPRESSION_ERROR" => Reason::COMPRESSION_ERROR,
        "CONNECT_ERROR" => Reason::CONNECT_ERROR,
        "ENHANCE_YOUR_CALM" => Reason::ENHANCE_YOUR_CALM,
        "INADEQUATE_SECURITY" => Reason::INADEQUATE_SECURITY,
        "HTTP_1_1_REQUIRED" => Reason::HTTP_1_1_REQUIRED,
        _ => Reason::INTERNAL_ERROR,
    }
}

impl StreamScript {
    fn parse(target: &str) -> StreamScript {
        let mut s = StreamScript::default();
        for (k, v) in conn::query_pairs(target) {
            let num = v.trim().parse::<u64>().ok();
            match k.as_str() {
                "status" => s.status = v.trim().parse().ok(),
                "bytes" => s.bytes = num,
                "echo" => s.echo = conn::flag_value(&v),
                "delay_ms" | "sleep_ms" => s.delay_ms = num.unwrap_or(0),
                "rst" => s.rst = Some(parse_reason(&v)),
                "rst_after" => s.rst_after = num,
                "stall_after" => s.stall_after = num,
                "trailers" => s.trailers = conn::flag_value(&v),
                _ => {}
            }
        }
        s
    }
}

/// What a stream task tells its connection's driver.
enum Ev {
    /// The stream's last frame (END_STREAM or RST_STREAM) is queued.
    Finished,
    /// Answer once everything queued so far has been written to the socket.
    Flush(oneshot::Sender<()>),
}

/// What a stream task needs to know of its connection.
struct Ctx {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Ev>,
    conn_id: u64,
    remote_port: u16,
    /// 1-based number of the stream on its connection.
    n: u64,
}

impl Ctx {
    fn finished(&self) {
        let _ = self.events.send(Ev::Finished);
    }

    /// Waits until the connection has written what this stream queued so far (or is gone).
    async fn flushed(&self) {
        let (tx, rx) = oneshot::channel();
        if self.events.send(Ev::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Serves one HTTP/2-with-prior-knowledge connection; returns true if the client closed
/// first.
pub(crate) async fn serve(tcp: TcpStream, script: H2Script, track: &mut ConnTrack) -> bool {
    let raw = dup_for_stall(&tcp, &script);
    serve_h2(tcp, raw, script, track).await
}

/// Serves one TLS connection that must negotiate `h2` by ALPN; returns true if the client
/// closed first.
pub(crate) async fn serve_tls(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    script: H2Script,
    track: &mut ConnTrack,
) -> bool {
    let raw = dup_for_stall(&tcp, &script);
    let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await {
        Ok(start) => start,
        Err(_) => return true,
    };
    let offers_h2 = start
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == b"h2"));
    if !offers_h2 {
        // rustls would carry on without ALPN when the client offers none; refuse it the way
        // it refuses a client whose offers do not overlap.
        let mut io = start.io;
        let _ = io.write_all(&NO_APPLICATION_PROTOCOL_ALERT).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
        return false;
    }
    match start.into_stream(config).await {
        Ok(tls) => serve_h2(tls, raw, script, track).await,
        // Handshake failures are almost always the client rejecting us.
        Err(_) => true,
    }
}

/// A second descriptor of the socket, kept when the script may stall the connection: once
/// stalled, the h2 connection is no longer polled, and this one watches for the client
/// closing (its bytes are read and thrown away).
fn dup_for_stall(tcp: &TcpStream, script: &H2Script) -> Option<std::net::TcpStream> {
    script.stall_conn_after?;
    socket2::SockRef::from(tcp)
        .try_clone()
        .ok()
        .map(std::net::TcpStream::from)
}

fn closed_by_client(e: &h2::Error) -> bool {
    e.is_io() || e.is_remote()
}

enum Step {
    Stream(Box<(Request<RecvStream>, SendResponse<Bytes>)>),
    Closed(bool),
    Stall,
}

async fn serve_h2<T>(
    io: T,
    raw: Option<std::net::TcpStream>,
    script: H2Script,
    track: &mut ConnTrack,
) -> bool
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    if let Some(n) = script.max_streams {
        builder.max_concurrent_streams(n);
    }
    let mut conn = match builder.handshake::<T, Bytes>(io).await {
        Ok(c) => c,
        Err(e) => return closed_by_client(&e),
    };
    let (events, mut rx) = mpsc::unbounded_channel::<Ev>();
    let mut armed: Vec<Ev> = Vec::new();
    let mut finished = 0u64;
    let mut tasks = JoinSet::new();
    let mut going_away = false;
    if script.goaway_after == Some(0) {
        conn.graceful_shutdown();
        going_away = true;
    }
    loop {
        let step = poll_fn(|cx| {
            while let Poll::Ready(Some(_)) = tasks.poll_join_next(cx) {}
            while let Poll::Ready(Some(ev)) = rx.poll_recv(cx) {
                armed.push(ev);
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok(accepted))) => Poll::Ready(Step::Stream(Box::new(accepted))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Step::Closed(closed_by_client(&e))),
                Poll::Ready(None) => Poll::Ready(Step::Closed(!going_away)),
                Poll::Pending => {
                    // The connection only returns Pending once it has written and flushed
                    // every frame the streams had queued (and flow control allowed), so the
                    // events armed before this poll are now on the wire.
                    for ev in armed.drain(..) {
                        match ev {
                            Ev::Finished => finished += 1,
                            Ev::Flush(tx) => {
                                let _ = tx.send(());
                            }
                        }
                    }
                    if script.stall_conn_after.is_some_and(|n| finished >= n) {
                        Poll::Ready(Step::Stall)
                    } else {
                        Poll::Pending
                    }
                }
            }
        })
        .await;
        match step {
            Step::Stream(accepted) => {
                let (req, mut respond) = *accepted;
                let n = track.on_request();
                let after_goaway = script.goaway_after.is_some_and(|g| n > g);
                let refused = script.refuse_every.is_some_and(|k| n.is_multiple_of(k));
                if after_goaway || refused {
                    respond.send_reset(Reason::REFUSED_STREAM);
                    track.shared.count_stream_refused();
                } else {
                    let ctx = Ctx {
                        shared: Arc::clone(&track.shared),
                        events: events.clone(),
                        conn_id: track.id,
                        remote_port: track.remote_port,
                        n,
                    };
                    tasks.spawn(stream(req, respond, ctx));
                }
                if script.goaway_after == Some(n) {
                    conn.graceful_shutdown();
                    going_away = true;
                }
            }
            Step::Closed(by_client) => return by_client,
            Step::Stall => break,
        }
    }

    // Stalled: the h2 connection (and the stream tasks) stay as they are, never polled
    // again; wait for the client to close the socket.
    if let Some(raw) = raw
        && let Ok(mut raw) = TcpStream::from_std(raw)
    {
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(raw.read(&mut sink).await, Ok(n) if n > 0) {}
    } else {
        std::future::pending::<()>().await;
    }
    drop(conn);
    true
}

/// A response body: literal bytes or `len` bytes of the a..z pattern.
enum Body {
    Bytes(Bytes),
    Pattern(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Pattern(n) => *n,
        }
    }

    /// Bytes `from..to` (at most `SLICE` of them), without copying.
    fn piece(&self, from: u64, to: u64) -> Bytes {
        match self {
            Body::Bytes(b) => b.slice(from as usize..to as usize),
            Body::Pattern(_) => Bytes::from_static(conn::pattern_slice(from, (to - from) as usize)),
        }
    }
}

/// Whether the client has reset the stream (to be asked after a send failed).
async fn reset_by_peer(stream: &mut SendStream<Bytes>) -> bool {
    poll_fn(|cx| Poll::Ready(matches!(stream.poll_reset(cx), Poll::Ready(Ok(_))))).await
}

/// Sends body bytes `0..upto` as flow control allows; END_STREAM on the last piece when
/// `eos`. Feeds what it sends to `sum` when given. Err when the stream or connection failed.
async fn send_body(
    stream: &mut SendStream<Bytes>,
    body: &Body,
    upto: u64,
    eos: bool,
    mut sum: Option<&mut BodySeen>,
) -> Result<(), ()> {
    let mut pos = 0;
    while pos < upto {
        let mut cap = stream.capacity();
        if cap == 0 {
            // Ask for the next stretch (bounded, so that concurrent streams share the
            // connection window) and wait for the peer's windows to grant some.
            stream.reserve_capacity((upto - pos).min(RESERVE) as usize);
            match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                _ => return Err(()),
            }
            cap = stream.capacity();
            if cap == 0 {
                continue;
            }
        }
        let end = upto.min(pos + cap.min(SLICE) as u64);
        let piece = body.piece(pos, end);
        if let Some(sum) = sum.as_deref_mut() {
            sum.add(&piece);
        }
        stream
            .send_data(piece, eos && end == upto)
            .map_err(|_| ())?;
        pos = end;
    }
    Ok(())
}

fn echo_json(
    parts: &http::request::Parts,
    target: &str,
    body: &BodySeen,
    ctx: &Ctx,
    id: u32,
) -> String {
    let req = conn::Request {
        method: parts.method.as_str().to_string(),
        target: target.to_string(),
        version: "HTTP/2.0".to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    let mut s = conn::echo_json(&req, body, ctx.remote_port);
    s.pop(); // the closing brace
    let mut opt = |key: &str, v: Option<&str>| {
        s.push_str(",\"");
        s.push_str(key);
        s.push_str("\":");
        match v {
            Some(v) => json_str(&mut s, v),
            None => s.push_str("null"),
        }
    };
    opt("authority", parts.uri.authority().map(|a| a.as_str()));
    opt("scheme", parts.uri.scheme_str());
    s.push_str(&format!(",\"stream_id\":{id}}}"));
    s
}

/// Runs the script of one stream.
async fn stream(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, ctx: Ctx) {
    let target = req.uri().path_and_query().map_or_else(
        || req.uri().path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let sc = StreamScript::parse(&target);
    if let Some(reason) = sc.rst {
        respond.send_reset(reason);
        ctx.finished();
        return;
    }

    let (parts, mut body) = req.into_parts();
    let mut seen = BodySeen::new(None);
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                seen.add(&chunk);
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Err(e) => {
                if e.is_reset() && e.is_remote() {
                    ctx.shared.count_stream_reset_by_client();
                }
                return;
            }
        }
    }

    if sc.delay_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sc.delay_ms)) => {}
            r = poll_fn(|cx| respond.poll_reset(cx)) => {
                if r.is_ok() {
                    ctx.shared.count_stream_reset_by_client();
                }
                return;
            }
        }
    }

    let id = respond.stream_id().as_u32();
    let mut status = StatusCode::from_u16(sc.status.unwrap_or(200)).unwrap_or(StatusCode::OK);
    if status.is_informational() {
        let mut interim = Response::new(());
        *interim.status_mut() = status;
        if respond.send_informational(interim).is_err() {
            return;
        }
        status = StatusCode::OK;
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let (body, ctype) = if bodiless {
        (Body::Bytes(Bytes::new()), "text/plain")
    } else if sc.echo {
        let json = echo_json(&parts, &target, &seen, &ctx, id);
        (Body::Bytes(Bytes::from(json)), "application/json")
    } else if let Some(n) = sc.bytes {
        (Body::Pattern(n), "text/plain")
    } else {
        (Body::Bytes(Bytes::from_static(DEFAULT_BODY)), "text/plain")
    };
    let len = body.len();

    let mut resp = Response::new(());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    if !bodiless {
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    h.insert("x-remote-port", HeaderValue::from(ctx.remote_port));
    h.insert("x-conn-id", HeaderValue::from(ctx.conn_id));
    h.insert("x-conn-requests", HeaderValue::from(ctx.n));
    h.insert("x-stream-id", HeaderValue::from(id));

    let body_len = if parts.method == Method::HEAD || bodiless {
        0
    } else {
        len
    };
    let cut = sc.rst_after.or(sc.stall_after).map(|n| n.min(body_len));
    let upto = cut.unwrap_or(body_len);
    let trailers = cut.is_none() && sc.trailers;
    let eos = cut.is_none() && !trailers;
    let mut stream = match respond.send_response(resp, eos && upto == 0) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut sum = BodySeen::new(None);
    if send_body(&mut stream, &body, upto, eos, trailers.then_some(&mut sum))
        .await
        .is_err()
    {
        if reset_by_peer(&mut stream).await {
            ctx.shared.count_stream_reset_by_client();
        }
        return;
    }
    if trailers {
        let mut t = HeaderMap::new();
        let sum = format!("{:016x}", sum.fnv);
        t.insert(
            "x-checksum",
            HeaderValue::from_str(&sum).expect("hex is a valid value"),
        );
        if stream.send_trailers(t).is_err() {
            return;
        }
    }
    if sc.rst_after.is_some() {
        // RST_STREAM drops whatever the stream still has queued: let it leave first.
        ctx.flushed().await;
        stream.send_reset(Reason::INTERNAL_ERROR);
    } else if sc.stall_after.is_some() {
        // Hold the stream open, sending nothing, until the client resets it or the
        // connection ends.
        if poll_fn(|cx| stream.poll_reset(cx)).await.is_ok() {
            ctx.shared.count_stream_reset_by_client();
        }
        return;
    }
    ctx.finished();
}
