//! SPEC §6.1–6.4: reuse on, reuse off per client, idle after the body, Connection: close.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn keep_alive_on_uses_one_connection_for_ten_requests() {
    let s = Server::start();
    let a = Agent::new(true);
    for i in 0..10 {
        let r = a.get(url(&s, "/")).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text(), "hello, world\n");
        assert_eq!(r.reused(), i > 0, "request {i}");
    }
    let st = s.stats();
    assert_eq!(st.accepted, 1);
    assert_eq!(st.requests, 10);
    let mut ports = st.remote_ports.clone();
    ports.dedup();
    assert_eq!(ports.len(), 1);
}
