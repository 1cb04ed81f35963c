//! Input validation: everything a caller sends is checked here before it
//! can reach the queue, and every refusal names the field and says what to
//! fix. It owns the rules of SPEC §2 (which options go with which callback
//! type, reserved headers, ids); destination addresses are checked with the
//! `egress` policy. It must not touch the database.

use reqwest::header::{HeaderName, HeaderValue};

use crate::egress::{check_destination, EgressPolicy};
use crate::error::Error;
use crate::model::{CallbackAuth, CallbackSpec, CallbackType, NewDelivery, NewJob};

/// Most callbacks one job may carry.
pub const MAX_CALLBACKS: usize = 32;
/// Longest caller-supplied job id.
pub const MAX_JOB_ID: usize = 128;

/// Headers a caller may not set: the transport's and the signature's.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Deserializes `bytes` as JSON into `T`, naming the field at fault.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (code, field) = if inner.is_syntax() || inner.is_eof() {
            ("invalid_json", "body".to_owned())
        } else {
            (
                "invalid_field",
                if path == "." { "body".to_owned() } else { path },
            )
        };
        Error::invalid(code, field, inner.to_string())
    })
}

/// A job id: 1–128 visible ASCII characters, none of `/ ? # %` (it travels
/// in URL paths) and no whitespace.
pub fn job_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_JOB_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_job_id",
            "jobId",
            format!("must be 1 to {MAX_JOB_ID} visible ASCII characters without / ? # % or spaces"),
        ))
    }
}

/// Checks a job registration.
pub fn new_job(policy: &EgressPolicy, job: &NewJob) -> Result<(), Error> {
    if let Some(id) = &job.job_id {
        job_id(id)?;
    }
    let callbacks = &job.publish.callbacks;
    if callbacks.len() > MAX_CALLBACKS {
        return Err(Error::invalid(
            "too_many_callbacks",
            "publish.callbacks",
            format!(
                "at most {MAX_CALLBACKS} callbacks per job, got {}",
                callbacks.len()
            ),
        ));
    }
    for (i, cb) in callbacks.iter().enumerate() {
        callback(policy, cb, &format!("publish.callbacks[{i}]"))?;
    }
    Ok(())
}

/// Checks one callback of a job.
pub fn callback(policy: &EgressPolicy, cb: &CallbackSpec, at: &str) -> Result<(), Error> {
    destination(policy, &cb.url, &format!("{at}.url"))?;
    let misplaced = |field: &str, only: &str| {
        Error::invalid(
            "invalid_field",
            format!("{at}.{field}"),
            format!("only applies to {only} callbacks; remove it or set \"type\": \"{only}\""),
        )
    };
    if cb.format.is_some() && cb.kind != CallbackType::Transcript {
        return Err(misplaced("format", "transcript"));
    }
    if cb.include.is_some() && cb.kind != CallbackType::Analytics {
        return Err(misplaced("include", "analytics"));
    }
    if cb.stream.is_some() && cb.kind != CallbackType::Media {
        return Err(misplaced("stream", "media"));
    }
    headers(&cb.headers, &format!("{at}.headers"), cb.auth.is_some())?;
    if let Some(CallbackAuth::Jwt { secret, scheme }) = &cb.auth {
        if secret.is_empty() {
            return Err(Error::invalid(
                "invalid_field",
                format!("{at}.auth.secret"),
                "must not be empty",
            ));
        }
        if scheme.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "invalid_field",
                format!("{at}.auth.scheme"),
                "must be a single word such as Bearer, or \"\" for the bare token",
            ));
        }
    }
    Ok(())
}

/// Checks a destination URL and returns its host (for per-host fairness).
pub fn destination(policy: &EgressPolicy, url: &str, field: &str) -> Result<String, Error> {
    let parsed = check_destination(policy, url).map_err(|e| {
        let code = if matches!(e, crate::egress::DestinationError::BlockedAddress(_)) {
            "blocked_destination"
        } else {
            "invalid_url"
        };
        Error::invalid(code, field, e.to_string())
    })?;
    Ok(parsed.host_str().unwrap_or_default().to_ascii_lowercase())
}

/// Caller headers: valid names and values, none of the reserved ones.
pub fn headers(
    headers: &std::collections::BTreeMap<String, String>,
    at: &str,
    has_auth: bool,
) -> Result<(), Error> {
    for (name, value) in headers {
        let field = format!("{at}.{name}");
        let lower = name.to_ascii_lowercase();
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Error::invalid(
                "invalid_header",
                field,
                "is not a valid HTTP header name",
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(Error::invalid(
                "reserved_header",
                field,
                "is set by Postback and may not be given; remove it",
            ));
        }
        if has_auth && lower == "authorization" {
            return Err(Error::invalid(
                "reserved_header",
                field,
                "conflicts with \"auth\", which sets Authorization; give one or the other",
            ));
        }
        if HeaderValue::from_str(value).is_err() {
            return Err(Error::invalid(
                "invalid_header",
                field,
                "value must be visible ASCII without line breaks",
            ));
        }
    }
    Ok(())
}

/// A generic delivery, returning (host, body bytes, content type).
pub fn new_delivery(
    policy: &EgressPolicy,
    d: &NewDelivery,
) -> Result<(String, Vec<u8>, String), Error> {
    let host = destination(policy, &d.url, "url")?;
    headers(&d.headers, "headers", false)?;
    let given = [d.body.is_some(), d.body_base64.is_some(), d.json.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        return Err(Error::invalid(
            "invalid_body",
            "body",
            "give exactly one of body, bodyBase64 or json",
        ));
    }
    let (bytes, default_type) = if let Some(text) = &d.body {
        (text.clone().into_bytes(), "text/plain; charset=utf-8")
    } else if let Some(b64) = &d.body_base64 {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| {
                Error::invalid("invalid_body", "bodyBase64", format!("is not base64: {e}"))
            })?;
        (bytes, "application/octet-stream")
    } else {
        let json = d.json.as_ref().map(|v| v.to_string()).unwrap_or_default();
        (json.into_bytes(), "application/json")
    };
    let content_type = match &d.content_type {
        Some(ct) if HeaderValue::from_str(ct).is_err() || ct.is_empty() => {
            return Err(Error::invalid(
                "invalid_field",
                "contentType",
                "must be a media type such as application/json",
            ))
        }
        Some(ct) => ct.clone(),
        None => default_type.to_owned(),
    };
    Ok((host, bytes, content_type))
}
