//! The CONNECT shim: how an `https` delivery goes through
//! `POSTBACK_EGRESS_PROXY` to the address the guard checked, not to one the
//! proxy looks up again.
//!
//! reqwest tunnels `https` through a proxy with `CONNECT name:port`, which
//! leaves the name to the proxy: its own lookup may answer an internal
//! address (DNS rebinding). A tunnel to an IP literal cannot be asked of
//! reqwest while it keeps the name for SNI and certificate checks, so the
//! client's `https` proxy is this shim instead, a listener on the loopback
//! address owned by [`super::client::Egress`]. For each `CONNECT name:port`
//! it resolves the name with the [`GuardedResolver`] (every address must be
//! permitted, as in the preflight check; a refusal is kept for
//! [`Shim::refusal`] so the attempt records `blocked_destination`), opens a
//! connection to the real proxy (from `POSTBACK_EGRESS_SOURCE_ADDR`, with
//! TLS for an `https://` proxy and its credentials from the URL's
//! userinfo), asks it for `CONNECT <checked-ip>:port`, relays its answer and
//! then splices bytes both ways. TLS stays end to end: the client shakes
//! hands through the tunnel with SNI and verification for the name.
//!
//! Owns the listener and its bounds: at most `max_tunnels` tunnels at once
//! (the delivery concurrency; when they are all taken, the tunnel idle the
//! longest in the client's pool is closed to make room), as many heads being
//! read, [`HEAD_TIMEOUT`] and [`MAX_HEAD`] for a request head.
//!
//! It must not become a proxy for anyone else: it listens on loopback only,
//! answers only `CONNECT` carrying the random credential of its own client
//! (other local processes do not know it), and never looks inside a tunnel.
//! It must not apply the policy to the proxy itself (operator configuration,
//! trusted) nor outlive its client: dropping the last [`Shim`] handle stops
//! the listener and closes every tunnel.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};
use url::{Host, Url};

use super::resolver::{BlockedDestination, GuardedResolver, ResolveFailure};

/// The largest request head taken from the client (and response head from
/// the proxy); a `CONNECT` head is a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its whole `CONNECT` head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A tunnel whose last bytes went to the client at least this long ago
/// holds a finished exchange: it idles in the client's pool and may be
/// closed when every tunnel is taken.
const IDLE_GRACE: Duration = Duration::from_millis(500);
const MAX_HEADERS: usize = 32;
/// User name of the shim's own credential (the password is random).
const USER: &str = "postback";
/// How many refusals are remembered, and for how long, for the attempts
/// that caused them to find.
const REFUSALS_KEPT: usize = 1024;
const REFUSAL_MEMORY: Duration = Duration::from_secs(120);

/// What the shim is started with.
pub(crate) struct ShimSettings {
    /// The real proxy (`http://` or `https://`, userinfo = credentials).
    pub proxy: Url,
    /// Resolves and checks destination names (the preflight's resolver).
    pub resolver: GuardedResolver,
    /// At most this many tunnels at once.
    pub max_tunnels: usize,
    /// Local address of connections to the proxy.
    pub source_addr: Option<IpAddr>,
    /// Bounds the connection to the proxy and its answer.
    pub connect_timeout: Duration,
    /// Roots trusted for an `https://` proxy besides the built-in ones
    /// (tests).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// A running shim; dropping it stops the listener and every tunnel.
pub(crate) struct Shim {
    addr: SocketAddr,
    secret: String,
    refusals: Arc<Refusals>,
    _stop: DropGuard,
}

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Shim {
    /// Binds the loopback listener (of the source address's family, which
    /// the client's sockets are bound to) and starts serving it on the
    /// current Tokio runtime.
    pub(crate) fn start(settings: ShimSettings) -> io::Result<Shim> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("the delivery client must be built inside a Tokio runtime")
        })?;
        let upstream = Upstream::new(&settings.proxy, &settings.extra_roots)?;
        let loopback: IpAddr = match settings.source_addr {
            Some(IpAddr::V6(_)) => Ipv6Addr::LOCALHOST.into(),
            _ => Ipv4Addr::LOCALHOST.into(),
        };
        let listener = std::net::TcpListener::bind((loopback, 0))?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let addr = listener.local_addr()?;
        let secret: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stop = CancellationToken::new();
        let refusals = Arc::new(Refusals::default());
        let max = settings.max_tunnels.clamp(1, Semaphore::MAX_PERMITS);
        let inner = Arc::new(Inner {
            upstream,
            resolver: settings.resolver,
            source_addr: settings.source_addr,
            connect_timeout: settings.connect_timeout,
            authorization: basic(USER, &secret).into_bytes(),
            refusals: refusals.clone(),
            tunnels: Arc::new(Semaphore::new(max)),
            heads: Arc::new(Semaphore::new(max)),
            live: Live::default(),
            stop: stop.clone(),
        });
        runtime.spawn(accept_loop(listener, inner));
        Ok(Shim {
            addr,
            secret,
            refusals,
            _stop: stop.drop_guard(),
        })
    }

    /// The client's proxy for `https` URLs: this shim, with its credential.
    pub(crate) fn proxy(&self) -> reqwest::Result<reqwest::Proxy> {
        Ok(reqwest::Proxy::https(format!("http://{}", self.addr))?
            .basic_auth(USER, &self.secret)
            .no_proxy(None))
    }

    /// Why the shim refused a tunnel to `authority` (`host:port` as the
    /// client writes it) at or after `since`, if it did.
    pub(crate) fn refusal(&self, authority: &str, since: Instant) -> Option<BlockedDestination> {
        self.refusals.since(authority, since)
    }

    /// Where the shim listens.
    #[cfg(test)]
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `Proxy-Authorization` value the shim accepts.
    #[cfg(test)]
    pub(crate) fn authorization(&self) -> String {
        basic(USER, &self.secret)
    }
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// Refusals by authority, for the attempt that asked to find out why its
/// tunnel failed (the client reports only "unsuccessful tunnel").
#[derive(Default)]
struct Refusals(Mutex<HashMap<String, (Instant, BlockedDestination)>>);

impl Refusals {
    fn record(&self, authority: &str, blocked: BlockedDestination) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= REFUSALS_KEPT {
            map.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_MEMORY);
            if map.len() >= REFUSALS_KEPT {
                map.clear();
            }
        }
        map.insert(authority.to_owned(), (now, blocked));
    }

    fn since(&self, authority: &str, since: Instant) -> Option<BlockedDestination> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(authority)
            .filter(|(at, _)| *at >= since)
            .map(|(_, b)| b.clone())
    }
}

/// The real proxy: where it is, how to speak to it.
struct Upstream {
    /// Host for the lookup (no brackets around an IPv6 address).
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// `Proxy-Authorization` from the URL's userinfo.
    authorization: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Upstream {
    fn new(proxy: &Url, extra_roots: &[CertificateDer<'static>]) -> io::Result<Upstream> {
        let invalid = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("POSTBACK_EGRESS_PROXY {what}"),
            )
        };
        let port = proxy
            .port_or_known_default()
            .ok_or_else(|| invalid("has no port"))?;
        let (host, server_name) = match proxy.host() {
            Some(Host::Domain(name)) => (
                name.to_owned(),
                ServerName::try_from(name.to_owned()).map_err(|_| invalid("has a bad host"))?,
            ),
            Some(Host::Ipv4(v4)) => (v4.to_string(), ServerName::from(IpAddr::V4(v4))),
            Some(Host::Ipv6(v6)) => (v6.to_string(), ServerName::from(IpAddr::V6(v6))),
            None => return Err(invalid("has no host")),
        };
        let tls = match proxy.scheme() {
            "https" => Some((tls_connector(extra_roots)?, server_name)),
            _ => None,
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        // As the client does for `http` destinations: credentials only
        // when the URL has a password.
        let authorization = proxy
            .password()
            .map(|password| basic(&decode(proxy.username()), &decode(password)));
        Ok(Upstream {
            host,
            port,
            tls,
            authorization,
        })
    }

    async fn connect(&self, source: Option<IpAddr>) -> io::Result<Box<dyn Io>> {
        let mut last = None;
        let mut connected = None;
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match connect_from(addr, source).await {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = connected.ok_or_else(|| {
            last.unwrap_or_else(|| io::Error::other(format!("{} has no address", self.host)))
        })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => Ok(Box::new(connector.connect(name.clone(), tcp).await?)),
        }
    }
}

/// TLS to an `https://` proxy, with the roots the delivery client trusts.
fn tls_connector(
    extra_roots: &[CertificateDer<'static>],
) -> io::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        roots.add(root.clone()).map_err(io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Connects to `addr`, from `source` when it is of the same family (as the
/// client does: a source of the other family cannot be bound for it).
async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source.filter(|s| s.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    socket.connect(addr).await
}

struct Inner {
    upstream: Upstream,
    resolver: GuardedResolver,
    source_addr: Option<IpAddr>,
    connect_timeout: Duration,
    /// The `Proxy-Authorization` value of this shim's own client.
    authorization: Vec<u8>,
    refusals: Arc<Refusals>,
    /// One permit per open tunnel.
    tunnels: Arc<Semaphore>,
    /// One permit per connection whose head is being read or checked.
    heads: Arc<Semaphore>,
    live: Live,
    stop: CancellationToken,
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let accepted = tokio::select! {
            () = inner.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Full: closed at once, the client sees a connect error.
                let Ok(head) = inner.heads.clone().try_acquire_owned() else {
                    continue;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let token = inner.stop.child_token();
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = inner.serve(stream, head, token.clone()) => {}
                    }
                });
            }
            Err(e) => {
                // E.g. out of descriptors: wait instead of spinning.
                tracing::warn!(error = %e, "egress CONNECT shim: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A refused request: the status and the text the client gets.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: u16,
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            message: message.into(),
        }
    }

    async fn send(self, client: &mut TcpStream) {
        let extra = match self.status {
            407 => "proxy-authenticate: Basic realm=\"postback\"\r\n",
            405 => "allow: CONNECT\r\n",
            _ => "",
        };
        let answer = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
             connection: close\r\n{extra}\r\n{}",
            self.status,
            self.reason,
            self.message.len(),
            self.message
        );
        let _ = client.write_all(answer.as_bytes()).await;
        let _ = client.shutdown().await;
    }
}

/// A checked `CONNECT` request.
#[derive(Debug, PartialEq, Eq)]
struct Connect {
    host: Host<String>,
    port: u16,
}

impl Connect {
    /// `host:port` as the client writes it, the key of refusals.
    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Inner {
    async fn serve(
        &self,
        mut client: TcpStream,
        head: OwnedSemaphorePermit,
        token: CancellationToken,
    ) {
        let read = tokio::time::timeout(
            HEAD_TIMEOUT,
            read_head(&mut client, |b| {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                httparse::Request::new(&mut headers).parse(b)
            }),
        )
        .await;
        let (request, early) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::Refused(refusal))) => return refusal.send(&mut client).await,
            Err(_) => {
                let msg = format!("no complete request head within {HEAD_TIMEOUT:?}");
                return Refusal::new(408, "Request Timeout", msg)
                    .send(&mut client)
                    .await;
            }
        };
        let connect = match parse_connect(&request, &self.authorization) {
            Ok(connect) => connect,
            Err(refusal) => return refusal.send(&mut client).await,
        };
        let ip = match self.check(&connect).await {
            Ok(ip) => ip,
            Err(refusal) => return refusal.send(&mut client).await,
        };
        let Some(tunnel) = self.permit().await else {
            let msg = "every tunnel to POSTBACK_EGRESS_PROXY is in use";
            return Refusal::new(503, "Service Unavailable", msg)
                .send(&mut client)
                .await;
        };
        drop(head);
        let target = SocketAddr::new(ip, connect.port);
        let opened = tokio::time::timeout(self.connect_timeout, self.open(target)).await;
        let (mut upstream, answer, late) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(refusal)) => return refusal.send(&mut client).await,
            Err(_) => {
                let msg = format!(
                    "POSTBACK_EGRESS_PROXY did not open a tunnel to {target} within {:?}",
                    self.connect_timeout
                );
                return Refusal::new(504, "Gateway Timeout", msg)
                    .send(&mut client)
                    .await;
            }
        };
        // The proxy's own answer, as it gave it (a 407 of the real proxy
        // reaches the client as what it is).
        let opened = (200..300).contains(&answer.status);
        if !opened {
            // The client reports only "unsuccessful tunnel": say who refused.
            tracing::warn!(
                destination = %connect.authority(),
                %target,
                status = answer.status,
                "POSTBACK_EGRESS_PROXY refused to open a tunnel"
            );
        }
        if client.write_all(&answer.head).await.is_err() || !opened {
            return;
        }
        if client.write_all(&late).await.is_err() || upstream.write_all(&early).await.is_err() {
            return;
        }
        let activity = Arc::new(Activity::new());
        let id = self.live.add(activity.clone(), token);
        let mut client = Tracked {
            inner: client,
            activity,
        };
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        self.live.remove(id);
        drop(tunnel);
    }

    /// The address the tunnel goes to: the first of the name's addresses
    /// when the policy permits every one, or the literal when permitted.
    async fn check(&self, connect: &Connect) -> Result<IpAddr, Refusal> {
        let checked = match &connect.host {
            Host::Domain(name) => self
                .resolver
                .resolve_all_permitted(name)
                .await
                .and_then(|all| {
                    // Never empty; refused rather than trusted if it were.
                    all.first().copied().ok_or_else(|| {
                        ResolveFailure::Blocked(BlockedDestination::policy(name.as_str()))
                    })
                }),
            Host::Ipv4(v4) => self.literal(IpAddr::V4(*v4), connect),
            Host::Ipv6(v6) => self.literal(IpAddr::V6(*v6), connect),
        };
        checked.map_err(|failure| match failure {
            ResolveFailure::Blocked(blocked) => {
                tracing::debug!(destination = %connect.authority(), "egress CONNECT shim: refused");
                self.refusals.record(&connect.authority(), blocked.clone());
                Refusal::new(403, "Forbidden", blocked.to_string())
            }
            ResolveFailure::Dns(e) => Refusal::new(
                502,
                "Bad Gateway",
                format!(
                    "cannot resolve {} to check it against the egress policy: {e}",
                    connect.host
                ),
            ),
        })
    }

    fn literal(&self, ip: IpAddr, connect: &Connect) -> Result<IpAddr, ResolveFailure> {
        if self.resolver.policy().permits(ip) {
            Ok(ip)
        } else {
            Err(ResolveFailure::Blocked(BlockedDestination::policy(
                connect.host.to_string(),
            )))
        }
    }

    /// Asks the real proxy for a tunnel to `target`; its answer head and
    /// any bytes that came after it.
    async fn open(&self, target: SocketAddr) -> Result<(Box<dyn Io>, Answer, Vec<u8>), Refusal> {
        let unreachable = |e: io::Error| {
            Refusal::new(
                502,
                "Bad Gateway",
                format!("cannot open a tunnel through POSTBACK_EGRESS_PROXY: {e}"),
            )
        };
        let mut upstream = self
            .upstream
            .connect(self.source_addr)
            .await
            .map_err(unreachable)?;
        let request = connect_request(target, self.upstream.authorization.as_deref());
        upstream
            .write_all(request.as_bytes())
            .await
            .map_err(unreachable)?;
        let mut status = 0;
        let (head, late) = read_head(&mut upstream, |b| {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response.parse(b);
            status = response.code.unwrap_or(0);
            parsed
        })
        .await
        .map_err(|e| match e {
            HeadError::Closed => unreachable(io::Error::other("it closed the connection")),
            HeadError::Refused(r) => Refusal::new(
                502,
                "Bad Gateway",
                format!(
                    "POSTBACK_EGRESS_PROXY answered CONNECT unreadably ({})",
                    r.message
                ),
            ),
        })?;
        Ok((upstream, Answer { status, head }, late))
    }

    /// A tunnel permit; when every one is taken, closes the tunnel that
    /// idles longest (one per try) and waits, at most the connect timeout.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let deadline = Instant::now() + self.connect_timeout;
        loop {
            if let Ok(permit) = self.tunnels.clone().try_acquire_owned() {
                return Some(permit);
            }
            self.live.close_idlest();
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if wait.is_zero() {
                return None;
            }
            if let Ok(Ok(permit)) =
                tokio::time::timeout(wait, self.tunnels.clone().acquire_owned()).await
            {
                return Some(permit);
            }
        }
    }
}

/// The `CONNECT` asked of the real proxy: to the checked address, never
/// the name (`SocketAddr` writes an IPv6 address in brackets, as the
/// authority-form needs).
fn connect_request(target: SocketAddr, authorization: Option<&str>) -> String {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = authorization {
        request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// The proxy's answer to our `CONNECT`.
struct Answer {
    status: u16,
    head: Vec<u8>,
}

#[derive(Debug)]
enum HeadError {
    /// The peer closed (or broke) the connection first.
    Closed,
    /// Too large or not HTTP.
    Refused(Refusal),
}

/// Reads one head (the bytes up to its blank line, at most [`MAX_HEAD`]),
/// judged complete by `parse`; returns it and the bytes read after it.
async fn read_head<R, P>(io: &mut R, mut parse: P) -> Result<(Vec<u8>, Vec<u8>), HeadError>
where
    R: AsyncRead + Unpin + ?Sized,
    P: FnMut(&[u8]) -> httparse::Result<usize>,
{
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = io
            .read(&mut buf[len..])
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        len += n;
        match parse(&buf[..len]) {
            Ok(httparse::Status::Complete(end)) => {
                let late = buf[end..len].to_vec();
                buf.truncate(end);
                return Ok((buf, late));
            }
            Ok(httparse::Status::Partial) if len < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                let msg =
                    format!("the head is larger than {MAX_HEAD} bytes or {MAX_HEADERS} headers");
                return Err(HeadError::Refused(Refusal::new(
                    431,
                    "Request Header Fields Too Large",
                    msg,
                )));
            }
            Err(e) => {
                return Err(HeadError::Refused(Refusal::new(
                    400,
                    "Bad Request",
                    format!("not an HTTP/1 request head: {e}"),
                )))
            }
        }
    }
}

/// Checks a complete request head: `CONNECT host:port` with this shim's
/// credential.
fn parse_connect(head: &[u8], authorization: &[u8]) -> Result<Connect, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let bad = |msg: String| Refusal::new(400, "Bad Request", msg);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("the request head is incomplete".into())),
        Err(e) => return Err(bad(format!("not an HTTP/1 request head: {e}"))),
    }
    if request.method != Some("CONNECT") {
        return Err(Refusal::new(
            405,
            "Method Not Allowed",
            "only CONNECT is served: this is Postback's tunnel to POSTBACK_EGRESS_PROXY, not a proxy",
        ));
    }
    let presented = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|h| h.value)
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(authorization)) {
        return Err(Refusal::new(
            407,
            "Proxy Authentication Required",
            "only the delivery client of this process may open tunnels here",
        ));
    }
    let target = request.path.unwrap_or_default();
    parse_authority(target).ok_or_else(|| {
        bad(format!(
            "CONNECT needs host:port (an IPv6 address in brackets), got {target:?}"
        ))
    })
}

/// `host:port` of a `CONNECT` (RFC 9110 §9.3.6 authority-form).
fn parse_authority(target: &str) -> Option<Connect> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() {
        return None;
    }
    // Brackets for IPv6; a bare one has a ':' no domain may contain.
    let host = Host::parse(host).ok()?;
    Some(Connect { host, port })
}

/// Which way bytes last went through a tunnel, and when (milliseconds
/// since `epoch`): a tunnel whose last bytes went to the client holds a
/// finished exchange, one whose last bytes came from it waits for an
/// answer. (One task moves both directions, so "last" is well defined.
/// A response that pauses longer than [`IDLE_GRACE`] mid-body looks idle
/// too: at the cap it may be closed; its attempt keeps what already
/// arrived, or fails and is retried like any broken connection.)
struct Activity {
    epoch: Instant,
    last_to_client: AtomicBool,
    last_at: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        // Registered right after the proxy's answer went to the client.
        Activity {
            epoch: Instant::now(),
            last_to_client: AtomicBool::new(true),
            last_at: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn moved(&self, to_client: bool) {
        self.last_at.store(self.now(), Ordering::Relaxed);
        self.last_to_client.store(to_client, Ordering::Relaxed);
    }

    /// How long it has idled, when its exchange is finished.
    fn idle_for(&self) -> Option<Duration> {
        let since = self
            .now()
            .saturating_sub(self.last_at.load(Ordering::Relaxed));
        self.last_to_client
            .load(Ordering::Relaxed)
            .then(|| Duration::from_millis(since))
    }
}

/// The open tunnels, for closing an idle one when all are taken.
#[derive(Default)]
struct Live {
    next: AtomicU64,
    tunnels: Mutex<HashMap<u64, (Arc<Activity>, CancellationToken)>>,
}

impl Live {
    fn add(&self, activity: Arc<Activity>, stop: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (activity, stop));
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the tunnel idle longest (at least [`IDLE_GRACE`]), if any.
    fn close_idlest(&self) {
        let mut tunnels = self.lock();
        let idlest = tunnels
            .iter()
            .filter_map(|(id, (activity, _))| Some((*id, activity.idle_for()?)))
            .filter(|(_, idle)| *idle >= IDLE_GRACE)
            .max_by_key(|(_, idle)| *idle)
            .map(|(id, _)| id);
        if let Some((_, stop)) = idlest.and_then(|id| tunnels.remove(&id)) {
            tracing::debug!("egress CONNECT shim: closing an idle tunnel to make room");
            stop.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<Activity>, CancellationToken)>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The client's side of a tunnel, noting when bytes pass each way.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved(false);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(true);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Real parts only: tinyproxy (installed by `.ci/run`) as the proxy, TLS
    //! receivers with a certificate made here by `openssl`, sockets on
    //! 127.0.0.0/8 bound by the tests; the resolver has no name server.
    use super::*;
    use crate::egress::client::tests::{bounded, read_request, Tinyproxy};
    use crate::egress::resolver::tests::offline;
    use crate::egress::PreflightError;
    use crate::egress::{is_blocked, BlockReason, Egress, EgressPolicy, EgressSettings};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::BufReader;

    /// A CA and a server certificate it signed for `localhost` and
    /// 127.0.0.1 (not for 127.0.0.2, nor any other name), made by openssl.
    struct Certs {
        ca: CertificateDer<'static>,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs (.ci/run installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn make_certs() -> Certs {
        let dir = std::env::temp_dir().join(format!("pb-shim-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=postback test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&dir, &csr);
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                "leaf.pem",
            ],
        );
        openssl(
            &dir,
            &["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"],
        );
        openssl(
            &dir,
            &[
                "x509", "-in", "leaf.pem", "-outform", "DER", "-out", "leaf.der",
            ],
        );
        openssl(
            &dir,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "leaf.key", "-outform", "DER", "-out",
                "key.der",
            ],
        );
        let read = |name: &str| std::fs::read(dir.join(name)).expect("made by openssl");
        let certs = Certs {
            ca: CertificateDer::from(read("ca.der")),
            cert: CertificateDer::from(read("leaf.der")),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read("key.der"))),
        };
        let _ = std::fs::remove_dir_all(&dir);
        certs
    }

    fn server_config(certs: &Certs) -> Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certs.cert.clone()], certs.key.clone_key())
        .expect("certificate");
        Arc::new(config)
    }

    /// An HTTPS receiver: counts TCP connections, records request lines,
    /// answers 200 `ok`.
    struct TlsReceiver {
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl TlsReceiver {
        fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let (count, record) = (connections.clone(), requests.clone());
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            tokio::spawn(async move {
                for _ in 0..16 {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, record) = (acceptor.clone(), record.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let mut tls = BufReader::new(tls);
                        if let Some((head, _)) = read_request(&mut tls).await {
                            record.lock().expect("lock").push(head.request_line.clone());
                            let _ = tls
                                .get_mut()
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                                .await;
                            let _ = tls.get_mut().shutdown().await;
                        }
                    });
                }
            });
            TlsReceiver {
                connections,
                requests,
            }
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().expect("lock").clone()
        }
    }

    /// Two listeners on one port: the first at `a`, the second at `b`.
    async fn same_port(a: [u8; 4], b: [u8; 4]) -> (TcpListener, TcpListener, u16) {
        loop {
            let first = TcpListener::bind((Ipv4Addr::from(a), 0))
                .await
                .expect("bind");
            let port = first.local_addr().expect("addr").port();
            if let Ok(second) = TcpListener::bind((Ipv4Addr::from(b), port)).await {
                return (first, second, port);
            }
        }
    }

    /// Permits 127.0.0.2 only: 127.0.0.1 and 127.0.0.3 stay internal.
    fn only_127_0_0_2() -> EgressPolicy {
        EgressPolicy::new(vec!["127.0.0.2/32".parse().expect("net")], vec![])
    }

    fn ip(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn through(
        proxy: &Url,
        resolver: GuardedResolver,
        roots: &[CertificateDer<'static>],
        max_tunnels: usize,
        connect_timeout: Duration,
    ) -> Egress {
        Egress::with_roots(
            EgressSettings {
                proxy: Some(proxy.clone()),
                policy: resolver.policy().clone(),
                max_tunnels,
                ..Default::default()
            },
            connect_timeout,
            resolver,
            roots,
        )
        .expect("client")
    }

    fn chain(err: &(dyn std::error::Error + 'static)) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }

    /// Sends `request` to the shim and reads its whole answer.
    async fn ask(shim: &Shim, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(shim.addr()).await.expect("shim listens");
        stream.write_all(request).await.expect("write");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Opens a tunnel by hand; the stream and the answer head.
    async fn open_tunnel(shim: &Shim, target: &str) -> (TcpStream, String) {
        let mut stream = TcpStream::connect(shim.addr()).await.expect("shim listens");
        let request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
            shim.authorization()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < MAX_HEAD {
            if stream.read(&mut byte).await.expect("read") == 0 {
                break;
            }
            head.push(byte[0]);
        }
        (stream, String::from_utf8_lossy(&head).into_owned())
    }

    /// (a) The proxy is asked for the checked address, the receiver gets
    /// the request, and TLS is verified for the name: a name the
    /// certificate does not cover fails at the same address.
    #[tokio::test]
    async fn https_through_a_real_proxy_goes_to_the_checked_address_verified_for_the_name() {
        bounded(async {
            let certs = make_certs();
            let config = server_config(&certs);
            // Our resolver answers 127.0.0.2 for `localhost`; tinyproxy's
            // own lookup would answer 127.0.0.1, where `internal` listens.
            let (public, internal, port) = same_port([127, 0, 0, 2], [127, 0, 0, 1]).await;
            let public = TlsReceiver::serve(public, config.clone());
            let internal = TlsReceiver::serve(internal, config);
            let proxy = Tinyproxy::start().await;
            let resolver = offline(only_127_0_0_2(), None)
                .with_override("localhost", vec![ip([127, 0, 0, 2])])
                .with_override("other.test", vec![ip([127, 0, 0, 2])]);
            let eg = through(
                &proxy.url,
                resolver,
                std::slice::from_ref(&certs.ca),
                4,
                Duration::from_secs(5),
            );
            let url = Url::parse(&format!("https://localhost:{port}/cb?x=1")).expect("url");
            let target = eg.preflight(&url).await.expect("checked and permitted");
            assert_eq!(target.url, url, "https keeps its URL: the name is for TLS");
            assert_eq!(target.host, None);
            let response = eg
                .client()
                .post(target.url)
                .body("x")
                .send()
                .await
                .expect("delivered through the proxy");
            assert_eq!(response.status(), 200);
            assert_eq!(response.text().await.expect("body"), "ok");
            assert_eq!(public.requests(), vec!["POST /cb?x=1 HTTP/1.1".to_owned()]);
            assert_eq!(
                internal.connections(),
                0,
                "the proxy resolved the name itself and reached the internal address"
            );
            let log = proxy.log();
            assert!(log.contains(&format!("CONNECT 127.0.0.2:{port}")), "{log}");
            assert!(!log.contains("CONNECT localhost"), "{log}");

            let other = Url::parse(&format!("https://other.test:{port}/cb")).expect("url");
            eg.preflight(&other).await.expect("checked and permitted");
            let since = Instant::now();
            let err = eg
                .client()
                .post(other.clone())
                .body("x")
                .send()
                .await
                .expect_err("the certificate is not for other.test");
            let text = chain(&err);
            assert!(text.to_lowercase().contains("certificate"), "{text}");
            assert_eq!(public.requests().len(), 1, "nothing sent unverified");
            assert!(eg.refused_tunnel(&other, since).is_none(), "not a refusal");
        })
        .await
    }

    /// (b) DNS rebinding: the preflight's answer is permitted, the next
    /// one (when the tunnel opens) is internal. The shim refuses the
    /// tunnel, the attempt finds the refusal, nothing reaches either side.
    #[tokio::test]
    async fn a_name_whose_later_answer_is_internal_is_refused_when_the_tunnel_opens() {
        bounded(async {
            let certs = make_certs();
            let config = server_config(&certs);
            let (public, private, port) = same_port([127, 0, 0, 2], [127, 0, 0, 3]).await;
            let public = TlsReceiver::serve(public, config.clone());
            let private = TlsReceiver::serve(private, config);
            let proxy = Tinyproxy::start().await;
            let resolver = offline(only_127_0_0_2(), None).with_answers(
                "localhost",
                vec![vec![ip([127, 0, 0, 2])], vec![ip([127, 0, 0, 3])]],
            );
            let eg = through(
                &proxy.url,
                resolver,
                std::slice::from_ref(&certs.ca),
                4,
                Duration::from_secs(5),
            );
            let url = Url::parse(&format!("https://localhost:{port}/cb")).expect("url");
            eg.preflight(&url)
                .await
                .expect("the first answer is permitted");
            let sent = Instant::now();
            let err = eg
                .client()
                .post(url.clone())
                .body("x")
                .send()
                .await
                .expect_err("the tunnel is refused");
            assert!(err.is_connect(), "{err:?}");
            let blocked = eg
                .refused_tunnel(&url, sent)
                .expect("the attempt finds why");
            assert_eq!(blocked.host, "localhost");
            assert_eq!(blocked.reason, BlockReason::Policy);
            assert!(
                blocked.to_string().starts_with("blocked destination"),
                "{blocked}"
            );
            // Only that destination, and only since the attempt began.
            let elsewhere = Url::parse(&format!("https://localhost:{}/cb", port ^ 1)).expect("url");
            assert!(eg.refused_tunnel(&elsewhere, sent).is_none());
            assert!(eg.refused_tunnel(&url, Instant::now()).is_none());
            assert_eq!(
                private.connections(),
                0,
                "the internal receiver was reached"
            );
            assert_eq!(public.connections(), 0);
            // tinyproxy logs each request line as "Request (fd): CONNECT …".
            assert!(!proxy.log().contains("): CONNECT "), "{}", proxy.log());
        })
        .await
    }

    /// (c) A first answer that is internal: refused by the preflight, and
    /// by the shim on its own (a request sent without a preflight, a raw
    /// CONNECT to the name or to the literal).
    #[tokio::test]
    async fn a_blocked_first_answer_is_refused_by_the_preflight_and_the_shim() {
        bounded(async {
            let certs = make_certs();
            let private = TcpListener::bind("127.0.0.3:0").await.expect("bind");
            let port = private.local_addr().expect("addr").port();
            let private = TlsReceiver::serve(private, server_config(&certs));
            let proxy = Tinyproxy::start().await;
            let resolver = offline(only_127_0_0_2(), None)
                .with_override("localhost", vec![ip([127, 0, 0, 2]), ip([127, 0, 0, 3])]);
            let eg = through(
                &proxy.url,
                resolver,
                std::slice::from_ref(&certs.ca),
                4,
                Duration::from_secs(5),
            );
            let url = Url::parse(&format!("https://localhost:{port}/cb")).expect("url");
            match eg.preflight(&url).await {
                Err(e @ PreflightError::Blocked(_)) => assert!(is_blocked(&e), "{e}"),
                other => panic!("one internal address refuses the name: {other:?}"),
            }
            let sent = Instant::now();
            let err = eg
                .client()
                .get(url.clone())
                .send()
                .await
                .expect_err("refused");
            assert!(err.is_connect(), "{err:?}");
            assert!(eg.refused_tunnel(&url, sent).is_some());
            let shim = eg.shim().expect("a proxy is set");
            for target in [format!("localhost:{port}"), format!("127.0.0.3:{port}")] {
                let (_, head) = open_tunnel(shim, &target).await;
                assert!(head.starts_with("HTTP/1.1 403 "), "{target}: {head}");
            }
            let answer = ask(
                shim,
                format!(
                    "CONNECT 127.0.0.3:{port} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
                    shim.authorization()
                )
                .as_bytes(),
            )
            .await;
            assert!(
                answer.contains("blocked destination: 127.0.0.3"),
                "{answer}"
            );
            assert_eq!(private.connections(), 0);
            // tinyproxy logs each request line as "Request (fd): CONNECT …".
            assert!(!proxy.log().contains("): CONNECT "), "{}", proxy.log());
        })
        .await
    }

    /// (d) Not a proxy for anyone else: only CONNECT, only with the
    /// credential of its own client, only a bounded, well-formed head.
    #[tokio::test]
    async fn the_shim_refuses_anything_but_its_own_clients_connect() {
        bounded(async {
            let resolver = offline(only_127_0_0_2(), None);
            // Never contacted: every request here is refused first.
            let proxy = Url::parse("http://127.0.0.1:9").expect("url");
            let eg = through(&proxy, resolver, &[], 4, Duration::from_secs(2));
            let shim = eg.shim().expect("a proxy is set");
            assert!(shim.addr().ip().is_loopback(), "{}", shim.addr());
            let auth = shim.authorization();
            let cases: Vec<(String, &str)> = vec![
                (format!("GET / HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {auth}\r\n\r\n"), "405"),
                (
                    format!("GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nProxy-Authorization: {auth}\r\n\r\n"),
                    "405",
                ),
                ("CONNECT 127.0.0.2:443 HTTP/1.1\r\nHost: 127.0.0.2:443\r\n\r\n".into(), "407"),
                (
                    "CONNECT 127.0.0.2:443 HTTP/1.1\r\nProxy-Authorization: Basic cG9zdGJhY2s6eA==\r\n\r\n".into(),
                    "407",
                ),
                (format!("CONNECT 127.0.0.2 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"), "400"),
                (format!("CONNECT ::1:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"), "400"),
                (format!("CONNECT 127.0.0.2:0 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"), "400"),
                ("\u{16}\u{3}\u{1}\u{0}\u{1}binary\r\n\r\n".into(), "400"),
                (
                    format!(
                        "CONNECT 127.0.0.2:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nX-Pad: {}\r\n\r\n",
                        "a".repeat(MAX_HEAD)
                    ),
                    "431",
                ),
                (
                    format!(
                        "CONNECT 127.0.0.2:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n{}\r\n",
                        "X-Many: 1\r\n".repeat(MAX_HEADERS + 1)
                    ),
                    "431",
                ),
            ];
            for (request, status) in cases {
                let answer = ask(shim, request.as_bytes()).await;
                assert!(
                    answer.starts_with(&format!("HTTP/1.1 {status} ")),
                    "{request:.80?} -> {answer}"
                );
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_head_that_never_completes_is_answered_408_after_the_header_timeout() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let eg = through(
                &Url::parse("http://127.0.0.1:9").expect("url"),
                offline(only_127_0_0_2(), None),
                &[],
                4,
                Duration::from_secs(2),
            );
            let shim = eg.shim().expect("a proxy is set");
            let started = Instant::now();
            let answer = ask(shim, b"CONNECT 127.0.0.2:443 HTTP/1.1\r\n").await;
            assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
            assert!(started.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(100));
        })
        .await
        .expect("bounded");
    }

    /// A plain TCP server on 127.0.0.2: answers `pong` to `ping`, and
    /// nothing to anything else (an exchange waiting for its answer).
    async fn pinger() -> u16 {
        let listener = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for _ in 0..8 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        if &buf[..n] == b"ping" && stream.write_all(b"pong").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    async fn ping(stream: &mut TcpStream) {
        stream.write_all(b"ping").await.expect("write");
        let mut pong = [0u8; 4];
        stream.read_exact(&mut pong).await.expect("pong");
        assert_eq!(&pong, b"pong");
    }

    /// At the cap, a new tunnel closes the one idle longest in the pool,
    /// never one waiting for its answer; with none idle it is refused
    /// once the connect timeout has passed.
    #[tokio::test]
    async fn at_the_cap_an_idle_tunnel_makes_room_and_a_busy_one_does_not() {
        bounded(async {
            let port = pinger().await;
            let target = format!("127.0.0.2:{port}");
            let proxy = Tinyproxy::start().await;
            let eg = through(
                &proxy.url,
                offline(only_127_0_0_2(), None),
                &[],
                1,
                Duration::from_secs(2),
            );
            let shim = eg.shim().expect("a proxy is set");
            let (mut first, head) = open_tunnel(shim, &target).await;
            assert!(
                head.starts_with("HTTP/1.0 200 ") || head.starts_with("HTTP/1.1 200 "),
                "{head}"
            );
            ping(&mut first).await;
            // `first` finished its exchange: it makes room once idle.
            let (mut second, head) = open_tunnel(shim, &target).await;
            assert!(
                head.starts_with("HTTP/1.0 200 ") || head.starts_with("HTTP/1.1 200 "),
                "{head}"
            );
            let mut rest = Vec::new();
            first
                .read_to_end(&mut rest)
                .await
                .expect("closed, not broken");
            assert!(rest.is_empty());
            ping(&mut second).await;
            // `second` waits for an answer: it is not closed for a third.
            second.write_all(b"wait").await.expect("write");
            tokio::time::sleep(IDLE_GRACE * 2).await;
            let started = Instant::now();
            let (_, head) = open_tunnel(shim, &target).await;
            assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
            assert!(
                started.elapsed() >= Duration::from_millis(1900),
                "waited the connect timeout"
            );
            ping(&mut second).await;
        })
        .await
    }

    #[tokio::test]
    async fn dropping_the_egress_stops_the_shim_and_closes_its_tunnels() {
        bounded(async {
            let port = pinger().await;
            let proxy = Tinyproxy::start().await;
            let eg = through(
                &proxy.url,
                offline(only_127_0_0_2(), None),
                &[],
                4,
                Duration::from_secs(2),
            );
            let shim = eg.shim().expect("a proxy is set");
            let addr = shim.addr();
            let (mut tunnel, head) = open_tunnel(shim, &format!("127.0.0.2:{port}")).await;
            assert!(
                head.starts_with("HTTP/1.0 200 ") || head.starts_with("HTTP/1.1 200 "),
                "{head}"
            );
            ping(&mut tunnel).await;
            drop(eg);
            let mut rest = Vec::new();
            let _ = tunnel.read_to_end(&mut rest).await;
            assert!(rest.is_empty());
            let deadline = Instant::now() + Duration::from_secs(5);
            while TcpStream::connect(addr).await.is_ok() {
                assert!(Instant::now() < deadline, "the shim still listens");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// The proxy's credentials come from its URL's userinfo (percent
    /// decoded); with a wrong one the proxy's refusal (tinyproxy: 401) is
    /// passed on and nothing is sent.
    #[tokio::test]
    async fn the_proxy_credentials_of_the_url_are_sent_with_the_connect() {
        bounded(async {
            let certs = make_certs();
            let public = TcpListener::bind("127.0.0.2:0").await.expect("bind");
            let port = public.local_addr().expect("addr").port();
            let public = TlsReceiver::serve(public, server_config(&certs));
            let proxy = Tinyproxy::start_with("BasicAuth pb p.ss").await;
            let resolver = || {
                offline(only_127_0_0_2(), None).with_override("localhost", vec![ip([127, 0, 0, 2])])
            };
            let url = Url::parse(&format!("https://localhost:{port}/cb")).expect("url");
            let mut with_auth = proxy.url.clone();
            with_auth.set_username("pb").expect("user");
            with_auth.set_password(Some("p%2Ess")).expect("password");
            let eg = through(
                &with_auth,
                resolver(),
                std::slice::from_ref(&certs.ca),
                4,
                Duration::from_secs(5),
            );
            let response = eg
                .client()
                .get(url.clone())
                .send()
                .await
                .expect("delivered");
            assert_eq!(response.status(), 200);
            assert_eq!(public.requests().len(), 1);

            with_auth.set_password(Some("wrong")).expect("password");
            let eg = through(
                &with_auth,
                resolver(),
                std::slice::from_ref(&certs.ca),
                4,
                Duration::from_secs(5),
            );
            let err = eg
                .client()
                .get(url)
                .send()
                .await
                .expect_err("refused by the proxy");
            assert!(err.is_connect(), "{err:?}");
            assert_eq!(public.connections(), 1);
            assert!(
                proxy.log().contains("): CONNECT 127.0.0.2:"),
                "{}",
                proxy.log()
            );
        })
        .await
    }

    /// An `https://` proxy (TLS in front of tinyproxy, certificate for
    /// 127.0.0.1 from the test CA): the shim speaks TLS to it, and refuses
    /// a proxy whose certificate it cannot verify.
    #[tokio::test]
    async fn an_https_proxy_is_reached_over_verified_tls() {
        bounded(async {
            let certs = make_certs();
            let config = server_config(&certs);
            let public = TcpListener::bind("127.0.0.2:0").await.expect("bind");
            let port = public.local_addr().expect("addr").port();
            let public = TlsReceiver::serve(public, config.clone());
            let proxy = Tinyproxy::start().await;
            let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let front_url =
                Url::parse(&format!("https://{}", front.local_addr().expect("addr"))).expect("url");
            let handshakes = Arc::new(AtomicUsize::new(0));
            let (count, acceptor) = (handshakes.clone(), tokio_rustls::TlsAcceptor::from(config));
            let behind = proxy.url.socket_addrs(|| None).expect("addr")[0];
            tokio::spawn(async move {
                for _ in 0..8 {
                    let Ok((stream, _)) = front.accept().await else {
                        return;
                    };
                    let (count, acceptor) = (count.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        count.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut plain) = TcpStream::connect(behind).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
            let resolver = || {
                offline(only_127_0_0_2(), None).with_override("localhost", vec![ip([127, 0, 0, 2])])
            };
            let url = Url::parse(&format!("https://localhost:{port}/cb")).expect("url");
            let eg = through(
                &front_url,
                resolver(),
                std::slice::from_ref(&certs.ca),
                4,
                Duration::from_secs(5),
            );
            let response = eg
                .client()
                .get(url.clone())
                .send()
                .await
                .expect("delivered");
            assert_eq!(response.status(), 200);
            assert_eq!(handshakes.load(Ordering::SeqCst), 1);
            assert_eq!(public.requests().len(), 1);

            let untrusted = through(&front_url, resolver(), &[], 4, Duration::from_secs(5));
            untrusted
                .client()
                .get(url)
                .send()
                .await
                .expect_err("the proxy is not verified");
            assert_eq!(handshakes.load(Ordering::SeqCst), 1);
            assert_eq!(public.requests().len(), 1);
        })
        .await
    }

    #[test]
    fn connect_targets_are_host_and_port() {
        let parsed = |s: &str| parse_authority(s).map(|c| c.authority());
        assert_eq!(parsed("LocalHost:443").as_deref(), Some("localhost:443"));
        assert_eq!(parsed("[::1]:8443").as_deref(), Some("[::1]:8443"));
        assert_eq!(parsed("192.0.2.1:1").as_deref(), Some("192.0.2.1:1"));
        for bad in [
            "::1:443",
            "localhost",
            "localhost:0",
            "localhost:65536",
            ":443",
            "a b:1",
            "[::1]",
        ] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
        let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
        let request = connect_request(v6, Some("Basic eA=="));
        assert!(
            request.starts_with("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nProxy-Authorization: Basic eA==\r\n"),
            "{request}"
        );
        assert!(connect_request(v6, None).ends_with("Host: [2001:db8::1]:443\r\n\r\n"));
    }

    #[test]
    fn refusals_are_found_for_their_destination_since_a_time() {
        let refusals = Refusals::default();
        let before = Instant::now();
        refusals.record("a:443", BlockedDestination::policy("a"));
        assert_eq!(
            refusals.since("a:443", before).map(|b| b.host),
            Some("a".into())
        );
        assert!(refusals.since("b:443", before).is_none());
        std::thread::sleep(Duration::from_millis(2));
        assert!(refusals.since("a:443", Instant::now()).is_none());
        for i in 0..REFUSALS_KEPT + 10 {
            refusals.record(&format!("h{i}:443"), BlockedDestination::policy("h"));
        }
        assert!(
            refusals.0.lock().expect("lock").len() <= REFUSALS_KEPT,
            "bounded"
        );
    }

    #[test]
    fn upstream_credentials_are_decoded_from_the_url() {
        let up = Upstream::new(
            &Url::parse("http://u%20x:p%2Ess@proxy.example:3128").expect("url"),
            &[],
        )
        .expect("upstream");
        assert_eq!(
            up.authorization.as_deref(),
            Some(basic("u x", "p.ss").as_str())
        );
        assert_eq!((up.host.as_str(), up.port), ("proxy.example", 3128));
        assert!(up.tls.is_none());
        let up = Upstream::new(&Url::parse("http://u@proxy.example").expect("url"), &[])
            .expect("upstream");
        assert_eq!(up.authorization, None, "no password, no credentials");
        let up = Upstream::new(&Url::parse("https://[::1]").expect("url"), &[]).expect("upstream");
        assert_eq!((up.host.as_str(), up.port), ("::1", 443));
        assert!(up.tls.is_some() && up.authorization.is_none());
    }
}
