//! Name resolution for one agent: curl's `CURLOPT_RESOLVE` overrides, a cache with a
//! lifetime (curl keeps names 60 s), and `getaddrinfo` on tokio's blocking pool, never on
//! the request's own thread. Knows nothing of connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// The most names a cache keeps; past that, expired entries go first, then all of them.
const MAX_CACHED: usize = 1024;

/// Where the addresses of one resolution came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The host is an IP address.
    Literal,
    /// A `resolve` override.
    Override,
    /// The cache, within its lifetime.
    Cache,
    /// A `getaddrinfo` lookup.
    Lookup,
}

/// One `host:port:addr[,addr…]` override.
pub(crate) type Override = ((String, u16), Vec<IpAddr>);

/// Parses curl's `CURLOPT_RESOLVE` form: `host:port:addr[,addr…]`, IPv6 addresses plain
/// or in brackets. The host is matched without regard to case.
pub(crate) fn parse_override(entry: &str) -> Result<Override> {
    let bad = |why: &str| {
        let shown: String = entry.chars().take(200).collect();
        Error::invalid_option(format!(
            "resolve entry {shown:?}: {why} (expected host:port:address[,address...])"
        ))
    };
    let e = entry.trim();
    let (host, rest) = if let Some(r) = e.strip_prefix('[') {
        let end = r.find(']').ok_or_else(|| bad("unclosed '['"))?;
        let rest = r[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| bad("no port"))?;
        (&r[..end], rest)
    } else {
        e.split_once(':').ok_or_else(|| bad("no port"))?
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let (port, addrs) = rest.split_once(':').ok_or_else(|| bad("no address"))?;
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(bad("bad port")),
    };
    let mut ips = Vec::new();
    for a in addrs.split(',') {
        let a = a.trim();
        let a = a
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(a);
        ips.push(
            a.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{a:?} is not an IP address")))?,
        );
    }
    Ok(((host.to_ascii_lowercase(), port), ips))
}

/// Cached addresses by `(host, port)`, with the time they were looked up.
type Cache = HashMap<(String, u16), (Arc<[SocketAddr]>, Instant)>;

/// An agent's resolver: overrides, then the cache, then a lookup.
#[derive(Debug)]
pub(crate) struct Resolver {
    overrides: HashMap<(String, u16), Vec<IpAddr>>,
    /// `None`: nothing is cached.
    lifetime: Option<Duration>,
    cache: Mutex<Cache>,
}

impl Resolver {
    pub(crate) fn new(overrides: Vec<Override>, lifetime: Option<Duration>) -> Resolver {
        Resolver {
            overrides: overrides.into_iter().collect(),
            lifetime,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host:port`, in the order the system (or the override) gives
    /// them, and where they came from.
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Arc<[SocketAddr]>, Source)> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((Arc::new([SocketAddr::new(ip, port)]), Source::Literal));
        }
        let key = (host.to_string(), port);
        if let Some(ips) = self.overrides.get(&key) {
            let addrs: Arc<[SocketAddr]> =
                ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            return Ok((addrs, Source::Override));
        }
        if let Some(lifetime) = self.lifetime {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((addrs, at)) = cache.get(&key) {
                if at.elapsed() < lifetime {
                    return Ok((addrs.clone(), Source::Cache));
                }
            }
        }
        let addrs: Arc<[SocketAddr]> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Error::new(ErrorKind::Dns, format!("cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(Error::new(
                ErrorKind::Dns,
                format!("{host} resolved to no address"),
            ));
        }
        if let Some(lifetime) = self.lifetime {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (_, at)| at.elapsed() < lifetime);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(key, (addrs.clone(), Instant::now()));
        }
        Ok((addrs, Source::Lookup))
    }
}

/// RFC 8305 §4: addresses interleaved by family, starting with the family of the first
/// (the system's preference), each family in its given order.
pub(crate) fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut a, mut b): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
        .iter()
        .copied()
        .partition(|x| x.is_ipv6() == first.is_ipv6());
    a.reverse();
    b.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    while !a.is_empty() || !b.is_empty() {
        out.extend(a.pop());
        out.extend(b.pop());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn overrides_parse_as_curl_writes_them() {
        let (k, ips) = parse_override("Example.test:443:127.0.0.1,[::1], ::1").unwrap();
        assert_eq!(k, ("example.test".to_string(), 443));
        assert_eq!(ips.len(), 3);
        assert!(ips[1].is_ipv6());
        for bad in [
            "",
            "host",
            "host:80",
            "host:0:127.0.0.1",
            "host:x:127.0.0.1",
            "host:80:not-an-ip",
            ":80:127.0.0.1",
            "[::1:80:127.0.0.1",
        ] {
            assert_eq!(
                parse_override(bad).unwrap_err().kind(),
                ErrorKind::InvalidOption,
                "{bad}"
            );
        }
    }

    #[test]
    fn overrides_win_and_literals_need_no_lookup() {
        run(async {
            let r = Resolver::new(vec![parse_override("svc.test:80:127.0.0.9").unwrap()], None);
            let (a, s) = r.resolve("svc.test", 80).await.unwrap();
            assert_eq!(s, Source::Override);
            assert_eq!(&*a, &["127.0.0.9:80".parse().unwrap()]);
            let (_, s) = r.resolve("::1", 80).await.unwrap();
            assert_eq!(s, Source::Literal);
        });
    }

    #[test]
    fn the_cache_keeps_names_for_its_lifetime() {
        run(async {
            let r = Resolver::new(Vec::new(), Some(Duration::from_millis(200)));
            assert_eq!(r.resolve("localhost", 80).await.unwrap().1, Source::Lookup);
            assert_eq!(r.resolve("localhost", 80).await.unwrap().1, Source::Cache);
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert_eq!(r.resolve("localhost", 80).await.unwrap().1, Source::Lookup);
            let off = Resolver::new(Vec::new(), None);
            assert_eq!(
                off.resolve("localhost", 80).await.unwrap().1,
                Source::Lookup
            );
            assert_eq!(
                off.resolve("localhost", 80).await.unwrap().1,
                Source::Lookup
            );
        });
    }

    #[test]
    fn a_failed_lookup_names_the_host() {
        run(async {
            // A 64-byte label fails inside the resolver library: no query leaves the host.
            let host = format!("{}.invalid", "a".repeat(64));
            let r = Resolver::new(Vec::new(), None);
            let e = r.resolve(&host, 80).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Dns);
            assert!(e.message().contains(&host), "{e}");
        });
    }

    #[test]
    fn families_are_interleaved_from_the_preferred_one() {
        let a: Vec<SocketAddr> = [
            "[::1]:1",
            "[::2]:1",
            "127.0.0.1:1",
            "127.0.0.2:1",
            "127.0.0.3:1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let got: Vec<String> = interleave(&a).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            got,
            [
                "[::1]:1",
                "127.0.0.1:1",
                "[::2]:1",
                "127.0.0.2:1",
                "127.0.0.3:1"
            ]
        );
        assert!(interleave(&[]).is_empty());
    }
}
