//! The outbound HTTP client and the per-attempt preflight check.
//!
//! Owns how every delivery connection is made: bound to
//! `POSTBACK_EGRESS_SOURCE_ADDR`, through `POSTBACK_EGRESS_PROXY` when set,
//! otherwise through the [`GuardedResolver`]; redirects never followed;
//! keep-alive pooling. Also owns [`Egress::preflight`], which covers what the
//! resolver cannot see: IP-literal hosts (the client connects to them without
//! resolving) and, with a proxy, the destination name (the client only
//! resolves the proxy's name; the proxy resolves the target).
//!
//! It must not build requests, set the user agent, sign, time out whole
//! attempts or classify responses: the delivery worker does that with the
//! [`reqwest::Client`] it gets here. It must not apply the policy to the
//! proxy itself: the proxy is operator configuration and is trusted.
//!
//! With a proxy, the check is resolve-then-forward, so a name whose DNS
//! answer changes between our lookup and the proxy's (DNS rebinding) can
//! still reach an internal address; a proxy that filters destinations itself
//! (e.g. Smokescreen) closes that gap.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

use super::policy::EgressPolicy;
use super::resolver::{BlockReason, BlockedDestination, GuardedResolver};

/// Connection identity and destination policy of outbound deliveries.
#[derive(Debug, Clone, Default)]
pub struct EgressSettings {
    /// Local address every outbound connection binds to
    /// (`POSTBACK_EGRESS_SOURCE_ADDR`).
    pub source_addr: Option<IpAddr>,
    /// HTTP(S) proxy every delivery goes through (`POSTBACK_EGRESS_PROXY`).
    pub proxy: Option<Url>,
    /// Which destination addresses may be reached.
    pub policy: Arc<EgressPolicy>,
}

/// The egress settings cannot be turned into a client. Messages name the
/// setting, for exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Proxy URL with a scheme the client does not support.
    #[error("POSTBACK_EGRESS_PROXY must be an http:// or https:// URL, got {0}")]
    ProxyScheme(String),
    /// The client rejected the proxy URL.
    #[error("POSTBACK_EGRESS_PROXY {url} is not usable: {source}")]
    Proxy {
        /// The proxy URL, password redacted.
        url: String,
        /// The client's objection.
        source: reqwest::Error,
    },
    /// The source address is not an address of this machine.
    #[error("POSTBACK_EGRESS_SOURCE_ADDR {addr} cannot be bound on this machine: {source}")]
    SourceAddr {
        /// The configured address.
        addr: IpAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Client construction failed (e.g. TLS roots).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why a preflight check refused to let an attempt start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The destination is refused: record `blocked_destination`.
    #[error("{0}")]
    Blocked(#[source] BlockedDestination),
    /// With a proxy configured, the destination name could not be resolved
    /// here, so it could not be checked; the attempt is not sent (fail
    /// closed) and counts as a connect error.
    #[error("cannot resolve {host} to check it against the egress policy: {message}")]
    Unresolvable {
        /// The host name.
        host: String,
        /// The resolver's message.
        message: String,
    },
}

impl From<BlockedDestination> for PreflightError {
    fn from(b: BlockedDestination) -> Self {
        PreflightError::Blocked(b)
    }
}

/// Builds the delivery client with a guarded resolver using the system DNS
/// configuration.
pub fn build_client(
    settings: &EgressSettings,
    connect_timeout: Duration,
) -> Result<reqwest::Client, EgressError> {
    let resolver = GuardedResolver::from_system(settings.policy.clone(), settings.source_addr);
    build_client_with_resolver(settings, connect_timeout, resolver)
}

/// Builds the delivery client with the given guarded resolver (which is not
/// used when a proxy is configured).
pub fn build_client_with_resolver(
    settings: &EgressSettings,
    connect_timeout: Duration,
    resolver: GuardedResolver,
) -> Result<reqwest::Client, EgressError> {
    if let Some(addr) = settings.source_addr {
        // Fails now rather than on every attempt; sends nothing.
        std::net::UdpSocket::bind((addr, 0))
            .map_err(|source| EgressError::SourceAddr { addr, source })?;
    }
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .local_address(settings.source_addr)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true);
    let builder = match &settings.proxy {
        Some(proxy_url) => {
            if !matches!(proxy_url.scheme(), "http" | "https") {
                return Err(EgressError::ProxyScheme(proxy_url.scheme().to_owned()));
            }
            let proxy = reqwest::Proxy::all(proxy_url.as_str())
                .map_err(|source| EgressError::Proxy {
                    url: redact(proxy_url),
                    source,
                })?
                .no_proxy(None);
            // The proxy's own name is resolved by the client's default
            // resolver: the proxy is trusted, the guard is for targets.
            builder.proxy(proxy)
        }
        // no_proxy(): ignore HTTP_PROXY & co., which would bypass the guard.
        None => builder.no_proxy().dns_resolver(Arc::new(resolver)),
    };
    builder.build().map_err(EgressError::Client)
}

fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Everything outbound: settings, the pooled client and the resolver used
/// for preflight checks. Build one per process and share it.
#[derive(Debug, Clone)]
pub struct Egress {
    settings: EgressSettings,
    client: reqwest::Client,
    resolver: GuardedResolver,
}

impl Egress {
    /// Builds the client and resolver from the system DNS configuration.
    pub fn new(settings: EgressSettings, connect_timeout: Duration) -> Result<Self, EgressError> {
        let resolver = GuardedResolver::from_system(settings.policy.clone(), settings.source_addr);
        Self::with_resolver(settings, connect_timeout, resolver)
    }

    /// Builds the client around the given resolver (tests, custom DNS).
    /// The resolver should enforce `settings.policy`.
    pub fn with_resolver(
        settings: EgressSettings,
        connect_timeout: Duration,
        resolver: GuardedResolver,
    ) -> Result<Self, EgressError> {
        let client = build_client_with_resolver(&settings, connect_timeout, resolver.clone())?;
        Ok(Self {
            settings,
            client,
            resolver,
        })
    }

    /// The pooled delivery client (cheap to clone).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The settings this was built from.
    pub fn settings(&self) -> &EgressSettings {
        &self.settings
    }

    /// The destination policy.
    pub fn policy(&self) -> &EgressPolicy {
        &self.settings.policy
    }

    /// Checks, right before an attempt, what the connect-time resolver
    /// cannot: an IP-literal host (against the current policy and the source
    /// address family) and, when a proxy is configured, every address the
    /// destination name resolves to (any refused address refuses the name).
    /// Without a proxy a name passes here: the resolver checks it when the
    /// connection is made.
    pub async fn preflight(&self, url: &Url) -> Result<(), PreflightError> {
        let host = match url.host() {
            Some(Host::Ipv4(v4)) => return self.check_literal(IpAddr::V4(v4), url),
            Some(Host::Ipv6(v6)) => return self.check_literal(IpAddr::V6(v6), url),
            Some(Host::Domain(name)) if !name.is_empty() => name,
            _ => return Err(BlockedDestination::policy("").into()),
        };
        if self.settings.proxy.is_none() {
            return Ok(());
        }
        let all =
            self.resolver
                .lookup_all(host)
                .await
                .map_err(|e| PreflightError::Unresolvable {
                    host: host.to_owned(),
                    message: e.to_string(),
                })?;
        if all.is_empty() || all.iter().any(|ip| !self.settings.policy.permits(*ip)) {
            return Err(BlockedDestination::policy(host).into());
        }
        Ok(())
    }

    fn check_literal(&self, ip: IpAddr, url: &Url) -> Result<(), PreflightError> {
        let host = url.host_str().unwrap_or_default();
        if !self.settings.policy.permits(ip) {
            return Err(BlockedDestination::policy(host).into());
        }
        // Without a proxy the socket is bound to the source address; a
        // literal of the other family would leave from another address.
        if let (None, Some(src)) = (&self.settings.proxy, self.settings.source_addr) {
            if src.is_ipv4() != ip.is_ipv4() {
                return Err(BlockedDestination {
                    host: host.to_owned(),
                    reason: BlockReason::AddressFamily,
                }
                .into());
            }
        }
        Ok(())
    }

    /// The addresses deliveries leave from, for `GET /v1/egress`
    /// (`sourceAddresses`): the configured source address, if any.
    pub fn describe(&self) -> Vec<String> {
        self.settings
            .source_addr
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}
