//! `postback listen`: a development receiver (SPEC §1). It prints each
//! callback readably (method, path, headers, body with JSON pretty-printed)
//! or as one JSON line (`--json`), checks its Standard Webhooks signature
//! when given the secret, answers 200 (or `--respond STATUS`; 401 on a bad
//! signature with `--reject-invalid`) and echoes a `Validation-Token`
//! header. Bodies are streamed through the signature check, so a large
//! media callback is never held whole.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value = "9000")]
    port: u16,
    /// Address to listen on (0.0.0.0 to receive from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Signing secret (`whsec_…`) to verify signatures with.
    #[arg(long, env = "POSTBACK_SIGNING_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Status to answer every callback with (e.g. 500 or 410 to watch the retries).
    #[arg(long, value_name = "STATUS", default_value = "200", value_parser = parse_status)]
    respond: StatusCode,
    /// Answer 401 to a callback whose signature does not verify (needs --secret).
    #[arg(long)]
    reject_invalid: bool,
    /// Print each callback as one JSON line (for scripts) instead of the readable form.
    #[arg(long)]
    json: bool,
}

/// An HTTP status code from 100 to 599 (`--respond`).
fn parse_status(s: &str) -> Result<StatusCode, String> {
    let code: u16 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a status code; use a number such as 200 or 503"))?;
    if !(100..=599).contains(&code) {
        return Err(format!("{code} is not an HTTP status; use 100 to 599"));
    }
    StatusCode::from_u16(code).map_err(|e| e.to_string())
}

/// What every request is handled with.
#[derive(Debug)]
struct Listening {
    secret: Option<SigningSecret>,
    respond: StatusCode,
    reject_invalid: bool,
    json: bool,
}

/// Receives until SIGINT/SIGTERM.
pub async fn run(args: ListenArgs) -> Result<(), Failure> {
    let secret = match &args.secret {
        Some(s) => Some(SigningSecret::parse(s).map_err(|e| {
            Failure::usage(anyhow!("--secret: {e}; expected whsec_ followed by base64"))
        })?),
        None => None,
    };
    if args.reject_invalid && secret.is_none() {
        return Err(Failure::usage(anyhow!(
            "--reject-invalid needs --secret (or POSTBACK_SIGNING_SECRET) to check signatures with"
        )));
    }
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--bind, --port)"))?;
    let bound = listener.local_addr()?;
    let checked = match (&secret, args.reject_invalid) {
        (None, _) => "not checked: pass --secret",
        (Some(_), false) => "checked",
        (Some(_), true) => "checked, 401 when invalid",
    };
    // Goes to stderr with --json, so stdout carries only the callbacks.
    let banner = format!(
        "postback listen: receiving on http://{bound}/ (signatures {checked}; answering {})",
        args.respond.as_u16()
    );
    if args.json {
        eprintln!("{banner}");
    } else {
        println!("{banner}");
    }
    let state = Arc::new(Listening {
        secret,
        respond: args.respond,
        reject_invalid: args.reject_invalid,
        json: args.json,
    });
    let app = axum::Router::new()
        .fallback(receive)
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    let shutdown = super::shutdown_on_signals();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn receive(State(listening): State<Arc<Listening>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (printed, total, signature) =
        read_body(body, listening.secret.as_ref(), &parts.headers).await;
    let invalid = signature.as_ref().is_some_and(|v| !v.is_valid());
    let status = if invalid && listening.reject_invalid {
        StatusCode::UNAUTHORIZED
    } else {
        listening.respond
    };
    if listening.json {
        println!(
            "{}",
            json_line(&parts, &printed, total, signature.as_ref(), status)
        );
    } else {
        println!(
            "{}",
            readable(&parts, &printed, total, signature.as_ref(), status)
        );
    }
    let mut response = status.into_response();
    if let Some(token) = parts.headers.get("validation-token") {
        response
            .headers_mut()
            .insert("validation-token", token.clone());
    }
    response
}

/// The readable form of one callback.
fn readable(
    parts: &axum::http::request::Parts,
    printed: &[u8],
    total: usize,
    signature: Option<&Verdict>,
    status: StatusCode,
) -> String {
    let mut out = format!("\n{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        out.push_str(&format!(
            "{name}: {}\n",
            value.to_str().unwrap_or("<binary>")
        ));
    }
    out.push('\n');
    out.push_str(&describe_body(printed, total));
    out.push('\n');
    if let Some(verdict) = signature {
        out.push_str(&format!("signature: {verdict}\n"));
    }
    out.push_str(&format!("answered: {}\n", status.as_u16()));
    out
}

/// One callback as one JSON line: `method`, `path`, `headers` (name →
/// value), `body` (the JSON itself when it is JSON, else the text, absent
/// when binary), `bytes`, `truncated`, `signature` (`verified` or the reason
/// it is invalid; absent without `--secret`) and the `status` answered.
fn json_line(
    parts: &axum::http::request::Parts,
    printed: &[u8],
    total: usize,
    signature: Option<&Verdict>,
    status: StatusCode,
) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), text.into())
        })
        .collect();
    let whole = printed.len() == total;
    let body = if total == 0 {
        None
    } else if let Some(json) = whole
        .then(|| serde_json::from_slice::<serde_json::Value>(printed).ok())
        .flatten()
    {
        Some(json)
    } else {
        std::str::from_utf8(printed)
            .ok()
            .map(|t| t.to_owned().into())
    };
    let mut line = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "headers": headers,
        "bytes": total,
        "truncated": !whole,
        "status": status.as_u16(),
    });
    if let Some(body) = body {
        line["body"] = body;
    }
    if let Some(verdict) = signature {
        line["signature"] = verdict.to_string().into();
    }
    line.to_string()
}

/// What the signature check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Verified,
    Invalid(String),
}

impl Verdict {
    fn is_valid(&self) -> bool {
        *self == Verdict::Verified
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Verified => f.write_str("verified"),
            Verdict::Invalid(why) => write!(f, "INVALID ({why})"),
        }
    }
}

/// Streams the body: keeps the first [`PRINT_LIMIT`] bytes, counts the
/// rest, and feeds everything to the signature check.
async fn read_body(
    body: Body,
    secret: Option<&SigningSecret>,
    headers: &HeaderMap,
) -> (Vec<u8>, usize, Option<Verdict>) {
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
                (true, true) => Verdict::Verified,
                (true, false) => {
                    Verdict::Invalid(format!("timestamp {ts} is more than 5 minutes from now"))
                }
                (false, _) => Verdict::Invalid("no signature matches the secret".to_owned()),
            })
        }
        (Some(_), _, _, _) => Some(Verdict::Invalid(
            "webhook-id, webhook-timestamp or webhook-signature missing".to_owned(),
        )),
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
