//! Input validation: everything a caller sends is checked here before it
//! can reach the queue, and every refusal names the field and says what to
//! fix. It owns the rules of SPEC §2 (which options go with which callback
//! type, reserved headers, ids); destination addresses are checked with the
//! `egress` policy. It must not touch the database.

use reqwest::header::{HeaderName, HeaderValue};

use crate::egress::{check_destination, EgressPolicy};
use crate::error::{Error, ErrorCode};
use serde_json::Value;

use crate::model::{
    CallbackAuth, CallbackSpec, CallbackType, JobResult, NewDelivery, NewJob, ResultStatus,
};

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

/// Request types whose JSON must be an object at given places.
///
/// serde also accepts a JSON array for a struct (its fields in order), so
/// `[]` would pass for an empty job; these paths are checked before the
/// typed parse. Syntax: fields joined by `.`, `[]` for every element of an
/// array, `""` for the whole body.
pub trait JsonObjects {
    /// Where the body must hold objects (when anything is there).
    const OBJECTS: &'static [&'static str];
}

impl JsonObjects for NewJob {
    const OBJECTS: &'static [&'static str] = &[
        "",
        "publish",
        "publish.callbacks[]",
        "publish.callbacks[].auth",
        "publish.callbacks[].headers",
    ];
}

impl JsonObjects for JobResult {
    const OBJECTS: &'static [&'static str] = &[
        "",
        "result",
        "result.transcript",
        "result.transcript.words[]",
        "error",
        "streams[]",
    ];
}

impl JsonObjects for crate::model::CustomerRequest {
    const OBJECTS: &'static [&'static str] = &[""];
}

impl JsonObjects for crate::model::RotateSecret {
    const OBJECTS: &'static [&'static str] = &[""];
}

impl JsonObjects for crate::model::ResetDestination {
    const OBJECTS: &'static [&'static str] = &[""];
}

impl JsonObjects for crate::model::ReplayRequest {
    const OBJECTS: &'static [&'static str] = &["", "filter"];
}

impl JsonObjects for NewDelivery {
    const OBJECTS: &'static [&'static str] = &["", "headers"];
}

/// Deserializes `bytes` as a JSON request body into `T`, naming the field
/// at fault: syntax errors are `invalid_json`, everything else
/// `invalid_field`.
pub fn parse_json<T: serde::de::DeserializeOwned + JsonObjects>(bytes: &[u8]) -> Result<T, Error> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let reason = if e.is_eof() {
            format!("the JSON ends too early ({e}); send a complete JSON object")
        } else {
            format!("{e}; send a JSON object")
        };
        Error::invalid(ErrorCode::InvalidJson, "body", reason)
    })?;
    for path in T::OBJECTS {
        objects_at(&value, path, String::new())?;
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        Error::invalid(ErrorCode::InvalidField, field, e.into_inner().to_string())
    })
}

/// Refuses an array where `path` (relative to `value`, at `at`) must be an
/// object.
fn objects_at(value: &Value, path: &str, at: String) -> Result<(), Error> {
    if path.is_empty() {
        let kind = match value {
            Value::Array(_) => "an array",
            _ => return Ok(()), // other types: serde names them precisely
        };
        return Err(Error::invalid(
            ErrorCode::InvalidField,
            if at.is_empty() { "body".to_owned() } else { at },
            format!("invalid type: {kind}, expected a JSON object"),
        ));
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let (name, each) = match head.strip_suffix("[]") {
        Some(name) => (name, true),
        None => (head, false),
    };
    let Some(child) = value.get(name) else {
        return Ok(());
    };
    let here = if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    };
    match (each, child) {
        (true, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                objects_at(item, rest, format!("{here}[{i}]"))?;
            }
            Ok(())
        }
        (true, _) => Ok(()), // not an array: serde refuses it
        (false, _) => objects_at(child, rest, here),
    }
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
            ErrorCode::InvalidJobId,
            "jobId",
            format!("must be 1 to {MAX_JOB_ID} visible ASCII characters without / ? # % or spaces"),
        ))
    }
}

/// The origin (`scheme://host:port`, the key of a circuit breaker) of a
/// validated destination URL; the port is the scheme's default when the
/// URL names none, the host as the URL parser normalised it.
pub fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or_default().trim_end_matches('.'),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_owned(),
    }
}

/// A breaker `state` filter: `open`, `half_open` or `closed`.
pub fn breaker_state(state: &str, field: &str) -> Result<(), Error> {
    match state {
        "open" | "half_open" | "closed" => Ok(()),
        _ => Err(Error::invalid(
            ErrorCode::InvalidQuery,
            field,
            "must be open, half_open or closed",
        )),
    }
}

/// An origin as an operator writes it (`https://host`, `https://host:443`,
/// or a URL of that origin), normalised to `scheme://host:port`.
pub fn origin_filter(origin: &str, field: &str) -> Result<String, Error> {
    let url = url::Url::parse(origin.trim()).map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidField,
            field,
            format!("{e}; give an origin such as https://example.org:443"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::invalid(
            ErrorCode::InvalidField,
            field,
            "must be an http or https origin such as https://example.org:443",
        ));
    }
    Ok(crate::validate::origin(url.as_str()))
}

/// Longest customer id (SPEC §2).
pub const MAX_CUSTOMER_ID: usize = 128;
/// Longest grace period of a rotated-out secret (SPEC §2: 0 to 7 days).
pub const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Grace period when a rotation names none.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Shortest key of a given signing secret (SPEC §1: at least 24 bytes).
pub const MIN_SECRET_BYTES: usize = 24;

/// A customer id: 1–128 of `[A-Za-z0-9._:-]`.
pub fn customer_id(id: &str, field: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CUSTOMER_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            ErrorCode::InvalidCustomerId,
            field,
            format!("must be 1 to {MAX_CUSTOMER_ID} characters of A-Z a-z 0-9 . _ : -"),
        ))
    }
}

/// A signing secret a caller gives: `whsec_` + base64 of at least 24 bytes.
pub fn signing_secret(text: &str, field: &str) -> Result<crate::signing::SigningSecret, Error> {
    let refused = || {
        Error::invalid(
            ErrorCode::InvalidField,
            field,
            format!("must be whsec_ followed by the base64 of at least {MIN_SECRET_BYTES} bytes"),
        )
    };
    if !text.trim().starts_with(crate::signing::SECRET_PREFIX) {
        return Err(refused());
    }
    let secret = crate::signing::SigningSecret::parse(text).map_err(|_| refused())?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(refused());
    }
    Ok(secret)
}

/// A grace period: a humantime duration from 0 to 7 days (24 h when absent).
pub fn grace_period(text: Option<&str>, field: &str) -> Result<std::time::Duration, Error> {
    let Some(text) = text else {
        return Ok(DEFAULT_GRACE);
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d <= MAX_GRACE => Ok(d),
        Ok(_) => Err(Error::invalid(
            ErrorCode::InvalidField,
            field,
            "must be at most 7 days (7d); the replaced secret stops signing when it ends",
        )),
        Err(e) => Err(Error::invalid(
            ErrorCode::InvalidField,
            field,
            format!("{e}; use a duration such as 0s, 1h or 24h"),
        )),
    }
}

/// Checks a job registration.
pub fn new_job(policy: &EgressPolicy, job: &NewJob) -> Result<(), Error> {
    if let Some(id) = &job.job_id {
        job_id(id)?;
    }
    if let Some(metadata) = &job.metadata {
        storable_json(metadata, "metadata")?;
    }
    let callbacks = &job.publish.callbacks;
    if callbacks.len() > MAX_CALLBACKS {
        return Err(Error::invalid(
            ErrorCode::TooManyCallbacks,
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
            ErrorCode::InvalidField,
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
                ErrorCode::InvalidField,
                format!("{at}.auth.secret"),
                "must not be empty",
            ));
        }
        if secret.contains('\0') {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                format!("{at}.auth.secret"),
                "must not contain the NUL character (\\u0000)",
            ));
        }
        if scheme.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                format!("{at}.auth.scheme"),
                "must be a single word such as Bearer, or \"\" for the bare token",
            ));
        }
    }
    Ok(())
}

/// Checks a destination URL and returns its host key (per-host fairness,
/// filters): one spelling per destination, see [`crate::egress::host_key`].
pub fn destination(policy: &EgressPolicy, url: &str, field: &str) -> Result<String, Error> {
    if url.chars().any(char::is_control) {
        return Err(Error::invalid(
            ErrorCode::InvalidUrl,
            field,
            "must not contain control characters (line breaks, tabs, NUL); percent-encode them",
        ));
    }
    let parsed = check_destination(policy, url)
        .map_err(|e| Error::invalid(e.code(), field, e.to_string()))?;
    // The WHATWG parser reads `https:///x` as host `x` and `http:host` as
    // `http://host`; a URL that does not spell its host is a typo.
    let after_scheme = url.trim().split_once(':').map_or("", |(_, rest)| rest);
    let spelled = after_scheme
        .strip_prefix("//")
        .is_some_and(|authority| !authority.starts_with(['/', '\\']) && !authority.is_empty());
    if !spelled {
        return Err(Error::invalid(
            ErrorCode::InvalidUrl,
            field,
            "url must be absolute with a host, e.g. https://example.com/callback",
        ));
    }
    Ok(crate::egress::host_key(&parsed))
}

/// Caller headers: valid names and values, none of the reserved ones.
pub fn headers(
    headers: &std::collections::BTreeMap<String, String>,
    at: &str,
    has_auth: bool,
) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in headers {
        let field = format!("{at}.{name}");
        let lower = name.to_ascii_lowercase();
        if !seen.insert(lower.clone()) {
            return Err(Error::invalid(
                ErrorCode::InvalidHeader,
                field,
                "is given twice (header names are case-insensitive); give it once",
            ));
        }
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Error::invalid(
                ErrorCode::InvalidHeader,
                field,
                "is not a valid HTTP header name",
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(Error::invalid(
                ErrorCode::ReservedHeader,
                field,
                "is set by Postback and may not be given; remove it",
            ));
        }
        if has_auth && lower == "authorization" {
            return Err(Error::invalid(
                ErrorCode::ReservedHeader,
                field,
                "conflicts with \"auth\", which sets Authorization; give one or the other",
            ));
        }
        if HeaderValue::from_str(value).is_err() {
            return Err(Error::invalid(
                ErrorCode::InvalidHeader,
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
            ErrorCode::InvalidBody,
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
                Error::invalid(
                    ErrorCode::InvalidBody,
                    "bodyBase64",
                    format!("is not base64: {e}"),
                )
            })?;
        (bytes, "application/octet-stream")
    } else {
        // Straight into bytes (`to_string` went through `fmt::Write`).
        let json = d
            .json
            .as_ref()
            .and_then(|v| serde_json::to_vec(v).ok())
            .unwrap_or_default();
        (json, "application/json")
    };
    let content_type = match &d.content_type {
        Some(ct) if HeaderValue::from_str(ct).is_err() || ct.is_empty() => {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                "contentType",
                "must be a media type such as application/json",
            ))
        }
        Some(ct) => ct.clone(),
        None => default_type.to_owned(),
    };
    Ok((host, bytes, content_type))
}

/// Checks a job's result: the fields that go with `finished` or `failed`,
/// stream names, word times, and that everything can be stored.
pub fn job_result(result: &JobResult) -> Result<(), Error> {
    match result.status {
        ResultStatus::Finished if result.error.is_some() => {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                "error",
                "only a failed result carries an error; remove it or set \"status\": \"failed\"",
            ))
        }
        ResultStatus::Failed if result.error.is_none() => {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                "error",
                "a failed result needs {\"code\", \"message\"} saying why",
            ))
        }
        ResultStatus::Failed if result.result.is_some() || !result.streams.is_empty() => {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                if result.result.is_some() {
                    "result"
                } else {
                    "streams"
                },
                "a failed result carries error instead of result and streams; remove them or set \"status\": \"finished\"",
            ))
        }
        _ => {}
    }
    for (i, s) in result.streams.iter().enumerate() {
        if s.stream_name != "original" && s.stream_name != "redacted-audio" {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                format!("streams[{i}].streamName"),
                "must be original or redacted-audio",
            ));
        }
    }
    if let Some(words) = result
        .result
        .as_ref()
        .and_then(|r| r.transcript.as_ref())
        .map(|t| &t.words)
    {
        for (i, w) in words.iter().enumerate() {
            if w.e < w.s {
                return Err(Error::invalid(
                    ErrorCode::InvalidField,
                    format!("result.transcript.words[{i}].e"),
                    format!(
                        "ends ({} ms) before it starts ({} ms); word times are milliseconds with e >= s",
                        w.e, w.s
                    ),
                ));
            }
        }
    }
    let value = serde_json::to_value(result)
        .map_err(|e| Error::invalid(ErrorCode::InvalidField, "body", e.to_string()))?;
    storable_json(&value, "")
}

/// PostgreSQL cannot store the NUL character in `jsonb` or `text`: refuse
/// it at intake (naming where it is) rather than fail at the insert.
pub fn storable_json(value: &Value, at: &str) -> Result<(), Error> {
    fn find(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, v)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = find(v, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(k, v)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                let found = k.contains('\0') || find(v, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = at.to_owned();
    if find(value, &mut path) {
        return Err(Error::invalid(
            ErrorCode::InvalidField,
            if path.is_empty() {
                "body".to_owned()
            } else {
                path
            },
            "contains the NUL character (\\u0000), which cannot be stored; remove it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arrays_are_refused_where_objects_belong() {
        let err = parse_json::<NewJob>(b"[]").expect_err("array body");
        assert!(err.to_string().starts_with("body:"), "{err}");
        let err = parse_json::<NewJob>(br#"{"publish": []}"#).expect_err("array publish");
        assert!(err.to_string().starts_with("publish:"), "{err}");
        let err = parse_json::<NewJob>(
            br#"{"publish": {"callbacks": [{"url": "https://x.example/"}, ["https://y.example/"]]}}"#,
        )
        .expect_err("array callback");
        assert!(
            err.to_string().starts_with("publish.callbacks[1]:"),
            "{err}"
        );
        let err = parse_json::<JobResult>(
            br#"{"status": "finished", "result": {"transcript": {"words": [[0, 1, 2, 0.5, "w"]]}}}"#,
        )
        .expect_err("array word");
        assert!(
            err.to_string().starts_with("result.transcript.words[0]:"),
            "{err}"
        );
        let ok = parse_json::<NewJob>(br#"{"publish": {"callbacks": []}}"#).expect("valid job");
        assert!(ok.publish.callbacks.is_empty());
        let err = parse_json::<NewJob>(b"{").expect_err("syntax");
        assert!(
            matches!(
                err,
                Error::Validation {
                    code: ErrorCode::InvalidJson,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn hosts_must_be_spelled_out() {
        let policy = EgressPolicy::default();
        for bad in [
            "https:///x",
            "http:example.org",
            "https:/example.org",
            "http:\\\\example.org",
        ] {
            let err = destination(&policy, bad, "url").expect_err(bad);
            assert!(
                matches!(
                    err,
                    Error::Validation {
                        code: ErrorCode::InvalidUrl,
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        for good in [
            "https://example.org",
            "HTTP://Example.org:8080/a?b#c",
            " https://example.org/x ",
        ] {
            destination(&policy, good, "url").unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn nul_characters_are_found_and_named() {
        assert!(storable_json(&json!({"a": ["x", {"b": "ok"}]}), "metadata").is_ok());
        let err = storable_json(&json!({"a": ["x", {"b": "n\u{0}l"}]}), "metadata")
            .expect_err("NUL refused");
        assert_eq!(
            err.to_string().split(':').next(),
            Some("metadata.a[1].b"),
            "{err}"
        );
        let err = storable_json(&json!({"k\u{0}": 1}), "").expect_err("NUL key refused");
        assert!(err.to_string().starts_with("k"), "{err}");
    }
}
