//! Process logging (SPEC §1 `POSTBACK_LOG_FORMAT`, `POSTBACK_LOG_LEVEL`):
//! the filter, colour only on a terminal, and the `json` line format. It
//! owns how a line is written; it must not decide what is logged (the call
//! sites do) nor log anything itself.
//!
//! A `json` line is one object: `timestamp` (RFC 3339 UTC), `level`,
//! `target`, `span` (the innermost span's name, when inside one), then the
//! fields of every enclosing span and of the event, each once (an event's
//! own field wins over a span's of the same name), named in camelCase.
//! Values keep their type: integers and floats are JSON numbers, booleans
//! are booleans, an `Option` that is `None` is left out (tracing records
//! nothing for it), and text is a string. Call sites record Display text or
//! typed values, never `Debug` (`tests/it/observability.rs` checks every
//! kind of line of a real `serve`).
//!
//! Lines are written by a thread of their own (tracing-appender's
//! non-blocking writer, never lossy: a full queue makes the logger wait,
//! it never drops a line), into a buffer flushed whenever that queue is
//! empty. Writing each line to stderr where it was logged cost a write(2)
//! per API request on the request path: about 10 % of `serve`'s CPU in the
//! bench's ingest (perf), and the access log alone 9 µs of Postback CPU
//! per request (A/B with and without it). The [`LogGuard`] flushes what is
//! queued when dropped; a process killed outright loses the lines of its
//! last moment that were still queued.

use std::fmt;
use std::io::IsTerminal;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The filter used when neither `POSTBACK_LOG_LEVEL` nor `RUST_LOG` is set
/// (sqlx's per-statement lines only from warn up).
const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// The log writer's buffer: many lines per write(2) under load.
const WRITE_BUFFER: usize = 64 * 1024;

/// Keeps the log writer's thread: dropping it writes out every line still
/// queued. Hold it until the process is done.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Sets up tracing once per process: `POSTBACK_LOG_LEVEL` (`level`), else
/// `RUST_LOG`, else `info` (sqlx from `warn` up), written to stderr by the
/// log thread the returned guard keeps.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(format: LogFormat, level: Option<&str>) -> LogGuard {
    let filter = level
        .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("postback-log")
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(TypedFields)
            .event_format(JsonLines)
            .try_init(),
        // Colour only on a terminal: never escape codes in pipes and files.
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    guard
}

/// `snake_case` → `camelCase` (field names are Rust identifiers; the JSON
/// of SPEC §2 is camelCase, and so are the logs). `r#type`-style raw names
/// lose their prefix.
fn camel_case(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Collects fields as typed JSON values under camelCase names, each once.
#[derive(Default)]
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn put(&mut self, name: &str, value: Value) {
        // `log` records bridged into tracing carry their origin as
        // `log.*` fields; the normalised metadata already says it.
        if name.starts_with("log.") {
            return;
        }
        let key = camel_case(name);
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn from_json(text: &str) -> Fields {
        match serde_json::from_str::<serde_json::Map<String, Value>>(text) {
            Ok(map) => Fields(map.into_iter().collect()),
            Err(_) => Fields::default(),
        }
    }

    fn to_object(&self) -> serde_json::Map<String, Value> {
        self.0.iter().cloned().collect()
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities have no JSON number: left out, like `None`.
        if let Some(n) = serde_json::Number::from_f64(value) {
            self.put(field.name(), Value::Number(n));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value.into());
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        match i64::try_from(value) {
            Ok(v) => self.put(field.name(), v.into()),
            Err(_) => self.put(field.name(), value.to_string().into()),
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        match u64::try_from(value) {
            Ok(v) => self.put(field.name(), v.into()),
            Err(_) => self.put(field.name(), value.to_string().into()),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, like anyhow's `{:#}`: the cause is often the
        // part that says what to fix.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.put(field.name(), text.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields and the message arrive here as Display text.
        self.put(field.name(), format!("{value:?}").into());
    }
}

/// How span fields are kept between the span's creation and its events: a
/// JSON object with the typed, camelCase fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct TypedFields;

impl<'writer> FormatFields<'writer> for TypedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut collected = Fields::default();
        fields.record(&mut collected);
        let text = serde_json::to_string(&collected.to_object()).map_err(|_| fmt::Error)?;
        writer.write_str(&text)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut collected = Fields::from_json(&current.fields);
        fields.record(&mut collected);
        current.fields = serde_json::to_string(&collected.to_object()).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// The `json` line format (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, TypedFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, TypedFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), now_rfc3339().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                if let Some(stored) = extensions.get::<FormattedFields<TypedFields>>() {
                    for (k, v) in Fields::from_json(&stored.fields).0 {
                        fields.put(&k, v);
                    }
                }
            }
            if let Some(name) = innermost {
                line.insert("span".into(), name.into());
            }
        }
        event.record(&mut fields);
        for (key, value) in fields.0 {
            // The fixed keys above are not overwritten by a field.
            line.entry(key).or_insert(value);
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn names_become_camel_case() {
        assert_eq!(camel_case("delivery_id"), "deliveryId");
        assert_eq!(camel_case("message"), "message");
        assert_eq!(camel_case("latency_ms"), "latencyMs");
        assert_eq!(camel_case("a_b_c"), "aBC");
        assert_eq!(camel_case("r#type"), "type");
        assert_eq!(camel_case("_private"), "_private");
    }

    /// Everything written, as one string.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(f: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .fmt_fields(TypedFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn fields_keep_their_types_and_absent_values_are_left_out() {
        let lines = lines_of(|| {
            let nothing: Option<u16> = None;
            let status: Option<u16> = Some(503);
            tracing::info!(
                attempt = 3u32,
                took_ms = 1.5f64,
                ok = false,
                status,
                nothing,
                host = %"example.com",
                text = "plain",
                "an event"
            );
        });
        let line = &lines[0];
        assert_eq!(line["message"], "an event");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["attempt"], 3);
        assert_eq!(line["tookMs"], 1.5);
        assert_eq!(line["ok"], false);
        assert_eq!(line["status"], 503);
        assert!(!line.contains_key("nothing"), "{line:?}");
        assert_eq!(line["host"], "example.com");
        assert_eq!(line["text"], "plain");
        let ts = line["timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert!(ts.ends_with('Z'), "UTC: {ts}");
    }

    #[test]
    fn span_fields_appear_once_and_the_event_field_wins() {
        let lines = lines_of(|| {
            let outer = tracing::info_span!("request", request_id = "r1", method = "GET");
            let _o = outer.enter();
            let inner = tracing::info_span!("attempt", delivery_id = "d1", attempt = 1u32);
            let _i = inner.enter();
            inner.record("attempt", 2u32);
            tracing::warn!(attempt = 7u32, "inside");
        });
        let line = &lines[0];
        assert_eq!(line["span"], "attempt");
        assert_eq!(line["requestId"], "r1");
        assert_eq!(line["deliveryId"], "d1");
        assert_eq!(line["attempt"], 7, "{line:?}");
        let text = serde_json::to_string(line).unwrap();
        assert_eq!(text.matches("requestId").count(), 1, "{text}");
        assert!(!line.contains_key("spans"), "{line:?}");
    }

    #[test]
    fn a_recorded_span_field_updates_the_stored_one() {
        let lines = lines_of(|| {
            let span = tracing::info_span!("request", status = tracing::field::Empty, id = 1u8);
            let _e = span.enter();
            span.record("status", 201u16);
            tracing::info!("done");
        });
        assert_eq!(lines[0]["status"], 201);
        assert_eq!(lines[0]["id"], 1);
    }

    #[test]
    fn errors_carry_their_causes() {
        let err = std::io::Error::other("disk on fire");
        let outer = anyhow::Error::new(err).context("writing the outcome");
        let boxed: Box<dyn std::error::Error + Send + Sync> = outer.into();
        let lines = lines_of(|| {
            tracing::error!(
                error = &*boxed as &(dyn std::error::Error + 'static),
                "failed"
            );
        });
        assert_eq!(lines[0]["error"], "writing the outcome: disk on fire");
    }
}
