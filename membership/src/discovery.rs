//! Discovery: turning `cluster.dns_addr` into peer addresses.
//!
//! `dns_addr` is either one DNS name that resolves to every node (a
//! Kubernetes headless service) or a comma list of `host[:port]`; a missing
//! port means `cluster.port`. Names are resolved with hickory (A and AAAA,
//! the hosts file first) through a resolver built fresh for every round, so
//! no answer is ever served from a cache across refreshes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("dns_addr is empty")]
    Empty,
    #[error("dns_addr entry {entry:?}: {problem}")]
    BadEntry { entry: String, problem: String },
}

/// One entry of `dns_addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

/// Where and how to look peers up.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub targets: Vec<Target>,
    /// Ask this name server directly instead of the system's resolvers.
    pub dns_server: Option<SocketAddr>,
}

impl DiscoveryConfig {
    pub fn parse(
        dns_addr: &str,
        default_port: u16,
        dns_server: Option<SocketAddr>,
    ) -> Result<DiscoveryConfig, DiscoveryError> {
        let targets = parse_targets(dns_addr, default_port)?;
        Ok(DiscoveryConfig {
            targets,
            dns_server,
        })
    }

    /// True when every target is a literal address: nothing to resolve, and
    /// the list never changes.
    pub fn is_static(&self) -> bool {
        self.targets.iter().all(|t| matches!(t, Target::Addr(_)))
    }
}

/// Splits `dns_addr` into targets: `10.0.0.1`, `10.0.0.1:5000`, `[::1]:5000`,
/// `::1`, `pika.default.svc`, `pika-0.pika:5000`.
pub fn parse_targets(dns_addr: &str, default_port: u16) -> Result<Vec<Target>, DiscoveryError> {
    let mut targets = Vec::new();
    for entry in dns_addr.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |problem: &str| DiscoveryError::BadEntry {
            entry: entry.to_string(),
            problem: problem.to_string(),
        };
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            targets.push(Target::Addr(addr));
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            targets.push(Target::Addr(SocketAddr::new(ip, default_port)));
        } else {
            let (host, port) = match entry.rsplit_once(':') {
                Some((host, port)) => {
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| bad("port is not a number from 1 to 65535"))?;
                    if port == 0 {
                        return Err(bad("port 0 cannot be dialled"));
                    }
                    (host, port)
                }
                None => (entry, default_port),
            };
            let valid = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if !valid {
                return Err(bad("not an address or a DNS name"));
            }
            targets.push(Target::Name {
                host: host.to_string(),
                port,
            });
        }
    }
    if targets.is_empty() {
        return Err(DiscoveryError::Empty);
    }
    Ok(targets)
}

/// One discovery round: every address the targets stand for right now.
/// A name that does not resolve is logged and skipped (a headless service
/// with no ready pod answers NXDOMAIN); the others still count.
pub async fn resolve(config: &DiscoveryConfig) -> BTreeSet<SocketAddr> {
    resolve_round(config).await.found
}

/// What one discovery round found.
pub struct Round {
    pub found: BTreeSet<SocketAddr>,
    /// A name's lookup failed without an answer saying what is there (a
    /// timeout, SERVFAIL, no server reachable): `found` may lack members
    /// that are still there.
    pub incomplete: bool,
}

/// [`resolve`], telling a name with nothing behind it (NXDOMAIN, or no
/// address records: an answer) from a lookup that got no answer.
pub async fn resolve_round(config: &DiscoveryConfig) -> Round {
    let mut incomplete = false;
    let mut found = BTreeSet::new();
    let mut resolver = None;
    for target in &config.targets {
        match target {
            Target::Addr(addr) => {
                found.insert(*addr);
            }
            Target::Name { host, port } => {
                let resolver = match &resolver {
                    Some(r) => r,
                    None => match build_resolver(config.dns_server) {
                        Ok(r) => resolver.insert(r),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot build a DNS resolver");
                            incomplete = true;
                            continue;
                        }
                    },
                };
                match resolver.lookup_ip(host.as_str()).await {
                    Ok(ips) => found.extend(ips.iter().map(|ip| SocketAddr::new(ip, *port))),
                    Err(e) => {
                        incomplete |= !nothing_there(&e);
                        tracing::warn!(%host, error = %e, "dns_addr did not resolve");
                    }
                }
            }
        }
    }
    Round { found, incomplete }
}

/// Whether a failed lookup is an answer that the name has no addresses.
fn nothing_there(e: &hickory_resolver::net::NetError) -> bool {
    use hickory_resolver::net::{DnsError, NetError, NoRecords};
    use hickory_resolver::proto::op::ResponseCode;
    matches!(
        e,
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }))
    )
}

fn build_resolver(dns_server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match dns_server {
        Some(server) => {
            let mut ns = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut ns.connections {
                connection.port = server.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            )
        }
        None => match TokioResolver::builder(provider.clone()) {
            Ok(builder) => builder,
            Err(e) => {
                // No usable /etc/resolv.conf: the hosts file can still answer.
                tracing::debug!(error = %e, "no system resolver configuration");
                TokioResolver::builder_with_config(ResolverConfig::default(), provider)
            }
        },
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.use_hosts_file = ResolveHosts::Always;
    options.cache_size = 0;
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Target {
        Target::Addr(s.parse().expect("test address"))
    }

    #[test]
    fn parses_lists_of_addresses_and_names() {
        let targets = parse_targets(
            "127.0.1.1, 127.0.1.2:6000,[::1]:7000,::1,pika.svc,pika-0.pika:5001",
            5000,
        );
        assert_eq!(
            targets,
            Ok(vec![
                addr("127.0.1.1:5000"),
                addr("127.0.1.2:6000"),
                addr("[::1]:7000"),
                addr("[::1]:5000"),
                Target::Name {
                    host: "pika.svc".into(),
                    port: 5000
                },
                Target::Name {
                    host: "pika-0.pika".into(),
                    port: 5001
                },
            ])
        );
    }

    #[test]
    fn rejects_what_cannot_be_dialled() {
        assert_eq!(parse_targets(" , ", 5000), Err(DiscoveryError::Empty));
        for bad in ["host:port", "host:0", "host:70000", "two words", ":5000"] {
            assert!(
                matches!(
                    parse_targets(bad, 5000),
                    Err(DiscoveryError::BadEntry { .. })
                ),
                "{bad} accepted"
            );
        }
    }
}
