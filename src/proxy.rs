//! Forward proxies the way curl reads them: the proxy URL (with optional credentials), the
//! `NO_PROXY` list, and which proxy, if any, an origin goes through. Plain data and
//! parsing; the tunnel itself is opened in [`crate::connect`], and the absolute-form
//! request line is written by [`crate::exchange`].

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::error::{Error, Result};
use crate::http::{Origin, Scheme};

/// One proxy: where it listens, how to reach it, and the `Proxy-Authorization` value from
/// its URL's userinfo (never sent to an origin).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proxy {
    /// `Http`: plain TCP to the proxy. `Https`: TLS to the proxy itself.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets, lowercased).
    pub host: String,
    pub port: u16,
    pub(crate) auth: Option<HeaderValue>,
}

impl Proxy {
    /// `host:port` as it appears in a URL (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The proxy's URL without its credentials, as error messages show it.
    pub fn url(&self) -> String {
        let s = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{s}://{}", self.authority())
    }

    /// Whether the URL carried credentials.
    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }
}

fn proxy_error(what: &str, url: &str, why: impl std::fmt::Display) -> Error {
    // The URL may hold a password: show only what precedes the userinfo.
    let shown = match url.rfind('@') {
        Some(at) => match url.find("://") {
            Some(s) if s < at => format!("{}://***@{}", &url[..s], &url[at + 1..]),
            _ => format!("***@{}", &url[at + 1..]),
        },
        None => url.to_string(),
    };
    let shown: String = shown.chars().take(200).collect();
    Error::invalid_option(format!("{what} {shown:?}: {why}"))
}

/// Decodes `%XX` escapes (RFC 3986). A `%` not followed by two hex digits is an error.
pub fn percent_decode(s: &str) -> std::result::Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err("a '%' not followed by two hex digits"),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the credentials are not UTF-8 once decoded")
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Parses a proxy URL as curl does: `http://` or `https://` (no scheme means `http://`),
/// optional `user:password@` (percent-decoded), a host, an optional port (default 1080 as
/// curl's, 443 for https), and at most a `/` after it. `what` names the option or
/// variable in messages.
pub fn parse_proxy_url(url: &str, what: &str) -> Result<Proxy> {
    let trimmed = url.trim();
    let (scheme, rest) = match trimmed.find("://") {
        Some(i) => {
            let s = &trimmed[..i];
            let scheme = if s.eq_ignore_ascii_case("http") {
                Scheme::Http
            } else if s.eq_ignore_ascii_case("https") {
                Scheme::Https
            } else {
                return Err(proxy_error(
                    what,
                    url,
                    format!("unsupported proxy scheme {s:?} (http:// and https:// are)"),
                ));
            };
            (scheme, &trimmed[i + 3..])
        }
        None => (Scheme::Http, trimmed),
    };
    let authority = match rest.find(['/', '?', '#']) {
        Some(i) => {
            if !matches!(&rest[i..], "/" | "") {
                return Err(proxy_error(what, url, "a proxy URL has no path or query"));
            }
            &rest[..i]
        }
        None => rest,
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let auth = match userinfo {
        None => None,
        Some(ui) => {
            let (user, pass) = ui.split_once(':').unwrap_or((ui, ""));
            let user = percent_decode(user).map_err(|e| proxy_error(what, url, e))?;
            let pass = percent_decode(pass).map_err(|e| proxy_error(what, url, e))?;
            if user.contains(':') {
                return Err(proxy_error(what, url, "the user name may not contain ':'"));
            }
            let token = base64(format!("{user}:{pass}").as_bytes());
            let v = HeaderValue::try_from(format!("Basic {token}"))
                .map_err(|e| proxy_error(what, url, e))?;
            Some(v)
        }
    };
    let bracketed = hostport.starts_with('[');
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let end = r
            .find(']')
            .ok_or_else(|| proxy_error(what, url, "unclosed '[' in the host"))?;
        let ip = &r[..end];
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(proxy_error(what, url, "bad IPv6 address"));
        }
        match &r[end + 1..] {
            "" => (ip, None),
            p => match p.strip_prefix(':') {
                Some(p) => (ip, Some(p)),
                None => return Err(proxy_error(what, url, "junk after the IPv6 address")),
            },
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(proxy_error(what, url, "no host"));
    }
    if !bracketed
        && !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
    {
        return Err(proxy_error(what, url, "bad character in the host"));
    }
    let port = match port {
        None | Some("") => match scheme {
            Scheme::Http => 1080,
            Scheme::Https => 443,
        },
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(proxy_error(what, url, format!("bad port {p:?}"))),
        },
    };
    Ok(Proxy {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
        auth,
    })
}

/// One `NO_PROXY` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bypass {
    /// `*`: every host.
    All,
    /// A name: the host itself and every name under it (`example.com` matches
    /// `a.example.com`; a leading `.` or `*.` is the same thing).
    Domain(String),
    /// An address and the number of leading bits that must match (a plain IP: all).
    Net(IpAddr, u8),
}

/// The hosts that bypass the proxy: curl's `NO_PROXY` grammar (comma- or blank-separated
/// names, suffixes, IP addresses, CIDR blocks, or `*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<Bypass>,
}

impl NoProxy {
    /// Parses a list. Entries that are neither a name, an address nor a CIDR block are
    /// ignored, as curl ignores them; a port after a name or address is ignored too.
    pub fn parse(list: &str) -> NoProxy {
        let mut entries = Vec::new();
        for raw in list.split([',', ' ', '\t', '\n', '\r']) {
            let e = raw.trim();
            if e.is_empty() {
                continue;
            }
            if e == "*" {
                entries.push(Bypass::All);
                continue;
            }
            if let Some((ip, bits)) = e.split_once('/') {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                if let (Ok(ip), Ok(bits)) = (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    if bits <= max {
                        entries.push(Bypass::Net(ip, bits));
                    }
                }
                continue;
            }
            // [v6], [v6]:port, v4, v4:port, v6
            let unbracketed = if let Some(r) = e.strip_prefix('[') {
                r.split(']').next().unwrap_or("")
            } else {
                e
            };
            if let Ok(ip) = unbracketed.parse::<IpAddr>() {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                entries.push(Bypass::Net(ip, bits));
                continue;
            }
            let name = match e.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
                _ => e,
            };
            if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
                entries.push(Bypass::Net(IpAddr::V4(ip), 32));
                continue;
            }
            let name = name
                .trim_start_matches('*')
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
            {
                entries.push(Bypass::Domain(name));
            }
        }
        NoProxy { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `host` (a name or an IP address without brackets) bypasses the proxy.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|e| match e {
            Bypass::All => true,
            Bypass::Domain(d) => {
                let (h, d) = (host.as_bytes(), d.as_bytes());
                h.len() >= d.len()
                    && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
                    && (h.len() == d.len() || h[h.len() - d.len() - 1] == b'.')
            }
            Bypass::Net(net, bits) => ip.is_some_and(|ip| in_net(ip, *net, *bits)),
        })
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        (IpAddr::V6(a), IpAddr::V4(b)) => match a.to_ipv4_mapped() {
            Some(a) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (a >> shift) == (b >> shift)
}

/// An agent's proxy settings, resolved once when it is created: explicit options first,
/// then (unless switched off) the environment as curl reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxies {
    pub http: Option<Arc<Proxy>>,
    pub https: Option<Arc<Proxy>>,
    pub no_proxy: NoProxy,
}

/// Where the settings came from, for the error messages of a bad value.
fn env_proxy(env: &impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        env(n)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (n.to_string(), v))
    })
}

impl Proxies {
    /// `proxy`: the explicit proxy for both schemes (`Some("")`: none, whatever the
    /// environment says). `no_proxy`: the explicit bypass list. `from_env`: whether the
    /// environment is read for what is not explicit: `http_proxy` (lower case only, as
    /// curl, against httpoxy) for http, `https_proxy`/`HTTPS_PROXY` for https,
    /// `all_proxy`/`ALL_PROXY` for both, `no_proxy`/`NO_PROXY`.
    pub fn configure(
        proxy: Option<&str>,
        no_proxy: Option<&str>,
        from_env: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Proxies> {
        let parse = |v: &str, what: &str| -> Result<Option<Arc<Proxy>>> {
            if v.trim().is_empty() {
                Ok(None)
            } else {
                parse_proxy_url(v, what).map(|p| Some(Arc::new(p)))
            }
        };
        let (http, https) = match proxy {
            Some(p) => {
                let p = parse(p, "proxy")?;
                (p.clone(), p)
            }
            None if from_env => {
                let all = env_proxy(&env, &["all_proxy", "ALL_PROXY"]);
                let http = env_proxy(&env, &["http_proxy"]).or_else(|| all.clone());
                let https = env_proxy(&env, &["https_proxy", "HTTPS_PROXY"]).or(all);
                let http = match http {
                    Some((n, v)) => parse(&v, &n)?,
                    None => None,
                };
                let https = match https {
                    Some((n, v)) => parse(&v, &n)?,
                    None => None,
                };
                (http, https)
            }
            None => (None, None),
        };
        let no_proxy = match no_proxy {
            Some(list) => NoProxy::parse(list),
            None if from_env => env_proxy(&env, &["no_proxy", "NO_PROXY"])
                .map(|(_, v)| NoProxy::parse(&v))
                .unwrap_or_default(),
            None => NoProxy::default(),
        };
        Ok(Proxies {
            http,
            https,
            no_proxy,
        })
    }

    /// Whether any proxy is set at all (the common case, none, costs one check).
    pub fn any(&self) -> bool {
        self.http.is_some() || self.https.is_some()
    }

    /// The proxy `origin` goes through, if any.
    pub fn for_origin(&self, origin: &Origin) -> Option<Arc<Proxy>> {
        let p = match origin.scheme {
            Scheme::Http => self.http.as_ref(),
            Scheme::Https => self.https.as_ref(),
        }?;
        if self.no_proxy.matches(&origin.host) {
            return None;
        }
        Some(p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    fn origin(url: &str) -> Origin {
        (*crate::http::parse_url(url).unwrap().origin).clone()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn proxy_urls_parse_as_curl_reads_them() {
        let p = parse_proxy_url("http://127.0.0.1:3128", "proxy").unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (Scheme::Http, "127.0.0.1", 3128)
        );
        assert!(p.auth.is_none());
        let p = parse_proxy_url("proxy.example:8080/", "proxy").unwrap();
        assert_eq!((p.scheme, p.port), (Scheme::Http, 8080));
        assert_eq!(parse_proxy_url("http://p", "proxy").unwrap().port, 1080);
        let p = parse_proxy_url("HTTPS://[::1]", "proxy").unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (Scheme::Https, "::1", 443)
        );
        assert_eq!(p.url(), "https://[::1]:443");
        let p = parse_proxy_url("http://alice:p%40ss%3Aw%2Frd@127.0.0.1:3128", "proxy").unwrap();
        // alice:p@ss:w/rd
        assert_eq!(
            p.auth.clone().unwrap(),
            format!("Basic {}", base64(b"alice:p@ss:w/rd")).as_str()
        );
        assert_eq!(p.url(), "http://127.0.0.1:3128");
    }

    #[test]
    fn bad_proxy_urls_are_refused_without_showing_the_password() {
        for bad in [
            "socks5://127.0.0.1:1080",
            "http://",
            "http://host:0",
            "http://host:99999",
            "http://host/path",
            "http://[::1",
            "http://u:p%zz@host:1",
            "http://ho st:1",
            "http:tp:84",
            "http://::1:80",
        ] {
            let e = parse_proxy_url(bad, "proxy").unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidOption, "{bad}");
        }
        let e = parse_proxy_url("http://u:secret@host:1/x", "HTTPS_PROXY").unwrap_err();
        assert!(!e.message().contains("secret"), "{e}");
        assert!(e.message().contains("HTTPS_PROXY"), "{e}");
    }

    #[test]
    fn no_proxy_matches_names_suffixes_ips_and_cidrs() {
        let n = NoProxy::parse(
            "example.com, .corp.test,*.wild.test 10.0.0.0/8,192.168.1.5,::1,[fe80::1]:80,host:8080",
        );
        for yes in [
            "example.com",
            "a.example.com",
            "x.corp.test",
            "corp.test",
            "a.wild.test",
            "10.1.2.3",
            "192.168.1.5",
            "::1",
            "fe80::1",
            "host",
            "EXAMPLE.COM",
        ] {
            assert!(n.matches(yes), "{yes}");
        }
        for no in [
            "notexample.com",
            "example.org",
            "11.0.0.1",
            "192.168.1.6",
            "::2",
            "hostx",
        ] {
            assert!(!n.matches(no), "{no}");
        }
        assert!(NoProxy::parse("*").matches("anything"));
        assert!(NoProxy::parse("0.0.0.0/0").matches("8.8.8.8"));
        assert!(NoProxy::parse("127.0.0.0/8").matches("::ffff:127.0.0.1"));
        assert!(NoProxy::parse("").is_empty());
        assert!(!NoProxy::parse("ample").matches("exé̜ample"));
        assert!(NoProxy::parse("10.0.0.0/99, /, ^^").is_empty());
    }

    #[test]
    fn environment_is_read_as_curl_reads_it() {
        // http_proxy in upper case is ignored (httpoxy); https has both cases; all_proxy is
        // the fallback for both.
        let p = Proxies::configure(None, None, true, env(&[("HTTP_PROXY", "http://h:1")])).unwrap();
        assert!(p.http.is_none());
        let p = Proxies::configure(
            None,
            None,
            true,
            env(&[
                ("http_proxy", "http://h:1"),
                ("HTTPS_PROXY", "http://s:2"),
                ("NO_PROXY", "skip.test"),
            ]),
        )
        .unwrap();
        assert_eq!(p.http.as_ref().unwrap().port, 1);
        assert_eq!(p.https.as_ref().unwrap().port, 2);
        assert!(p.for_origin(&origin("http://a.test/")).is_some());
        assert!(p.for_origin(&origin("https://x.skip.test/")).is_none());
        let p =
            Proxies::configure(None, None, true, env(&[("ALL_PROXY", "http://all:3")])).unwrap();
        assert_eq!(p.http.as_ref().unwrap().port, 3);
        assert_eq!(p.https.as_ref().unwrap().port, 3);
        // Explicit settings win; "" means none; from_env false ignores the environment.
        let e = env(&[("https_proxy", "http://s:2"), ("no_proxy", "*")]);
        let p = Proxies::configure(Some(""), None, true, &e).unwrap();
        assert!(!p.any());
        let p = Proxies::configure(Some("http://x:9"), Some(""), true, &e).unwrap();
        assert!(p.for_origin(&origin("https://a.test/")).is_some());
        let p = Proxies::configure(None, None, false, &e).unwrap();
        assert!(!p.any() && p.no_proxy.is_empty());
        // A bad value in the environment names the variable.
        let e =
            Proxies::configure(None, None, true, env(&[("https_proxy", "ftp://x")])).unwrap_err();
        assert!(e.message().contains("https_proxy"), "{e}");
    }
}
