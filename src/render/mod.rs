//! Callback bodies (SPEC §2 "What a callback carries"): the transcript in
//! each `format` (`json`, `text`, `srt`, `webvtt`, `dfxp`) with its exact
//! Content-Type, and the analytics / failed-job JSON documents.
//!
//! One file per concern: `words` cleans and joins words, [`cues`](mod@cues)
//! groups them into timed cues, [`text`], [`srt`], [`webvtt`] and [`dfxp`]
//! write one format each, [`analytics`] builds the JSON bodies.
//!
//! Everything here is a pure function of its arguments: no I/O, no
//! database, no clock, no configuration. Rendering is linear in the number
//! of words and writes each body into one pre-sized buffer.

pub mod analytics;
pub mod cues;
pub mod dfxp;
pub mod srt;
pub mod text;
pub mod webvtt;
mod words;

#[cfg(test)]
mod readers;

pub use analytics::{analytics_body, failed_body};
pub use cues::{cues, Cue};

use crate::model::{Transcript, TranscriptFormat};

/// A rendered body and the Content-Type it goes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Exact `Content-Type` header value.
    pub content_type: &'static str,
    /// The body bytes (UTF-8 for every transcript format).
    pub body: Vec<u8>,
}

/// Content-Type of a transcript format.
pub fn content_type(format: TranscriptFormat) -> &'static str {
    match format {
        TranscriptFormat::Json => "application/json",
        TranscriptFormat::Text => text::CONTENT_TYPE,
        TranscriptFormat::Srt => srt::CONTENT_TYPE,
        TranscriptFormat::Webvtt => webvtt::CONTENT_TYPE,
        TranscriptFormat::Dfxp => dfxp::CONTENT_TYPE,
    }
}

/// Wire name of a transcript format (as in `format` of a callback and of
/// `alternateFormats` entries).
pub fn format_name(format: TranscriptFormat) -> &'static str {
    match format {
        TranscriptFormat::Json => "json",
        TranscriptFormat::Text => "text",
        TranscriptFormat::Srt => "srt",
        TranscriptFormat::Webvtt => "webvtt",
        TranscriptFormat::Dfxp => "dfxp",
    }
}

/// The body of a `transcript` callback in `format`.
///
/// `json` is the transcript object as given (words untouched, extra fields
/// passed through); the other formats show cleaned words (see
/// [`cues`](mod@cues)).
pub fn render_transcript(t: &Transcript, format: TranscriptFormat) -> Rendered {
    let body = match format {
        // A Transcript always serializes (string keys; serde_json writes
        // non-finite floats as null), so the fallback is unreachable.
        TranscriptFormat::Json => serde_json::to_vec(t).unwrap_or_else(|_| b"{}".to_vec()),
        TranscriptFormat::Text => text::render(&t.words).into_bytes(),
        TranscriptFormat::Srt => srt::render(&cues(&t.words)).into_bytes(),
        TranscriptFormat::Webvtt => webvtt::render(&cues(&t.words)).into_bytes(),
        TranscriptFormat::Dfxp => dfxp::render(&cues(&t.words)).into_bytes(),
    };
    Rendered {
        content_type: content_type(format),
        body,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::Word;

    fn transcript() -> Transcript {
        serde_json::from_value(json!({
            "confidence": 0.91,
            "words": [
                {"p": 0, "s": 1370, "e": 1609, "c": 0.263, "w": "Hi"},
                {"p": 1, "s": 1610, "e": 1900, "c": 0.9, "w": "there"},
                {"p": 2, "s": 1900, "e": 1900, "c": 0.9, "w": "."},
                {"p": 3, "s": 2500, "e": 2900, "c": 0.8, "w": "Bye"}
            ],
            "engine": "x"
        }))
        .expect("fixture")
    }

    fn utf8(r: &Rendered) -> &str {
        std::str::from_utf8(&r.body).expect("utf-8")
    }

    #[test]
    fn every_format_has_its_content_type() {
        let t = transcript();
        let cases = [
            (TranscriptFormat::Json, "application/json"),
            (TranscriptFormat::Text, "text/plain"),
            (TranscriptFormat::Srt, "text/srt"),
            (TranscriptFormat::Webvtt, "text/vtt"),
            (TranscriptFormat::Dfxp, "application/ttaf+xml"),
        ];
        for (format, ct) in cases {
            assert_eq!(render_transcript(&t, format).content_type, ct, "{format:?}");
            assert_eq!(content_type(format), ct);
            let wire = serde_json::to_value(format).expect("format");
            assert_eq!(wire, json!(format_name(format)));
        }
    }

    #[test]
    fn json_is_the_transcript_object() {
        let t = transcript();
        let r = render_transcript(&t, TranscriptFormat::Json);
        let back: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(back, serde_json::to_value(&t).expect("value"));
        assert_eq!(back["engine"], "x");
        assert_eq!(back["words"][0]["w"], "Hi");
    }

    #[test]
    fn text_srt_webvtt_dfxp_bodies() {
        let t = transcript();
        assert_eq!(
            utf8(&render_transcript(&t, TranscriptFormat::Text)),
            "Hi there. Bye"
        );
        let c = cues(&t.words);
        assert_eq!(c.len(), 2);
        let srt = render_transcript(&t, TranscriptFormat::Srt);
        readers::check_srt(utf8(&srt), &c);
        let vtt = render_transcript(&t, TranscriptFormat::Webvtt);
        readers::check_webvtt(utf8(&vtt), &c);
        let dfxp = render_transcript(&t, TranscriptFormat::Dfxp);
        readers::check_dfxp(utf8(&dfxp), &c);
    }

    #[test]
    fn empty_transcript_renders_in_every_format() {
        let t = Transcript::default();
        assert_eq!(utf8(&render_transcript(&t, TranscriptFormat::Text)), "");
        readers::check_srt(utf8(&render_transcript(&t, TranscriptFormat::Srt)), &[]);
        readers::check_webvtt(utf8(&render_transcript(&t, TranscriptFormat::Webvtt)), &[]);
        readers::check_dfxp(utf8(&render_transcript(&t, TranscriptFormat::Dfxp)), &[]);
    }

    /// A one-hour transcript (~10,000 words) in every format: readers load
    /// all of it, and buffers were sized up front (no regrowth beyond the
    /// estimate means no repeated copying).
    #[test]
    fn one_hour_transcript() {
        let words: Vec<Word> = (0..10_000u64)
            .map(|i| Word {
                p: i,
                s: i * 360,
                e: i * 360 + 300,
                c: 0.9,
                w: match i % 13 {
                    12 => "end.".to_owned(),
                    5 => "<&>".to_owned(),
                    _ => format!("word{i}"),
                },
            })
            .collect();
        let c = cues(&words);
        let srt = srt::render(&c);
        let vtt = webvtt::render(&c);
        let ttml = dfxp::render(&c);
        let estimate: usize = c.iter().map(|c| c.text.len() + 48).sum();
        assert!(srt.len() <= estimate, "srt outgrew its estimate");
        readers::check_srt(&srt, &c);
        readers::check_webvtt(&vtt, &c);
        readers::check_dfxp(&ttml, &c);
        assert_eq!(text::render(&words).split(' ').count(), 10_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_format_loads_in_independent_readers(words in cues::tests::arb_words(80)) {
            let c = cues(&words);
            readers::check_srt(&srt::render(&c), &c);
            readers::check_webvtt(&webvtt::render(&c), &c);
            readers::check_dfxp(&dfxp::render(&c), &c);
        }
    }
}
