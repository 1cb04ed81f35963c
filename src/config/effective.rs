//! The settings a process runs with, as an operator would write them
//! (`POSTBACK_CONCURRENCY=256`), for the start-up log line. It owns the
//! redaction of secrets: tokens, signing secrets and keys are shown only as
//! set, and passwords (and query strings, which may carry tokens) of URLs
//! are masked. It must not log anything itself.

use std::fmt;

use super::{Config, LogFormat};

/// What a secret is shown as.
pub const REDACTED: &str = "***";

/// Every setting that has a value, in the order of SPEC §1's table, secrets
/// redacted. [`fmt::Display`] writes them as `NAME=value` pairs separated
/// by spaces (values with spaces or quotes are quoted), one log field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSettings(pub Vec<(&'static str, String)>);

impl Config {
    /// The settings in force, secrets redacted (see [`EffectiveSettings`]).
    /// Unset optional settings are left out.
    pub fn effective_settings(&self) -> EffectiveSettings {
        let c = self;
        let secret = |v: &Option<String>| v.as_ref().map(|_| REDACTED.to_owned());
        let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
        let list = |items: Vec<String>| items.join(",");
        let all: Vec<(&'static str, Option<String>)> = vec![
            (
                "DATABASE_URL",
                c.database_url.as_deref().map(redact_database_url),
            ),
            ("POSTBACK_DATA_DIR", Some(c.data_dir.display().to_string())),
            ("POSTBACK_LISTEN", Some(c.listen.to_string())),
            ("POSTBACK_API_TOKEN", secret(&c.api_token)),
            (
                "POSTBACK_INSECURE_NO_AUTH",
                Some(u8::from(c.insecure_no_auth).to_string()),
            ),
            ("POSTBACK_SIGNING_SECRET", secret(&c.signing_secret)),
            ("POSTBACK_SECRETS_KEY", secret(&c.secrets_key)),
            ("POSTBACK_MEDIA_ROOT", {
                let roots = c.media_root.iter().map(|p| p.display().to_string());
                Some(list(roots.collect()))
            }),
            (
                "POSTBACK_RETRY_IMMEDIATE",
                Some(c.retry_immediate.to_string()),
            ),
            (
                "POSTBACK_RETRY_FIRST_DELAY",
                Some(duration(c.retry_first_delay)),
            ),
            (
                "POSTBACK_RETRY_MAX_DELAY",
                Some(duration(c.retry_max_delay)),
            ),
            ("POSTBACK_RETRY_GIVE_UP", Some(duration(c.retry_give_up))),
            (
                "POSTBACK_ATTEMPT_TIMEOUT",
                Some(duration(c.attempt_timeout)),
            ),
            ("POSTBACK_CONCURRENCY", Some(c.concurrency.to_string())),
            (
                "POSTBACK_PER_HOST_CONCURRENCY",
                Some(c.per_host_concurrency.to_string()),
            ),
            (
                "POSTBACK_PER_CUSTOMER_CONCURRENCY",
                Some(c.per_customer_concurrency.to_string()),
            ),
            (
                "POSTBACK_BREAKER_FAILURES",
                Some(c.breaker_failures.to_string()),
            ),
            (
                "POSTBACK_BREAKER_COOLDOWN",
                Some(duration(c.breaker_cooldown)),
            ),
            (
                "POSTBACK_OPERATOR_WEBHOOK",
                c.operator_webhook.as_ref().map(|u| redact_url(u.as_str())),
            ),
            ("POSTBACK_JOB_TTL", Some(duration(c.job_ttl))),
            ("POSTBACK_MAX_BODY", Some(c.max_body.to_string())),
            (
                "POSTBACK_EGRESS_SOURCE_ADDR",
                c.egress_source_addr.map(|a| a.to_string()),
            ),
            (
                "POSTBACK_EGRESS_PROXY",
                c.egress_proxy.as_ref().map(|u| redact_url(u.as_str())),
            ),
            (
                "POSTBACK_EGRESS_PUBLIC_IPS",
                Some(list(
                    c.public_addresses()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                )),
            ),
            (
                "POSTBACK_EGRESS_ALLOW",
                Some(list(
                    c.egress_allow.iter().map(ToString::to_string).collect(),
                )),
            ),
            (
                "POSTBACK_EGRESS_DENY",
                Some(list(
                    c.egress_deny.iter().map(ToString::to_string).collect(),
                )),
            ),
            (
                "POSTBACK_LOG_FORMAT",
                Some(
                    match c.log_format {
                        LogFormat::Pretty => "pretty",
                        LogFormat::Json => "json",
                    }
                    .to_owned(),
                ),
            ),
            ("POSTBACK_LOG_LEVEL", c.log_level.clone()),
            (
                "POSTBACK_METRICS_LISTEN",
                c.metrics_listen.map(|a| a.to_string()),
            ),
            ("POSTBACK_DB_SCHEMA", Some(c.db_schema.name().to_owned())),
        ];
        EffectiveSettings(
            all.into_iter()
                .filter_map(|(name, value)| value.map(|v| (name, v)))
                .collect(),
        )
    }
}

/// A URL with its password and every query value (a webhook's query often
/// carries a token) masked, the parameter names kept; text that is not a
/// URL is masked whole.
pub fn redact_url(text: &str) -> String {
    redact_with(text, |_| true)
}

/// A libpq URL with its password masked, in the user part or as the
/// `password`/`sslpassword` parameter; the other parameters (`sslmode`,
/// `options`, …) are what an operator checks, and are kept.
pub fn redact_database_url(text: &str) -> String {
    redact_with(text, |name| name.to_ascii_lowercase().contains("password"))
}

fn redact_with(text: &str, secret_param: impl Fn(&str) -> bool) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return REDACTED.to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_param(&k) {
                    REDACTED.into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl fmt::Display for EffectiveSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !value.is_empty() && !value.contains([' ', '"', '\\', '=']);
            if plain {
                write!(f, "{name}={value}")?;
            } else {
                // Quoted the way JSON strings are: unambiguous to split.
                let quoted = serde_json::to_string(value).map_err(|_| fmt::Error)?;
                write!(f, "{name}={quoted}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of<'a>(s: &'a EffectiveSettings, name: &str) -> Option<&'a str> {
        s.0.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn secrets_are_shown_only_as_set_and_url_passwords_are_masked() {
        let config = Config {
            database_url: Some(
                "postgres://app:hunter2@db.internal:5432/pb?sslmode=require&sslpassword=pem-pass"
                    .into(),
            ),
            api_token: Some("tok-abc,tok-def".into()),
            signing_secret: Some("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0".into()),
            secrets_key: Some("a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=".into()),
            operator_webhook: Some("https://ops.example/hook?token=s3cret".parse().unwrap()),
            egress_proxy: Some("http://user:pw@proxy.example:3128".parse().unwrap()),
            ..Config::default()
        };
        let settings = config.effective_settings();
        let text = settings.to_string();
        for secret in [
            "hunter2", "pem-pass", "tok-abc", "tok-def", "whsec_", "a2V5", "s3cret", ":pw@",
        ] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        assert_eq!(
            value_of(&settings, "DATABASE_URL"),
            Some("postgres://app:***@db.internal:5432/pb?sslmode=require&sslpassword=***")
        );
        assert_eq!(value_of(&settings, "POSTBACK_API_TOKEN"), Some(REDACTED));
        assert_eq!(
            value_of(&settings, "POSTBACK_SIGNING_SECRET"),
            Some(REDACTED)
        );
        assert_eq!(value_of(&settings, "POSTBACK_SECRETS_KEY"), Some(REDACTED));
        assert_eq!(
            value_of(&settings, "POSTBACK_OPERATOR_WEBHOOK"),
            Some("https://ops.example/hook?token=***")
        );
        assert_eq!(
            value_of(&settings, "POSTBACK_EGRESS_PROXY"),
            Some("http://user:***@proxy.example:3128/")
        );
        assert_eq!(redact_url("not a url with hunter2"), REDACTED);
    }

    #[test]
    fn defaults_are_written_as_an_operator_would_type_them() {
        let settings = Config::default().effective_settings();
        assert_eq!(value_of(&settings, "POSTBACK_CONCURRENCY"), Some("256"));
        assert_eq!(
            value_of(&settings, "POSTBACK_RETRY_GIVE_UP"),
            Some("1day 12h")
        );
        assert_eq!(
            value_of(&settings, "POSTBACK_LISTEN"),
            Some("127.0.0.1:8080")
        );
        assert_eq!(value_of(&settings, "POSTBACK_LOG_FORMAT"), Some("pretty"));
        // Unset optional settings are left out, not shown as empty.
        assert_eq!(value_of(&settings, "DATABASE_URL"), None);
        assert_eq!(value_of(&settings, "POSTBACK_API_TOKEN"), None);
        let text = settings.to_string();
        assert!(text.contains("POSTBACK_CONCURRENCY=256 "), "{text}");
        assert!(text.contains("POSTBACK_EGRESS_ALLOW=\"\""), "{text}");
        assert!(
            text.contains("POSTBACK_RETRY_GIVE_UP=\"1day 12h\""),
            "{text}"
        );
    }
}
