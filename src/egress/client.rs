//! The outbound HTTP client and the per-attempt preflight check.
//!
//! Owns how every delivery connection is made: bound to
//! `POSTBACK_EGRESS_SOURCE_ADDR`, through `POSTBACK_EGRESS_PROXY` when set,
//! otherwise through the [`GuardedResolver`]; redirects never followed;
//! keep-alive pooling. Also owns [`Egress::preflight`], which covers what the
//! resolver cannot see: IP-literal hosts (the client connects to them without
//! resolving) and, with a proxy, the destination name (the client only
//! resolves the proxy's name; the proxy would resolve the target).
//!
//! It must not build requests, set the user agent, sign, time out whole
//! attempts or classify responses: the delivery worker does that with the
//! [`reqwest::Client`] it gets here. It must not apply the policy to the
//! proxy itself: the proxy is operator configuration and is trusted.
//!
//! With a proxy, the proxy must not resolve the name again (DNS rebinding:
//! its answer could differ from the one that was checked). For an `http`
//! destination the preflight therefore returns a [`Target`] whose URL has
//! the checked address in place of the name, with the name kept in the
//! `Host` header: the proxy is sent an absolute-form request to that IP
//! literal and connects only there. (A proxy that follows RFC 9112 §3.2.2
//! rewrites `Host` from the request target, so the receiver then sees the
//! address as `Host`.) For an `https` destination the client's proxy is the
//! CONNECT shim of `tunnel.rs`, which this module starts with the
//! client and stops with the last clone of its [`Egress`]: the shim checks
//! the name again when the tunnel is opened and asks the real proxy for
//! `CONNECT <checked-ip>:port`, while TLS (SNI, certificate checks) stays
//! with the name, end to end. [`Egress::refused_tunnel`] tells the attempt
//! that the shim refused its destination.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use url::{Host, Url};

use super::policy::EgressPolicy;
use super::resolver::{BlockReason, BlockedDestination, GuardedResolver, ResolveFailure};
use super::tunnel::{Shim, ShimSettings};

/// [`EgressSettings::max_tunnels`] by default: the default delivery
/// concurrency (`POSTBACK_CONCURRENCY`).
pub const DEFAULT_MAX_TUNNELS: usize = 256;

/// Connection identity and destination policy of outbound deliveries.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// Local address every outbound connection binds to
    /// (`POSTBACK_EGRESS_SOURCE_ADDR`).
    pub source_addr: Option<IpAddr>,
    /// HTTP(S) proxy every delivery goes through (`POSTBACK_EGRESS_PROXY`).
    pub proxy: Option<Url>,
    /// Which destination addresses may be reached.
    pub policy: Arc<EgressPolicy>,
    /// With a proxy, at most this many `https` tunnels are open at once
    /// (the delivery concurrency).
    pub max_tunnels: usize,
}

impl Default for EgressSettings {
    fn default() -> Self {
        EgressSettings {
            source_addr: None,
            proxy: None,
            policy: Arc::default(),
            max_tunnels: DEFAULT_MAX_TUNNELS,
        }
    }
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
    /// The CONNECT shim for `https` destinations could not be started.
    #[error("cannot start the tunnel to POSTBACK_EGRESS_PROXY for https destinations: {0}")]
    Tunnel(#[source] std::io::Error),
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

/// Builds the delivery client; with a proxy, also the CONNECT shim its
/// `https` requests go through (which lives as long as the returned handle).
fn build_client(
    settings: &EgressSettings,
    connect_timeout: Duration,
    resolver: GuardedResolver,
    extra_roots: &[CertificateDer<'static>],
) -> Result<(reqwest::Client, Option<Arc<Shim>>), EgressError> {
    if let Some(addr) = settings.source_addr {
        // Fails now rather than on every attempt; sends nothing.
        std::net::UdpSocket::bind((addr, 0))
            .map_err(|source| EgressError::SourceAddr { addr, source })?;
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .local_address(settings.source_addr)
        .connect_timeout(connect_timeout)
        // No cap on idle connections per host below the per-host limit:
        // each host already has at most POSTBACK_PER_HOST_CONCURRENCY
        // connections, and a lower cap closes the connections of every
        // burst above it only to open them again for the next (measured: 14 %
        // of a drain's CPU spent connecting with a cap of 64 and 256 in flight).
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true);
    for root in extra_roots {
        let cert = reqwest::Certificate::from_der(root).map_err(EgressError::Client)?;
        builder = builder.add_root_certificate(cert);
    }
    let (builder, shim) = match &settings.proxy {
        Some(proxy_url) => {
            if !matches!(proxy_url.scheme(), "http" | "https") {
                return Err(EgressError::ProxyScheme(proxy_url.scheme().to_owned()));
            }
            let proxy_error = |source| EgressError::Proxy {
                url: redact(proxy_url),
                source,
            };
            let http = reqwest::Proxy::http(proxy_url.as_str())
                .map_err(proxy_error)?
                .no_proxy(None);
            let shim = Shim::start(ShimSettings {
                proxy: proxy_url.clone(),
                resolver,
                max_tunnels: settings.max_tunnels,
                source_addr: settings.source_addr,
                connect_timeout,
                extra_roots: extra_roots.to_vec(),
            })
            .map_err(EgressError::Tunnel)?;
            let https = shim.proxy().map_err(proxy_error)?;
            // The proxy's own name is resolved by the client's default
            // resolver (for `http`) or the shim's system lookup (for
            // `https`): the proxy is trusted, the guard is for targets.
            (builder.proxy(http).proxy(https), Some(Arc::new(shim)))
        }
        // no_proxy(): ignore HTTP_PROXY & co., which would bypass the guard.
        None => (builder.no_proxy().dns_resolver(Arc::new(resolver)), None),
    };
    Ok((builder.build().map_err(EgressError::Client)?, shim))
}

fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Where one attempt is sent, as [`Egress::preflight`] decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL to request: the destination's own, or (proxy, `http`) the
    /// same URL with the checked address in place of the name.
    pub url: Url,
    /// The `Host` header to send when the URL's name was replaced: the
    /// destination's own authority (`name` or `name:port`).
    pub host: Option<String>,
}

impl Target {
    fn unchanged(url: &Url) -> Self {
        Target {
            url: url.clone(),
            host: None,
        }
    }
}

/// Everything outbound: settings, the pooled client and the resolver used
/// for preflight checks. Build one per process and share it.
#[derive(Debug, Clone)]
pub struct Egress {
    settings: EgressSettings,
    client: reqwest::Client,
    resolver: GuardedResolver,
    /// With a proxy: where `https` requests are tunnelled (stops when the
    /// last clone is dropped).
    shim: Option<Arc<Shim>>,
}

impl Egress {
    /// Builds the client and resolver from the system DNS configuration.
    pub fn new(settings: EgressSettings, connect_timeout: Duration) -> Result<Self, EgressError> {
        let resolver = GuardedResolver::from_system(settings.policy.clone(), settings.source_addr);
        Self::with_resolver(settings, connect_timeout, resolver)
    }

    /// Builds the client around the given resolver (tests, custom DNS).
    /// The resolver should enforce `settings.policy`.
    ///
    /// With a proxy, this must run inside a Tokio runtime: the CONNECT shim
    /// is started on it.
    pub fn with_resolver(
        settings: EgressSettings,
        connect_timeout: Duration,
        resolver: GuardedResolver,
    ) -> Result<Self, EgressError> {
        Self::build(settings, connect_timeout, resolver, &[])
    }

    /// Unit tests only: also trusts `roots` (certificates made by the test).
    #[cfg(test)]
    pub(crate) fn with_roots(
        settings: EgressSettings,
        connect_timeout: Duration,
        resolver: GuardedResolver,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, EgressError> {
        Self::build(settings, connect_timeout, resolver, roots)
    }

    fn build(
        settings: EgressSettings,
        connect_timeout: Duration,
        resolver: GuardedResolver,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, EgressError> {
        let (client, shim) = build_client(&settings, connect_timeout, resolver.clone(), roots)?;
        Ok(Self {
            settings,
            client,
            resolver,
            shim,
        })
    }

    /// Unit tests only: the CONNECT shim, when there is a proxy.
    #[cfg(test)]
    pub(crate) fn shim(&self) -> Option<&Shim> {
        self.shim.as_deref()
    }

    /// Why the proxy tunnel of an `https` request to `url` was refused at
    /// or after `since`, when the CONNECT shim refused it by the policy (the
    /// client only reports an unsuccessful tunnel). The attempt then records
    /// `blocked_destination`.
    pub fn refused_tunnel(&self, url: &Url, since: Instant) -> Option<BlockedDestination> {
        let shim = self.shim.as_ref()?;
        if url.scheme() != "https" {
            return None;
        }
        let authority = format!("{}:{}", url.host()?, url.port_or_known_default()?);
        shim.refusal(&authority, since)
    }

    /// The address an attempt to `url` connects to (the first permitted one
    /// its name resolves to, from the resolver's cache when fresh; the IP of
    /// a literal), for per-address fairness. `None` when it does not resolve
    /// to a permitted address: the attempt then fails on its own.
    pub async fn address_of(&self, url: &Url) -> Option<IpAddr> {
        match url.host()? {
            Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            Host::Domain(name) => self
                .resolver
                .resolve_permitted(name)
                .await
                .ok()?
                .first()
                .copied(),
        }
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
    ///
    /// With a proxy and an `http` destination, the [`Target`] names the
    /// first checked address instead of the name, so the proxy connects
    /// to what was checked and never resolves the name again. An `https`
    /// destination keeps its URL: the CONNECT shim checks the name again
    /// when it opens a tunnel and tunnels to the address it checked.
    pub async fn preflight(&self, url: &Url) -> Result<Target, PreflightError> {
        let host = match url.host() {
            Some(Host::Ipv4(v4)) => {
                return self
                    .check_literal(IpAddr::V4(v4), url)
                    .map(|()| Target::unchanged(url))
            }
            Some(Host::Ipv6(v6)) => {
                return self
                    .check_literal(IpAddr::V6(v6), url)
                    .map(|()| Target::unchanged(url))
            }
            Some(Host::Domain(name)) if !name.is_empty() => name,
            _ => return Err(BlockedDestination::policy(url.as_str()).into()),
        };
        if self.settings.proxy.is_none() {
            return Ok(Target::unchanged(url));
        }
        let all = self
            .resolver
            .resolve_all_permitted(host)
            .await
            .map_err(|e| match e {
                ResolveFailure::Blocked(blocked) => PreflightError::Blocked(blocked),
                ResolveFailure::Dns(e) => PreflightError::Unresolvable {
                    host: host.to_owned(),
                    message: e.to_string(),
                },
            })?;
        match (url.scheme(), all.first()) {
            ("http", Some(ip)) => {
                let authority = match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                let mut pinned = url.clone();
                pinned
                    .set_ip_host(*ip)
                    .map_err(|()| BlockedDestination::policy(host))?;
                Ok(Target {
                    url: pinned,
                    host: Some(authority),
                })
            }
            _ => Ok(Target::unchanged(url)),
        }
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

#[cfg(test)]
pub(crate) mod tests {
    //! Every socket here is a loopback listener bound by the test itself;
    //! the resolver has no name server, so no packet leaves 127.0.0.0/8.
    use super::*;
    use crate::egress::resolver::is_blocked;
    use crate::egress::resolver::tests::offline;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    const MAX_CONNECTIONS: usize = 16;

    pub(crate) async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("test exceeded 20s")
    }

    fn allow_loopback() -> Arc<EgressPolicy> {
        Arc::new(EgressPolicy::new(
            vec!["127.0.0.0/8".parse().expect("net")],
            vec![],
        ))
    }

    fn egress(settings: EgressSettings) -> Egress {
        let resolver = offline((*settings.policy).clone(), settings.source_addr);
        Egress::with_resolver(settings, Duration::from_secs(2), resolver).expect("client")
    }

    /// A parsed request head.
    pub(crate) struct Head {
        pub(crate) request_line: String,
        headers: Vec<(String, String)>,
    }

    impl Head {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Reads one request head and its Content-Length body; None at EOF.
    pub(crate) async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
        r: &mut R,
    ) -> Option<(Head, Vec<u8>)> {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).await.ok()? == 0 {
            return None;
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':')?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
            if headers.len() > 100 {
                return None;
            }
        }
        let head = Head {
            request_line: request_line.trim_end().to_owned(),
            headers,
        };
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len.min(1 << 20)];
        r.read_exact(&mut body).await.ok()?;
        Some((head, body))
    }

    /// A callback receiver on 127.0.0.1: records peers and request lines,
    /// answers 302 on /redirect and 200 otherwise.
    struct Receiver {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<(SocketAddr, String)>>>,
    }

    impl Receiver {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let (c, reqs) = (connections.clone(), requests.clone());
            tokio::spawn(async move {
                for _ in 0..MAX_CONNECTIONS {
                    let Ok((stream, peer)) = listener.accept().await else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let reqs = reqs.clone();
                    tokio::spawn(async move {
                        let mut stream = BufReader::new(stream);
                        while let Some((head, _body)) = read_request(&mut stream).await {
                            reqs.lock()
                                .expect("lock")
                                .push((peer, head.request_line.clone()));
                            let response: &[u8] = if head.request_line.contains(" /redirect") {
                                b"HTTP/1.1 302 Found\r\nlocation: /landed\r\ncontent-length: 0\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            };
                            if stream.get_mut().write_all(response).await.is_err() {
                                return;
                            }
                            if head.header("connection") == Some("close") {
                                return;
                            }
                        }
                    });
                }
            });
            Self {
                addr,
                connections,
                requests,
            }
        }

        fn port(&self) -> u16 {
            self.addr.port()
        }

        fn requests(&self) -> Vec<(SocketAddr, String)> {
            self.requests.lock().expect("lock").clone()
        }
    }

    /// A forward HTTP proxy on 127.0.0.1 that only forwards to loopback
    /// targets: reads an absolute-form request, sends it on in origin form
    /// with `connection: close`, relays the response, counts requests.
    struct ForwardProxy {
        url: Url,
        forwarded: Arc<AtomicUsize>,
    }

    impl ForwardProxy {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let forwarded = Arc::new(AtomicUsize::new(0));
            let count = forwarded.clone();
            tokio::spawn(async move {
                for _ in 0..MAX_CONNECTIONS {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let count = count.clone();
                    tokio::spawn(async move {
                        let mut client = BufReader::new(stream);
                        let Some((head, body)) = read_request(&mut client).await else {
                            return;
                        };
                        let mut parts = head.request_line.split(' ');
                        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
                            return;
                        };
                        let Ok(target) = Url::parse(target) else {
                            return;
                        };
                        let upstream_ip: IpAddr = match target.host() {
                            Some(Host::Domain("localhost")) => [127, 0, 0, 1].into(),
                            Some(Host::Ipv4(v4)) if v4.is_loopback() => v4.into(),
                            _ => {
                                let _ = client
                                    .get_mut()
                                    .write_all(
                                        b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
                                    )
                                    .await;
                                return;
                            }
                        };
                        let port = target.port_or_known_default().unwrap_or(80);
                        let Ok(mut upstream) = TcpStream::connect((upstream_ip, port)).await else {
                            return;
                        };
                        count.fetch_add(1, Ordering::SeqCst);
                        let mut out = format!(
                            "{method} {} HTTP/1.1\r\n",
                            &target[url::Position::BeforePath..]
                        );
                        for (n, v) in &head.headers {
                            if !n.eq_ignore_ascii_case("connection")
                                && !n.eq_ignore_ascii_case("proxy-connection")
                            {
                                out.push_str(&format!("{n}: {v}\r\n"));
                            }
                        }
                        out.push_str("connection: close\r\n\r\n");
                        let mut bytes = out.into_bytes();
                        bytes.extend_from_slice(&body);
                        if upstream.write_all(&bytes).await.is_err() {
                            return;
                        }
                        let mut response = Vec::new();
                        let _ = upstream.read_to_end(&mut response).await;
                        let _ = client.get_mut().write_all(&response).await;
                    });
                }
            });
            Self {
                url: Url::parse(&format!("http://{addr}")).expect("proxy url"),
                forwarded,
            }
        }
    }

    #[tokio::test]
    async fn name_resolving_to_loopback_is_blocked_before_connecting() {
        bounded(async {
            let rx = Receiver::start().await;
            let eg = egress(EgressSettings::default());
            let url = Url::parse(&format!("http://localhost:{}/", rx.port())).expect("url");
            eg.preflight(&url)
                .await
                .expect("names are checked at connect time");
            let err = eg
                .client()
                .get(url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect_err("must be refused");
            assert!(is_blocked(&err), "not recognised as blocked: {err:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(rx.connections.load(Ordering::SeqCst), 0);
        })
        .await
    }

    #[tokio::test]
    async fn allowed_loopback_is_delivered() {
        bounded(async {
            let rx = Receiver::start().await;
            let eg = egress(EgressSettings {
                policy: allow_loopback(),
                ..Default::default()
            });
            let url = Url::parse(&format!("http://localhost:{}/hook", rx.port())).expect("url");
            eg.preflight(&url).await.expect("preflight");
            let resp = eg
                .client()
                .post(url)
                .body("{}")
                .send()
                .await
                .expect("delivered");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.text().await.expect("body"), "ok");
            let reqs = rx.requests();
            assert_eq!(reqs.len(), 1);
            assert_eq!(reqs[0].1, "POST /hook HTTP/1.1");
        })
        .await
    }

    #[tokio::test]
    async fn connections_leave_from_the_source_address() {
        bounded(async {
            let rx = Receiver::start().await;
            let source: IpAddr = [127, 0, 0, 7].into();
            let eg = egress(EgressSettings {
                source_addr: Some(source),
                policy: allow_loopback(),
                ..Default::default()
            });
            assert_eq!(eg.describe(), vec!["127.0.0.7".to_owned()]);
            let url = format!("http://localhost:{}/", rx.port());
            let resp = eg.client().get(&url).send().await.expect("delivered");
            assert_eq!(resp.status(), 200);
            let reqs = rx.requests();
            assert_eq!(reqs.len(), 1);
            assert_eq!(reqs[0].0.ip(), source);
        })
        .await
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        bounded(async {
            let rx = Receiver::start().await;
            let eg = egress(EgressSettings {
                policy: allow_loopback(),
                ..Default::default()
            });
            let url = format!("http://127.0.0.1:{}/redirect", rx.port());
            let resp = eg.client().get(&url).send().await.expect("response");
            assert_eq!(resp.status(), 302);
            assert_eq!(
                resp.headers().get("location").map(|v| v.as_bytes()),
                Some(&b"/landed"[..])
            );
            let reqs = rx.requests();
            assert_eq!(reqs.len(), 1, "{reqs:?}");
        })
        .await
    }

    #[tokio::test]
    async fn delivery_through_a_proxy() {
        bounded(async {
            let rx = Receiver::start().await;
            let proxy = ForwardProxy::start().await;
            let url =
                Url::parse(&format!("http://localhost:{}/via-proxy", rx.port())).expect("url");
            // `localhost` is 127.0.0.1 and ::1: with a proxy, every address
            // must be permitted, so allowing 127/8 alone is not enough.
            let v4_only = egress(EgressSettings {
                proxy: Some(proxy.url.clone()),
                policy: allow_loopback(),
                ..Default::default()
            });
            assert!(matches!(
                v4_only.preflight(&url).await,
                Err(PreflightError::Blocked(_))
            ));
            let eg = egress(EgressSettings {
                proxy: Some(proxy.url.clone()),
                policy: Arc::new(EgressPolicy::new(
                    vec![
                        "127.0.0.0/8".parse().expect("net"),
                        "::1/128".parse().expect("net"),
                    ],
                    vec![],
                )),
                ..Default::default()
            });
            eg.preflight(&url).await.expect("allowed target");
            let resp = eg
                .client()
                .post(url)
                .body("x")
                .send()
                .await
                .expect("delivered");
            assert_eq!(resp.status(), 200);
            assert_eq!(proxy.forwarded.load(Ordering::SeqCst), 1);
            let reqs = rx.requests();
            assert_eq!(reqs.len(), 1);
            assert_eq!(reqs[0].1, "POST /via-proxy HTTP/1.1");
        })
        .await
    }

    /// A real forward proxy (Debian's `tinyproxy`, installed by `.ci/run`)
    /// on 127.0.0.1, with a config file written here; stopped on drop.
    pub(crate) struct Tinyproxy {
        child: std::process::Child,
        pub(crate) url: Url,
        dir: std::path::PathBuf,
    }

    impl Tinyproxy {
        fn binary() -> Option<std::path::PathBuf> {
            ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.exists())
        }

        pub(crate) async fn start() -> Tinyproxy {
            Self::start_with("").await
        }

        /// What it logged so far (each request line is there at `Info`).
        pub(crate) fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default()
        }

        /// With `extra` appended to the config file (e.g. `BasicAuth u p`).
        pub(crate) async fn start_with(extra: &str) -> Tinyproxy {
            let bin = Self::binary().expect("tinyproxy is installed (.ci/run installs it)");
            let dir = std::env::temp_dir().join(format!("pb-tinyproxy-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).expect("dir");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let conf = dir.join("tinyproxy.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 10\nAllow 127.0.0.1\nMaxClients 16\n\
                     LogLevel Info\nLogFile \"{}\"\nDisableViaHeader Yes\n{extra}\n",
                    dir.join("tinyproxy.log").display()
                ),
            )
            .expect("config");
            if nix::unistd::geteuid().is_root() {
                // tinyproxy drops to the configured user; let it write its log.
                let _ = std::process::Command::new("chmod")
                    .args(["-R", "a+rwx"])
                    .arg(&dir)
                    .status();
            }
            let child = std::process::Command::new(bin)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start tinyproxy");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "tinyproxy did not listen"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Tinyproxy {
                child,
                url: Url::parse(&format!("http://127.0.0.1:{port}")).expect("url"),
                dir,
            }
        }
    }

    impl Drop for Tinyproxy {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// DNS rebinding through the proxy: the name is checked with our
    /// resolver (a permitted address) while the proxy's own lookup of the
    /// same name answers an internal one. The request must reach the
    /// address that was checked, never the one the proxy would resolve.
    #[tokio::test]
    async fn through_a_real_proxy_an_http_delivery_goes_to_the_checked_address() {
        bounded(async {
            // "public": 127.0.0.2:P, what our resolver answers (permitted).
            // "internal": 127.0.0.1:P, what the proxy's resolver answers
            // for `localhost` (/etc/hosts), refused by the policy.
            let (public, internal) = loop {
                let public = TcpListener::bind("127.0.0.2:0").await.expect("bind");
                let port = public.local_addr().expect("addr").port();
                if let Ok(internal) = TcpListener::bind(("127.0.0.1", port)).await {
                    break (public, internal);
                }
            };
            let port = public.local_addr().expect("addr").port();
            let serve = |listener: TcpListener| {
                let seen = Arc::new(Mutex::new(Vec::<Head>::new()));
                let record = seen.clone();
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let record = record.clone();
                        tokio::spawn(async move {
                            let mut stream = BufReader::new(stream);
                            if let Some((head, _)) = read_request(&mut stream).await {
                                record.lock().expect("lock").push(head);
                                let _ = stream
                                    .get_mut()
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                                    .await;
                            }
                        });
                    }
                });
                seen
            };
            let public_seen = serve(public);
            let internal_seen = serve(internal);
            let proxy = Tinyproxy::start().await;
            let policy = Arc::new(EgressPolicy::new(
                vec!["127.0.0.2/32".parse().expect("net")],
                vec![],
            ));
            let resolver = offline((*policy).clone(), None)
                .with_override("localhost", vec![IpAddr::from([127, 0, 0, 2])]);
            let eg = Egress::with_resolver(
                EgressSettings {
                    proxy: Some(proxy.url.clone()),
                    policy,
                    ..Default::default()
                },
                Duration::from_secs(5),
                resolver,
            )
            .expect("client");
            let url = Url::parse(&format!("http://localhost:{port}/cb?x=1")).expect("url");
            let target = eg.preflight(&url).await.expect("checked and permitted");
            assert_eq!(target.url.as_str(), format!("http://127.0.0.2:{port}/cb?x=1"));
            assert_eq!(target.host.as_deref(), Some(format!("localhost:{port}").as_str()));
            // What the delivery worker does with the target.
            let mut request = eg.client().post(target.url.clone()).body("x");
            if let Some(host) = &target.host {
                request = request.header(reqwest::header::HOST, host);
            }
            let response = request.send().await.expect("through the proxy");
            assert_eq!(response.status(), 200);
            assert!(
                internal_seen.lock().expect("lock").is_empty(),
                "the proxy resolved the name again and reached the internal address"
            );
            let seen = public_seen.lock().expect("lock");
            assert_eq!(seen.len(), 1, "the checked address got the delivery");
            assert!(seen[0].request_line.starts_with("POST /cb?x=1 "), "{}", seen[0].request_line);
        })
        .await
    }

    #[tokio::test]
    async fn with_a_proxy_the_http_target_is_the_checked_address_and_host_keeps_the_name() {
        bounded(async {
            let proxy = ForwardProxy::start().await;
            let policy = Arc::new(EgressPolicy::new(
                vec!["127.0.0.0/8".parse().expect("net")],
                vec![],
            ));
            let resolver = offline((*policy).clone(), None)
                .with_override("callbacks.example", vec![IpAddr::from([127, 0, 0, 9])]);
            let eg = Egress::with_resolver(
                EgressSettings {
                    proxy: Some(proxy.url.clone()),
                    policy,
                    ..Default::default()
                },
                Duration::from_secs(2),
                resolver,
            )
            .expect("client");
            let plain = Url::parse("http://callbacks.example/cb").expect("url");
            let target = eg.preflight(&plain).await.expect("permitted");
            assert_eq!(target.url.as_str(), "http://127.0.0.9/cb");
            assert_eq!(target.host.as_deref(), Some("callbacks.example"));
            // https keeps its URL: the CONNECT shim pins the tunnel (tunnel.rs).
            let tls = Url::parse("https://callbacks.example:8443/cb").expect("url");
            let target = eg.preflight(&tls).await.expect("permitted");
            assert_eq!(target.url, tls);
            assert_eq!(target.host, None);
            // Without a proxy nothing is rewritten: the guarded resolver
            // pins the connection itself.
            let direct = egress(EgressSettings {
                policy: allow_loopback(),
                ..Default::default()
            });
            let target = direct
                .preflight(&plain)
                .await
                .expect("passes to the resolver");
            assert_eq!(target.url, plain);
        })
        .await
    }

    #[tokio::test]
    async fn proxy_preflight_refuses_internal_targets() {
        bounded(async {
            let rx = Receiver::start().await;
            let proxy = ForwardProxy::start().await;
            // The proxy itself is on loopback: trusted, so the client is built.
            let eg = egress(EgressSettings {
                proxy: Some(proxy.url.clone()),
                ..Default::default()
            });
            for raw in [
                format!("http://localhost:{}/", rx.port()),
                format!("http://127.0.0.1:{}/", rx.port()),
                format!("http://[::ffff:127.0.0.1]:{}/", rx.port()),
            ] {
                let url = Url::parse(&raw).expect("url");
                match eg.preflight(&url).await {
                    Err(e @ PreflightError::Blocked(_)) => assert!(is_blocked(&e), "{e}"),
                    other => panic!("{raw}: {other:?}"),
                }
            }
            let unknown = Url::parse("http://no-such-host.invalid/").expect("url");
            assert!(matches!(
                eg.preflight(&unknown).await,
                Err(PreflightError::Unresolvable { .. })
            ));
            assert_eq!(proxy.forwarded.load(Ordering::SeqCst), 0);
            assert_eq!(rx.connections.load(Ordering::SeqCst), 0);
        })
        .await
    }

    #[tokio::test]
    async fn literal_preflight_uses_current_policy_and_source_family() {
        bounded(async {
            let eg = egress(EgressSettings::default());
            for raw in [
                "http://127.0.0.1:1/",
                "http://[::1]/",
                "http://169.254.169.254/",
            ] {
                let url = Url::parse(raw).expect("url");
                assert!(
                    matches!(eg.preflight(&url).await, Err(PreflightError::Blocked(_))),
                    "{raw}"
                );
            }
            // Checked without connecting anywhere.
            let public = Url::parse("http://192.88.98.1/").expect("url");
            eg.preflight(&public).await.expect("public literal");

            let pinned = egress(EgressSettings {
                source_addr: Some([127, 0, 0, 1].into()),
                policy: Arc::new(EgressPolicy::new(
                    vec![
                        "127.0.0.0/8".parse().expect("net"),
                        "::1/128".parse().expect("net"),
                    ],
                    vec![],
                )),
                ..Default::default()
            });
            let v6 = Url::parse("http://[::1]:1/").expect("url");
            match pinned.preflight(&v6).await {
                Err(PreflightError::Blocked(b)) => assert_eq!(b.reason, BlockReason::AddressFamily),
                other => panic!("{other:?}"),
            }
        })
        .await
    }

    #[tokio::test]
    async fn settings_errors_name_the_setting() {
        assert!(
            Egress::new(EgressSettings::default(), Duration::from_secs(1))
                .expect("egress")
                .describe()
                .is_empty()
        );

        let err = Egress::new(
            EgressSettings {
                source_addr: Some("192.0.2.44".parse().expect("ip")),
                ..Default::default()
            },
            Duration::from_secs(1),
        )
        .expect_err("not a local address");
        assert!(
            err.to_string().contains("POSTBACK_EGRESS_SOURCE_ADDR"),
            "{err}"
        );

        let err = Egress::new(
            EgressSettings {
                proxy: Some(Url::parse("socks5://127.0.0.1:1080").expect("url")),
                ..Default::default()
            },
            Duration::from_secs(1),
        )
        .expect_err("socks unsupported");
        assert!(err.to_string().contains("POSTBACK_EGRESS_PROXY"), "{err}");
        assert_eq!(
            redact(&Url::parse("http://u:secret@proxy:3128").expect("url")),
            "http://u:***@proxy:3128/"
        );
    }
}
