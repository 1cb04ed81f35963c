//! What intake stores of a callback's secrets: header values and `auth`
//! secrets sealed with the process's [`Keyring`] (SPEC §1
//! `POSTBACK_SECRETS_KEY`), in the job's stored request and callbacks and
//! in each delivery's payload. Reading them back opens them.
//!
//! It must not decide what is a secret beyond SPEC §2: every header value
//! and every `auth` secret is one; URLs, bodies and metadata are not.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{CallbackAuth, CallbackSpec};
use crate::sealing::Keyring;

/// `spec` as stored: header values and the auth secret sealed.
pub fn seal_spec(keys: &Keyring, spec: &CallbackSpec) -> CallbackSpec {
    let mut sealed = spec.clone();
    sealed.headers = seal_headers(keys, &spec.headers);
    sealed.auth = spec.auth.as_ref().map(|a| seal_auth(keys, a));
    sealed
}

/// A stored spec with its secrets opened.
pub fn open_spec(keys: &Keyring, spec: &CallbackSpec) -> Result<CallbackSpec> {
    let mut open = spec.clone();
    open.headers = open_headers(keys, &spec.headers)?;
    open.auth = match &spec.auth {
        Some(CallbackAuth::Jwt { secret, scheme }) => Some(CallbackAuth::Jwt {
            secret: keys.open(secret).map_err(unreadable)?,
            scheme: scheme.clone(),
        }),
        None => None,
    };
    Ok(open)
}

/// Header values sealed.
pub fn seal_headers(
    keys: &Keyring,
    headers: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.clone(), keys.seal(v)))
        .collect()
}

fn open_headers(
    keys: &Keyring,
    headers: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    headers
        .iter()
        .map(|(k, v)| Ok((k.clone(), keys.open(v).map_err(unreadable)?)))
        .collect()
}

/// The auth section with its secret sealed.
pub fn seal_auth(keys: &Keyring, auth: &CallbackAuth) -> CallbackAuth {
    match auth {
        CallbackAuth::Jwt { secret, scheme } => CallbackAuth::Jwt {
            secret: keys.seal(secret),
            scheme: scheme.clone(),
        },
    }
}

/// The JSON stored in a payload's `headers` column.
pub fn headers_json(keys: &Keyring, headers: &BTreeMap<String, String>) -> Value {
    serde_json::to_value(seal_headers(keys, headers))
        .unwrap_or_else(|_| Value::Object(Default::default()))
}

fn unreadable(err: crate::sealing::SealError) -> Error {
    Error::Database(sqlx::Error::Decode(Box::new(err)))
}
