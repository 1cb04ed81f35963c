//! The egress address policy: which IP addresses a delivery may connect to.
//!
//! Owns the built-in deny list (loopback, RFC 1918, ULA, link-local incl.
//! cloud metadata, CGNAT, multicast, unspecified, broadcast and every
//! reserved / documentation / benchmarking range), the operator's extra deny
//! list (`POSTBACK_EGRESS_DENY`) and allow list (`POSTBACK_EGRESS_ALLOW`), and
//! the rule that combines them. It is a pure, allocation-free function of an
//! [`IpAddr`] because it runs on every connection.
//!
//! It must not parse URLs, resolve names or open sockets: callers hand it
//! addresses ([`super::url_check`] for literals in URLs, [`super::resolver`]
//! after DNS, [`super::client`] in the preflight check).
//!
//! # The rule
//!
//! An address is judged as itself *and* as the IPv4 address it carries, if
//! any (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
//! `2002::/16`, Teredo `2001::/32` client). Then:
//!
//! 1. if either is inside `allow`, the address is permitted (allow wins);
//! 2. else if either is inside `extra_deny`, it is refused;
//! 3. else it is refused when the built-in list refuses it.
//!
//! Built-in IPv6 handling: the IPv4-mapped and well-known NAT64 forms are
//! judged by the IPv4 address they carry; everything else outside the
//! global-unicast block `2000::/3` is refused (that covers `::`, `::1`, the
//! deprecated IPv4-compatible `::/96`, `100::/64`, `fc00::/7`, `fe80::/10`,
//! `fec0::/10`, `ff00::/8` and all IETF-reserved space); inside `2000::/3`,
//! 6to4 and Teredo are judged by their IPv4 address and the documentation /
//! benchmarking / ORCHID blocks are refused.
//!
//! The local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215) is refused as a
//! whole: a site may use any RFC 6052 prefix length inside it, so where the
//! IPv4 address sits cannot be known, and every single reading can be
//! spoofed. Sites that rely on it can list it in `allow` or, better, send
//! deliveries through a filtering proxy. Network-specific NAT64 prefixes
//! outside these blocks cannot be recognised at all; the same advice holds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 ranges refused by default, with the reason each is on the list.
pub const DENIED_V4: &[(Ipv4Net, &str)] = &[
    (v4(0, 0, 0, 0, 8), "\"this network\" / unspecified"),
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT (RFC 6598)"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local / cloud metadata"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (v4(192, 88, 99, 0, 24), "deprecated 6to4 relay anycast"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)"),
    (v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved / broadcast"),
];

/// IPv6 ranges inside the global-unicast block `2000::/3` refused by default.
/// (Everything outside `2000::/3` is refused unless it carries a permitted
/// IPv4 address in the IPv4-mapped or NAT64 form.)
pub const DENIED_V6_GLOBAL: &[(Ipv6Net, &str)] = &[
    (v6(0x2001, 0x2, 0, 0, 0, 0, 0, 0, 48), "benchmarking"),
    (
        v6(0x2001, 0x10, 0, 0, 0, 0, 0, 0, 28),
        "ORCHID (deprecated)",
    ),
    (v6(0x2001, 0x20, 0, 0, 0, 0, 0, 0, 28), "ORCHIDv2"),
    (v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0, 32), "documentation"),
    (
        v6(0x3fff, 0, 0, 0, 0, 0, 0, 0, 20),
        "documentation (RFC 9637)",
    ),
];

const GLOBAL_UNICAST: Ipv6Net = v6(0x2000, 0, 0, 0, 0, 0, 0, 0, 3);
const MAPPED: Ipv6Net = v6(0, 0, 0, 0, 0, 0xffff, 0, 0, 96);
const NAT64_WELL_KNOWN: Ipv6Net = v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0, 96);
const SIX_TO_FOUR: Ipv6Net = v6(0x2002, 0, 0, 0, 0, 0, 0, 0, 16);
const TEREDO: Ipv6Net = v6(0x2001, 0, 0, 0, 0, 0, 0, 0, 32);

/// Which destination addresses outbound connections may reach.
///
/// Cheap to query; share it behind an `Arc`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
    extra_deny: Vec<IpNet>,
}

impl EgressPolicy {
    /// A policy with the built-in deny list, `extra_deny` on top of it, and
    /// `allow` exempting ranges from both (allow wins).
    pub fn new(allow: Vec<IpNet>, extra_deny: Vec<IpNet>) -> Self {
        Self {
            allow: allow.into_iter().map(|n| n.trunc()).collect(),
            extra_deny: extra_deny.into_iter().map(|n| n.trunc()).collect(),
        }
    }

    /// The exempted ranges (`POSTBACK_EGRESS_ALLOW`).
    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// The operator's extra denied ranges (`POSTBACK_EGRESS_DENY`).
    pub fn extra_deny(&self) -> &[IpNet] {
        &self.extra_deny
    }

    /// Whether an outbound connection to `ip` is permitted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        };
        let matches = |nets: &[IpNet]| {
            nets.iter()
                .any(|n| n.contains(&ip) || embedded.is_some_and(|e| n.contains(&e)))
        };
        if matches(&self.allow) {
            return true;
        }
        if matches(&self.extra_deny) {
            return false;
        }
        !builtin_denies(ip)
    }

    /// Parses a comma-separated list of CIDRs as used by
    /// `POSTBACK_EGRESS_ALLOW` / `POSTBACK_EGRESS_DENY`. A bare address means
    /// a single host (`/32` or `/128`); blanks around entries and empty
    /// entries are ignored.
    pub fn parse_cidr_list(raw: &str) -> Result<Vec<IpNet>, CidrListError> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                IpNet::from_str(s)
                    .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| CidrListError {
                        entry: s.to_owned(),
                    })
            })
            .collect()
    }
}

/// An entry of a CIDR list that is neither a CIDR nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{entry}` is not a CIDR range (expected e.g. 10.0.0.0/8, 2001:db8::/32 or a single address)"
)]
pub struct CidrListError {
    /// The offending entry, trimmed.
    pub entry: String,
}

/// Whether the built-in list alone refuses `ip` (ignores allow / extra deny).
pub fn builtin_denies(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => builtin_denies_v4(v4),
        IpAddr::V6(v6) => builtin_denies_v6(v6),
    }
}

#[inline]
fn builtin_denies_v4(ip: Ipv4Addr) -> bool {
    DENIED_V4.iter().any(|(net, _)| net.contains(&ip))
}

fn builtin_denies_v6(ip: Ipv6Addr) -> bool {
    if !GLOBAL_UNICAST.contains(&ip) {
        // Only the mapped and well-known NAT64 forms reach a real IPv4 host;
        // the rest of the space outside 2000::/3 is special or reserved.
        return match embedded_v4(ip) {
            Some(v4) => builtin_denies_v4(v4),
            None => true,
        };
    }
    if let Some(v4) = embedded_v4(ip) {
        // 6to4 and Teredo.
        return builtin_denies_v4(v4);
    }
    DENIED_V6_GLOBAL.iter().any(|(net, _)| net.contains(&ip))
}

/// The IPv4 address an IPv6 address carries in a translation or tunnel form.
#[inline]
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    if MAPPED.contains(&ip) || NAT64_WELL_KNOWN.contains(&ip) {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if SIX_TO_FOUR.contains(&ip) {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else if TEREDO.contains(&ip) {
        // The client address is stored bit-inverted in the last 32 bits.
        Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]))
    } else {
        None
    }
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "built-in deny list, extra deny [{}], allow [{}]",
            join(&self.extra_deny),
            join(&self.allow)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn nets(list: &str) -> Vec<IpNet> {
        EgressPolicy::parse_cidr_list(list).expect("test cidrs")
    }

    const DENIED: &[&str] = &[
        // IPv4
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.1",
        "192.0.0.170",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.0.1",
        "192.168.255.255",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        // IPv6 native
        "::",
        "::1",
        "100::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "2001:2::1",
        "2001:10::1",
        "2001:20::1",
        "3fff::1",
        "5f00::1",
        "4000::1",
        "1::1",
        // IPv4-compatible (deprecated)
        "::127.0.0.1",
        "::10.0.0.1",
        "::8.8.8.8",
        // IPv4-mapped
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:192.168.1.1",
        "::ffff:0.0.0.0",
        "::ffff:255.255.255.255",
        "::ffff:100.64.0.1",
        // SIIT IPv4-translated (reserved space)
        "::ffff:0:8.8.8.8",
        // NAT64 well-known
        "64:ff9b::127.0.0.1",
        "64:ff9b::10.1.2.3",
        "64:ff9b::a9fe:a9fe",
        // NAT64 local-use: refused whatever it carries
        "64:ff9b:1::10.0.0.1",
        "64:ff9b:1:7f00:1::",
        "64:ff9b:1::8.8.8.8",
        // 6to4
        "2002:7f00:1::1",
        "2002:a00:1::",
        "2002:a9fe:a9fe::1",
        // Teredo with a private client (10.0.0.1 inverted = f5ff:fffe)
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    ];

    const PERMITTED: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "9.255.255.255",
        "11.0.0.0",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2002:808:808::1",
        // Teredo with a public client (8.8.8.8 inverted = f7f7:f7f7)
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    ];

    #[test]
    fn default_policy_table() {
        let p = EgressPolicy::default();
        for a in DENIED {
            assert!(!p.permits(ip(a)), "{a} should be refused");
        }
        for a in PERMITTED {
            assert!(p.permits(ip(a)), "{a} should be permitted");
        }
    }

    #[test]
    fn every_builtin_range_boundary_is_refused() {
        let p = EgressPolicy::default();
        for (net, why) in DENIED_V4 {
            for a in [net.network(), net.broadcast()] {
                assert!(!p.permits(IpAddr::V4(a)), "{a} ({why})");
                assert!(!p.permits(IpAddr::V6(a.to_ipv6_mapped())), "mapped {a}");
                let nat64 = u128::from(NAT64_WELL_KNOWN.network()) | u128::from(u32::from(a));
                assert!(!p.permits(IpAddr::V6(Ipv6Addr::from(nat64))), "nat64 {a}");
                let six = u128::from(SIX_TO_FOUR.network()) | (u128::from(u32::from(a)) << 80);
                assert!(!p.permits(IpAddr::V6(Ipv6Addr::from(six))), "6to4 {a}");
            }
        }
        let nat64_local: Ipv6Net = "64:ff9b:1::/48".parse().expect("net");
        for (net, why) in DENIED_V6_GLOBAL
            .iter()
            .chain([(nat64_local, "local-use NAT64")].iter())
        {
            for a in [net.network(), net.broadcast()] {
                assert!(!p.permits(IpAddr::V6(a)), "{a} ({why})");
            }
        }
    }

    #[test]
    fn allow_overrides_builtin_and_extra_deny() {
        let p = EgressPolicy::new(nets("127.0.0.0/8, 10.1.0.0/16"), nets("10.0.0.0/8"));
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.7")));
        assert!(p.permits(ip("10.1.2.3")));
        assert!(!p.permits(ip("10.2.0.1")));
        assert!(!p.permits(ip("::1")), "allowing 127/8 does not allow ::1");
        assert!(!p.permits(ip("169.254.169.254")));

        let p6 = EgressPolicy::new(nets("fd00::/8"), vec![]);
        assert!(p6.permits(ip("fd00::5")));
        assert!(!p6.permits(ip("fc00::5")));
    }

    #[test]
    fn extra_deny_applies_to_public_and_embedded_forms() {
        let p = EgressPolicy::new(vec![], nets("8.8.8.0/24,2606:4700::/32"));
        for a in [
            "8.8.8.8",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::",
            "2606:4700:4700::1111",
        ] {
            assert!(!p.permits(ip(a)), "{a}");
        }
        assert!(p.permits(ip("8.8.4.4")));
        assert!(p.permits(ip("1.1.1.1")));
    }

    #[test]
    fn parse_cidr_list_accepts_bare_addresses_and_reports_bad_entries() {
        assert_eq!(
            nets(" 10.0.0.5 , ,fd00::/8,10.9.9.9/8"),
            vec![
                "10.0.0.5/32".parse::<IpNet>().expect("net"),
                "fd00::/8".parse().expect("net"),
                "10.0.0.0/8".parse().expect("net"),
            ]
        );
        assert!(nets("").is_empty());
        let err = EgressPolicy::parse_cidr_list("10.0.0.0/8,banana").expect_err("bad entry");
        assert_eq!(err.entry, "banana");
        assert!(err.to_string().contains("banana"));
    }
}
