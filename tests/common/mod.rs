//! Helpers for the integration tests: thin safe wrappers over the C ABI, so every test
//! exercises exactly what C callers use.
#![allow(dead_code, unused_imports)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::mpsc;
use std::time::Duration;

use keepalive_agent::ffi::agent::*;
use keepalive_agent::ffi::agent_code::{self, *};
use keepalive_agent::ffi::options::*;
use keepalive_agent::ffi::response::*;
use keepalive_agent::ffi::{agent_code as Code, agent_last_error};

pub use keepalive_testserver::{Server, Stats as ServerStats};

pub fn last_error() -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf has 4096 writable bytes.
    let n = unsafe { agent_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    String::from_utf8_lossy(&buf[..n.min(4095)]).into_owned()
}

/// An error as C sees it: the code and the thread's last message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

#[derive(Debug)]
pub struct Agent(pub *mut agent);
// SAFETY (tests): agents are documented as usable from any thread.
unsafe impl Send for Agent {}
unsafe impl Sync for Agent {}

pub struct Options(pub *mut agent_options);

impl Options {
    pub fn new() -> Options {
        Options(agent_options_new())
    }
    pub fn set(self, f: impl FnOnce(*mut agent_options) -> Code) -> Options {
        assert_eq!(f(self.0), AGENT_CODE_OK);
        self
    }
    pub fn build(self) -> Result<Agent, Failure> {
        let mut out = std::ptr::null_mut();
        // SAFETY: live options and a writable out pointer.
        let code = unsafe { agent_new_with_options(self.0, &mut out) };
        if code == AGENT_CODE_OK {
            Ok(Agent(out))
        } else {
            assert!(out.is_null(), "out written on failure");
            Err(Failure {
                code,
                message: last_error(),
            })
        }
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: from agent_options_new, freed once.
        unsafe { agent_options_free(self.0) }
    }
}

/// Options builder shorthands.
pub fn opt_u32(
    f: unsafe extern "C" fn(*mut agent_options, u32) -> Code,
    v: u32,
) -> impl FnOnce(*mut agent_options) -> Code {
    // SAFETY: called with live options.
    move |o| unsafe { f(o, v) }
}
pub fn opt_bool(
    f: unsafe extern "C" fn(*mut agent_options, bool) -> Code,
    v: bool,
) -> impl FnOnce(*mut agent_options) -> Code {
    // SAFETY: called with live options.
    move |o| unsafe { f(o, v) }
}

pub struct Response(pub *mut agent_response);
unsafe impl Send for Response {}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Response(status {})", self.status())
    }
}

impl Response {
    pub fn status(&self) -> u16 {
        unsafe { agent_response_status(self.0) }
    }
    pub fn version(&self) -> u32 {
        unsafe { agent_response_version(self.0) }
    }
    pub fn reused(&self) -> bool {
        unsafe { agent_response_reused(self.0) }
    }
    pub fn header(&self, name: &str) -> Option<String> {
        let n = CString::new(name).unwrap();
        let mut v: *const c_char = std::ptr::null();
        let mut len = 0usize;
        let code = unsafe { agent_response_header(self.0, n.as_ptr(), &mut v, &mut len) };
        if code == AGENT_CODE_NOT_FOUND {
            return None;
        }
        assert_eq!(code, AGENT_CODE_OK);
        let bytes = unsafe { std::slice::from_raw_parts(v.cast::<u8>(), len) };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
    pub fn headers(&self) -> Vec<(String, String)> {
        let n = unsafe { agent_response_header_count(self.0) };
        (0..n)
            .map(|i| {
                let (mut k, mut kl, mut v, mut vl) = (std::ptr::null(), 0, std::ptr::null(), 0);
                let code = unsafe {
                    agent_response_header_at(self.0, i, &mut k, &mut kl, &mut v, &mut vl)
                };
                assert_eq!(code, AGENT_CODE_OK);
                let k = unsafe { std::slice::from_raw_parts(k.cast::<u8>(), kl) };
                let v = unsafe { std::slice::from_raw_parts(v.cast::<u8>(), vl) };
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }
    pub fn body(&self) -> Vec<u8> {
        let (mut p, mut len) = (std::ptr::null(), 0usize);
        assert_eq!(
            unsafe { agent_response_body(self.0, &mut p, &mut len) },
            AGENT_CODE_OK
        );
        if len == 0 {
            return Vec::new();
        }
        unsafe { std::slice::from_raw_parts(p, len) }.to_vec()
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body()).unwrap()
    }
    pub fn timings(&self) -> agent_timings {
        let mut t = agent_timings::default();
        assert_eq!(
            unsafe { agent_response_timings(self.0, &mut t) },
            AGENT_CODE_OK
        );
        t
    }
    /// The test server's X-Remote-Port: which connection served this response.
    pub fn port(&self) -> u16 {
        self.header("x-remote-port")
            .expect("x-remote-port")
            .parse()
            .unwrap()
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        unsafe { agent_response_free(self.0) }
    }
}

pub struct Req<'a> {
    pub method: &'a str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_msecs: u32,
}

impl<'a> Req<'a> {
    pub fn get(url: impl Into<String>) -> Req<'a> {
        Req {
            method: "GET",
            url: url.into(),
            headers: vec![],
            body: vec![],
            timeout_msecs: 0,
        }
    }
    pub fn method(mut self, m: &'a str) -> Self {
        self.method = m;
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn body(mut self, b: &[u8]) -> Self {
        self.body = b.to_vec();
        self
    }
    pub fn timeout(mut self, ms: u32) -> Self {
        self.timeout_msecs = ms;
        self
    }
}

struct CArgs {
    method: CString,
    url: CString,
    _names: Vec<CString>,
    _values: Vec<CString>,
    headers: Vec<agent_header>,
}

fn c_args(r: &Req) -> CArgs {
    let names: Vec<CString> = r
        .headers
        .iter()
        .map(|(k, _)| CString::new(k.as_str()).unwrap())
        .collect();
    let values: Vec<CString> = r
        .headers
        .iter()
        .map(|(_, v)| CString::new(v.as_str()).unwrap())
        .collect();
    let headers = names
        .iter()
        .zip(&values)
        .map(|(n, v)| agent_header {
            name: n.as_ptr(),
            value: v.as_ptr(),
        })
        .collect();
    CArgs {
        method: CString::new(r.method).unwrap(),
        url: CString::new(r.url.as_str()).unwrap(),
        _names: names,
        _values: values,
        headers,
    }
}

extern "C" fn on_done(userdata: *mut c_void, code: agent_code, resp: *mut agent_response) {
    // SAFETY: userdata is the boxed Sender from `start`, reclaimed exactly once here.
    let tx = unsafe { Box::from_raw(userdata.cast::<mpsc::Sender<Result<Response, Failure>>>()) };
    let res = if code == AGENT_CODE_OK {
        Ok(Response(resp))
    } else {
        assert!(resp.is_null());
        Err(Failure {
            code,
            message: last_error(),
        })
    };
    let _ = tx.send(res);
}

impl Agent {
    pub fn new(keep_alive: bool) -> Agent {
        let a = agent_new(keep_alive, 1000);
        assert!(!a.is_null(), "{}", last_error());
        Agent(a)
    }

    pub fn send(&self, r: Req) -> Result<Response, Failure> {
        let c = c_args(&r);
        let mut out = std::ptr::null_mut();
        let code = unsafe {
            agent_request(
                self.0,
                c.method.as_ptr(),
                c.url.as_ptr(),
                c.headers.as_ptr(),
                c.headers.len(),
                r.body.as_ptr(),
                r.body.len(),
                r.timeout_msecs,
                &mut out,
            )
        };
        if code == AGENT_CODE_OK {
            Ok(Response(out))
        } else {
            assert!(out.is_null(), "out written on failure");
            Err(Failure {
                code,
                message: last_error(),
            })
        }
    }

    pub fn get(&self, url: impl Into<String>) -> Result<Response, Failure> {
        self.send(Req::get(url))
    }

    /// Starts an async request; the receiver yields its single completion.
    pub fn start(&self, r: Req) -> (u64, mpsc::Receiver<Result<Response, Failure>>) {
        let c = c_args(&r);
        let (tx, rx) = mpsc::channel();
        let ud = Box::into_raw(Box::new(tx));
        let mut id = 0u64;
        let code = unsafe {
            agent_request_async(
                self.0,
                c.method.as_ptr(),
                c.url.as_ptr(),
                c.headers.as_ptr(),
                c.headers.len(),
                r.body.as_ptr(),
                r.body.len(),
                r.timeout_msecs,
                Some(on_done),
                ud.cast(),
                &mut id,
            )
        };
        assert_eq!(code, AGENT_CODE_OK, "{}", last_error());
        (id, rx)
    }

    pub fn cancel(&self, id: u64) -> Code {
        unsafe { agent_request_cancel(self.0, id) }
    }

    pub fn stats(&self) -> agent_pool_stats {
        let mut s = agent_pool_stats::default();
        assert_eq!(unsafe { agent_stats(self.0, &mut s) }, AGENT_CODE_OK);
        s
    }

    pub fn origin_stats(&self, url: &str) -> agent_pool_stats {
        let u = CString::new(url).unwrap();
        let mut s = agent_pool_stats::default();
        assert_eq!(
            unsafe { agent_origin_stats(self.0, u.as_ptr(), &mut s) },
            AGENT_CODE_OK
        );
        s
    }

    /// Polls the agent's stats until `pred` holds (or the timeout passes).
    pub fn wait_stats(&self, timeout: Duration, pred: impl Fn(&agent_pool_stats) -> bool) -> bool {
        let end = std::time::Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if std::time::Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        unsafe { agent_free(self.0) }
    }
}

pub fn code_name(c: Code) -> String {
    unsafe { CStr::from_ptr(keepalive_agent::ffi::agent_code_str(c as u32)) }
        .to_string_lossy()
        .into_owned()
}

pub fn url(s: &Server, path: &str) -> String {
    format!("http://127.0.0.1:{}{}", s.http_port(), path)
}

pub fn tls_url(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

/// A TLS-capable agent trusting the server's CA (and nothing else).
pub fn tls_agent(s: &Server, keep_alive: bool) -> Agent {
    tls_agent_with(s, |o| {
        o.set(opt_bool(agent_options_set_keep_alive, keep_alive))
    })
}

/// As [`tls_agent`], with more options set by `f`.
pub fn tls_agent_with(s: &Server, f: impl FnOnce(Options) -> Options) -> Agent {
    let pem = s.ca_pem().as_bytes().to_vec();
    f(Options::new()
        .set(opt_bool(agent_options_set_use_system_roots, false))
        .set(move |o| unsafe { agent_options_set_ca_pem(o, pem.as_ptr(), pem.len()) }))
    .build()
    .unwrap()
}

pub const OK: Code = AGENT_CODE_OK;
pub use keepalive_agent::ffi::agent_code as C;

/// A listener that never accepts, with its backlog filled: further connects to it hang
/// (their SYNs are dropped). On loopback only — never an outside address. Keep all three
/// values alive while the test uses the port.
pub fn blackhole() -> (socket2::Socket, Vec<socket2::Socket>, u16) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    l.bind(&any.into()).unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap();
    let fill = (0..8)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    (l, fill, addr.as_socket().unwrap().port())
}
