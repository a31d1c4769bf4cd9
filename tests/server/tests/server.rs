//! Integration tests of the test server, using plain std sockets (and a blocking
//! rustls client for the TLS listeners).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepalive_testserver::{Server, Stats};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const WAIT: Duration = Duration::from_secs(5);

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn num(&self, name: &str) -> u64 {
        self.header(name).unwrap().parse().unwrap()
    }
}

struct Client<S: Read + Write> {
    r: BufReader<S>,
}

fn connect(port: u16) -> Client<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    Client {
        r: BufReader::new(s),
    }
}

fn line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut l = String::new();
    if r.read_line(&mut l)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(l.trim_end().to_string())
}

impl<S: Read + Write> Client<S> {
    fn send(&mut self, raw: &str) {
        self.r.get_mut().write_all(raw.as_bytes()).unwrap();
        self.r.get_mut().flush().unwrap();
    }

    fn get(&mut self, target: &str) -> io::Result<Resp> {
        self.send(&format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
        self.read_resp()
    }

    fn read_resp(&mut self) -> io::Result<Resp> {
        let status_line = line(&mut self.r)?;
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let l = line(&mut self.r)?;
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&line(&mut self.r)?, 16).unwrap();
                if size == 0 {
                    assert_eq!(line(&mut self.r)?, "");
                    break;
                }
                let mut chunk = vec![0; size];
                self.r.read_exact(&mut chunk)?;
                resp.body.extend_from_slice(&chunk);
                assert_eq!(line(&mut self.r)?, "");
            }
        } else if let Some(cl) = resp.header("content-length") {
            resp.body = vec![0; cl.parse().unwrap()];
            self.r.read_exact(&mut resp.body)?;
        }
        Ok(resp)
    }

    /// Reads until EOF or error; returns the outcome of the final read.
    fn read_end(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 1024];
        let mut total = 0;
        loop {
            match self.r.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) => return Err(e),
            }
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn default_response_and_headers() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let local = c.r.get_ref().local_addr().unwrap().port();
    let r = c.get("/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, world\n");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.num("content-length"), 13);
    assert_eq!(r.num("x-remote-port"), u64::from(local));
    assert_eq!(r.num("x-conn-requests"), 1);
    assert_eq!(r.num("x-conn-id"), 0);
    let s = srv.stats();
    assert_eq!((s.accepted, s.open, s.requests), (1, 1, 1));
    assert_eq!(s.remote_ports, vec![local]);
    assert!(s.connections[0].open && !s.connections[0].tls);
}

#[test]
fn keep_alive_reuses_one_connection() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let a = c.get("/a?status=201&bytes=100").unwrap();
    assert_eq!(a.status, 201);
    assert_eq!(a.body, pattern(100));
    let b = c.get("/b?ka=7&ka_raw=timeout%3D5%2C%20max%3D9").unwrap();
    assert_eq!(b.num("x-conn-requests"), 2);
    assert_eq!(a.num("x-conn-id"), b.num("x-conn-id"));
    let kas: Vec<_> = b
        .headers
        .iter()
        .filter(|(n, _)| n == "Keep-Alive")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(kas, ["timeout=7", "timeout=5, max=9"]);
    let s = srv.stats();
    assert_eq!((s.accepted, s.requests, s.max_open), (1, 2, 1));
    assert_eq!(s.connections[0].requests, 2);
    drop(c);
    assert!(srv.wait_for(WAIT, |s| s.client_closed == 1 && s.open == 0));
    let s = srv.stats();
    assert!(s.connections[0].closed_by_client && !s.connections[0].open);
    assert_eq!(s.server_closed, 0);
}

#[test]
fn close_param_and_client_close_header() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let r = c.get("/?close=1").unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(c.read_end().unwrap(), 0);
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 1 && s.open == 0));

    let mut c = connect(srv.http_port());
    c.send("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.read_resp().unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(c.read_end().unwrap(), 0);
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 2));

    // HTTP/1.0 closes by default, stays open with Connection: keep-alive.
    let mut c = connect(srv.http_port());
    c.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(
        c.read_resp().unwrap().header("connection"),
        Some("keep-alive")
    );
    c.send("GET / HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_resp().unwrap().num("x-conn-requests"), 2);
    assert_eq!(c.read_end().unwrap(), 0);
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 3 && s.client_closed == 0));
}

#[test]
fn echo_reports_request() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    c.send("POST /e?echo=1 HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: a \"q\"\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.read_resp().unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    let port = c.r.get_ref().local_addr().unwrap().port();
    let want = format!(
        "{{\"method\":\"POST\",\"target\":\"/e?echo=1\",\"version\":\"HTTP/1.1\",\"headers\":[[\"Host\",\"x\"],[\"X-Mixed-Case\",\"a \\\"q\\\"\"],[\"Content-Length\",\"5\"]],\"body_len\":5,\"body_fnv\":\"a430d84680aabd0b\",\"remote_port\":{port}}}"
    );
    assert_eq!(String::from_utf8(r.body).unwrap(), want);

    c.send("PUT /?echo=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nT: 1\r\n\r\n");
    let body = String::from_utf8(c.read_resp().unwrap().body).unwrap();
    assert!(body.contains("\"body_len\":7"), "{body}");
    assert_eq!(srv.stats().requests, 2);
}

#[test]
fn chunked_and_head_and_status() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let t = Instant::now();
    let r = c
        .get("/?chunked=1&bytes=1000&chunks=3&chunk_delay_ms=30")
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(90));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, pattern(1000));
    let r = c.get("/?status=204").unwrap();
    assert_eq!((r.status, r.header("content-length")), (204, None));
    c.send("HEAD /?bytes=50 HTTP/1.1\r\n\r\n");
    let status = line(&mut c.r).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"));
    let mut cl = None;
    loop {
        let l = line(&mut c.r).unwrap();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("Content-Length: ") {
            cl = Some(v.to_string());
        }
    }
    assert_eq!(cl.as_deref(), Some("50"));
    let r = c.get("/?big_headers=5000").unwrap();
    let pad: usize = r
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("X-Pad-"))
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum();
    assert!((5000..5200).contains(&pad), "{pad}");
    assert_eq!(r.num("x-conn-requests"), 4);
}

#[test]
fn rst_if_reused_only_on_reuse() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    assert_eq!(c.get("/?rst_if_reused=1").unwrap().status, 200);
    let err = c.get("/?rst_if_reused=1").err().expect("reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 1 && s.open == 0));

    let mut c = connect(srv.http_port());
    assert_eq!(c.get("/?fin_if_reused=1").unwrap().status, 200);
    let err = c.get("/?fin_if_reused=1").err().expect("eof");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 2 && s.requests == 4));
}

#[test]
fn mid_body_faults_and_wrong_length() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let err = c.get("/?bytes=1000&fin_mid=1").err().expect("short body");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    let mut c = connect(srv.http_port());
    assert!(c.get("/?bytes=1000&rst_mid=1").is_err());
    let mut c = connect(srv.http_port());
    assert!(c.get("/?cl=100").is_err());
    let mut c = connect(srv.http_port());
    let r = c.get("/?cl=5").unwrap();
    assert_eq!(r.body, b"hello");
    assert_eq!(c.read_end().unwrap(), 8);
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 4 && s.open == 0));
}

#[test]
fn idle_close_and_idle_rst() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let t = Instant::now();
    c.get("/?idle_close_ms=100").unwrap();
    assert_eq!(c.read_end().unwrap(), 0);
    assert!(t.elapsed() >= Duration::from_millis(90));
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 1 && s.open == 0));

    // A request within the idle window keeps the connection.
    let mut c = connect(srv.http_port());
    c.get("/?idle_close_ms=500").unwrap();
    assert_eq!(c.get("/").unwrap().num("x-conn-requests"), 2);

    let mut c2 = connect(srv.http_port());
    c2.get("/?idle_rst_ms=50").unwrap();
    let err = c2.read_end().expect_err("reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 2));
    drop(c);
    assert!(srv.wait_for(WAIT, |s| s.client_closed == 1 && s.open == 0));
}

#[test]
fn rst_fin_delay_and_malformed() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let t = Instant::now();
    assert!(c.get("/?rst=1&delay_ms=50").is_err());
    assert!(t.elapsed() >= Duration::from_millis(50));
    let mut c = connect(srv.http_port());
    assert_eq!(
        c.get("/?fin=1").err().unwrap().kind(),
        io::ErrorKind::UnexpectedEof
    );
    let mut c = connect(srv.http_port());
    c.send("GET /?bad_status=1 HTTP/1.1\r\n\r\n");
    assert_eq!(line(&mut c.r).unwrap(), "HTTP/1.1 abc OK");
    let mut c = connect(srv.http_port());
    c.send("GET /?bad_header=1 HTTP/1.1\r\n\r\n");
    let mut saw = false;
    while let Ok(l) = line(&mut c.r) {
        saw |= l == "X-Bad-Header-Without-Colon";
    }
    assert!(saw);
    let mut c = connect(srv.http_port());
    c.send("garbage\r\n\r\n");
    assert_eq!(c.read_resp().unwrap().status, 400);
    let mut c = connect(srv.http_port());
    c.send(&format!(
        "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
        "y".repeat(70_000)
    ));
    assert_eq!(c.read_resp().unwrap().status, 431);
    assert!(srv.wait_for(WAIT, |s| s.server_closed == 6 && s.open == 0));
}

#[test]
fn head_delay_and_infinite() {
    let srv = Server::start();
    let mut c = connect(srv.http_port());
    let t = Instant::now();
    c.send("GET /?head_delay_ms=80 HTTP/1.1\r\n\r\n");
    assert!(line(&mut c.r).unwrap().starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() < Duration::from_millis(60));
    line(&mut c.r).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(75));

    let mut c = connect(srv.http_port());
    c.send("GET /?infinite=1 HTTP/1.1\r\n\r\n");
    let mut buf = vec![0; 200_000];
    c.r.read_exact(&mut buf).unwrap();
    drop(c);
    assert!(srv.wait_for(WAIT, |s| s.client_closed == 1 && s.open == 1));
}

#[test]
fn reset_and_admin() {
    let srv = Server::start();
    let mut old = connect(srv.http_port());
    old.get("/").unwrap();
    srv.reset();
    let s = srv.stats();
    assert_eq!((s.accepted, s.requests, s.open, s.max_open), (0, 0, 1, 1));
    assert!(s.connections.is_empty() && s.remote_ports.is_empty());
    // The old connection is still usable; its id keeps counting from before.
    let r = old.get("/").unwrap();
    assert_eq!((r.num("x-conn-id"), r.num("x-conn-requests")), (0, 2));
    let mut c = connect(srv.http_port());
    assert_eq!(c.get("/").unwrap().num("x-conn-id"), 1);
    let s: Stats = srv.stats();
    assert_eq!((s.accepted, s.requests, s.open, s.max_open), (1, 2, 2, 2));
    assert_eq!(s.connections[0].id, 1);

    let mut a = connect(srv.admin_port());
    let r = a.get("/stats").unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    let json = String::from_utf8(r.body).unwrap();
    let port = c.r.get_ref().local_addr().unwrap().port();
    assert_eq!(
        json,
        format!(
            "{{\"accepted\":1,\"open\":2,\"max_open\":2,\"requests\":2,\"client_closed\":0,\"server_closed\":0,\"streams_reset_by_client\":0,\"streams_refused\":0,\"remote_ports\":[{port}],\"connections\":[{{\"id\":1,\"remote_port\":{port},\"requests\":1,\"open\":true,\"closed_by_client\":false,\"tls\":false}}]}}"
        )
    );
    a.send("POST /reset HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    let r = a.read_resp().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
    assert_eq!(srv.stats().accepted, 0);
    assert_eq!(a.get("/nope").unwrap().status, 404);
    // Admin connections are not counted.
    assert_eq!(srv.stats().open, 2);
}

#[test]
fn concurrent_connections_and_drop() {
    let srv = Server::start();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut c = connect(srv.http_port());
            c.get("/?bytes=300000").unwrap();
            c
        })
        .collect();
    let s = srv.stats();
    assert_eq!((s.accepted, s.open, s.max_open), (8, 8, 8));
    let ids: Vec<_> = s.connections.iter().map(|c| c.id).collect();
    assert_eq!(ids, (0..8).collect::<Vec<_>>());
    drop(clients);
    assert!(srv.wait_for(WAIT, |s| s.open == 0 && s.client_closed == 8));
    assert_eq!(srv.stats().max_open, 8);
    let port = srv.http_port();
    drop(srv);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn start_and_drop_inside_a_runtime() {
    let srv = Server::start();
    let port = srv.http_port();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /?close=1 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(out.ends_with(b"hello, world\n"));
    drop(srv);
}

fn tls_client(
    srv: &Server,
    port: u16,
    host: &str,
) -> io::Result<Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(srv.ca_pem_path()).unwrap();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(WAIT))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(Client {
        r: BufReader::new(stream),
    })
}

#[test]
fn tls_listeners() {
    let srv = Server::start();
    assert!(srv.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    for host in ["127.0.0.1", "localhost"] {
        let mut c = tls_client(&srv, srv.https_port(), host).unwrap();
        assert_eq!(
            c.r.get_ref().conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(c.get("/").unwrap().body, b"hello, world\n");
        assert_eq!(c.get("/?bytes=70000").unwrap().body, pattern(70000));
    }
    let mut c = tls_client(&srv, srv.https_tls12_port(), "localhost").unwrap();
    assert_eq!(
        c.r.get_ref().conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(c.get("/?close=1").unwrap().num("x-conn-requests"), 1);
    assert_eq!(c.read_end().unwrap(), 0);

    for (port, want) in [
        (srv.https_wrong_host_port(), "NotValidForName"),
        (srv.https_expired_port(), "Expired"),
        (srv.https_self_signed_port(), "UnknownIssuer"),
    ] {
        let err = tls_client(&srv, port, "localhost").err().expect("rejected");
        assert!(format!("{err:?}").contains(want), "{err:?}");
    }
    let ok = srv.wait_for(WAIT, |s| {
        s.accepted == 6
            && s.open == 0
            && s.server_closed == 1
            && s.client_closed == 5
            && s.connections.iter().all(|c| c.tls)
    });
    assert!(ok, "{:?}", srv.stats());
}

#[test]
fn binary_prints_ports_and_exits_on_stdin_eof() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_keepalive-testserver"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let json = line(&mut out).unwrap();
    for key in [
        "http_port",
        "https_port",
        "https_tls12_port",
        "https_wrong_host_port",
        "https_expired_port",
        "https_self_signed_port",
        "h2_port",
        "h2c_port",
        "admin_port",
        "ca_pem_path",
    ] {
        assert!(json.contains(&format!("\"{key}\":")), "{json}");
    }
    let num = |key: &str| -> u16 {
        let rest = &json[json.find(&format!("\"{key}\":")).unwrap() + key.len() + 3..];
        rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
    };
    let path = json.split("\"ca_pem_path\":\"").nth(1).unwrap();
    let path = path.trim_end_matches("\"}").to_string();
    assert!(std::path::Path::new(&path).exists());
    let mut c = connect(num("http_port"));
    assert_eq!(c.get("/").unwrap().status, 200);
    let mut a = connect(num("admin_port"));
    assert!(
        String::from_utf8(a.get("/stats").unwrap().body)
            .unwrap()
            .contains("\"accepted\":1")
    );
    drop(child.stdin.take());
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(t.elapsed() < WAIT, "server did not exit on stdin EOF");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!std::path::Path::new(&path).exists());
}
