//! SPEC §3: the environment switch. Its own test binary (one test) because it changes the
//! process environment.

mod common;
use common::*;

use keepalive_agent::ffi::agent::agent_keep_alive_enabled;
use keepalive_agent::ffi::options::agent_options_set_keep_alive;

const OURS: &str = "KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED";
const AWS: &str = "AWS_NODEJS_CONNECTION_REUSE_ENABLED";

fn set(vars: &[(&str, Option<&str>)]) {
    for (k, v) in vars {
        // SAFETY: this binary has one test and sets variables before any thread reads them.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

/// Connections the server accepted for 3 requests from `a`, and the agent's own view.
fn connections_for_three(s: &Server, a: &Agent) -> (u64, bool) {
    s.reset();
    for _ in 0..3 {
        a.get(url(s, "/")).unwrap();
    }
    (s.stats().accepted, unsafe { agent_keep_alive_enabled(a.0) })
}

fn default_agent() -> Agent {
    Options::new().build().unwrap()
}

#[test]
fn environment_switch_with_alias_and_explicit_settings_winning() {
    let s = Server::start();
    set(&[(OURS, None), (AWS, None)]);
    assert_eq!(connections_for_three(&s, &default_agent()), (1, true));

    for (name, value) in [
        (OURS, "false"),
        (OURS, "0"),
        (OURS, "FALSE"),
        (AWS, "false"),
        (AWS, "0"),
    ] {
        set(&[(OURS, None), (AWS, None), (name, Some(value))]);
        assert_eq!(
            connections_for_three(&s, &default_agent()),
            (3, false),
            "{name}={value}"
        );
        // An explicit setting wins: agent_new(true, ...) and the options builder.
        assert_eq!(
            connections_for_three(&s, &Agent::new(true)),
            (1, true),
            "{name}={value}"
        );
        let explicit = Options::new()
            .set(opt_bool(agent_options_set_keep_alive, true))
            .build()
            .unwrap();
        assert_eq!(
            connections_for_three(&s, &explicit),
            (1, true),
            "{name}={value}"
        );
    }

    // Unrecognised values are ignored; `true`/`1` enable; explicit false still wins.
    for value in ["banana", "", "yes", "true", "1"] {
        set(&[(AWS, None), (OURS, Some(value))]);
        assert_eq!(
            connections_for_three(&s, &default_agent()),
            (1, true),
            "{value:?}"
        );
    }
    set(&[(OURS, Some("true"))]);
    assert_eq!(connections_for_three(&s, &Agent::new(false)), (3, false));
    set(&[(OURS, None), (AWS, None)]);
}
