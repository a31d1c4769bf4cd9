//! Agent options: raw values as callers set them, and their validated form.
//!
//! Setters never fail on range; [`Options::validate`] checks everything when an agent is
//! created, so a bad value is refused at creation with a specific message (SPEC §2).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::proxy::Proxies;

/// Which idle connection is reused first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// Most recently released first (Node's and undici's default): keeps few connections warm.
    #[default]
    Lifo,
    /// Least recently released first: spreads load over all idle connections.
    Fifo,
}

/// Which HTTP versions an agent speaks (SPEC §8 `http_version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// Over TLS, ALPN offers h2 then http/1.1 and the server chooses; plain http is 1.1.
    Auto,
    /// HTTP/1.1 only.
    #[default]
    Http1,
    /// HTTP/2 over TLS only (ALPN offers h2 alone); plain http stays 1.1.
    Http2,
    /// HTTP/2 without TLS on plain http (no upgrade), h2 by ALPN over TLS.
    H2cPriorKnowledge,
}

impl HttpVersion {
    /// The C values (`AGENT_HTTP_VERSION_*`).
    pub fn from_raw(v: u32) -> Option<HttpVersion> {
        Some(match v {
            0 => HttpVersion::Auto,
            1 => HttpVersion::Http1,
            2 => HttpVersion::Http2,
            3 => HttpVersion::H2cPriorKnowledge,
            _ => return None,
        })
    }

    /// The ALPN protocols a TLS connection offers.
    pub(crate) fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
            HttpVersion::Http2 => vec![b"h2".to_vec()],
            HttpVersion::Auto | HttpVersion::H2cPriorKnowledge => {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            }
        }
    }
}

/// The two environment variables of SPEC §3, in lookup order.
pub(crate) const ENV_REUSE: &str = "KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED";
pub(crate) const ENV_REUSE_AWS: &str = "AWS_NODEJS_CONNECTION_REUSE_ENABLED";

/// Largest millisecond value accepted for timeouts (as Node's timers: 2^31 - 1).
pub(crate) const MAX_MSECS: u32 = i32::MAX as u32;
/// The kernel's limit for TCP_KEEPIDLE / TCP_KEEPINTVL is 32767 seconds.
pub(crate) const MAX_KEEPALIVE_MSECS: u32 = 32_767_000;
/// The kernel's limit for TCP_KEEPCNT.
pub(crate) const MAX_KEEPALIVE_PROBES: u32 = 127;
/// Upper bound on any connection-count limit.
pub(crate) const MAX_SOCKETS_LIMIT: u32 = 1 << 20;

/// The limits a binding needs to validate with the library's bounds, by the names
/// `agent_limit` takes.
pub fn limit_by_name(name: &str) -> Option<u64> {
    Some(u64::from(match name {
        "max_msecs" => MAX_MSECS,
        "max_keep_alive_msecs" => MAX_KEEPALIVE_MSECS,
        "max_keep_alive_probes" => MAX_KEEPALIVE_PROBES,
        "max_sockets" => MAX_SOCKETS_LIMIT,
        _ => return None,
    }))
}

/// Options as set by the caller. `None` means "not set, use the default".
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub keep_alive: Option<bool>,
    /// SPEC §3's process switch does not apply to this agent (§8 `ignore_environment`).
    pub ignore_environment: Option<bool>,
    pub keep_alive_msecs: Option<u32>,
    pub keep_alive_interval_msecs: Option<u32>,
    pub keep_alive_probes: Option<u32>,
    pub max_sockets: Option<u32>,
    pub max_total_sockets: Option<u32>,
    pub max_free_sockets: Option<u32>,
    /// Raw value from C (0 = lifo, 1 = fifo); anything else is refused at creation.
    pub scheduling: Option<u32>,
    pub free_socket_timeout_msecs: Option<u32>,
    pub keep_alive_timeout_buffer_msecs: Option<u32>,
    pub max_keep_alive_timeout_msecs: Option<u32>,
    pub max_socket_lifetime_msecs: Option<u32>,
    pub connect_timeout_msecs: Option<u32>,
    pub headers_timeout_msecs: Option<u32>,
    pub body_timeout_msecs: Option<u32>,
    pub retry_stale: Option<bool>,
    pub max_response_bytes: Option<u64>,
    pub ca_pem: Option<Vec<u8>>,
    pub ca_file: Option<String>,
    pub use_system_roots: Option<bool>,
    pub danger_accept_invalid_certs: Option<bool>,
    pub user_agent: Option<String>,
    /// Proxy URL for both schemes; `Some("")`: no proxy, whatever the environment says.
    pub proxy: Option<String>,
    /// Hosts that bypass the proxy (curl's `NO_PROXY` grammar).
    pub no_proxy: Option<String>,
    pub proxy_from_env: Option<bool>,
    /// `host:port:addr[,addr…]` entries (curl's `CURLOPT_RESOLVE`).
    pub resolve: Vec<String>,
    pub dns_cache_msecs: Option<u32>,
    pub happy_eyeballs_delay_msecs: Option<u32>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_cert_file: Option<String>,
    pub client_key_pem: Option<Vec<u8>>,
    pub client_key_file: Option<String>,
    /// Raw value from C (`AGENT_HTTP_VERSION_*`); anything else is refused at creation.
    pub http_version: Option<u32>,
    /// Where events go (SPEC §8 `events`), and which (`event_mask`, 0 = all).
    pub events: crate::trace::Events,
    pub event_mask: Option<u32>,
}

/// Validated options with defaults applied. Durations of `None` mean "no limit".
#[derive(Clone, Debug)]
pub struct Config {
    pub keep_alive: bool,
    /// What decided `keep_alive`, and what the environment said (SPEC §3's read-back).
    pub keep_alive_source: KeepAliveSource,
    pub keep_alive_msecs: u32,
    pub keep_alive_interval: Option<Duration>,
    pub keep_alive_probes: Option<u32>,
    pub max_sockets: Option<usize>,
    pub max_total_sockets: Option<usize>,
    pub max_free_sockets: usize,
    pub scheduling: Scheduling,
    pub free_socket_timeout: Option<Duration>,
    pub keep_alive_timeout_buffer: Duration,
    pub max_keep_alive_timeout: Duration,
    pub max_socket_lifetime: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub headers_timeout: Option<Duration>,
    pub body_timeout: Option<Duration>,
    pub retry_stale: bool,
    pub max_response_bytes: Option<u64>,
    pub ca_pem: Option<Vec<u8>>,
    pub ca_file: Option<String>,
    pub use_system_roots: bool,
    pub danger_accept_invalid_certs: bool,
    pub user_agent: String,
    /// `user_agent` as the header value sent.
    pub(crate) user_agent_value: http::HeaderValue,
    /// The proxies in effect (explicit options, else the environment unless switched off).
    pub proxies: Proxies,
    pub(crate) resolve: Vec<crate::dns::Override>,
    /// How long resolved addresses are reused; `None`: never cached.
    pub dns_cache: Option<Duration>,
    pub happy_eyeballs_delay: Duration,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_cert_file: Option<String>,
    pub client_key_pem: Option<Vec<u8>>,
    pub client_key_file: Option<String>,
    pub http_version: HttpVersion,
    /// Events: the caller's sink and mask, and `KEEPALIVE_AGENT_DEBUG`.
    pub tracer: crate::trace::Tracer,
}

pub(crate) const DEFAULT_KEEP_ALIVE_MSECS: u32 = 1000;
pub(crate) const DEFAULT_MAX_FREE_SOCKETS: u32 = 256;
pub(crate) const DEFAULT_FREE_SOCKET_TIMEOUT_MSECS: u32 = 4000;
pub(crate) const DEFAULT_KEEP_ALIVE_TIMEOUT_BUFFER_MSECS: u32 = 1000;
pub(crate) const DEFAULT_MAX_KEEP_ALIVE_TIMEOUT_MSECS: u32 = 600_000;
pub(crate) const DEFAULT_CONNECT_TIMEOUT_MSECS: u32 = 10_000;
pub(crate) const DEFAULT_HEADERS_TIMEOUT_MSECS: u32 = 300_000;
pub(crate) const DEFAULT_BODY_TIMEOUT_MSECS: u32 = 300_000;
/// curl keeps resolved names 60 s.
pub(crate) const DEFAULT_DNS_CACHE_MSECS: u32 = 60_000;
/// RFC 8305's recommended connection-attempt delay.
pub(crate) const DEFAULT_HAPPY_EYEBALLS_DELAY_MSECS: u32 = 250;

/// The library's default `User-Agent`.
pub fn default_user_agent() -> String {
    format!("keepalive-agent/{}", env!("CARGO_PKG_VERSION"))
}

/// Where an agent's effective keep-alive setting came from (SPEC §3's read-back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAliveSource {
    pub origin: SettingOrigin,
    /// The switch variable that was read and its value, when one is set (also when its
    /// value was ignored or `ignore_environment` was on).
    pub variable: Option<(&'static str, String)>,
    pub ignore_environment: bool,
}

/// What decided a setting. The C values are `AGENT_SOURCE_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingOrigin {
    Default = 0,
    Argument = 1,
    Environment = 2,
}

impl KeepAliveSource {
    /// One line for people: the setting, what decided it, and what the environment said.
    pub fn describe(&self, keep_alive: bool) -> String {
        let state = if keep_alive { "on" } else { "off" };
        let var = self.variable.as_ref().map(|(name, value)| {
            let verdict = match parse_switch(value) {
                None => " (ignored: not true, false, 1 or 0)",
                Some(_) if self.ignore_environment => " (ignored: ignore_environment is set)",
                Some(_) => "",
            };
            format!("{name}={value:?}{verdict}")
        });
        match (self.origin, var) {
            (SettingOrigin::Environment, Some(var)) => format!("{state}: environment, {var}"),
            (SettingOrigin::Argument, Some(var)) => format!("{state}: argument; {var}"),
            (SettingOrigin::Argument, None) => format!("{state}: argument"),
            (_, Some(var)) => format!("{state}: default; {var}"),
            (_, None) => format!("{state}: default"),
        }
    }
}

/// SPEC §3's switch values: `Some(false)` for `false`/`0`, `Some(true)` for `true`/`1` (any
/// case, surrounding blanks ignored), `None` otherwise.
fn parse_switch(value: &str) -> Option<bool> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("false") || v == "0" {
        Some(false)
    } else if v.eq_ignore_ascii_case("true") || v == "1" {
        Some(true)
    } else {
        None
    }
}

fn msecs(name: &str, value: Option<u32>, default: u32) -> Result<u32> {
    let v = value.unwrap_or(default);
    if v > MAX_MSECS {
        return Err(Error::invalid_option(format!(
            "{name} = {v} is out of range (0..={MAX_MSECS})"
        )));
    }
    Ok(v)
}

/// A millisecond option where 0 means "none".
fn optional_duration(name: &str, value: Option<u32>, default: u32) -> Result<Option<Duration>> {
    let v = msecs(name, value, default)?;
    Ok((v > 0).then(|| Duration::from_millis(u64::from(v))))
}

fn limit(name: &str, value: Option<u32>) -> Result<Option<usize>> {
    match value.unwrap_or(0) {
        0 => Ok(None),
        v if v > MAX_SOCKETS_LIMIT => Err(Error::invalid_option(format!(
            "{name} = {v} is out of range (0..={MAX_SOCKETS_LIMIT}, 0 = unlimited)"
        ))),
        v => Ok(Some(v as usize)),
    }
}

impl Options {
    /// Applies defaults and the environment, and checks every range.
    pub fn validate(&self) -> Result<Config> {
        self.validate_with_env(|name| std::env::var(name).ok())
    }

    /// As [`Options::validate`], with the environment supplied by the caller (for tests).
    /// SPEC §3: the switch saying false is a kill switch (it wins over an explicit `true`)
    /// unless `ignore_environment`; an explicit argument wins otherwise; then the switch
    /// saying true; then the default (on).
    fn decide_keep_alive(&self, env: &impl Fn(&str) -> Option<String>) -> (bool, KeepAliveSource) {
        let ignore_environment = self.ignore_environment.unwrap_or(false);
        // The library's own variable is read first; the AWS SDK's name is the alias. The first
        // one set is what the read-back reports, unless a parseable one decided.
        let first = |parseable: bool| {
            [ENV_REUSE, ENV_REUSE_AWS].iter().find_map(|name| {
                env(name)
                    .filter(|v| !parseable || parse_switch(v).is_some())
                    .map(|v| (*name, v))
            })
        };
        let decider = first(true);
        let from_env = decider
            .as_ref()
            .filter(|_| !ignore_environment)
            .and_then(|(_, v)| parse_switch(v));
        let (keep_alive, origin) = match (from_env, self.keep_alive) {
            (Some(false), _) => (false, SettingOrigin::Environment),
            (_, Some(v)) => (v, SettingOrigin::Argument),
            (Some(true), None) => (true, SettingOrigin::Environment),
            (None, None) => (true, SettingOrigin::Default),
        };
        let variable = match origin {
            SettingOrigin::Environment => decider,
            _ => first(false),
        };
        (
            keep_alive,
            KeepAliveSource {
                origin,
                variable,
                ignore_environment,
            },
        )
    }

    pub fn validate_with_env(&self, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let (keep_alive, keep_alive_source) = self.decide_keep_alive(&env);

        let keep_alive_msecs = match self.keep_alive_msecs.unwrap_or(DEFAULT_KEEP_ALIVE_MSECS) {
            0 => DEFAULT_KEEP_ALIVE_MSECS,
            v if v > MAX_KEEPALIVE_MSECS => {
                return Err(Error::invalid_option(format!(
                    "keep_alive_msecs = {v} is out of range (0..={MAX_KEEPALIVE_MSECS}; the kernel takes at most 32767 s)"
                )));
            }
            v => v,
        };
        let keep_alive_interval = match self.keep_alive_interval_msecs.unwrap_or(0) {
            0 => None,
            v if v > MAX_KEEPALIVE_MSECS => {
                return Err(Error::invalid_option(format!(
                    "keep_alive_interval_msecs = {v} is out of range (0..={MAX_KEEPALIVE_MSECS})"
                )));
            }
            v => Some(Duration::from_millis(u64::from(v))),
        };
        let keep_alive_probes = match self.keep_alive_probes.unwrap_or(0) {
            0 => None,
            v if v > MAX_KEEPALIVE_PROBES => {
                return Err(Error::invalid_option(format!(
                    "keep_alive_probes = {v} is out of range (0..={MAX_KEEPALIVE_PROBES})"
                )));
            }
            v => Some(v),
        };

        let scheduling = match self.scheduling.unwrap_or(0) {
            0 => Scheduling::Lifo,
            1 => Scheduling::Fifo,
            v => {
                return Err(Error::invalid_option(format!(
                    "scheduling = {v} is unknown (0 = lifo, 1 = fifo)"
                )));
            }
        };

        let max_free_sockets = self.max_free_sockets.unwrap_or(DEFAULT_MAX_FREE_SOCKETS);
        if max_free_sockets > MAX_SOCKETS_LIMIT {
            return Err(Error::invalid_option(format!(
                "max_free_sockets = {max_free_sockets} is out of range (0..={MAX_SOCKETS_LIMIT})"
            )));
        }

        let user_agent = match &self.user_agent {
            Some(ua) => {
                if http::HeaderValue::from_str(ua).is_err() {
                    return Err(Error::invalid_option(
                        "user_agent contains a character not allowed in a header value",
                    ));
                }
                ua.clone()
            }
            None => default_user_agent(),
        };

        let proxies = Proxies::configure(
            self.proxy.as_deref(),
            self.no_proxy.as_deref(),
            self.proxy_from_env.unwrap_or(true),
            &env,
        )?;
        let resolve = self
            .resolve
            .iter()
            .map(|e| crate::dns::parse_override(e))
            .collect::<Result<Vec<_>>>()?;

        Ok(Config {
            keep_alive,
            keep_alive_source,
            keep_alive_msecs,
            keep_alive_interval,
            keep_alive_probes,
            max_sockets: limit("max_sockets", self.max_sockets)?,
            max_total_sockets: limit("max_total_sockets", self.max_total_sockets)?,
            max_free_sockets: max_free_sockets as usize,
            scheduling,
            free_socket_timeout: optional_duration(
                "free_socket_timeout_msecs",
                self.free_socket_timeout_msecs,
                DEFAULT_FREE_SOCKET_TIMEOUT_MSECS,
            )?,
            keep_alive_timeout_buffer: Duration::from_millis(u64::from(msecs(
                "keep_alive_timeout_buffer_msecs",
                self.keep_alive_timeout_buffer_msecs,
                DEFAULT_KEEP_ALIVE_TIMEOUT_BUFFER_MSECS,
            )?)),
            max_keep_alive_timeout: Duration::from_millis(u64::from(msecs(
                "max_keep_alive_timeout_msecs",
                self.max_keep_alive_timeout_msecs,
                DEFAULT_MAX_KEEP_ALIVE_TIMEOUT_MSECS,
            )?)),
            max_socket_lifetime: optional_duration(
                "max_socket_lifetime_msecs",
                self.max_socket_lifetime_msecs,
                0,
            )?,
            connect_timeout: optional_duration(
                "connect_timeout_msecs",
                self.connect_timeout_msecs,
                DEFAULT_CONNECT_TIMEOUT_MSECS,
            )?,
            headers_timeout: optional_duration(
                "headers_timeout_msecs",
                self.headers_timeout_msecs,
                DEFAULT_HEADERS_TIMEOUT_MSECS,
            )?,
            body_timeout: optional_duration(
                "body_timeout_msecs",
                self.body_timeout_msecs,
                DEFAULT_BODY_TIMEOUT_MSECS,
            )?,
            retry_stale: self.retry_stale.unwrap_or(true),
            max_response_bytes: self.max_response_bytes.filter(|&n| n > 0),
            ca_pem: self.ca_pem.clone(),
            ca_file: self.ca_file.clone(),
            use_system_roots: self.use_system_roots.unwrap_or(true),
            danger_accept_invalid_certs: self.danger_accept_invalid_certs.unwrap_or(false),
            user_agent_value: http::HeaderValue::from_str(&user_agent)
                .map_err(|_| Error::invalid_option("user_agent is not a valid header value"))?,
            user_agent,
            proxies,
            resolve,
            dns_cache: optional_duration(
                "dns_cache_msecs",
                self.dns_cache_msecs,
                DEFAULT_DNS_CACHE_MSECS,
            )?,
            happy_eyeballs_delay: Duration::from_millis(u64::from(msecs(
                "happy_eyeballs_delay_msecs",
                self.happy_eyeballs_delay_msecs,
                DEFAULT_HAPPY_EYEBALLS_DELAY_MSECS,
            )?)),
            client_cert_pem: self.client_cert_pem.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_pem: self.client_key_pem.clone(),
            client_key_file: self.client_key_file.clone(),
            http_version: match self.http_version {
                None => HttpVersion::default(),
                Some(v) => HttpVersion::from_raw(v).ok_or_else(|| {
                    Error::invalid_option(format!(
                        "http_version = {v} is unknown (0 = auto, 1 = http1, 2 = http2, 3 = h2c-prior-knowledge)"
                    ))
                })?,
            },
            tracer: {
                use crate::trace::{ALL_KINDS, Tracer, WITH_HEADERS};
                let mask = self.event_mask.unwrap_or(0);
                if mask & !(ALL_KINDS | WITH_HEADERS) != 0 {
                    return Err(Error::invalid_option(format!(
                        "event_mask = {mask:#x} has unknown bits (known: {:#x})",
                        ALL_KINDS | WITH_HEADERS
                    )));
                }
                Tracer::new(self.events.0.clone(), mask, Tracer::debug_from_env(&env))
            },
        })
    }
}

impl Config {
    /// `TCP_KEEPIDLE` in whole seconds: `max(1, ceil(msecs / 1000))` (SPEC §2).
    pub fn keep_alive_idle_secs(&self) -> u64 {
        u64::from(self.keep_alive_msecs).div_ceil(1000).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Options::default().validate_with_env(no_env).unwrap();
        assert!(c.keep_alive);
        assert_eq!(c.keep_alive_msecs, 1000);
        assert_eq!(c.max_free_sockets, 256);
        assert_eq!(c.free_socket_timeout, Some(Duration::from_millis(4000)));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.scheduling, Scheduling::Lifo);
        assert!(c.retry_stale);
        assert!(c.user_agent.starts_with("keepalive-agent/"));
    }

    #[test]
    fn keepidle_is_rounded_up_to_whole_seconds() {
        let with = |ms| {
            Options {
                keep_alive_msecs: Some(ms),
                ..Default::default()
            }
            .validate_with_env(no_env)
            .unwrap()
            .keep_alive_idle_secs()
        };
        assert_eq!(with(1000), 1);
        assert_eq!(with(1), 1);
        assert_eq!(with(1001), 2);
        assert_eq!(with(0), 1); // 0 = default 1000 ms
        assert_eq!(with(30_000), 30);
    }

    #[test]
    fn environment_switch_and_alias() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let ka = |o: &Options, pairs| o.validate_with_env(env(pairs)).unwrap().keep_alive;
        let unset = Options::default();
        assert!(!ka(&unset, &[(ENV_REUSE, "false")]));
        assert!(!ka(&unset, &[(ENV_REUSE, "FALSE")]));
        assert!(!ka(&unset, &[(ENV_REUSE, "0")]));
        assert!(!ka(&unset, &[(ENV_REUSE_AWS, "False")]));
        assert!(ka(&unset, &[(ENV_REUSE, "banana")]));
        assert!(ka(&unset, &[(ENV_REUSE, "true"), (ENV_REUSE_AWS, "0")]));
        // An unparseable value of the first name falls through to the alias.
        assert!(!ka(&unset, &[(ENV_REUSE, "maybe"), (ENV_REUSE_AWS, "0")]));
        let explicit = Options {
            keep_alive: Some(true),
            ..Default::default()
        };
        // The switch is a kill switch: false wins over an explicit true (SPEC §3)...
        assert!(!ka(&explicit, &[(ENV_REUSE, "false")]));
        assert!(!ka(&explicit, &[(ENV_REUSE_AWS, "0")]));
        assert!(ka(&explicit, &[(ENV_REUSE, "banana")]));
        // ...unless the agent is told to ignore it.
        let escape = Options {
            keep_alive: Some(true),
            ignore_environment: Some(true),
            ..Default::default()
        };
        assert!(ka(&escape, &[(ENV_REUSE, "false")]));
        assert!(ka(&escape, &[(ENV_REUSE_AWS, "false")]));
        // Per-client disabling works whatever the environment says.
        let explicit_off = Options {
            keep_alive: Some(false),
            ..Default::default()
        };
        assert!(!ka(&explicit_off, &[(ENV_REUSE, "true")]));
        assert!(!ka(
            &Options {
                keep_alive: Some(false),
                ignore_environment: Some(true),
                ..Default::default()
            },
            &[]
        ));
    }

    #[test]
    fn keep_alive_source_is_read_back() {
        let src = |o: &Options, pairs: &'static [(&'static str, &'static str)]| {
            let c = o
                .validate_with_env(move |name: &str| {
                    pairs
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v.to_string())
                })
                .unwrap();
            (
                c.keep_alive_source.origin,
                c.keep_alive_source.describe(c.keep_alive),
            )
        };
        let unset = Options::default();
        let on = Options {
            keep_alive: Some(true),
            ..Default::default()
        };
        let escape = Options {
            keep_alive: Some(true),
            ignore_environment: Some(true),
            ..Default::default()
        };
        assert_eq!(
            src(&unset, &[]),
            (SettingOrigin::Default, "on: default".into())
        );
        assert_eq!(
            src(&on, &[]),
            (SettingOrigin::Argument, "on: argument".into())
        );
        assert_eq!(
            src(&on, &[(ENV_REUSE_AWS, "false")]),
            (
                SettingOrigin::Environment,
                "off: environment, AWS_NODEJS_CONNECTION_REUSE_ENABLED=\"false\"".into()
            )
        );
        assert_eq!(
            src(&unset, &[(ENV_REUSE, "nope")]),
            (
                SettingOrigin::Default,
                "on: default; KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED=\"nope\" (ignored: not true, false, 1 or 0)"
                    .into()
            )
        );
        assert_eq!(
            src(&escape, &[(ENV_REUSE, "0")]),
            (
                SettingOrigin::Argument,
                "on: argument; KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED=\"0\" (ignored: ignore_environment is set)"
                    .into()
            )
        );
        // An unparseable first name, the alias decides: the alias is reported.
        assert_eq!(
            src(&unset, &[(ENV_REUSE, "x"), (ENV_REUSE_AWS, "false")]).1,
            "off: environment, AWS_NODEJS_CONNECTION_REUSE_ENABLED=\"false\""
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        let cases = [
            Options {
                scheduling: Some(7),
                ..Default::default()
            },
            Options {
                max_sockets: Some(MAX_SOCKETS_LIMIT + 1),
                ..Default::default()
            },
            Options {
                keep_alive_msecs: Some(MAX_KEEPALIVE_MSECS + 1),
                ..Default::default()
            },
            Options {
                keep_alive_probes: Some(1000),
                ..Default::default()
            },
            Options {
                connect_timeout_msecs: Some(u32::MAX),
                ..Default::default()
            },
            Options {
                user_agent: Some("a\r\nb".into()),
                ..Default::default()
            },
        ];
        for o in cases {
            let e = o.validate_with_env(no_env).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidOption, "{o:?}");
            assert!(!e.message().is_empty());
        }
    }
}
