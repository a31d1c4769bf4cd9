//! The statistics of an agent or of one origin (SPEC §4, `agent_stats`), defined once.
//!
//! [`Stats::FIELDS`] names every field in order and [`Stats::values`] gives them in the
//! same order: the C ABI serves both (`agent_stats_field_name`, `agent_stats_values`), and
//! the Python and Node bindings build their statistics from them. Adding a statistic is a
//! line in the list below, its field in `agent_pool_stats` (`src/ffi/agent.rs`), and what
//! counts it.

macro_rules! stats {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Counters and gauges of an agent or of one origin. Counters only grow; gauges
        /// (`active`, `idle`, `queued`) are a snapshot.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Stats {
            /// The field names, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// The field values, in the order of [`Stats::FIELDS`].
            pub fn values(&self) -> [u64; Stats::FIELDS.len()] {
                [$(self.$name),*]
            }

            /// Adds `o` field by field (for agent-wide totals over origins).
            pub(crate) fn add(&mut self, o: &Stats) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

stats! {
    /// Connections established (TCP, and TLS where it applies).
    connections_opened,
    /// Connections that ended, for any reason (idle timeout, server close, error, free).
    connections_closed,
    /// Connections dropped because a request on them timed out.
    connections_timed_out,
    /// Connections dropped because a request on them failed.
    connections_errored,
    /// Requests finished, successfully or not (a transparent retry is not counted again).
    requests,
    /// Successful requests sent on a connection that had served an earlier request.
    reused_requests,
    /// Transparent retries after a stale reused connection, or of an HTTP/2 stream the
    /// server refused or went away before processing.
    retries,
    /// Requests that failed with a timeout code.
    timeouts,
    /// Requests that failed with any code (timeouts and cancellations included).
    errors,
    /// Connections connecting or serving a request now.
    active,
    /// Connections idle in the pool now.
    idle,
    /// Requests waiting for a connection now.
    queued,
    /// Name lookups (`getaddrinfo`) made for connections that opened.
    dns_lookups,
    /// Connections that opened with addresses from the agent's DNS cache.
    dns_cache_hits,
    /// HTTP/2 streams started (a request is counted once in `requests`, and once here per
    /// stream it took: a refused stream sent again counts twice).
    h2_streams,
    /// HTTP/2 connections opened (also counted in `connections_opened`).
    h2_connections,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_line_up() {
        let s = Stats {
            connections_opened: 1,
            h2_connections: 12,
            ..Stats::default()
        };
        let v = s.values();
        assert_eq!(v.len(), Stats::FIELDS.len());
        assert_eq!(Stats::FIELDS[0], "connections_opened");
        assert_eq!(v[0], 1);
        assert_eq!(Stats::FIELDS[Stats::FIELDS.len() - 1], "h2_connections");
        assert_eq!(v[v.len() - 1], 12);
    }

    #[test]
    fn add_sums_every_field() {
        let mut a = Stats::default();
        let one = Stats {
            requests: 2,
            idle: 1,
            ..Stats::default()
        };
        a.add(&one);
        a.add(&one);
        assert_eq!(a.requests, 4);
        assert_eq!(a.idle, 2);
        assert_eq!(a.values().iter().sum::<u64>(), 6);
    }
}
