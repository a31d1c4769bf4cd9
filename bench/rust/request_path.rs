//! Micro-benchmark of the core request path (issue 6): one keep-alive GET of a 13-byte body
//! against a loopback server, through the Rust API in-process and through the C ABI, so the
//! cost of the FFI boundary itself is known. Also the request-building step alone (method,
//! URL and header validation), which needs no network.
//!
//! Wiring (see bench/rust/README-request.md): a `[[bench]]` entry named `request_path` with
//! `harness = false` and `path = "bench/rust/request_path.rs"`, and criterion as a
//! dev-dependency. Run with `cargo bench --bench request_path`.
//!
//! The server is the repository's scriptable test server (`keepalive-testserver`, already a
//! dev-dependency), started in this process on its own runtime threads. The end-to-end
//! comparison against nginx and the peers of each language is `make bench`.
//!
//! Groups and what each figure means:
//! - `request_path/{http,https}/rust_api`: `Agent::request_blocking(Request::new(..))` and the
//!   body read: the engine with no C in between.
//! - `request_path/{http,https}/c_abi`: `agent_request` + `agent_response_status` +
//!   `agent_response_body` + `agent_response_free`, exactly what a C caller does.
//!   The difference between the two is the FFI boundary: C-string checks, header
//!   conversion, the panic guard, boxing the response, the accessors.
//! - `request_build/{rust_api,with_headers}`: building and validating a request, no I/O.

use std::ffi::CString;
use std::hint::black_box;
use std::ptr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keepalive_agent::ffi::agent::{agent, agent_free, agent_new_with_options, agent_request};
use keepalive_agent::ffi::agent_code;
use keepalive_agent::ffi::options::{
    agent_options_free, agent_options_new, agent_options_set_ca_pem, agent_options_set_keep_alive,
};
use keepalive_agent::ffi::response::{
    agent_response, agent_response_body, agent_response_free, agent_response_status,
};
use keepalive_agent::{Agent, Options, Request};
use keepalive_testserver::Server;

const BODY: &[u8] = b"hello, world\n";
const TIMEOUT_MSECS: u32 = 10_000;

/// An agent made through the C ABI, freed on drop.
struct CAgent(*mut agent);

impl CAgent {
    fn new(ca_pem: &str) -> CAgent {
        let opts = agent_options_new();
        let mut out: *mut agent = ptr::null_mut();
        // SAFETY: `opts` is live until freed below; the PEM pointer and length describe a
        // live slice; `out` is writable.
        unsafe {
            assert_eq!(
                agent_options_set_keep_alive(opts, true),
                agent_code::AGENT_CODE_OK
            );
            assert_eq!(
                agent_options_set_ca_pem(opts, ca_pem.as_ptr(), ca_pem.len()),
                agent_code::AGENT_CODE_OK
            );
            assert_eq!(
                agent_new_with_options(opts, &mut out),
                agent_code::AGENT_CODE_OK
            );
            agent_options_free(opts);
        }
        CAgent(out)
    }

    /// One GET as a C caller makes it; returns the body length.
    fn get(&self, method: &CString, url: &CString) -> usize {
        let mut resp: *mut agent_response = ptr::null_mut();
        // SAFETY: a live agent, NUL-terminated strings, no headers or body, writable out.
        let code = unsafe {
            agent_request(
                self.0,
                method.as_ptr(),
                url.as_ptr(),
                ptr::null(),
                0,
                ptr::null(),
                0,
                TIMEOUT_MSECS,
                &mut resp,
            )
        };
        assert_eq!(code, agent_code::AGENT_CODE_OK);
        let mut data: *const u8 = ptr::null();
        let mut len = 0usize;
        // SAFETY: `resp` is the live response written on success; freed exactly once.
        unsafe {
            assert_eq!(agent_response_status(resp), 200);
            assert_eq!(
                agent_response_body(resp, &mut data, &mut len),
                agent_code::AGENT_CODE_OK
            );
            black_box(std::slice::from_raw_parts(data, len));
            agent_response_free(resp);
        }
        len
    }
}

impl Drop for CAgent {
    fn drop(&mut self) {
        // SAFETY: made by agent_new_with_options, freed once.
        unsafe { agent_free(self.0) };
    }
}

fn rust_agent(ca_pem: &str) -> Agent {
    let opts = Options {
        keep_alive: Some(true),
        ca_pem: Some(ca_pem.as_bytes().to_vec()),
        ..Options::default()
    };
    Agent::new(&opts).expect("agent")
}

fn request_path(c: &mut Criterion) {
    let server = Server::start();
    let ca = server.ca_pem().to_string();
    let urls = [
        ("http", format!("http://127.0.0.1:{}/", server.http_port())),
        (
            "https",
            format!("https://127.0.0.1:{}/", server.https_port()),
        ),
    ];
    let method = CString::new("GET").unwrap();
    for (scheme, url) in &urls {
        let mut group = c.benchmark_group(format!("request_path/{scheme}"));
        group.throughput(Throughput::Elements(1));

        let a = rust_agent(&ca);
        // Warm: the first request connects (and handshakes); every measured one is reused.
        assert_eq!(
            a.request_blocking(Request::new("GET", url).unwrap())
                .unwrap()
                .body,
            BODY
        );
        group.bench_function("rust_api", |b| {
            b.iter(|| {
                let r = a
                    .request_blocking(Request::new("GET", url).unwrap())
                    .unwrap();
                assert_eq!(r.status, 200);
                black_box(r.body.len())
            })
        });
        assert_eq!(
            a.stats().connections_opened,
            1,
            "{scheme}: rust_api reconnected"
        );
        drop(a);

        let ca_agent = CAgent::new(&ca);
        let curl = CString::new(url.as_str()).unwrap();
        assert_eq!(ca_agent.get(&method, &curl), BODY.len());
        group.bench_function("c_abi", |b| {
            b.iter(|| black_box(ca_agent.get(&method, &curl)))
        });
        drop(ca_agent);
        group.finish();
    }
}

fn request_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_build");
    let url = "https://127.0.0.1:8443/items/42?consistent=true";
    group.bench_function("rust_api", |b| {
        b.iter(|| black_box(Request::new(black_box("GET"), black_box(url)).unwrap()))
    });
    group.bench_function("with_headers", |b| {
        b.iter(|| {
            let r = Request::new("POST", url)
                .unwrap()
                .header("content-type", "application/x-amz-json-1.0")
                .unwrap()
                .header("x-amz-target", "DynamoDB_20120810.GetItem")
                .unwrap()
                .body(&b"{\"TableName\":\"t\"}"[..]);
            black_box(r)
        })
    });
    group.finish();
}

criterion_group!(benches, request_path, request_build);
criterion_main!(benches);
