//! The network policy for deliveries (SSRF protection).
//!
//! Callback and subscription URLs come from API clients, so without a policy agenthook would
//! POST wherever it is told: to the cloud metadata service, to the admin port of a neighbour on
//! the private network, to itself. The policy refuses every address that is not on the public
//! internet, at three points:
//!
//! 1. at submission, [`check_url`] refuses bad schemes, credentials, `localhost` names and
//!    literal addresses in a refused range (a 400 for the client);
//! 2. right before each send, [`check_literal_host`] vets literal addresses again, because the
//!    HTTP connector never asks a resolver about them and the setting may have changed;
//! 3. at connection time, [`VettingResolver`] drops refused addresses from every DNS answer, and
//!    the connection goes only to the addresses it returned. A name that resolved to a public
//!    address when the job was submitted and to `127.0.0.1` now (DNS rebinding) is refused.
//!
//! `delivery.allow_private_networks = true` (tests, the demo, trusted setups) turns the address
//! checks off; the scheme and credential checks always apply.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::domain::ErrorClass;

/// `User-Agent` of every delivery, as the specification asks.
pub const USER_AGENT: &str = concat!("agenthook/", env!("CARGO_PKG_VERSION"));

/// A receiver that takes longer than this to accept a TCP connection is treated as down, even
/// when the overall request timeout is longer; it keeps a dead host from holding a worker.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries are many small POSTs to a few hosts (Slack, Discord, a customer's backend), so
/// idle connections are worth keeping: reusing one saves a TCP and TLS handshake per event.
const POOL_MAX_IDLE_PER_HOST: usize = 32;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// True when `ip` is not a public internet address and deliveries must not go there.
///
/// IPv4 refuses: `0.0.0.0/8` (this network), `10/8`, `100.64/10` (CGNAT), `127/8`,
/// `169.254/16` (link-local, cloud metadata), `172.16/12`, `192.0.0/24` (IETF protocol
/// assignments), `192.0.2/24`, `198.51.100/24`, `203.0.113/24` (documentation), `192.88.99/24`
/// (6to4 relay anycast), `192.168/16`, `198.18/15` (benchmarking), `224/4` (multicast), and
/// `240/4` (reserved, including the broadcast address `255.255.255.255`).
///
/// IPv6 is judged by what it reaches: IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`
/// and 6to4 `2002:aabb:ccdd::` addresses by the IPv4 address they embed. Apart from those, only
/// global unicast `2000::/3` is allowed, which refuses `::`, `::1`, IPv4-compatible `::a.b.c.d`,
/// discard-only `100::/64`, local-use NAT64 `64:ff9b:1::/48`, `fc00::/7`, `fe80::/10`,
/// `fec0::/10` and `ff00::/8` at once; inside `2000::/3` it refuses `2001::/23` (IETF protocol
/// assignments, including Teredo, which can tunnel to any IPv4 address), `2001:db8::/32` and
/// `3fff::/20` (documentation) and `5f00::/16` (SRv6). An allow-list is safer than a deny-list
/// here: a range IANA assigns later for special use is refused until someone decides otherwise.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

/// `(network, prefix length)` of every refused IPv4 range.
const FORBIDDEN_V4: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    FORBIDDEN_V4.iter().any(|&(network, prefix)| {
        let mask = u32::MAX << (32 - u32::from(prefix));
        bits & mask == u32::from(network)
    })
}

/// `(network, prefix length)` of the refused ranges inside global unicast `2000::/3`.
const FORBIDDEN_GLOBAL_V6: [(Ipv6Addr, u8); 4] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16),
];

fn in_v6_range(ip: Ipv6Addr, network: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX << (128 - u32::from(prefix));
    u128::from(ip) & mask == u128::from(network)
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(embedded) = embedded_ipv4(ip) {
        return is_forbidden_v4(embedded);
    }
    let global_unicast = in_v6_range(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);
    !global_unicast
        || FORBIDDEN_GLOBAL_V6
            .iter()
            .any(|&(network, prefix)| in_v6_range(ip, network, prefix))
}

/// The IPv4 address an IPv6 address stands for, in the forms that reach IPv4 hosts: IPv4-mapped
/// (`::ffff:0:0/96`, which the OS connects over IPv4), NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002::/16`, the address in bits 16..48).
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    let bits = u128::from(ip);
    if in_v6_range(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(Ipv4Addr::from((bits & 0xffff_ffff) as u32));
    }
    if in_v6_range(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

/// Why a callback or subscription URL is refused. The messages are meant for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRejection {
    #[error("the URL must be absolute, e.g. https://example.com/webhooks")]
    NotAbsolute,
    #[error("the URL is not valid: {0}")]
    Invalid(String),
    #[error("the URL scheme must be http or https, not {0:?}")]
    Scheme(String),
    #[error("the URL has no host")]
    MissingHost,
    #[error("the URL must not contain a user name or password")]
    Credentials,
    #[error("the host {0:?} is not allowed by the network policy")]
    ForbiddenHost(String),
    #[error("the address {0} is not allowed by the network policy")]
    ForbiddenAddress(IpAddr),
}

/// Parses and vets a callback or subscription URL when it is submitted: absolute, `http` or
/// `https`, a host, no credentials (they would be stored and logged in clear), and, unless
/// `allow_private`, no literal address in a refused range and no `localhost` name. Other names
/// pass here; their addresses are vetted at connection time by [`VettingResolver`].
///
/// The `url` crate parses hosts of `http`/`https` URLs as browsers do, so the odd spellings of
/// an address (`http://2130706433/`, `http://0x7f.1/`, `http://017700000001/`) arrive here
/// already normalised to `127.0.0.1`, and are judged as such.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, UrlRejection> {
    let url = Url::parse(raw.trim()).map_err(|error| match error {
        url::ParseError::RelativeUrlWithoutBase => UrlRejection::NotAbsolute,
        other => UrlRejection::Invalid(other.to_string()),
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(UrlRejection::Scheme(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRejection::Credentials);
    }
    check_literal_host(&url, allow_private)?;
    Ok(url)
}

/// Vets the part of a URL's destination that is known without DNS: a literal address, or a
/// `localhost` name (which always means loopback, RFC 6761). Called at submission by
/// [`check_url`] and again right before every send, because reqwest connects to literal
/// addresses without asking the resolver.
pub fn check_literal_host(url: &Url, allow_private: bool) -> Result<(), UrlRejection> {
    let host = url.host().ok_or(UrlRejection::MissingHost)?;
    if allow_private {
        return Ok(());
    }
    match host {
        Host::Ipv4(v4) if is_forbidden_v4(v4) => Err(UrlRejection::ForbiddenAddress(v4.into())),
        Host::Ipv6(v6) if is_forbidden_v6(v6) => Err(UrlRejection::ForbiddenAddress(v6.into())),
        Host::Domain(name) if is_localhost_name(name) => {
            Err(UrlRejection::ForbiddenHost(name.to_owned()))
        }
        _ => Ok(()),
    }
}

/// `localhost`, `*.localhost`, with or without the trailing root dot, in any case.
fn is_localhost_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The error a [`VettingResolver`] fails with when every address of a name is refused. It
/// sits in the source chain of the resulting `reqwest::Error`, where [`classify_error`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("destination address is not allowed by the network policy")]
pub struct BlockedAddress;

/// A name that could not be resolved (or resolved to nothing). A type of our own, so that
/// [`classify_error`] can tell DNS failures from refused connections.
#[derive(Debug, thiserror::Error)]
#[error("could not resolve {host}")]
struct DnsLookupFailed {
    host: String,
    #[source]
    source: Option<std::io::Error>,
}

/// A reqwest resolver that resolves with the system resolver (`tokio::net::lookup_host`) and
/// keeps only the addresses the network policy allows. reqwest connects only to the addresses a
/// resolver returns, so the vetted addresses are also the ones used: there is no second lookup
/// a rebinding DNS server could answer differently.
#[derive(Debug, Clone, Copy)]
pub struct VettingResolver {
    allow_private: bool,
}

impl VettingResolver {
    pub fn new(allow_private: bool) -> Self {
        VettingResolver { allow_private }
    }

    /// Resolves `host` and vets the answer; the port of the returned addresses is 0 (reqwest
    /// puts the URL's port in).
    async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, Box<dyn StdError + Send + Sync>> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| DnsLookupFailed {
                host: host.to_owned(),
                source: Some(source),
            })?
            .collect();
        if resolved.is_empty() {
            return Err(Box::new(DnsLookupFailed {
                host: host.to_owned(),
                source: None,
            }));
        }
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| self.allow_private || !is_forbidden(addr.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(Box::new(BlockedAddress));
        }
        Ok(allowed)
    }
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = *self;
        Box::pin(async move {
            let addrs = resolver.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for deliveries.
///
/// - Redirects are not followed: a 3xx is the receiver's answer, and following it would let a
///   public receiver bounce the request to a refused address.
/// - No proxy from the environment: a proxy would connect on our behalf and bypass the policy.
/// - Names are resolved by [`VettingResolver`]; literal addresses must be vetted by the caller
///   with [`check_literal_host`] before each send.
/// - `timeout` bounds the whole attempt; connecting gets at most 10 s of it.
///
/// Fails only if the TLS backend cannot be set up, which is a start-up error.
pub fn delivery_client(
    timeout: Duration,
    allow_private: bool,
) -> Result<reqwest::Client, reqwest::Error> {
    delivery_client_for(timeout, allow_private, POOL_MAX_IDLE_PER_HOST)
}

/// [`delivery_client`] keeping up to `per_host` idle connections to each host (at least 32):
/// the worker passes its per-destination limit, so a destination at its limit finds every
/// connection it used still open instead of closing the surplus after each burst and
/// connecting (and, over TLS, handshaking) again.
pub fn delivery_client_for(
    timeout: Duration,
    allow_private: bool,
    per_host: usize,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(VettingResolver::new(allow_private))
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .pool_max_idle_per_host(per_host.max(POOL_MAX_IDLE_PER_HOST))
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_keepalive(TCP_KEEPALIVE)
        .build()
}

/// Classifies a failed send for the delivery log: `blocked` (the policy refused every address),
/// `dns` (the name did not resolve), `timeout`, `connect` (refused, unreachable), `http` (a
/// status turned into an error), else `other` (TLS, a connection broken mid-body, ...).
///
/// The policy and DNS failures come first because reqwest reports both as connect errors.
pub fn classify_error(err: &reqwest::Error) -> ErrorClass {
    classify(err, err.is_timeout(), err.is_connect(), err.is_status())
}

fn classify(
    err: &(dyn StdError + 'static),
    is_timeout: bool,
    is_connect: bool,
    is_status: bool,
) -> ErrorClass {
    if chain_has::<BlockedAddress>(err) {
        ErrorClass::Blocked
    } else if chain_has::<DnsLookupFailed>(err) || chain_has_dns_message(err) {
        ErrorClass::Dns
    } else if is_timeout {
        ErrorClass::Timeout
    } else if is_connect {
        ErrorClass::Connect
    } else if is_status {
        ErrorClass::Http
    } else {
        ErrorClass::Other
    }
}

fn error_chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

fn chain_has<T: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    error_chain(err).any(|e| e.is::<T>())
}

/// hyper-util wraps every resolver failure in a private error type shown as "dns error"; this
/// catches the failures that do not come from [`VettingResolver`] (e.g. an invalid name).
fn chain_has_dns_message(err: &(dyn StdError + 'static)) -> bool {
    error_chain(err).any(|e| e.to_string() == "dns error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("test address")
    }

    fn mapped(v4: &str) -> IpAddr {
        let v4: Ipv4Addr = v4.parse().expect("test address");
        IpAddr::V6(v4.to_ipv6_mapped())
    }

    /// A representative address, the first and the last of every refused IPv4 range.
    const REFUSED_V4: &[&str] = &[
        "0.0.0.0",
        "0.1.2.3",
        "0.255.255.255",
        "10.0.0.0",
        "10.1.2.3",
        "10.255.255.255",
        "100.64.0.0",
        "100.100.100.100",
        "100.127.255.255",
        "127.0.0.0",
        "127.0.0.1",
        "127.255.255.255",
        "169.254.0.0",
        "169.254.169.254",
        "169.254.255.255",
        "172.16.0.0",
        "172.20.1.1",
        "172.31.255.255",
        "192.0.0.0",
        "192.0.0.8",
        "192.0.0.255",
        "192.0.2.0",
        "192.0.2.1",
        "192.0.2.255",
        "192.88.99.1",
        "192.168.0.0",
        "192.168.1.1",
        "192.168.255.255",
        "198.18.0.0",
        "198.19.255.255",
        "198.51.100.0",
        "198.51.100.7",
        "198.51.100.255",
        "203.0.113.0",
        "203.0.113.9",
        "203.0.113.255",
        "224.0.0.0",
        "224.0.0.251",
        "239.255.255.255",
        "240.0.0.0",
        "250.1.2.3",
        "255.255.255.254",
        "255.255.255.255",
    ];

    /// Public addresses, including the neighbours just outside refused ranges.
    const ALLOWED_V4: &[&str] = &[
        "1.0.0.0",
        "1.1.1.1",
        "8.8.8.8",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "191.255.255.255",
        "192.0.1.255",
        "192.0.3.0",
        "192.88.98.255",
        "192.88.100.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "198.51.99.255",
        "198.51.101.0",
        "203.0.112.255",
        "203.0.114.0",
        "223.255.255.255",
    ];

    const REFUSED_V6: &[&str] = &[
        "::",
        "::1",
        "::127.0.0.1",
        "::8.8.8.8",
        "::ffff:127.0.0.1",
        "::ffff:0:0",
        "100::",
        "100::ffff:ffff:ffff:ffff",
        "64:ff9b::127.0.0.1",
        "64:ff9b::10.0.0.1",
        "64:ff9b::169.254.169.254",
        "64:ff9b:1::8.8.8.8",
        "2001::",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:db8::",
        "2001:db8::1",
        "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        "2002:7f00:1::1",
        "2002:a00:1::",
        "2002:c0a8:101::1",
        "3fff::1",
        "3fff:fff::1",
        "5f00::1",
        "fc00::",
        "fd12:3456:789a::1",
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::",
        "fe80::1",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fec0::1",
        "ff00::",
        "ff02::1",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "4000::1",
        "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ];

    const ALLOWED_V6: &[&str] = &[
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "2001:200::1",
        "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:db9::",
        "2000::",
        "2a00:1450:4001::1",
        "3ffe:ffff::1",
        "3fff:1000::",
        "64:ff9b::8.8.8.8",
        "2002:808:808::1",
        "::ffff:8.8.8.8",
        "::ffff:1.1.1.1",
    ];

    #[test]
    fn refuses_every_non_public_ipv4_range_including_its_edges() {
        for addr in REFUSED_V4 {
            assert!(is_forbidden(ip(addr)), "{addr} should be refused");
        }
    }

    #[test]
    fn allows_public_ipv4_including_the_neighbours_of_refused_ranges() {
        for addr in ALLOWED_V4 {
            assert!(!is_forbidden(ip(addr)), "{addr} should be allowed");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_judged_by_its_ipv4_address() {
        for addr in REFUSED_V4 {
            assert!(
                is_forbidden(mapped(addr)),
                "::ffff:{addr} should be refused"
            );
        }
        for addr in ALLOWED_V4 {
            assert!(
                !is_forbidden(mapped(addr)),
                "::ffff:{addr} should be allowed"
            );
        }
    }

    #[test]
    fn refuses_every_non_public_ipv6_range_including_its_edges() {
        for addr in REFUSED_V6 {
            assert!(is_forbidden(ip(addr)), "{addr} should be refused");
        }
    }

    #[test]
    fn allows_public_ipv6() {
        for addr in ALLOWED_V6 {
            assert!(!is_forbidden(ip(addr)), "{addr} should be allowed");
        }
    }

    #[test]
    fn check_url_accepts_public_http_and_https_urls() {
        for raw in [
            "https://example.com/webhooks",
            "http://example.com:8080/a?b=c",
            "https://hooks.slack.com/services/T000/B000/XXXX",
            "https://8.8.8.8/",
            "https://[2606:4700::1111]:8443/",
            "  https://example.com/padded  ",
        ] {
            assert!(check_url(raw, false).is_ok(), "{raw} should be accepted");
        }
    }

    #[test]
    fn check_url_refuses_other_schemes() {
        for (raw, scheme) in [
            ("ftp://example.com/", "ftp"),
            ("file:///etc/passwd", "file"),
            ("javascript:alert(1)", "javascript"),
            ("gopher://127.0.0.1:6379/_INFO", "gopher"),
            ("ws://example.com/", "ws"),
            ("data:text/plain,hello", "data"),
        ] {
            assert_eq!(
                check_url(raw, false),
                Err(UrlRejection::Scheme(scheme.to_owned())),
                "{raw}"
            );
        }
    }

    #[test]
    fn check_url_refuses_relative_and_malformed_urls() {
        assert_eq!(
            check_url("/webhooks", false),
            Err(UrlRejection::NotAbsolute)
        );
        assert_eq!(check_url("", false), Err(UrlRejection::NotAbsolute));
        assert_eq!(
            check_url("example.com", false),
            Err(UrlRejection::NotAbsolute)
        );
        for raw in [
            "http://",
            "https://exa mple.com/",
            "http://[::1/",
            "http://1.2.3.4.5/",
        ] {
            assert!(
                matches!(check_url(raw, false), Err(UrlRejection::Invalid(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn check_url_refuses_credentials() {
        for raw in [
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "https://:pass@example.com/",
        ] {
            assert_eq!(
                check_url(raw, false),
                Err(UrlRejection::Credentials),
                "{raw}"
            );
            assert_eq!(
                check_url(raw, true),
                Err(UrlRejection::Credentials),
                "{raw}"
            );
        }
    }

    #[test]
    fn check_url_refuses_odd_spellings_of_loopback() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for raw in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://017700000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.1/",
            "HTTP://127.0.0.1:8080/",
            "http://%31%32%37.0.0.1/",
        ] {
            assert_eq!(
                check_url(raw, false),
                Err(UrlRejection::ForbiddenAddress(loopback)),
                "{raw}"
            );
        }
    }

    #[test]
    fn check_url_refuses_forbidden_literals_of_every_family() {
        for (raw, addr) in [
            ("http://0/", "0.0.0.0"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
            ),
            ("http://10.0.0.1/", "10.0.0.1"),
            ("http://[::1]/", "::1"),
            ("http://[::]/", "::"),
            ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
            ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1"),
            ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::169.254.169.254"),
            ("http://[fe80::1]/", "fe80::1"),
            ("http://[fd00::1]/", "fd00::1"),
            ("https://255.255.255.255/", "255.255.255.255"),
        ] {
            assert_eq!(
                check_url(raw, false),
                Err(UrlRejection::ForbiddenAddress(ip(addr))),
                "{raw}"
            );
        }
    }

    #[test]
    fn check_url_refuses_localhost_names() {
        for raw in [
            "http://localhost/",
            "http://LOCALHOST:8080/",
            "http://localhost./",
            "http://api.localhost/",
            "http://a.b.localhost./x",
        ] {
            assert!(
                matches!(check_url(raw, false), Err(UrlRejection::ForbiddenHost(_))),
                "{raw}"
            );
        }
        assert!(check_url("http://localhost.example.com/", false).is_ok());
        assert!(check_url("http://notlocalhost/", false).is_ok());
    }

    #[test]
    fn allow_private_lets_local_destinations_through() {
        for raw in [
            "http://127.0.0.1:8080/hook",
            "http://localhost:3000/",
            "http://[::1]/",
            "http://10.0.0.5/",
        ] {
            assert!(check_url(raw, true).is_ok(), "{raw}");
        }
        let url = Url::parse("http://127.0.0.1/").expect("url");
        assert_eq!(check_literal_host(&url, true), Ok(()));
        assert_eq!(
            check_literal_host(&url, false),
            Err(UrlRejection::ForbiddenAddress(IpAddr::V4(
                Ipv4Addr::LOCALHOST
            )))
        );
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_unless_private_networks_are_allowed() {
        let name = Name::from_str("localhost").expect("name");
        let refused = match VettingResolver::new(false).resolve(name).await {
            Ok(addrs) => panic!("expected a refusal, got {:?}", addrs.collect::<Vec<_>>()),
            Err(error) => error,
        };
        assert!(chain_has::<BlockedAddress>(refused.as_ref()));

        let name = Name::from_str("localhost").expect("name");
        let allowed: Vec<SocketAddr> = VettingResolver::new(true)
            .resolve(name)
            .await
            .expect("localhost resolves")
            .collect();
        assert!(
            allowed
                .iter()
                .any(|a| a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{allowed:?}"
        );
    }

    #[tokio::test]
    async fn client_classifies_a_name_resolving_to_a_refused_address_as_blocked() {
        let client = delivery_client(Duration::from_secs(5), false).expect("client");
        // `localhost` only involves the local hosts file; nothing leaves the machine.
        let error = client
            .post("http://localhost:9/")
            .body("{}")
            .send()
            .await
            .expect_err("the policy refuses loopback");
        assert_eq!(classify_error(&error), ErrorClass::Blocked);
    }

    #[tokio::test]
    async fn client_classifies_a_refused_connection_as_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let client = delivery_client(Duration::from_secs(5), true).expect("client");
        let error = client
            .post(format!("http://{addr}/"))
            .send()
            .await
            .expect_err("nobody listens");
        assert_eq!(classify_error(&error), ErrorClass::Connect);
    }

    #[tokio::test]
    async fn client_classifies_a_silent_receiver_as_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            // Accept and hold the connection without ever answering.
            let (socket, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let client = delivery_client(Duration::from_millis(200), true).expect("client");
        let error = client
            .post(format!("http://{addr}/"))
            .send()
            .await
            .expect_err("no answer in time");
        assert_eq!(classify_error(&error), ErrorClass::Timeout);
        server.abort();
    }

    #[test]
    fn dns_failures_are_classified_before_connect() {
        let failure = DnsLookupFailed {
            host: "nowhere.invalid".to_owned(),
            source: Some(std::io::Error::other("no such host")),
        };
        assert_eq!(classify(&failure, false, true, false), ErrorClass::Dns);
        assert_eq!(
            classify(&BlockedAddress, false, true, false),
            ErrorClass::Blocked
        );
        let other = std::io::Error::other("tls");
        assert_eq!(classify(&other, false, false, false), ErrorClass::Other);
        assert_eq!(classify(&other, false, false, true), ErrorClass::Http);
    }

    /// Serves one canned response per request and records the request paths.
    async fn serve_canned(
        listener: TcpListener,
        respond: fn(&str) -> String,
        paths: Arc<Mutex<Vec<String>>>,
    ) {
        while let Ok((mut socket, _)) = listener.accept().await {
            let paths = Arc::clone(&paths);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(read) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let head = &text[..head_end];
                    let body_len: usize = head
                        .lines()
                        .filter_map(|line| line.split_once(':'))
                        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, value)| value.trim().parse().ok())
                        .unwrap_or(0);
                    if buffer.len() < head_end + 4 + body_len {
                        continue;
                    }
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    paths.lock().expect("paths").push(path.clone());
                    let response = respond(&path);
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    buffer.drain(..head_end + 4 + body_len);
                }
            });
        }
    }

    #[tokio::test]
    async fn client_returns_redirects_instead_of_following_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let paths = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(serve_canned(
            listener,
            |path| match path {
                "/start" => {
                    "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
                        .to_owned()
                }
                _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(),
            },
            Arc::clone(&paths),
        ));

        let client = delivery_client(Duration::from_secs(5), true).expect("client");
        let response = client
            .post(format!("http://{addr}/start"))
            .header("content-type", "application/json")
            .body(r#"{"type":"webhook.test"}"#)
            .send()
            .await
            .expect("the receiver answers");

        assert_eq!(response.status(), reqwest::StatusCode::FOUND);
        assert_eq!(
            response.headers().get("location").map(|v| v.as_bytes()),
            Some(&b"/elsewhere"[..])
        );
        assert_eq!(*paths.lock().expect("paths"), vec!["/start".to_owned()]);
        server.abort();
    }

    #[tokio::test]
    async fn client_sends_the_agenthook_user_agent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = vec![0u8; 4096];
            let read = socket.read(&mut head).await.expect("read");
            socket
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8_lossy(&head[..read]).to_ascii_lowercase()
        });
        let client = delivery_client(Duration::from_secs(5), true).expect("client");
        let response = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT);
        let head = server.await.expect("server");
        assert!(
            head.contains(&format!("user-agent: {}", USER_AGENT.to_ascii_lowercase())),
            "{head}"
        );
    }

    proptest! {
        #[test]
        fn ipv4_and_its_mapped_ipv6_form_are_judged_alike(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(
                is_forbidden(IpAddr::V4(v4)),
                is_forbidden(IpAddr::V6(v4.to_ipv6_mapped()))
            );
        }

        #[test]
        fn nat64_form_is_judged_like_its_ipv4_address(bits in any::<u32>()) {
            let nat64 = Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(bits));
            prop_assert_eq!(
                is_forbidden(IpAddr::V4(Ipv4Addr::from(bits))),
                is_forbidden(IpAddr::V6(nat64))
            );
        }

        #[test]
        fn check_url_never_panics(raw in any::<String>(), allow_private in any::<bool>()) {
            let _ = check_url(&raw, allow_private);
        }

        #[test]
        fn check_url_never_panics_on_url_shaped_input(
            raw in "(https?|ftp|file)://[a-z0-9.:@%\\[\\]/?#-]{0,40}",
            allow_private in any::<bool>(),
        ) {
            let _ = check_url(&raw, allow_private);
        }
    }
}
