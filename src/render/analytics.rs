//! The JSON bodies of `analytics` callbacks (SPEC §2 "What a callback
//! carries"): the finished-job document, limited by the callback's
//! `include`, and the failed-job document.
//!
//! Shape of a finished-job body: `jobId` and `status` (`"finished"`) are
//! always present; `metadata`, `transcript`, `knowledge`, `prediction`,
//! `spotting` and `streams` are present when `include` asks for them (`None`
//! asks for everything) AND the job produced them. A section the job did not
//! produce (absent or JSON `null`, no transcript, no stream with a public
//! `location`) is omitted, never sent as `null` or `[]`.
//!
//! `transcript` is the transcript object plus `alternateFormats`: `dfxp`,
//! `webvtt`, `srt` and `text`, in that order, each Base64 of the body the
//! matching `transcript` callback would carry. `streams` lists only
//! `{"streamName","streamLocation"}`: a stream's local `path` (and its
//! `contentType`) never appear.
//!
//! Pure functions: no I/O, no database.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::model::{Include, JobError, JobOutput, MediaStream, Transcript, TranscriptFormat};
use crate::render::{content_type, cues, dfxp, format_name, srt, text, webvtt};

/// Body of an analytics callback for a finished job.
pub fn analytics_body(
    job_id: &str,
    metadata: Option<&Value>,
    output: Option<&JobOutput>,
    streams: &[MediaStream],
    include: Option<&[Include]>,
) -> Value {
    let wants = |section: Include| include.is_none_or(|list| list.contains(&section));
    let produced = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();

    let mut body = Map::new();
    body.insert("jobId".into(), Value::String(job_id.to_owned()));
    body.insert("status".into(), Value::String("finished".into()));

    if wants(Include::Metadata) {
        if let Some(v) = produced(metadata) {
            body.insert("metadata".into(), v);
        }
    }
    if wants(Include::Transcript) {
        if let Some(t) = output.and_then(|o| o.transcript.as_ref()) {
            body.insert("transcript".into(), transcript_section(t));
        }
    }
    let passthrough = [
        (
            Include::Knowledge,
            "knowledge",
            output.and_then(|o| o.knowledge.as_ref()),
        ),
        (
            Include::Prediction,
            "prediction",
            output.and_then(|o| o.prediction.as_ref()),
        ),
        (
            Include::Spotting,
            "spotting",
            output.and_then(|o| o.spotting.as_ref()),
        ),
    ];
    for (section, key, value) in passthrough {
        if wants(section) {
            if let Some(v) = produced(value) {
                body.insert(key.into(), v);
            }
        }
    }
    if wants(Include::Streams) {
        let listed: Vec<Value> = streams
            .iter()
            .filter_map(|s| {
                let location = s.location.as_deref()?;
                Some(json!({"streamName": s.stream_name, "streamLocation": location}))
            })
            .collect();
        if !listed.is_empty() {
            body.insert("streams".into(), Value::Array(listed));
        }
    }
    Value::Object(body)
}

/// Body of an analytics callback for a failed job.
pub fn failed_body(job_id: &str, error: &JobError) -> Value {
    json!({
        "jobId": job_id,
        "status": "failed",
        "error": {"code": error.code, "message": error.message},
    })
}

/// The transcript object plus its `alternateFormats`.
fn transcript_section(t: &Transcript) -> Value {
    // A Transcript always serializes to an object; the fallback is unreachable.
    let mut object = match serde_json::to_value(t) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    // Group the words once for the three caption formats.
    let cues = cues(&t.words);
    let bodies = [
        (TranscriptFormat::Dfxp, dfxp::render(&cues)),
        (TranscriptFormat::Webvtt, webvtt::render(&cues)),
        (TranscriptFormat::Srt, srt::render(&cues)),
        (TranscriptFormat::Text, text::render(&t.words)),
    ];
    let formats = bodies
        .into_iter()
        .map(|(format, body)| {
            json!({
                "format": format_name(format),
                "contentType": content_type(format),
                "contentEncoding": "Base64",
                "charset": "utf-8",
                "data": STANDARD.encode(body),
            })
        })
        .collect();
    object.insert("alternateFormats".into(), Value::Array(formats));
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{readers, render_transcript};

    fn output() -> JobOutput {
        serde_json::from_value(json!({
            "transcript": {"confidence": 0.91, "words": [
                {"p": 0, "s": 1370, "e": 1609, "c": 0.263, "w": "Hi"},
                {"p": 1, "s": 1700, "e": 1800, "c": 0.5, "w": "&"},
                {"p": 2, "s": 1800, "e": 2000, "c": 0.5, "w": "bye"},
                {"p": 3, "s": 2000, "e": 2000, "c": 0.5, "w": "."}
            ]},
            "knowledge": {"topics": ["a"]},
            "prediction": {"churn": 0.1},
            "spotting": {"groups": []}
        }))
        .expect("fixture")
    }

    fn streams() -> Vec<MediaStream> {
        vec![
            MediaStream {
                stream_name: "original".into(),
                path: Some("/srv/media/secret-a.mp3".into()),
                content_type: Some("audio/mpeg".into()),
                location: Some("https://media.example.org/a.mp3?signature=x".into()),
            },
            MediaStream {
                stream_name: "redacted-audio".into(),
                path: Some("/srv/media/secret-b.mp3".into()),
                content_type: None,
                location: None,
            },
        ]
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn everything_when_include_is_none() {
        let meta = json!({"customer": 7});
        let out = output();
        let body = analytics_body("job-1", Some(&meta), Some(&out), &streams(), None);
        assert_eq!(
            keys(&body),
            [
                "jobId",
                "knowledge",
                "metadata",
                "prediction",
                "spotting",
                "status",
                "streams",
                "transcript"
            ]
        );
        assert_eq!(body["jobId"], "job-1");
        assert_eq!(body["status"], "finished");
        assert_eq!(body["metadata"], meta);
        assert_eq!(body["knowledge"], json!({"topics": ["a"]}));
        assert_eq!(body["prediction"], json!({"churn": 0.1}));
        assert_eq!(body["spotting"], json!({"groups": []}));
        assert_eq!(body["transcript"]["confidence"], 0.91);
        assert_eq!(body["transcript"]["words"][0]["w"], "Hi");
        assert_eq!(
            body["streams"],
            json!([{"streamName": "original", "streamLocation": "https://media.example.org/a.mp3?signature=x"}])
        );
    }

    #[test]
    fn include_limits_sections() {
        let meta = json!({"customer": 7});
        let out = output();
        let s = streams();
        let only = |list: &[Include]| analytics_body("j", Some(&meta), Some(&out), &s, Some(list));
        assert_eq!(keys(&only(&[])), ["jobId", "status"]);
        assert_eq!(
            keys(&only(&[Include::Transcript])),
            ["jobId", "status", "transcript"]
        );
        assert_eq!(
            keys(&only(&[Include::Metadata])),
            ["jobId", "metadata", "status"]
        );
        assert_eq!(
            keys(&only(&[
                Include::Knowledge,
                Include::Spotting,
                Include::Knowledge
            ])),
            ["jobId", "knowledge", "spotting", "status"]
        );
        assert_eq!(
            keys(&only(&[Include::Prediction])),
            ["jobId", "prediction", "status"]
        );
        assert_eq!(
            keys(&only(&[Include::Streams])),
            ["jobId", "status", "streams"]
        );
    }

    #[test]
    fn sections_not_produced_are_omitted() {
        let null = Value::Null;
        let body = analytics_body("j", Some(&null), None, &[], None);
        assert_eq!(body, json!({"jobId": "j", "status": "finished"}));
        let out = JobOutput {
            knowledge: Some(Value::Null),
            ..JobOutput::default()
        };
        let no_location = &streams()[1..];
        let body = analytics_body("j", None, Some(&out), no_location, None);
        assert_eq!(body, json!({"jobId": "j", "status": "finished"}));
    }

    #[test]
    fn local_paths_never_leak() {
        let out = output();
        for include in [None, Some(&[Include::Streams][..])] {
            let body = analytics_body("j", None, Some(&out), &streams(), include);
            let text = body.to_string();
            assert!(!text.contains("/srv/media"), "{text}");
            assert!(!text.contains("secret-"), "{text}");
            assert!(!text.contains("\"path\""), "{text}");
            assert!(!text.contains("audio/mpeg"), "{text}");
            for s in body["streams"].as_array().expect("streams") {
                assert_eq!(keys(s), ["streamLocation", "streamName"]);
            }
        }
    }

    #[test]
    fn alternate_formats_in_order_and_decodable() {
        let out = output();
        let body = analytics_body("j", None, Some(&out), &[], Some(&[Include::Transcript]));
        let formats = body["transcript"]["alternateFormats"]
            .as_array()
            .expect("array");
        let t = out.transcript.as_ref().expect("transcript");
        let c = cues(&t.words);
        let expected = [
            ("dfxp", "application/ttaf+xml", TranscriptFormat::Dfxp),
            ("webvtt", "text/vtt", TranscriptFormat::Webvtt),
            ("srt", "text/srt", TranscriptFormat::Srt),
            ("text", "text/plain", TranscriptFormat::Text),
        ];
        assert_eq!(formats.len(), expected.len());
        for (entry, (name, ct, format)) in formats.iter().zip(expected) {
            assert_eq!(
                keys(entry),
                [
                    "charset",
                    "contentEncoding",
                    "contentType",
                    "data",
                    "format"
                ]
            );
            assert_eq!(entry["format"], name);
            assert_eq!(entry["contentType"], ct);
            assert_eq!(entry["contentEncoding"], "Base64");
            assert_eq!(entry["charset"], "utf-8");
            let data = STANDARD
                .decode(entry["data"].as_str().expect("data"))
                .expect("base64");
            assert_eq!(data, render_transcript(t, format).body);
            let doc = String::from_utf8(data).expect("utf-8");
            match format {
                TranscriptFormat::Dfxp => readers::check_dfxp(&doc, &c),
                TranscriptFormat::Webvtt => readers::check_webvtt(&doc, &c),
                TranscriptFormat::Srt => readers::check_srt(&doc, &c),
                _ => assert_eq!(doc, "Hi & bye."),
            }
        }
    }

    #[test]
    fn failed_job_body() {
        let e = JobError {
            code: "media_unreadable".into(),
            message: "The media could not be decoded.".into(),
        };
        assert_eq!(
            failed_body("job-9", &e),
            json!({"jobId": "job-9", "status": "failed",
                   "error": {"code": "media_unreadable", "message": "The media could not be decoded."}})
        );
    }
}
