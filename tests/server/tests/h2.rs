//! Tests of the HTTP/2 listeners, with the `h2` crate's client over loopback.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use keepalive_testserver::{H2Script, Server};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
}

/// `Server::wait_for` without blocking the test's runtime (which drives the client).
async fn wait_for(srv: &Server, pred: impl Fn(&keepalive_testserver::Stats) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if pred(&srv.stats()) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Connects with prior knowledge; the connection is driven by a spawned task.
async fn h2c(port: u16) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn request(port: u16, method: Method, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .body(())
        .unwrap()
}

/// Sends a request (with `body` if any) and reads the whole response.
async fn send(
    client: &mut SendRequest<Bytes>,
    req: Request<()>,
    body: Option<Vec<u8>>,
) -> Result<Resp, h2::Error> {
    let mut client = client.clone().ready().await?;
    let (resp, mut stream) = client.send_request(req, body.is_none())?;
    if let Some(body) = body {
        stream.send_data(Bytes::from(body), true)?;
    }
    read(resp).await
}

async fn read(resp: h2::client::ResponseFuture) -> Result<Resp, h2::Error> {
    let (parts, mut body) = resp.await?.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        data.extend_from_slice(&chunk);
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?;
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body: data,
        trailers,
    })
}

async fn get(client: &mut SendRequest<Bytes>, port: u16, path: &str) -> Result<Resp, h2::Error> {
    send(client, request(port, Method::GET, path), None).await
}

fn admin(srv: &Server, method: &str, target: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.admin_port())).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn tls_config(srv: &Server, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(srv.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    srv: &Server,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", srv.h2_port())).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(tls_config(srv, alpn))
        .connect(name, tcp)
        .await
}

#[tokio::test]
async fn default_answer_over_h2c_and_tls() {
    let srv = Server::start();
    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    for i in 1..=2 {
        let r = get(&mut c, port, "/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, b"hello, world\n");
        assert_eq!(r.header("content-length"), "13");
        assert_eq!(r.header("content-type"), "text/plain");
        assert_eq!(r.header("x-conn-id"), "0");
        assert_eq!(r.header("x-conn-requests"), i.to_string());
        assert_eq!(r.header("x-stream-id"), (2 * i - 1).to_string());
        assert!(r.trailers.is_none());
    }
    let r = send(&mut c, request(port, Method::HEAD, "/?bytes=10"), None)
        .await
        .unwrap();
    assert_eq!((r.header("content-length"), r.body.len()), ("10", 0));
    let r = get(&mut c, port, "/?status=204").await.unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = get(&mut c, port, "/?status=503&bytes=3").await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_slice()), (503, &b"abc"[..]));

    // TLS: ALPN h2 works; a client not offering h2 fails the handshake.
    let tls = tls_connect(&srv, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut t, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let r = get(&mut t, srv.h2_port(), "/?echo=1").await.unwrap();
    let json = String::from_utf8(r.body).unwrap();
    assert!(json.contains("\"scheme\":\"http\""), "{json}");
    for alpn in [&[][..], &[&b"http/1.1"[..]][..]] {
        let err = tls_connect(&srv, alpn).await.expect_err("refused");
        assert!(
            format!("{err:?}").contains("NoApplicationProtocol"),
            "{err:?}"
        );
    }

    let ok = wait_for(&srv, |s| s.accepted == 4 && s.requests == 6).await;
    let s = srv.stats();
    assert!(ok, "{s:?}");
    let tls: Vec<_> = s.connections.iter().map(|c| c.tls).collect();
    assert_eq!(tls, [false, true, true, true]);
    assert_eq!(
        (s.connections[0].requests, s.connections[1].requests),
        (5, 1)
    );
    assert_eq!(s.remote_ports.len(), 4);
    assert!(wait_for(&srv, |s| s.open == 2 && s.server_closed == 2).await);
    drop(c);
    drop(t);
    assert!(wait_for(&srv, |s| s.open == 0 && s.client_closed == 2).await);
    let info = srv.info_json();
    assert!(
        info.contains(&format!("\"h2_port\":{},", srv.h2_port())),
        "{info}"
    );
    assert!(info.contains(&format!("\"h2c_port\":{},", port)), "{info}");
}

#[tokio::test]
async fn echo_reads_the_body_with_flow_control() {
    let srv = Server::start();
    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    // Larger than the default 64 KiB windows: the server must release capacity.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://127.0.0.1:{port}/up?echo=1&x=%41"))
        .header("x-test", "one")
        .header("x-test", "two")
        .header("user-agent", "h2-test")
        .body(())
        .unwrap();
    let r = send(&mut c, req, Some(body.clone())).await.unwrap();
    assert_eq!(r.header("content-type"), "application/json");
    let json = String::from_utf8(r.body).unwrap();
    let want = format!(
        "{{\"method\":\"POST\",\"target\":\"/up?echo=1&x=%41\",\"version\":\"HTTP/2.0\",\"headers\":[[\"x-test\",\"one\"],[\"x-test\",\"two\"],[\"user-agent\",\"h2-test\"]],\"body_len\":300000,\"body_fnv\":\"{:016x}\",\"remote_port\":{},\"authority\":\"127.0.0.1:{port}\",\"scheme\":\"http\",\"stream_id\":1}}",
        fnv(&body),
        srv.stats().remote_ports[0]
    );
    assert_eq!(json, want);
}

#[tokio::test]
async fn large_body_respects_flow_control() {
    let srv = Server::start();
    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    let n = 8 << 20;
    let (resp, _) = c
        .send_request(request(port, Method::GET, &format!("/?bytes={n}")), true)
        .unwrap();
    let (parts, mut body) = resp.await.unwrap().into_parts();
    assert_eq!(parts.headers["content-length"], n.to_string().as_str());
    // Check the pattern piece by piece, without keeping the body.
    let mut got = 0usize;
    let mut frames = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= 16384, "frame larger than the default max");
        for (i, &b) in chunk.iter().enumerate() {
            assert_eq!(b, b'a' + ((got + i) % 26) as u8);
        }
        got += chunk.len();
        frames += 1;
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(got, n);
    assert!(frames >= n / 16384);
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn stream_resets_and_stalls() {
    let srv = Server::start();
    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    for (arg, want) in [
        ("refused_stream", Reason::REFUSED_STREAM),
        ("CANCEL", Reason::CANCEL),
        ("Internal-Error", Reason::INTERNAL_ERROR),
        ("enhance_your_calm", Reason::ENHANCE_YOUR_CALM),
        ("1", Reason::PROTOCOL_ERROR),
    ] {
        let err = get(&mut c, port, &format!("/?rst={arg}"))
            .await
            .err()
            .expect("reset");
        assert!(err.is_reset() && err.is_remote(), "{err:?}");
        assert_eq!(err.reason(), Some(want), "{arg}");
    }

    // rst_after: the head, then exactly N bytes, then INTERNAL_ERROR.
    let (resp, _) = c
        .send_request(
            request(port, Method::GET, "/?bytes=200000&rst_after=70000"),
            true,
        )
        .unwrap();
    let (parts, mut body) = resp.await.unwrap().into_parts();
    assert_eq!(parts.headers["content-length"], "200000");
    let mut got = Vec::new();
    let err = loop {
        match body.data().await.expect("no clean end") {
            Ok(chunk) => {
                got.extend_from_slice(&chunk);
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.reason(), Some(Reason::INTERNAL_ERROR));
    assert_eq!(got, pattern(70000));

    // stall_after: the head and N bytes, then nothing; other streams still work.
    let (resp, mut send) = c
        .send_request(
            request(port, Method::GET, "/?bytes=1000&stall_after=100"),
            true,
        )
        .unwrap();
    let (parts, mut body) = resp.await.unwrap().into_parts();
    assert_eq!(parts.headers["content-length"], "1000");
    let first = body.data().await.unwrap().unwrap();
    assert_eq!(first.len(), 100);
    assert!(
        timeout(Duration::from_millis(200), body.data())
            .await
            .is_err()
    );
    assert_eq!(get(&mut c, port, "/").await.unwrap().status, StatusCode::OK);
    send.send_reset(Reason::CANCEL);
    assert!(wait_for(&srv, |s| s.streams_reset_by_client == 1).await);

    // A client cancel during delay_ms is seen at once.
    let (resp, mut send) = c
        .send_request(request(port, Method::GET, "/?delay_ms=5000"), true)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send.send_reset(Reason::CANCEL);
    drop(resp);
    assert!(wait_for(&srv, |s| s.streams_reset_by_client == 2).await);
    assert!(
        srv.stats()
            .to_json()
            .contains("\"streams_reset_by_client\":2,")
    );
}

#[tokio::test]
async fn trailers_carry_the_checksum() {
    let srv = Server::start();
    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    for (path, want) in [
        ("/?trailers=1", b"hello, world\n".to_vec()),
        ("/?bytes=150000&trailers=1", pattern(150000)),
    ] {
        let r = get(&mut c, port, path).await.unwrap();
        assert_eq!(r.body, want);
        let t = r.trailers.expect("trailers");
        assert_eq!(t["x-checksum"], format!("{:016x}", fnv(&want)).as_str());
    }
}

#[tokio::test]
async fn max_streams_is_advertised() {
    let srv = Server::start();
    srv.set_h2_script(H2Script {
        max_streams: Some(1),
        ..H2Script::default()
    });
    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    // The server's SETTINGS have arrived once a response has.
    get(&mut c, port, "/").await.unwrap();
    assert_eq!(c.current_max_send_streams(), 1);
    // The client queues above it; both complete.
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (a, b) = tokio::join!(get(&mut c1, port, "/?delay_ms=50"), get(&mut c2, port, "/"));
    assert_eq!(
        (a.unwrap().status, b.unwrap().status),
        (StatusCode::OK, StatusCode::OK)
    );
    // Reset clears the script: a new connection is unlimited again.
    srv.reset();
    let mut d = h2c(port).await;
    get(&mut d, port, "/").await.unwrap();
    assert!(d.current_max_send_streams() > 1);
}

#[tokio::test]
async fn goaway_after_answers_the_first_streams_and_refuses_later_ones() {
    let srv = Server::start();
    srv.set_h2_script(H2Script {
        goaway_after: Some(2),
        ..H2Script::default()
    });
    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    // All three HEADERS leave before any GOAWAY can arrive (single-threaded runtime, no
    // await in between); the first is still in flight when the shutdown starts.
    let mut pending = Vec::new();
    for path in ["/?delay_ms=300", "/?bytes=5", "/"] {
        let (resp, _) = c
            .send_request(request(port, Method::GET, path), true)
            .unwrap();
        pending.push(resp);
    }
    let mut results = Vec::new();
    for resp in pending {
        results.push(read(resp).await);
    }
    let r1 = results.remove(0).unwrap();
    assert_eq!(
        (r1.status, r1.body.as_slice()),
        (StatusCode::OK, &b"hello, world\n"[..])
    );
    let r2 = results.remove(0).unwrap();
    assert_eq!(r2.body, b"abcde");
    let err = results.remove(0).err().expect("third refused");
    assert_eq!(err.reason(), Some(Reason::REFUSED_STREAM), "{err:?}");
    // The server closes the connection once the first two are done.
    assert!(wait_for(&srv, |s| s.open == 0 && s.server_closed == 1).await);
    let s = srv.stats();
    assert_eq!((s.requests, s.streams_refused), (3, 1));
    // A new request on the old connection is refused by the client itself (GOAWAY seen).
    assert!(get(&mut c, port, "/").await.is_err());

    // One request at a time: the client answers the shutdown PING before it sends the
    // third HEADERS, so the final GOAWAY names stream 3 and the third stream fails with a
    // GOAWAY error at once (h2 drops it unseen: not counted as refused).
    srv.reset();
    srv.set_h2_script(H2Script {
        goaway_after: Some(2),
        ..H2Script::default()
    });
    let mut d = h2c(port).await;
    assert_eq!(get(&mut d, port, "/").await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&mut d, port, "/").await.unwrap().status, StatusCode::OK);
    let third = timeout(WAIT, get(&mut d, port, "/"))
        .await
        .expect("no hang");
    let err = third.err().expect("third fails");
    assert!(
        err.is_go_away() || err.reason() == Some(Reason::REFUSED_STREAM),
        "{err:?}"
    );
    assert!(wait_for(&srv, |s| s.open == 0 && s.server_closed == 1).await);
    let s = srv.stats();
    assert!(s.requests == 2 || s.streams_refused == 1, "{s:?}");
}

#[tokio::test]
async fn refuse_every_and_the_admin_endpoint() {
    let srv = Server::start();
    let (status, json) = admin(&srv, "POST", "/h2?refuse_every=2");
    assert_eq!(
        (status, json.as_str()),
        (
            200,
            "{\"max_streams\":null,\"goaway_after\":null,\"refuse_every\":2,\"stall_conn_after\":null}"
        )
    );
    assert_eq!(
        srv.h2_script(),
        H2Script {
            refuse_every: Some(2),
            ..H2Script::default()
        }
    );
    assert_eq!(admin(&srv, "GET", "/h2").1, json);
    assert_eq!(admin(&srv, "POST", "/h2?bogus=1").0, 400);
    assert_eq!(admin(&srv, "POST", "/h2?max_streams=x").0, 400);
    assert_eq!(srv.h2_script().refuse_every, Some(2));

    let port = srv.h2c_port();
    let mut c = h2c(port).await;
    for i in 1..=4 {
        let r = get(&mut c, port, "/").await;
        if i % 2 == 0 {
            let err = r.err().expect("refused");
            assert_eq!(err.reason(), Some(Reason::REFUSED_STREAM));
        } else {
            assert_eq!(r.unwrap().header("x-conn-requests"), i.to_string());
        }
    }
    let s = srv.stats();
    assert_eq!((s.requests, s.streams_refused), (4, 2));
    assert_eq!(s.connections[0].requests, 4);

    // POST /h2 alone clears the script; /reset clears it too.
    admin(
        &srv,
        "POST",
        "/h2?stall_conn_after=3&goaway_after=9&max_streams=4",
    );
    assert_eq!(
        srv.h2_script(),
        H2Script {
            max_streams: Some(4),
            goaway_after: Some(9),
            stall_conn_after: Some(3),
            ..H2Script::default()
        }
    );
    assert_eq!(admin(&srv, "POST", "/h2").0, 200);
    assert_eq!(srv.h2_script(), H2Script::default());
    admin(&srv, "POST", "/h2?refuse_every=3");
    admin(&srv, "POST", "/reset");
    assert_eq!(srv.h2_script(), H2Script::default());
}

#[tokio::test]
async fn stall_conn_after_stops_answering() {
    let srv = Server::start();
    srv.set_h2_script(H2Script {
        stall_conn_after: Some(1),
        ..H2Script::default()
    });
    let port = srv.h2c_port();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut c, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().unwrap();
    let driver = tokio::spawn(conn);
    assert_eq!(
        get(&mut c, port, "/").await.unwrap().body,
        b"hello, world\n"
    );
    let second = timeout(Duration::from_millis(300), get(&mut c, port, "/")).await;
    assert!(second.is_err(), "the second request was answered");
    let pong = timeout(Duration::from_millis(200), pings.ping(h2::Ping::opaque())).await;
    assert!(pong.is_err(), "PING answered");
    let s = srv.stats();
    assert_eq!((s.open, s.requests), (1, 1));
    // The client gives up: the server sees it close.
    drop(c);
    drop(pings);
    driver.abort();
    assert!(wait_for(&srv, |s| s.open == 0 && s.client_closed == 1).await);
}
