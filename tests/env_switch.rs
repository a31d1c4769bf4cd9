//! SPEC §3: the environment switch. Its own test binary (one test) because it changes the
//! process environment.

mod common;
use common::*;

use keepalive_agent::ffi::agent::{
    agent_keep_alive_describe, agent_keep_alive_enabled, agent_keep_alive_source,
    agent_setting_source,
};
use keepalive_agent::ffi::options::{
    agent_options_set_ignore_environment, agent_options_set_keep_alive,
};

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

/// The read-back: source and sentence.
fn source(a: &Agent) -> (agent_setting_source, String) {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: a live agent and a writable buffer of its length.
    let n = unsafe { agent_keep_alive_describe(a.0, buf.as_mut_ptr(), buf.len()) };
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(n, text.len());
    (unsafe { agent_keep_alive_source(a.0) }, text)
}

fn default_agent() -> Agent {
    Options::new().build().unwrap()
}

#[test]
fn environment_switch_is_a_kill_switch_with_an_alias_and_an_escape() {
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
        // A kill switch: agent_new(true, ...) and an explicit option are overruled too.
        let on = Agent::new(true);
        assert_eq!(connections_for_three(&s, &on), (3, false), "{name}={value}");
        assert_eq!(
            source(&on),
            (
                agent_setting_source::AGENT_SOURCE_ENVIRONMENT,
                format!("off: environment, {name}={value:?}")
            )
        );
        let explicit = Options::new()
            .set(opt_bool(agent_options_set_keep_alive, true))
            .build()
            .unwrap();
        assert_eq!(
            connections_for_three(&s, &explicit),
            (3, false),
            "{name}={value}"
        );
        // Only ignore_environment keeps reuse on.
        let escape = Options::new()
            .set(opt_bool(agent_options_set_keep_alive, true))
            .set(opt_bool(agent_options_set_ignore_environment, true))
            .build()
            .unwrap();
        assert_eq!(
            connections_for_three(&s, &escape),
            (1, true),
            "{name}={value}"
        );
        assert_eq!(
            source(&escape).0,
            agent_setting_source::AGENT_SOURCE_ARGUMENT
        );
        assert!(
            source(&escape)
                .1
                .ends_with("(ignored: ignore_environment is set)"),
            "{:?}",
            source(&escape)
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
    set(&[(OURS, Some("yes"))]);
    assert_eq!(
        source(&default_agent()),
        (
            agent_setting_source::AGENT_SOURCE_DEFAULT,
            "on: default; KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED=\"yes\" (ignored: not true, false, 1 or 0)"
                .to_owned()
        )
    );
    set(&[(OURS, Some("true"))]);
    assert_eq!(
        source(&default_agent()).0,
        agent_setting_source::AGENT_SOURCE_ENVIRONMENT
    );
    let off = Agent::new(false);
    assert_eq!(connections_for_three(&s, &off), (3, false));
    assert_eq!(source(&off).0, agent_setting_source::AGENT_SOURCE_ARGUMENT);
    set(&[(OURS, None), (AWS, None)]);
}
