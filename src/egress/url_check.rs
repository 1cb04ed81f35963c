//! Intake check of a destination URL (a job's callback URL, a generic
//! delivery's target), run when the API or the library accepts it.
//!
//! Owns the shape rules (absolute WHATWG URL, `http`/`https`, a host, no
//! credentials) and the refusal of IP-literal hosts the [`EgressPolicy`]
//! does not permit, with error messages that tell the caller what to fix.
//!
//! It must not resolve names or open connections: a host *name* (including
//! `localhost`) passes here and is checked after DNS, at connect time, by
//! [`super::resolver`] (and by the preflight of [`super::client`]). Passing
//! this check is therefore necessary, not sufficient.
//!
//! Parsing is the `url` crate's WHATWG parser, the same one the HTTP client
//! uses, so every spelling of an address (`http://2130706433/`,
//! `http://127.1/`, `http://0x7f000001/`, `http://%31%32%37.0.0.1/`,
//! `http://[::ffff:127.0.0.1]/`, full-width digits …) is normalised to the
//! IP literal it denotes before the policy sees it.
//!
//! URLs with a username or password are refused: the client would send them
//! as HTTP Basic credentials, they would be stored and shown in delivery
//! listings and logs, and `https://trusted.example@evil.example/` is a
//! well-known phishing spelling. Credentials belong in a header or in the
//! signature the dispatcher adds.

use std::net::IpAddr;

use url::{Host, Url};

use super::policy::EgressPolicy;
use crate::error::ErrorCode;

/// Why a destination URL was refused at intake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The text is not an absolute URL.
    #[error("url is not valid ({reason}); expected an absolute URL such as https://example.com/callback")]
    Malformed {
        /// What the parser objected to.
        reason: String,
    },
    /// A scheme other than `http` / `https`.
    #[error("url must use http or https, got {0}")]
    UnsupportedScheme(String),
    /// No host (or an empty one).
    #[error("url must name a host, e.g. https://example.com/callback")]
    MissingHost,
    /// `user:password@` in the URL.
    #[error("url must not contain a username or password; send credentials in a header instead")]
    Credentials,
    /// An IP-literal host the egress policy refuses.
    #[error(
        "url points at {0}, a loopback, private, link-local or otherwise reserved address that \
         callbacks may not be sent to; use a public address or host name (an operator can exempt \
         a range with POSTBACK_EGRESS_ALLOW)"
    )]
    BlockedAddress(IpAddr),
}

impl DestinationError {
    /// The API error code of this refusal: `blocked_destination` for a
    /// refused address, `invalid_url` for every shape problem (the message
    /// says which).
    pub fn code(&self) -> ErrorCode {
        match self {
            DestinationError::Malformed { .. }
            | DestinationError::UnsupportedScheme(_)
            | DestinationError::MissingHost
            | DestinationError::Credentials => ErrorCode::InvalidUrl,
            DestinationError::BlockedAddress(_) => ErrorCode::BlockedDestination,
        }
    }
}

/// Parses and checks a destination URL; returns the normalised URL to store.
pub fn check_destination(policy: &EgressPolicy, raw: &str) -> Result<Url, DestinationError> {
    let url = Url::parse(raw).map_err(|e| match e {
        url::ParseError::EmptyHost => DestinationError::MissingHost,
        url::ParseError::RelativeUrlWithoutBase => DestinationError::Malformed {
            reason: "no scheme; did you mean https://…?".to_owned(),
        },
        other => DestinationError::Malformed {
            reason: other.to_string(),
        },
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(DestinationError::UnsupportedScheme(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DestinationError::Credentials);
    }
    let ip = match url.host() {
        None => return Err(DestinationError::MissingHost),
        Some(Host::Domain("")) => return Err(DestinationError::MissingHost),
        Some(Host::Domain(_)) => None,
        Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
    };
    if let Some(ip) = ip {
        if !policy.permits(ip) {
            return Err(DestinationError::BlockedAddress(ip));
        }
    }
    Ok(url)
}

/// The key a destination is counted under for per-host fairness (SPEC §1
/// `POSTBACK_PER_HOST_CONCURRENCY`): the host in lower case without
/// trailing dots, an IPv4-mapped IPv6 address as the IPv4 address it
/// denotes, so `127.0.0.2`, `[::ffff:127.0.0.2]` and `EXAMPLE.org.` /
/// `example.org` each count as one destination however they are spelled.
pub fn host_key(url: &Url) -> String {
    match url.host() {
        Some(Host::Ipv4(v4)) => ip_key(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => ip_key(IpAddr::V6(v6)),
        Some(Host::Domain(name)) => name.trim_end_matches('.').to_ascii_lowercase(),
        None => String::new(),
    }
}

/// The fairness key of an address: IPv4 dotted, an IPv4-mapped IPv6
/// address unwrapped to its IPv4 address, other IPv6 in brackets (as a URL
/// spells it, so stored hosts read the same).
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{v6}]"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn check(raw: &str) -> Result<Url, DestinationError> {
        check_destination(&EgressPolicy::default(), raw)
    }

    fn blocked(raw: &str) -> IpAddr {
        match check(raw) {
            Err(DestinationError::BlockedAddress(ip)) => ip,
            other => panic!("{raw}: expected BlockedAddress, got {other:?}"),
        }
    }

    #[test]
    fn every_spelling_of_an_internal_address_is_refused() {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert_eq!(
            blocked("http://10.0.0.1/"),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            blocked("http://169.254.169.254/latest/meta-data/"),
            "169.254.169.254".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(blocked("http://[::1]/"), IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(blocked("http://2130706433/"), lo);
        assert_eq!(blocked("http://127.1/"), lo);
        assert_eq!(blocked("http://0x7f000001/"), lo);
        assert_eq!(blocked("http://0x7f.0.0.1/"), lo);
        assert_eq!(blocked("http://0177.0.0.1/"), lo);
        assert_eq!(blocked("http://127.0.0.1./"), lo);
        assert_eq!(blocked("http://%31%32%37.0.0.1/"), lo);
        assert_eq!(blocked("http://１２７.０.０.１/"), lo);
        assert_eq!(blocked("HTTPS://127.0.0.1:8443/x?y#z"), lo);
        assert_eq!(
            blocked("http://[::ffff:127.0.0.1]/"),
            "::ffff:127.0.0.1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            blocked("http://[0:0:0:0:0:ffff:7f00:1]/"),
            "::ffff:127.0.0.1".parse::<IpAddr>().expect("ip")
        );
        blocked("http://[64:ff9b::a9fe:a9fe]/");
        blocked("http://[2002:a9fe:a9fe::]/");
        blocked("http://[fe80::1]/");
        blocked("http://[fd00::1]/");
        blocked("http://0/");
        blocked("http://100.64.0.1/");
        blocked("http://255.255.255.255/");
        blocked("http://224.0.0.1/");
    }

    #[test]
    fn shape_errors_tell_what_to_fix() {
        match check("ftp://x") {
            Err(e @ DestinationError::UnsupportedScheme(_)) => {
                assert_eq!(e.to_string(), "url must use http or https, got ftp")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(check("file:///etc/passwd"), Err(DestinationError::UnsupportedScheme(s)) if s == "file")
        );
        assert!(matches!(
            check("gopher://x/"),
            Err(DestinationError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            check("not a url"),
            Err(DestinationError::Malformed { .. })
        ));
        assert!(matches!(
            check("example.com/hook"),
            Err(DestinationError::Malformed { .. })
        ));
        assert!(matches!(check(""), Err(DestinationError::Malformed { .. })));
        assert!(matches!(
            check("http://"),
            Err(DestinationError::MissingHost)
        ));
        assert!(matches!(
            check("https://:443/"),
            Err(DestinationError::MissingHost)
        ));
        assert!(matches!(
            check("http://[::1/"),
            Err(DestinationError::Malformed { .. })
        ));
        assert!(matches!(
            check("http://example.com:99999/"),
            Err(DestinationError::Malformed { .. })
        ));
        assert!(matches!(
            check("http://user:pw@example.com/"),
            Err(DestinationError::Credentials)
        ));
        assert!(matches!(
            check("http://example.com@10.0.0.1/"),
            Err(DestinationError::Credentials)
        ));
        assert_eq!(DestinationError::MissingHost.code(), ErrorCode::InvalidUrl);
        assert_eq!(
            DestinationError::BlockedAddress(Ipv4Addr::LOCALHOST.into()).code(),
            ErrorCode::BlockedDestination
        );
        let msg = check("not a url").expect_err("malformed").to_string();
        assert!(msg.contains("https://"), "{msg}");
    }

    #[test]
    fn triple_slash_is_whatwg_authority_not_missing_host() {
        // WHATWG parsing skips the extra slash for special schemes, exactly as
        // a browser (and the HTTP client) would: the host is `nohost`.
        let url = check("http:///nohost").expect("parses like a browser");
        assert_eq!(url.host_str(), Some("nohost"));
    }

    #[test]
    fn public_names_and_addresses_pass() {
        for raw in [
            "https://example.org/callback",
            "http://localhost:8080/",
            "https://hooks.example.com:8443/a/b?c=d",
            "http://8.8.8.8/",
            "http://134744072/",
            "http://[2606:4700:4700::1111]/",
            "http://[::ffff:8.8.8.8]/",
            "http://[64:ff9b::808:808]/",
            "https://EXAMPLE.org./x",
        ] {
            let url = check(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert!(url.host().is_some());
        }
        assert_eq!(
            check("http://134744072/").expect("ok").host_str(),
            Some("8.8.8.8")
        );
    }

    #[test]
    fn allow_list_admits_literals() {
        let policy = EgressPolicy::new(vec!["10.0.0.0/8".parse().expect("net")], vec![]);
        assert!(check_destination(&policy, "http://10.1.2.3:9000/").is_ok());
        assert!(check_destination(&policy, "http://167837953/").is_ok());
        assert!(check_destination(&policy, "http://192.168.0.1/").is_err());
    }

    // ---- property tests against an independent oracle ----

    /// Independent statement of the IPv4 deny list as (network, prefix) pairs,
    /// checked with plain bit arithmetic (no ipnet).
    const ORACLE_V4: &[(u32, u32)] = &[
        (0x0000_0000, 8),
        (0x0a00_0000, 8),
        (0x6440_0000, 10),
        (0x7f00_0000, 8),
        (0xa9fe_0000, 16),
        (0xac10_0000, 12),
        (0xc000_0000, 24),
        (0xc000_0200, 24),
        (0xc058_6300, 24),
        (0xc0a8_0000, 16),
        (0xc612_0000, 15),
        (0xc633_6400, 24),
        (0xcb00_7100, 24),
        (0xe000_0000, 4),
        (0xf000_0000, 4),
    ];

    fn oracle_denies_v4(a: u32) -> bool {
        ORACLE_V4
            .iter()
            .any(|&(net, len)| (a ^ net) >> (32 - len) == 0)
    }

    /// Addresses that must be refused; the implementation may refuse more.
    fn oracle_denies_v6(a: u128) -> bool {
        let top = |bits: u32| a >> (128 - bits);
        let low32 = (a & 0xffff_ffff) as u32;
        a == 0
            || a == 1
            || top(96) == 0 // IPv4-compatible, incl. :: and ::1
            || (top(96) == 0xffff && oracle_denies_v4(low32)) // mapped
            || (top(96) == 0x0064_ff9b_0000_0000_0000_0000 && oracle_denies_v4(low32)) // NAT64
            || top(48) == 0x0064_ff9b_0001 // local-use NAT64
            || (top(16) == 0x2002 && oracle_denies_v4((a >> 80) as u32)) // 6to4
            || top(64) == 0x0100_0000_0000_0000 // discard
            || top(7) == 0xfc >> 1 // ULA
            || top(10) == 0xfe80 >> 6 // link-local
            || top(8) == 0xff // multicast
            || top(32) == 0x2001_0db8 // documentation
    }

    fn v4_spellings(a: u32) -> Vec<String> {
        let [b0, b1, b2, b3] = a.to_be_bytes();
        vec![
            format!("http://{b0}.{b1}.{b2}.{b3}/"),
            format!("http://{a}/"),
            format!("http://0x{a:x}/"),
            format!("http://0X{a:08X}:8080/path"),
            format!("http://0{a:o}/"),
            format!("http://0{b0:o}.0x{b1:x}.{b2}.0{b3:o}/"),
            format!("http://{b0}.{}/", a & 0x00ff_ffff),
            format!("http://{b0}.{b1}.{}/", a & 0xffff),
            format!("https://{b0}.{b1}.{b2}.{b3}.:443/"),
            format!("HTTP://{b0}.{b1}.{b2}.{b3}/#fragment"),
            format!(
                "http://{}/",
                format!("{b0}.{b1}.{b2}.{b3}")
                    .bytes()
                    .map(|c| format!("%{c:02X}"))
                    .collect::<String>()
            ),
            format!("http://[::ffff:{b0}.{b1}.{b2}.{b3}]/"),
            format!("http://[::ffff:{:x}:{:x}]/", a >> 16, a & 0xffff),
            format!("http://[64:ff9b::{b0}.{b1}.{b2}.{b3}]/"),
            format!("http://[2002:{:x}:{:x}::1]/", a >> 16, a & 0xffff),
            format!("http://[::{b0}.{b1}.{b2}.{b3}]/"),
        ]
    }

    fn v6_spellings(a: u128) -> Vec<String> {
        let ip = Ipv6Addr::from(a);
        let s = ip.segments();
        vec![
            format!("http://[{ip}]/"),
            format!("https://[{ip}]:8443/x"),
            format!(
                "http://[{:X}:{:X}:{:X}:{:X}:{:X}:{:X}:{:X}:{:X}]/",
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
            ),
            format!(
                "http://[{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}]/",
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
            ),
        ]
    }

    fn assert_refused_if_oracle_says(raw: &str) -> Result<(), TestCaseError> {
        let result = check(raw);
        if let Ok(url) = &result {
            match url.host() {
                Some(Host::Ipv4(v4)) => {
                    prop_assert!(!oracle_denies_v4(u32::from(v4)), "{raw} admitted {v4}")
                }
                Some(Host::Ipv6(v6)) => {
                    prop_assert!(!oracle_denies_v6(u128::from(v6)), "{raw} admitted {v6}")
                }
                _ => {}
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn ipv4_policy_matches_oracle(a in any::<u32>()) {
            let ip = IpAddr::V4(Ipv4Addr::from(a));
            prop_assert_eq!(EgressPolicy::default().permits(ip), !oracle_denies_v4(a), "{}", ip);
        }

        #[test]
        fn ipv4_spellings_never_admit_denied(a in any::<u32>()) {
            for raw in v4_spellings(a) {
                assert_refused_if_oracle_says(&raw)?;
            }
            // The canonical spellings must parse to exactly this address and
            // be refused exactly when the oracle says so.
            let dotted = Ipv4Addr::from(a).to_string();
            for raw in [format!("http://{dotted}/"), format!("http://{a}/"), format!("http://0x{a:x}/")] {
                let res = check(&raw);
                if oracle_denies_v4(a) {
                    prop_assert_eq!(res, Err(DestinationError::BlockedAddress(IpAddr::V4(Ipv4Addr::from(a)))));
                } else {
                    let url = res.map_err(|e| TestCaseError::fail(format!("{raw}: {e}")))?;
                    prop_assert_eq!(url.host_str(), Some(dotted.as_str()));
                }
            }
        }

        #[test]
        fn ipv6_spellings_never_admit_denied(a in any::<u128>()) {
            for raw in v6_spellings(a) {
                assert_refused_if_oracle_says(&raw)?;
            }
        }

        #[test]
        fn ipv6_special_prefixes_never_admit_denied(
            prefix in prop::sample::select(vec![
                0u128, 0xffff_0000_0000, 0x0064_ff9b_0000_0000_0000_0000_0000_0000,
                0x0064_ff9b_0001_0000_0000_0000_0000_0000, 0x2002_0000_0000_0000_0000_0000_0000_0000,
                0xfe80_0000_0000_0000_0000_0000_0000_0000, 0xfc00_0000_0000_0000_0000_0000_0000_0000,
                0x0100_0000_0000_0000_0000_0000_0000_0000, 0x2001_0db8_0000_0000_0000_0000_0000_0000,
            ]),
            low in any::<u128>(),
            v4 in prop::sample::select(vec![0x7f00_0001u32, 0x0a00_0001, 0xa9fe_a9fe, 0xc0a8_0101, 0x0808_0808, 0x6440_0001]),
        ) {
            // Mix the prefix with random low bits and with an embedded IPv4 address.
            let mixed = prefix | (low & 0xffff_ffff_ffff);
            let embedded = prefix | u128::from(v4);
            let sixtofour = prefix | (u128::from(v4) << 80);
            for a in [mixed, embedded, sixtofour] {
                for raw in v6_spellings(a) {
                    assert_refused_if_oracle_says(&raw)?;
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,64}", host in "[0-9a-fA-FxX.:%\\[\\]]{0,40}") {
            let _ = check(&s);
            let raw = format!("http://{host}/");
            assert_refused_if_oracle_says(&raw)?;
            let raw = format!("https://[{host}]:1/");
            assert_refused_if_oracle_says(&raw)?;
        }
    }

    #[test]
    fn one_destination_has_one_host_key_however_it_is_spelled() {
        let key = |raw: &str| host_key(&Url::parse(raw).expect("url"));
        assert_eq!(key("http://127.0.0.2/"), "127.0.0.2");
        assert_eq!(key("http://[::ffff:127.0.0.2]/"), "127.0.0.2");
        assert_eq!(key("http://[::FFFF:7f00:2]:8080/x"), "127.0.0.2");
        assert_eq!(key("http://2130706434/"), "127.0.0.2");
        assert_eq!(key("https://Example.ORG./cb"), "example.org");
        assert_eq!(key("https://example.org/cb"), "example.org");
        assert_eq!(key("http://[2001:DB8::1]/"), "[2001:db8::1]");
    }
}
