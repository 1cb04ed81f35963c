//! Issue 6 through the whole product: the source address a receiver sees,
//! names that resolve to refused addresses blocked at connect time, the
//! allow list, and deliveries through a forward proxy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Receiver, TestApp};

async fn enqueue(app: &TestApp, url: &str) -> String {
    let response = app
        .post("/v1/deliveries", json!({"url": url, "json": {"x": 1}}))
        .await;
    assert_eq!(response.status(), 202, "{url}");
    response.json::<Value>().await.unwrap()["deliveryId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_at_connect_time_and_never_touches_the_receiver() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(|c| {
        c.egress_allow.clear();
        c.retry_immediate = 0;
        c.retry_give_up = Duration::from_millis(10);
    })
    .await;
    // Literal loopback is refused at intake...
    let literal = app
        .post(
            "/v1/deliveries",
            json!({"url": receiver.url("/x"), "json": {}}),
        )
        .await;
    assert_eq!(literal.status(), 400);
    assert_eq!(
        literal.json::<Value>().await.unwrap()["error"]["code"],
        "blocked_destination"
    );
    // ...a name passes intake and is refused when it resolves.
    let id = enqueue(
        &app,
        &format!("http://localhost:{}/x", receiver.addr.port()),
    )
    .await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "failed")
        .await;
    assert_eq!(
        view["attempts"][0]["error"], "blocked_destination",
        "{view:#}"
    );
    assert!(receiver.received().is_empty(), "the receiver was contacted");
    app.stop().await;
}

#[tokio::test]
async fn loopback_is_admitted_once_allowed_and_connections_leave_from_the_source_address() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(|c| {
        c.egress_source_addr = Some("127.0.0.7".parse().unwrap());
        c.egress_public_ips = vec!["203.0.113.7".parse().unwrap()];
    })
    .await;
    let id = enqueue(
        &app,
        &format!("http://localhost:{}/named", receiver.addr.port()),
    )
    .await;
    app.wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].peer.ip().to_string(), "127.0.0.7");
    let egress = app.get_json("/v1/egress").await;
    assert_eq!(
        egress,
        json!({"sourceAddresses": ["127.0.0.7"], "publicAddresses": ["203.0.113.7"]})
    );
    app.stop().await;
}

/// A minimal forward HTTP proxy on 127.0.0.1: reads an absolute-form
/// request, forwards it in origin form to the target, relays the answer.
async fn start_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let Ok(n) = client.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_owned();
                let mut parts = request_line.split(' ');
                let (method, target) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                let Ok(url) = url::Url::parse(target) else {
                    return;
                };
                let host = url.host_str().unwrap_or_default().to_owned();
                let port = url.port_or_known_default().unwrap_or(80);
                let Ok(mut upstream) = TcpStream::connect((host.as_str(), port)).await else {
                    return;
                };
                seen.fetch_add(1, Ordering::SeqCst);
                let mut out = format!("{method} {} HTTP/1.1\r\n", url.path());
                for line in lines.filter(|l| !l.is_empty()) {
                    if !line.to_ascii_lowercase().starts_with("proxy-")
                        && !line.to_ascii_lowercase().starts_with("connection")
                    {
                        out.push_str(line);
                        out.push_str("\r\n");
                    }
                }
                out.push_str("connection: close\r\n\r\n");
                let _ = upstream.write_all(out.as_bytes()).await;
                let _ = upstream.write_all(&buf[head_end..]).await;
                let (mut cr, mut cw) = client.split();
                let (mut ur, mut uw) = upstream.split();
                let _ = tokio::join!(
                    tokio::io::copy(&mut cr, &mut uw),
                    tokio::io::copy(&mut ur, &mut cw)
                );
            });
        }
    });
    (format!("http://{addr}"), count)
}

#[tokio::test]
async fn deliveries_go_through_the_proxy_and_the_guard_still_checks_the_target() {
    let receiver = Receiver::start().await;
    let (proxy, count) = start_proxy().await;
    let app = TestApp::spawn_with(|c| {
        c.egress_proxy = Some(url::Url::parse(&proxy).unwrap());
        c.retry_immediate = 0;
        c.retry_give_up = Duration::from_millis(10);
    })
    .await;
    let id = enqueue(&app, &receiver.url("/via-proxy")).await;
    app.wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].path, "/via-proxy");
    assert!(got[0].headers.contains_key("webhook-signature"));
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the delivery bypassed the proxy"
    );
    app.stop().await;

    // Through the proxy, a target the policy refuses is never sent.
    let strict = TestApp::spawn_with(|c| {
        c.egress_allow.clear();
        c.egress_proxy = Some(url::Url::parse(&proxy).unwrap());
        c.retry_immediate = 0;
        c.retry_give_up = Duration::from_millis(10);
    })
    .await;
    let id = enqueue(
        &strict,
        &format!("http://localhost:{}/no", receiver.addr.port()),
    )
    .await;
    let view = strict
        .wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "failed")
        .await;
    assert_eq!(
        view["attempts"][0]["error"], "blocked_destination",
        "{view:#}"
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the proxy was asked for a refused target"
    );
    strict.stop().await;
}
