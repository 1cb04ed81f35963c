//! `postback listen`: a development receiver. It prints each callback
//! readably (method, path, headers, body with JSON pretty-printed), checks
//! its Standard Webhooks signature when given the secret, answers 200 and
//! echoes a `Validation-Token` header. Bodies are streamed through the
//! signature check, so a large media callback is never held whole.

use std::net::SocketAddr;

use anyhow::{anyhow, Context};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Args;
use futures_util::StreamExt;

use super::Failure;
use crate::signing::{self, Signer, SigningSecret};

/// Most body bytes printed.
const PRINT_LIMIT: usize = 64 * 1024;

/// Flags of `listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value = "9000")]
    port: u16,
    /// Signing secret (`whsec_…`) to verify signatures with.
    #[arg(long, env = "POSTBACK_SIGNING_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

/// Receives until SIGINT/SIGTERM.
pub async fn run(args: ListenArgs) -> Result<(), Failure> {
    let secret = match &args.secret {
        Some(s) => Some(SigningSecret::parse(s).map_err(|e| {
            Failure::usage(anyhow!("--secret: {e}; expected whsec_ followed by base64"))
        })?),
        None => None,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--port)"))?;
    let bound = listener.local_addr()?;
    println!(
        "postback listen: receiving on http://{bound}/ (signatures {})",
        if secret.is_some() {
            "checked"
        } else {
            "not checked: pass --secret"
        }
    );
    let app = axum::Router::new()
        .fallback(receive)
        .layer(DefaultBodyLimit::disable())
        .with_state(secret);
    let shutdown = super::shutdown_on_signals();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn receive(State(secret): State<Option<SigningSecret>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut out = format!("\n{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        out.push_str(&format!(
            "{name}: {}\n",
            value.to_str().unwrap_or("<binary>")
        ));
    }
    let (printed, total, signature) = read_body(body, secret.as_ref(), &parts.headers).await;
    out.push('\n');
    out.push_str(&describe_body(&printed, total));
    out.push('\n');
    if let Some(verdict) = signature {
        out.push_str(&format!("signature: {verdict}\n"));
    }
    println!("{out}");
    let mut response = StatusCode::OK.into_response();
    if let Some(token) = parts.headers.get("validation-token") {
        response
            .headers_mut()
            .insert("validation-token", token.clone());
    }
    response
}

/// Streams the body: keeps the first [`PRINT_LIMIT`] bytes, counts the
/// rest, and feeds everything to the signature check.
async fn read_body(
    body: Body,
    secret: Option<&SigningSecret>,
    headers: &HeaderMap,
) -> (Vec<u8>, usize, Option<String>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let timestamp = ts.as_deref().and_then(|t| t.parse::<i64>().ok());
    let mut signer = match (secret, &id, timestamp) {
        (Some(secret), Some(id), Some(ts)) => Some(Signer::new(secret, id, ts)),
        _ => None,
    };
    let mut printed = Vec::new();
    let mut total = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        total += chunk.len();
        if let Some(s) = signer.as_mut() {
            s.update(&chunk);
        }
        let room = PRINT_LIMIT.saturating_sub(printed.len());
        printed.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    let verdict = match (secret, signer, sig, timestamp) {
        (None, _, _, _) => None,
        (Some(_), Some(signer), Some(sig), Some(ts)) => {
            let expected = signer.finish();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let fresh = (now - ts).abs() <= signing::DEFAULT_TOLERANCE_SECS;
            let matches = sig.split_whitespace().any(|s| s == expected);
            Some(match (matches, fresh) {
                (true, true) => "verified".to_owned(),
                (true, false) => {
                    format!("INVALID (timestamp {ts} is more than 5 minutes from now)")
                }
                (false, _) => "INVALID (no signature matches the secret)".to_owned(),
            })
        }
        (Some(_), _, _, _) => {
            Some("INVALID (webhook-id, webhook-timestamp or webhook-signature missing)".to_owned())
        }
    };
    (printed, total, verdict)
}

fn describe_body(printed: &[u8], total: usize) -> String {
    if total == 0 {
        return "(empty body)".to_owned();
    }
    if printed.len() == total {
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(printed) {
            return serde_json::to_string_pretty(&json).unwrap_or_default();
        }
    }
    match std::str::from_utf8(printed) {
        Ok(text) if printed.len() == total => text.to_owned(),
        Ok(text) => format!("{text}\n… ({total} bytes in all)"),
        Err(_) => format!("({total} bytes of binary data)"),
    }
}
