//! One request/response exchange on one connection: send the head and body, read the head
//! (within the headers timeout) and the body (within the gap timeout and the size cap),
//! say what the response allows for reuse (`Connection`, `Keep-Alive`), and map hyper's
//! errors to ours. Streaming bodies change this file.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::conn::Conn;
use crate::error::{Error, ErrorKind, chain_message, find_io_error};
use crate::h2::StreamLease;
use crate::http::{
    Origin, Request, Response, ReuseHint, Scheme, SourceFailed, Timings, micros, reuse_hint,
};
use crate::options::Config;
use crate::proxy::Proxy;

/// A whole body is collected into one buffer sized from `Content-Length`, but never
/// reserved beyond this up front: a lying or huge length grows the buffer as data arrives.
const MAX_BODY_PREALLOC: usize = 64 << 20;

/// How an exchange failed. The connection is unusable in every case.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection had ended before the request was sent: safe to retry for any method.
    NotSent,
    /// Failed on a reused connection before any response byte (reset, EOF, broken pipe):
    /// the request may be retried on a new connection when it is safe to.
    Stale(Error),
    /// HTTP/2: the server refused the stream (`REFUSED_STREAM`) or went away
    /// (`GOAWAY`) before processing it: safe to retry on another connection for any
    /// method, when the body can be sent again.
    Refused(Error, GoneAway),
    /// Any other failure.
    Failed(Error),
}

/// Whether a refused HTTP/2 stream's connection takes no more streams (GOAWAY, or the
/// connection is gone) or was only at its limit (REFUSED_STREAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GoneAway(pub(crate) bool);

/// What a response body is read through: polling it makes progress on the connection.
/// An HTTP/1.1 connection is driven inline by the request that holds it
/// ([`Conn::drive`]); an HTTP/2 stream's connection runs on its own task.
pub(crate) trait Drive {
    /// Polls `fut` (and the connection); `None` if the connection ended first.
    fn drive<T>(&mut self, fut: impl Future<Output = T>) -> impl Future<Output = Option<T>>;
}

impl Drive for Conn {
    fn drive<T>(&mut self, fut: impl Future<Output = T>) -> impl Future<Output = Option<T>> {
        Conn::drive(self, fut)
    }
}

impl Drive for StreamLease {
    async fn drive<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        Some(fut.await)
    }
}

/// A response head, and the reader of its body.
pub(crate) struct Head {
    /// Status, version, headers, reuse and timings so far; the body is empty.
    pub(crate) response: Response,
    /// What the response allows for reusing its connection.
    pub(crate) hint: ReuseHint,
    pub(crate) body: BodyReader,
}

/// Sends `req` on `conn` and reads the response head. `reused` says whether the
/// connection served an earlier request; `start` is when the request started (timings
/// count from it) and `t` carries the timings of the phases before this one.
pub(crate) async fn start(
    conn: &mut Conn,
    origin: &Origin,
    req: &Request,
    cfg: &Config,
    reused: bool,
    start: Instant,
    mut t: Timings,
) -> Result<Head, Failure> {
    let before = conn.bytes_read();
    if !conn.adopt() || !conn.is_open() {
        return Err(Failure::NotSent);
    }
    let mut hreq = req.to_hyper(cfg.keep_alive, &cfg.user_agent_value, true);
    if let (Scheme::Http, Some(p)) = (origin.scheme, origin.proxy.as_deref()) {
        forward_form(&mut hreq, origin, p).map_err(Failure::Failed)?;
    }
    let now = Instant::now();
    t.sent_us = micros(now - start);
    let overall = req.timeout.map(|d| start + d);
    let head = within_headers_timeout(conn.send(hreq), cfg, overall, now).await?;
    let resp = match head {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(head_failure(map_hyper_error(&e), conn, reused, before)),
        None => {
            let e = Error::new(
                ErrorKind::ConnectionClosed,
                "connection closed before the response head",
            );
            return Err(head_failure(e, conn, reused, before));
        }
    };
    let now = Instant::now();
    t.ttfb_us = micros(now - start);
    into_head(resp, req, cfg, reused, t, overall, now).map_err(Failure::Failed)
}

/// Waits for a response head within `headers_timeout`. A timer that the request's own
/// deadline (`overall`) would beat is not armed (each one is a registration on tokio's
/// timer wheel). `now` is the time the request was sent (read once for its timings).
async fn within_headers_timeout<T>(
    fut: impl Future<Output = T>,
    cfg: &Config,
    overall: Option<Instant>,
    now: Instant,
) -> Result<T, Failure> {
    let needed = |d: &Duration| overall.is_none_or(|o| now + *d < o);
    match cfg.headers_timeout.filter(needed) {
        Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| {
            Failure::Failed(Error::new(
                ErrorKind::HeadersTimeout,
                format!("no complete response head within {} ms", d.as_millis()),
            ))
        }),
        None => Ok(fut.await),
    }
}

/// The response head, with the reader of its body.
fn into_head(
    resp: http::Response<Incoming>,
    req: &Request,
    cfg: &Config,
    reused: bool,
    t: Timings,
    overall: Option<Instant>,
    now: Instant,
) -> Result<Head, Error> {
    let needed = |d: &Duration| overall.is_none_or(|o| now + *d < o);
    let (parts, body) = resp.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body that must have exactly `Content-Length` bytes (not the answer to HEAD, nor a
    // 1xx, 204 or 304): ending short of it is an error even when the transport says the
    // body is over (HTTP/2 lets a server end a stream with RST_STREAM NO_ERROR).
    let status = parts.status.as_u16();
    let bodiless =
        req.method == http::Method::HEAD || status < 200 || status == 204 || status == 304;
    let body = BodyReader {
        body,
        declared,
        expected: declared.filter(|_| !bodiless),
        total: 0,
        max: cfg.max_response_bytes,
        gap: cfg.body_timeout.filter(needed),
        trailers: None,
    };
    if let (Some(n), Some(max)) = (declared, cfg.max_response_bytes) {
        if n > max {
            return Err(body.too_large(n));
        }
    }
    let hint = reuse_hint(parts.version, &parts.headers);
    Ok(Head {
        response: Response {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body: Bytes::new(),
            reused,
            timings: t,
            trailers: None,
            rest: Vec::new(),
        },
        hint,
        body,
    })
}

/// Sends `req` as a stream of an HTTP/2 session and reads the response head: the target
/// in absolute form (`:scheme`, `:authority`, `:path`), no `Host` and no
/// connection-specific headers (RFC 9113 §8.2.2).
pub(crate) async fn start_h2(
    lease: &mut StreamLease,
    origin: &Origin,
    req: &Request,
    cfg: &Config,
    start: Instant,
    mut t: Timings,
) -> Result<Head, Failure> {
    // No `Host` (it becomes `:authority`), and the target built from its parts: the
    // session's authority, made once, and the request's path, shared.
    let mut hreq = req.to_hyper(true, &cfg.user_agent_value, false);
    let invalid = |e: &dyn std::fmt::Display| {
        Failure::Failed(Error::new(
            ErrorKind::InvalidUrl,
            format!("the URL as an HTTP/2 target: {e}"),
        ))
    };
    // A caller's own Host header becomes :authority, as curl does.
    let own_host = req.headers.get(http::header::HOST);
    let authority = match own_host {
        Some(h) => http::uri::Authority::try_from(h.as_bytes()).map_err(|e| invalid(&e))?,
        None => match lease.authority() {
            Some(a) => a.clone(),
            None => http::uri::Authority::try_from(origin.authority()).map_err(|e| invalid(&e))?,
        },
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(match origin.scheme {
        Scheme::Http => http::uri::Scheme::HTTP,
        Scheme::Https => http::uri::Scheme::HTTPS,
    });
    parts.authority = Some(authority);
    parts.path_and_query = Some(match hreq.uri().path_and_query() {
        Some(pq) => pq.clone(),
        None => http::uri::PathAndQuery::from_static("/"),
    });
    *hreq.uri_mut() = http::Uri::from_parts(parts).map_err(|e| invalid(&e))?;
    *hreq.version_mut() = http::Version::HTTP_2;
    // Connection-specific fields (RFC 9113 §8.2.2) can only be the caller's own.
    let h = hreq.headers_mut();
    if own_host.is_some() {
        h.remove(http::header::HOST);
    }
    let forbidden: Vec<_> = req
        .headers
        .keys()
        .filter(|k| connection_specific(k))
        .cloned()
        .collect();
    for name in forbidden {
        if name != http::header::TE || h.get(&name).is_some_and(|v| v != "trailers") {
            h.remove(name);
        }
    }
    let now = Instant::now();
    t.sent_us = micros(now - start);
    let overall = req.timeout.map(|d| start + d);
    let head = within_headers_timeout(lease.sender.send_request(hreq), cfg, overall, now).await?;
    let resp = match head {
        Ok(r) => r,
        Err(e) => {
            let err = map_hyper_error(&e);
            return Err(match refused(&e) {
                Some(gone) => Failure::Refused(err, gone),
                None => Failure::Failed(err),
            });
        }
    };
    let now = Instant::now();
    t.ttfb_us = micros(now - start);
    into_head(resp, req, cfg, lease.reused, t, overall, now).map_err(Failure::Failed)
}

/// Whether `name` is a field HTTP/2 forbids (RFC 9113 §8.2.2; `te` is allowed with the
/// value `trailers`, which the caller checks).
fn connection_specific(name: &http::HeaderName) -> bool {
    [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::header::TE,
    ]
    .contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// The HTTP/2 error inside a hyper error, if any.
fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<h2::Error>() {
            return Some(h);
        }
        cur = c.source();
    }
    None
}

/// Whether the server did not process the stream: it refused it (`Some(GoneAway(false))`:
/// the connection goes on), its GOAWAY's last stream id was below it (RFC 9113 §8.7), or
/// the connection was gone before the request left (hyper hands it back cancelled).
fn refused(e: &hyper::Error) -> Option<GoneAway> {
    if e.is_canceled() {
        return Some(GoneAway(true));
    }
    let h = h2_error(e)?;
    if h.is_go_away() && h.is_remote() {
        Some(GoneAway(true))
    } else if h.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(GoneAway(false))
    } else {
        None
    }
}

/// A request to a plain-http origin through a proxy: the absolute form of the target
/// (`GET http://host:port/path`, RFC 9112 §3.2.2) and the proxy's credentials, which go
/// to the proxy only (a tunnel carries them in its `CONNECT` instead).
fn forward_form<B>(
    hreq: &mut http::Request<B>,
    origin: &Origin,
    proxy: &Proxy,
) -> Result<(), Error> {
    let pq = hreq.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: http::Uri = format!("http://{}{pq}", origin.authority())
        .parse()
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("absolute form of the URL: {e}"),
            )
        })?;
    *hreq.uri_mut() = uri;
    if let Some(auth) = &proxy.auth {
        let h = hreq.headers_mut();
        if !h.contains_key(http::header::PROXY_AUTHORIZATION) {
            h.insert(http::header::PROXY_AUTHORIZATION, auth.clone());
        }
    }
    Ok(())
}

/// A failure before the response head: stale when the connection was reused, nothing at
/// all came back, and the failure is the kind a server's idle close produces.
fn head_failure(err: Error, conn: &Conn, reused: bool, bytes_before: u64) -> Failure {
    let nothing_received = conn.bytes_read() == bytes_before;
    let stale_kind = matches!(
        err.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionClosed | ErrorKind::BrokenPipe
    );
    if reused && nothing_received && stale_kind {
        Failure::Stale(err)
    } else {
        Failure::Failed(err)
    }
}

/// Reads a response body piece by piece, within the gap timeout and the size cap. The
/// connection is polled only while a piece is asked for: a reader that stops asking stops
/// the socket being read (TCP's flow control then holds the sender back).
pub(crate) struct BodyReader {
    body: Incoming,
    /// The `Content-Length`, when the response has one.
    declared: Option<u64>,
    /// The body length the response promises (`declared`, unless it has no body at all).
    expected: Option<u64>,
    /// Body bytes read so far.
    total: u64,
    max: Option<u64>,
    /// The longest wait for the next piece (`body_timeout`).
    gap: Option<Duration>,
    /// Trailer fields, once the body has ended with them.
    pub(crate) trailers: Option<http::HeaderMap>,
}

impl BodyReader {
    fn too_large(&self, n: u64) -> Error {
        Error::new(
            ErrorKind::ResponseTooLarge,
            format!(
                "response body of {n}+ bytes exceeds max_response_bytes = {}",
                self.max.unwrap_or(0)
            ),
        )
    }

    /// Body bytes read so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The next piece of the body, or `None` at its end.
    pub(crate) async fn next(&mut self, conn: &mut impl Drive) -> Result<Option<Bytes>, Error> {
        loop {
            let next = conn.drive(self.body.frame());
            let frame = match self.gap {
                Some(d) => tokio::time::timeout(d, next).await.map_err(|_| {
                    Error::new(
                        ErrorKind::BodyTimeout,
                        format!("no body data for {} ms", d.as_millis()),
                    )
                })?,
                None => next.await,
            };
            let Some(frame) = frame else {
                return Err(Error::new(
                    ErrorKind::ConnectionClosed,
                    "connection closed before the response body was complete",
                ));
            };
            let data = match frame {
                None => {
                    if let Some(n) = self.expected.filter(|&n| self.total < n) {
                        return Err(Error::new(
                            ErrorKind::ConnectionClosed,
                            format!(
                                "the response body ended after {} of its {n} bytes (Content-Length)",
                                self.total
                            ),
                        ));
                    }
                    return Ok(None);
                }
                Some(Err(e)) => return Err(map_hyper_error(&e)),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            self.trailers = Some(t);
                        }
                        continue;
                    }
                },
            };
            self.total += data.len() as u64;
            if self.max.is_some_and(|m| self.total > m) {
                return Err(self.too_large(self.total));
            }
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
    }

    /// Reads the rest of the body: into one buffer sized from `Content-Length`, or with
    /// `pieces` as the pieces it arrives in (the first, then the others). A body of one
    /// piece is never copied.
    pub(crate) async fn read_all_in(
        &mut self,
        conn: &mut impl Drive,
        pieces: bool,
    ) -> Result<(Bytes, Vec<Bytes>), Error> {
        let Some(first) = self.next(conn).await? else {
            return Ok((Bytes::new(), Vec::new()));
        };
        let Some(second) = self.next(conn).await? else {
            return Ok((first, Vec::new()));
        };
        if pieces {
            let mut rest = vec![second];
            while let Some(d) = self.next(conn).await? {
                rest.push(d);
            }
            return Ok((first, rest));
        }
        let cap = self
            .declared
            .map_or(first.len() + second.len(), |n| n as usize);
        let mut b = BytesMut::with_capacity(cap.min(MAX_BODY_PREALLOC));
        b.extend_from_slice(&first);
        b.extend_from_slice(&second);
        while let Some(d) = self.next(conn).await? {
            b.extend_from_slice(&d);
        }
        Ok((b.freeze(), Vec::new()))
    }
}

/// Maps a hyper error to our kinds by what happened on the wire.
fn map_hyper_error(e: &hyper::Error) -> Error {
    let msg = chain_message(e);
    if let Some(h) = h2_error(e) {
        if h.is_reset() && h.is_remote() {
            let reason = h.reason().map_or("?".into(), |r| format!("{r:?}"));
            return Error::new(
                ErrorKind::StreamReset,
                format!("the server reset the HTTP/2 stream (RST_STREAM {reason})"),
            );
        }
        if h.is_go_away() {
            let reason = h.reason().map_or("?".into(), |r| format!("{r:?}"));
            if h.is_remote() {
                return Error::new(
                    ErrorKind::ConnectionClosed,
                    format!("the server closed the HTTP/2 connection (GOAWAY {reason})"),
                );
            }
            // Our side ended the connection: what the server sent was not HTTP/2 (an
            // HTTP/1.1-only server answering the preface of prior knowledge, typically).
            return Error::new(
                ErrorKind::Protocol,
                format!(
                    "the server's answer is not HTTP/2 (this client ended the connection with GOAWAY {reason}); \
                     with http_version h2c-prior-knowledge the server must speak HTTP/2 on plain http — \
                     an HTTP/1.1-only server fails this way"
                ),
            );
        }
    }
    if let Some(io) = find_io_error(e) {
        if io.get_ref().is_some_and(|i| i.is::<SourceFailed>()) {
            return Error::new(ErrorKind::BodySource, msg);
        }
        let kind = match io.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorKind::ConnectionReset
            }
            std::io::ErrorKind::BrokenPipe => ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof => ErrorKind::ConnectionClosed,
            _ if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => ErrorKind::Tls,
            _ => ErrorKind::ConnectionReset,
        };
        return Error::new(kind, msg);
    }
    let kind = if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        ErrorKind::ConnectionClosed
    } else if e.is_parse() || e.is_parse_status() {
        ErrorKind::Protocol
    } else if e.is_body_write_aborted() {
        ErrorKind::BrokenPipe
    } else {
        ErrorKind::Protocol
    };
    Error::new(kind, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{connect, test_connector};
    use crate::direct::Mode;
    use crate::options::Options;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// One connection; each request gets the next canned answer; after the last, the
    /// server closes (or, with `hang`, keeps the connection open without answering).
    fn server(answers: Vec<&'static [u8]>, hang: bool) -> (String, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/", l.local_addr().unwrap().port());
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut answers = answers.into_iter();
            loop {
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                match answers.next() {
                    Some(a) => w.write_all(a).unwrap(),
                    None if hang => std::thread::sleep(Duration::from_millis(500)),
                    None => return,
                }
            }
        });
        (url, h)
    }

    fn cfg(f: impl FnOnce(&mut Options)) -> Config {
        let mut o = Options::default();
        f(&mut o);
        o.validate_with_env(|_| None).unwrap()
    }

    async fn open(url: &str) -> (Conn, Request) {
        let req = Request::new("GET", url).unwrap();
        let (s, _) = connect(
            &req.target.origin,
            &test_connector(),
            None,
            Mode::Reactor,
            0,
        )
        .await
        .unwrap();
        (Conn::handshake(s, Mode::Reactor, 1).await.unwrap(), req)
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A whole exchange: the head, then the body read to its end.
    struct Exchanged {
        response: Response,
        hint: ReuseHint,
    }

    async fn go(
        c: &mut Conn,
        req: &Request,
        cfg: &Config,
        reused: bool,
    ) -> Result<Exchanged, Failure> {
        let o = req.target.origin.clone();
        let mut head = start(c, &o, req, cfg, reused, Instant::now(), Timings::default()).await?;
        head.response.body = head
            .body
            .read_all_in(c, false)
            .await
            .map_err(Failure::Failed)?
            .0;
        Ok(Exchanged {
            response: head.response,
            hint: head.hint,
        })
    }

    #[test]
    fn reads_a_body_and_reports_the_servers_hints() {
        run(async {
            let (url, srv) = server(
                vec![
                    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 3\r\n\r\nabc",
                    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                ],
                false,
            );
            let (mut c, req) = open(&url).await;
            let cfg = cfg(|_| {});
            let a = go(&mut c, &req, &cfg, false).await.unwrap();
            assert_eq!(a.response.body.as_ref(), b"abc");
            assert_eq!(a.hint, ReuseHint::Keep(Some(Duration::from_secs(5))));
            assert!(c.ready_for_next().await);
            let b = go(&mut c, &req, &cfg, true).await.unwrap();
            assert_eq!(
                (b.response.status, b.response.body.as_ref()),
                (201, &b"de"[..])
            );
            assert!(b.response.reused);
            assert_eq!(b.hint, ReuseHint::Keep(None));
            let z = go(&mut c, &req, &cfg, true).await.unwrap();
            assert_eq!(z.hint, ReuseHint::Close);
            srv.join().unwrap();
        });
    }

    #[test]
    fn a_reused_connection_closed_before_the_head_is_stale() {
        run(async {
            let (url, srv) = server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], false);
            let (mut c, req) = open(&url).await;
            let cfg = cfg(|_| {});
            go(&mut c, &req, &cfg, false).await.unwrap();
            assert!(c.ready_for_next().await);
            // The server closes without answering the second request.
            match go(&mut c, &req, &cfg, true).await {
                Err(Failure::Stale(e)) => assert!(matches!(
                    e.kind(),
                    ErrorKind::ConnectionClosed
                        | ErrorKind::ConnectionReset
                        | ErrorKind::BrokenPipe
                )),
                Err(Failure::NotSent) => {} // hyper saw the close before the send
                other => panic!("expected a stale failure, got {:?}", other.err()),
            }
            srv.join().unwrap();
        });
    }

    #[test]
    fn a_fresh_connection_closed_before_the_head_is_not_stale() {
        run(async {
            let (url, srv) = server(vec![], false);
            let (mut c, req) = open(&url).await;
            match go(&mut c, &req, &cfg(|_| {}), false).await {
                Err(Failure::Failed(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionClosed),
                other => panic!("expected a plain failure, got {:?}", other.err()),
            }
            srv.join().unwrap();
        });
    }

    #[test]
    fn a_declared_body_over_the_cap_is_refused() {
        run(async {
            let (url, srv) = server(
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"],
                false,
            );
            let (mut c, req) = open(&url).await;
            let cfg = cfg(|o| o.max_response_bytes = Some(4));
            match go(&mut c, &req, &cfg, false).await {
                Err(Failure::Failed(e)) => assert_eq!(e.kind(), ErrorKind::ResponseTooLarge),
                other => panic!("expected too large, got {:?}", other.err()),
            }
            drop(c);
            srv.join().unwrap();
        });
    }

    #[test]
    fn headers_and_body_timeouts_have_their_own_kinds() {
        run(async {
            let (url, srv) = server(vec![], true);
            let (mut c, req) = open(&url).await;
            let cfg1 = cfg(|o| o.headers_timeout_msecs = Some(50));
            match go(&mut c, &req, &cfg1, false).await {
                Err(Failure::Failed(e)) => assert_eq!(e.kind(), ErrorKind::HeadersTimeout),
                other => panic!("expected a headers timeout, got {:?}", other.err()),
            }
            drop(c);
            srv.join().unwrap();
            let (url, srv) = server(
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01"],
                true,
            );
            let (mut c, req) = open(&url).await;
            let cfg2 = cfg(|o| o.body_timeout_msecs = Some(50));
            match go(&mut c, &req, &cfg2, false).await {
                Err(Failure::Failed(e)) => assert_eq!(e.kind(), ErrorKind::BodyTimeout),
                other => panic!("expected a body timeout, got {:?}", other.err()),
            }
            drop(c);
            srv.join().unwrap();
        });
    }
}
