//! The guarded DNS resolver: the connect-time half of the egress check.
//!
//! Owns name resolution for deliveries. It resolves a host name with hickory
//! (system `/etc/resolv.conf`, `/etc/hosts` honoured), drops every address
//! the [`EgressPolicy`] does not permit (and, when connections must leave
//! from a fixed source address, every address of the other IP family, which
//! the socket could not be bound for), and hands the HTTP client only what
//! is left. So the client connects only to addresses that were checked, after
//! DNS, on every new connection: a name that re-resolves to a private address
//! is refused. When nothing is left it fails with [`BlockedDestination`],
//! which [`is_blocked`] finds again inside a `reqwest::Error`.
//!
//! It must not be used to resolve the proxy's own name (the proxy is
//! trusted, and may well live on a private address), and it never sees IP
//! literals: the client connects to those without resolving, which is why
//! [`super::client::Egress::preflight`] exists.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{LookupIpStrategy, ResolverConfig, ResolverOpts};
use hickory_resolver::error::ResolveError;
use hickory_resolver::TokioAsyncResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::policy::EgressPolicy;

/// Why a destination was refused after resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// Every address is refused by the egress policy.
    Policy,
    /// Permitted addresses exist, but none of the IP family of
    /// `POSTBACK_EGRESS_SOURCE_ADDR`, so no connection could leave from it.
    AddressFamily,
}

/// A destination the egress policy refuses: the attempt's error is
/// `blocked_destination`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct BlockedDestination {
    /// The host as written in the URL (a name or an address).
    pub host: String,
    /// What made it unreachable.
    pub reason: BlockReason,
}

impl BlockedDestination {
    /// Refused by the policy.
    pub fn policy(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            reason: BlockReason::Policy,
        }
    }

    fn message(&self) -> String {
        match self.reason {
            BlockReason::Policy => format!(
                "blocked destination: {} resolves to a loopback, private, link-local or reserved \
                 address that deliveries may not reach (POSTBACK_EGRESS_ALLOW exempts a range)",
                self.host
            ),
            BlockReason::AddressFamily => format!(
                "blocked destination: {} has no permitted address of the IP family of \
                 POSTBACK_EGRESS_SOURCE_ADDR, so it cannot be reached from the egress address",
                self.host
            ),
        }
    }
}

/// Whether `err` or anything in its `source()` chain is a
/// [`BlockedDestination`]. Works on `reqwest::Error`, which wraps the
/// resolver's error several levels deep.
pub fn is_blocked(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<BlockedDestination>() {
            return true;
        }
        // io::Error::source() skips the wrapped error itself; look inside.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if is_blocked(inner) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// A hickory resolver that only returns addresses the policy permits.
///
/// Cheap to clone (shares the resolver and its cache).
#[derive(Clone)]
pub struct GuardedResolver {
    inner: TokioAsyncResolver,
    policy: Arc<EgressPolicy>,
    source_addr: Option<IpAddr>,
    /// Unit tests only: fixed answers for names, in place of DNS (to stage
    /// a name whose answer differs from the one a proxy would get, or
    /// changes between two lookups).
    #[cfg(test)]
    overrides: std::collections::HashMap<String, Arc<tests::Answers>>,
}

impl fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedResolver")
            .field("policy", &self.policy)
            .field("source_addr", &self.source_addr)
            .finish_non_exhaustive()
    }
}

impl GuardedResolver {
    /// Uses the system configuration (`/etc/resolv.conf`); when that is
    /// missing or unusable, hickory's defaults. `/etc/hosts` is always
    /// honoured, so `localhost` resolves (and is then refused unless allowed).
    pub fn from_system(policy: Arc<EgressPolicy>, source_addr: Option<IpAddr>) -> Self {
        let (config, opts) = match hickory_resolver::system_conf::read_system_conf() {
            Ok((config, opts)) if !config.name_servers().is_empty() => (config, opts),
            Ok(_) => {
                tracing::warn!("/etc/resolv.conf lists no name server; using default resolvers");
                (ResolverConfig::default(), ResolverOpts::default())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot use /etc/resolv.conf; using default resolvers");
                (ResolverConfig::default(), ResolverOpts::default())
            }
        };
        Self::with_config(policy, source_addr, config, opts)
    }

    /// Uses the given hickory configuration. `use_hosts_file` is forced on
    /// and both address families are looked up (the guard then picks).
    pub fn with_config(
        policy: Arc<EgressPolicy>,
        source_addr: Option<IpAddr>,
        config: ResolverConfig,
        mut opts: ResolverOpts,
    ) -> Self {
        opts.use_hosts_file = true;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Self {
            inner: TokioAsyncResolver::tokio(config, opts),
            policy,
            source_addr,
            #[cfg(test)]
            overrides: std::collections::HashMap::new(),
        }
    }

    /// Unit tests only: `host` resolves to `ips`, whatever DNS says.
    #[cfg(test)]
    pub(crate) fn with_override(self, host: &str, ips: Vec<IpAddr>) -> Self {
        self.with_answers(host, vec![ips])
    }

    /// Unit tests only: the n-th lookup of `host` answers `answers[n]`;
    /// the last answer repeats (DNS rebinding: a name whose answer changes
    /// between the check and the connection).
    #[cfg(test)]
    pub(crate) fn with_answers(mut self, host: &str, answers: Vec<Vec<IpAddr>>) -> Self {
        self.overrides
            .insert(host.to_owned(), Arc::new(tests::Answers::new(answers)));
        self
    }

    /// The policy this resolver enforces.
    pub fn policy(&self) -> &Arc<EgressPolicy> {
        &self.policy
    }

    /// Every address `host` resolves to, unfiltered.
    pub async fn lookup_all(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        #[cfg(test)]
        if let Some(answers) = self.overrides.get(host) {
            return Ok(answers.next());
        }
        Ok(self.inner.lookup_ip(host).await?.iter().collect())
    }

    /// Every address `host` resolves to, when the policy permits each one;
    /// never empty. A single refused address refuses the name: through a
    /// proxy the connection is not ours to pin, so the name is only as safe
    /// as its worst answer. (The source address family is not checked: the
    /// proxy, not this machine, connects to it.)
    pub async fn resolve_all_permitted(&self, host: &str) -> Result<Vec<IpAddr>, ResolveFailure> {
        let all = self.lookup_all(host).await.map_err(ResolveFailure::Dns)?;
        if all.is_empty() || all.iter().any(|ip| !self.policy.permits(*ip)) {
            return Err(ResolveFailure::Blocked(BlockedDestination::policy(host)));
        }
        Ok(all)
    }

    /// The addresses of `host` a delivery may connect to; never empty.
    pub async fn resolve_permitted(&self, host: &str) -> Result<Vec<IpAddr>, ResolveFailure> {
        let all = self.lookup_all(host).await.map_err(ResolveFailure::Dns)?;
        filter(&self.policy, self.source_addr, host, all).map_err(ResolveFailure::Blocked)
    }
}

/// Keeps the permitted addresses of the right family, or says why none is.
fn filter(
    policy: &EgressPolicy,
    source_addr: Option<IpAddr>,
    host: &str,
    all: Vec<IpAddr>,
) -> Result<Vec<IpAddr>, BlockedDestination> {
    let permitted: Vec<IpAddr> = all.into_iter().filter(|ip| policy.permits(*ip)).collect();
    if permitted.is_empty() {
        return Err(BlockedDestination::policy(host));
    }
    let usable: Vec<IpAddr> = match source_addr {
        Some(src) => permitted
            .into_iter()
            .filter(|ip| ip.is_ipv4() == src.is_ipv4())
            .collect(),
        None => permitted,
    };
    if usable.is_empty() {
        return Err(BlockedDestination {
            host: host.to_owned(),
            reason: BlockReason::AddressFamily,
        });
    }
    Ok(usable)
}

/// Resolution failed, or left nothing permitted.
#[derive(Debug, thiserror::Error)]
pub enum ResolveFailure {
    /// The name did not resolve.
    #[error("cannot resolve destination: {0}")]
    Dns(#[source] ResolveError),
    /// Every address was refused.
    #[error("{0}")]
    Blocked(#[source] BlockedDestination),
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all = this.lookup_all(&host).await?;
            let permitted = filter(&this.policy, this.source_addr, &host, all)?;
            tracing::trace!(%host, addresses = %permitted.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), "resolved destination");
            // Port 0: the client substitutes the URL's port.
            let addrs: Addrs = Box::new(permitted.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_resolver::config::NameServerConfigGroup;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fixed answers of one name, one per lookup, the last one repeating.
    #[derive(Debug)]
    pub(crate) struct Answers {
        answers: Vec<Vec<IpAddr>>,
        asked: AtomicUsize,
    }

    impl Answers {
        pub(crate) fn new(answers: Vec<Vec<IpAddr>>) -> Self {
            Answers {
                answers,
                asked: AtomicUsize::new(0),
            }
        }

        pub(crate) fn next(&self) -> Vec<IpAddr> {
            let n = self.asked.fetch_add(1, Ordering::SeqCst);
            let last = self.answers.len().saturating_sub(1);
            self.answers.get(n.min(last)).cloned().unwrap_or_default()
        }
    }

    /// A resolver that answers only from /etc/hosts and the built-in
    /// `localhost` rule: it has no name server, so tests send no DNS traffic.
    pub(crate) fn offline(policy: EgressPolicy, source_addr: Option<IpAddr>) -> GuardedResolver {
        let config = ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::new());
        GuardedResolver::with_config(
            Arc::new(policy),
            source_addr,
            config,
            ResolverOpts::default(),
        )
    }

    fn loopback_allowed() -> EgressPolicy {
        EgressPolicy::new(vec!["127.0.0.0/8".parse().expect("net")], vec![])
    }

    #[tokio::test]
    async fn localhost_resolves_and_is_refused_by_default() {
        let r = offline(EgressPolicy::default(), None);
        let all = r.lookup_all("localhost").await.expect("hosts file");
        assert!(all.iter().all(|ip| ip.is_loopback()), "{all:?}");
        assert!(all.contains(&IpAddr::from([127, 0, 0, 1])), "{all:?}");
        match r.resolve_permitted("localhost").await {
            Err(ResolveFailure::Blocked(b)) => {
                assert_eq!(b.host, "localhost");
                assert_eq!(b.reason, BlockReason::Policy);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn allow_list_and_family_filter() {
        let r = offline(loopback_allowed(), None);
        let ok = r.resolve_permitted("localhost").await.expect("allowed");
        assert_eq!(
            ok,
            vec![IpAddr::from([127, 0, 0, 1])],
            "::1 is not in 127/8"
        );

        let v6_source = offline(loopback_allowed(), Some("::1".parse().expect("ip")));
        match v6_source.resolve_permitted("localhost").await {
            Err(ResolveFailure::Blocked(b)) => assert_eq!(b.reason, BlockReason::AddressFamily),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn resolve_trait_errors_are_recognised() {
        let r = offline(EgressPolicy::default(), None);
        let name: Name = "localhost".parse().expect("name");
        let err = match Resolve::resolve(&r, name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(is_blocked(&*err));
        let wrapped = std::io::Error::other(BlockedDestination::policy("x"));
        assert!(is_blocked(&wrapped));
        let other = std::io::Error::other("nope");
        assert!(!is_blocked(&other));
    }

    #[tokio::test]
    async fn through_a_proxy_every_address_must_be_permitted() {
        let r = offline(loopback_allowed(), Some("::1".parse().expect("ip")))
            .with_override(
                "mixed.test",
                vec![[127, 0, 0, 2].into(), [10, 0, 0, 1].into()],
            )
            .with_override("empty.test", vec![])
            .with_answers(
                "rebinds.test",
                vec![vec![[127, 0, 0, 2].into()], vec![[10, 0, 0, 1].into()]],
            );
        // The source family does not matter: the proxy connects, not us.
        assert_eq!(
            r.resolve_all_permitted("localhost").await.ok(),
            None,
            "::1 is outside 127/8"
        );
        for host in ["mixed.test", "empty.test"] {
            match r.resolve_all_permitted(host).await {
                Err(ResolveFailure::Blocked(b)) => assert_eq!(b.host, host),
                other => panic!("{host}: {other:?}"),
            }
        }
        let first = r
            .resolve_all_permitted("rebinds.test")
            .await
            .expect("first");
        assert_eq!(first, vec![IpAddr::from([127, 0, 0, 2])]);
        assert!(r.resolve_all_permitted("rebinds.test").await.is_err());
        assert!(
            r.resolve_all_permitted("rebinds.test").await.is_err(),
            "the last repeats"
        );
        let v4 = offline(loopback_allowed(), Some("::1".parse().expect("ip")))
            .with_override("v4.test", vec![[127, 0, 0, 2].into()]);
        assert_eq!(
            v4.resolve_all_permitted("v4.test")
                .await
                .expect("permitted"),
            vec![IpAddr::from([127, 0, 0, 2])]
        );
    }

    #[test]
    fn filter_keeps_only_permitted() {
        let policy = EgressPolicy::default();
        let addrs: Vec<IpAddr> = ["10.0.0.1", "8.8.8.8", "::1", "2606:4700::1"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let kept = filter(&policy, None, "h", addrs.clone()).expect("some");
        assert_eq!(kept.len(), 2);
        let v4_only =
            filter(&policy, Some("192.0.2.10".parse().expect("ip")), "h", addrs).expect("some");
        assert_eq!(v4_only, vec![IpAddr::from([8, 8, 8, 8])]);
        assert!(filter(&policy, None, "h", vec![]).is_err());
    }
}
