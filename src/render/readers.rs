//! Test support only (compiled under `cfg(test)`): loads rendered SRT,
//! WebVTT and DFXP with independent, third-party readers of each format and
//! checks that what they read back matches the cues that were rendered.
//!
//! Readers: SRT with `srtlib` and `subtp`; WebVTT with `webvtt-parser` and
//! `subtp`; DFXP with `roxmltree` (XML well-formedness and TTML structure:
//! namespace, `xml:lang`, `tt/body/div/p`) and `ttml-subtitle` (TTML
//! document model and the TTML `<time-expression>` grammar). Nothing here
//! uses the renderers' own code; expected texts are derived independently.

use crate::render::cues::Cue;

/// What a reader saw of one cue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

fn expected(cues: &[Cue], text: impl Fn(&str) -> String) -> Vec<Read> {
    cues.iter()
        .map(|c| Read {
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            text: text(&c.text),
        })
        .collect()
}

/// SubRip has no escaping: the only change the writer may make is to break
/// `-->` sequences. Derived here by repeated replacement, not the writer's
/// single-pass algorithm.
fn srt_text(text: &str) -> String {
    let mut s = text.to_owned();
    while s.contains("-->") {
        s = s.replace("-->", "->");
    }
    s
}

/// Decodes the three character references the WebVTT writer uses. Neither
/// WebVTT reader decodes references (they return raw cue payloads).
fn vtt_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub(crate) fn srt_srtlib(doc: &str) -> Vec<Read> {
    let subs = srtlib::Subtitles::parse_from_str(doc.to_owned())
        .unwrap_or_else(|e| panic!("srtlib rejected the SRT: {e:?}\n{doc}"));
    let ms = |t: &srtlib::Timestamp| {
        let (h, m, s, ms) = t.get();
        ((u64::from(h) * 60 + u64::from(m)) * 60 + u64::from(s)) * 1000 + u64::from(ms)
    };
    subs.to_vec()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            assert_eq!(s.num, i + 1, "srtlib: cue numbering");
            Read {
                start_ms: ms(&s.start_time),
                end_ms: ms(&s.end_time),
                // The block of the last cue keeps the file's final newline.
                text: s.text.strip_suffix('\n').unwrap_or(&s.text).to_owned(),
            }
        })
        .collect()
}

pub(crate) fn srt_subtp(doc: &str) -> Vec<Read> {
    if doc.is_empty() {
        // subtp's grammar requires at least one cue; an empty SRT is empty.
        return Vec::new();
    }
    let srt = subtp::srt::SubRip::parse(doc)
        .unwrap_or_else(|e| panic!("subtp rejected the SRT: {e:?}\n{doc}"));
    let ms = |t: &subtp::srt::SrtTimestamp| {
        ((u64::from(t.hours) * 60 + u64::from(t.minutes)) * 60 + u64::from(t.seconds)) * 1000
            + u64::from(t.milliseconds)
    };
    srt.subtitles
        .iter()
        .enumerate()
        .map(|(i, s)| {
            assert_eq!(s.sequence as usize, i + 1, "subtp: cue numbering");
            Read {
                start_ms: ms(&s.start),
                end_ms: ms(&s.end),
                text: s.text.join("\n"),
            }
        })
        .collect()
}

pub(crate) fn vtt_webvtt_parser(doc: &str) -> Vec<Read> {
    let vtt = webvtt_parser::Vtt::parse(doc)
        .unwrap_or_else(|e| panic!("webvtt-parser rejected the WebVTT: {e:?}\n{doc}"));
    vtt.cues
        .iter()
        .map(|c| Read {
            start_ms: c.start.as_milliseconds(),
            end_ms: c.end.as_milliseconds(),
            text: vtt_unescape(c.text),
        })
        .collect()
}

pub(crate) fn vtt_subtp(doc: &str) -> Vec<Read> {
    let vtt = subtp::vtt::WebVtt::parse(doc)
        .unwrap_or_else(|e| panic!("subtp rejected the WebVTT: {e:?}\n{doc}"));
    let ms = |t: &subtp::vtt::VttTimestamp| {
        ((u64::from(t.hours) * 60 + u64::from(t.minutes)) * 60 + u64::from(t.seconds)) * 1000
            + u64::from(t.milliseconds)
    };
    vtt.blocks
        .iter()
        .map(|b| match b {
            subtp::vtt::VttBlock::Que(c) => Read {
                start_ms: ms(&c.timings.start),
                end_ms: ms(&c.timings.end),
                text: vtt_unescape(&c.payload.join("\n")),
            },
            other => panic!("subtp: unexpected block {other:?}"),
        })
        .collect()
}

/// A strict TTML clock-time `HH:MM:SS.mmm` (hours two digits or more).
fn ttml_clock_ms(value: &str) -> u64 {
    let bad = || -> ! { panic!("not an HH:MM:SS.mmm clock time: {value:?}") };
    let (hms, frac) = value.split_once('.').unwrap_or_else(|| bad());
    let parts: Vec<&str> = hms.split(':').collect();
    let digits = |s: &str, n: Option<usize>| {
        let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let len_ok = n.map_or(s.len() >= 2, |n| s.len() == n);
        if !ok || !len_ok {
            bad();
        }
        s.parse::<u64>().unwrap_or_else(|_| bad())
    };
    if parts.len() != 3 {
        bad();
    }
    let (h, m, s, f) = (
        digits(parts[0], None),
        digits(parts[1], Some(2)),
        digits(parts[2], Some(2)),
        digits(frac, Some(3)),
    );
    assert!(m < 60 && s < 60, "{value}");
    ((h * 60 + m) * 60 + s) * 1000 + f
}

fn elements<'a, 'i>(n: roxmltree::Node<'a, 'i>) -> Vec<roxmltree::Node<'a, 'i>> {
    n.children().filter(|c| c.is_element()).collect()
}

pub(crate) fn dfxp_roxmltree(doc: &str) -> Vec<Read> {
    const TT: &str = "http://www.w3.org/ns/ttml";
    const XML: &str = "http://www.w3.org/XML/1998/namespace";
    let xml = roxmltree::Document::parse(doc)
        .unwrap_or_else(|e| panic!("roxmltree rejected the DFXP: {e}\n{doc}"));
    let tt = xml.root_element();
    assert_eq!(tt.tag_name().namespace(), Some(TT));
    assert_eq!(tt.tag_name().name(), "tt");
    assert_eq!(tt.attribute((XML, "lang")), Some("en"));
    let body = elements(tt);
    assert_eq!(body.len(), 1);
    assert_eq!(body[0].tag_name().namespace(), Some(TT));
    assert_eq!(body[0].tag_name().name(), "body");
    let divs = elements(body[0]);
    assert_eq!(divs.len(), 1);
    assert_eq!(divs[0].tag_name().name(), "div");
    elements(divs[0])
        .into_iter()
        .map(|p| {
            assert_eq!(p.tag_name().namespace(), Some(TT));
            assert_eq!(p.tag_name().name(), "p");
            assert!(elements(p).is_empty(), "p has only text");
            let begin = ttml_clock_ms(p.attribute("begin").expect("begin"));
            let end = ttml_clock_ms(p.attribute("end").expect("end"));
            assert!(begin <= end);
            Read {
                start_ms: begin,
                end_ms: end,
                text: p.text().unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

pub(crate) fn dfxp_ttml_subtitle(doc: &str) -> Vec<Read> {
    use ttml_subtitle::time::{parse_time_expression, TimeContext};
    use ttml_subtitle::{InlineContent, TimeExpression};

    let parsed = ttml_subtitle::Document::parse_str(doc)
        .unwrap_or_else(|e| panic!("ttml-subtitle rejected the DFXP: {e:?}\n{doc}"));
    assert_eq!(parsed.tt.xml_lang.as_deref(), Some("en"));
    let body = parsed.tt.body.as_ref().expect("ttml-subtitle: no body");
    let ctx = TimeContext::default();
    let ms = |value: Option<&String>| {
        let value = value.expect("ttml-subtitle: p without begin/end");
        match parse_time_expression(value, &ctx) {
            Ok(TimeExpression::ClockTime {
                hours,
                minutes,
                seconds,
                fraction,
                frames: None,
                sub_frames: None,
            }) => {
                let fraction = fraction.unwrap_or_default();
                assert_eq!(fraction.len(), 3, "{value}");
                let millis: u64 = fraction.parse().unwrap_or_else(|_| panic!("{value}"));
                ((u64::from(hours) * 60 + u64::from(minutes)) * 60 + u64::from(seconds)) * 1000
                    + millis
            }
            other => panic!("ttml-subtitle: {value:?} is not a clock time: {other:?}"),
        }
    };
    body.divs
        .iter()
        .flat_map(|d| d.paragraphs.iter())
        .map(|p| {
            let text: String = p
                .content
                .iter()
                .map(|c| match c {
                    InlineContent::Text(t) => t.as_str(),
                    other => panic!("ttml-subtitle: unexpected inline content {other:?}"),
                })
                .collect();
            Read {
                start_ms: ms(p.begin.as_ref()),
                end_ms: ms(p.end.as_ref()),
                text,
            }
        })
        .collect()
}

/// Both SRT readers load `doc` and read back exactly `cues`.
pub(crate) fn check_srt(doc: &str, cues: &[Cue]) {
    let want = expected(cues, srt_text);
    assert_eq!(srt_srtlib(doc), want, "srtlib\n{doc}");
    assert_eq!(srt_subtp(doc), want, "subtp\n{doc}");
}

/// Both WebVTT readers load `doc` and read back exactly `cues`.
pub(crate) fn check_webvtt(doc: &str, cues: &[Cue]) {
    let want = expected(cues, str::to_owned);
    assert_eq!(vtt_webvtt_parser(doc), want, "webvtt-parser\n{doc}");
    assert_eq!(vtt_subtp(doc), want, "subtp\n{doc}");
}

/// Both TTML readers load `doc` and read back exactly `cues`.
pub(crate) fn check_dfxp(doc: &str, cues: &[Cue]) {
    let want = expected(cues, str::to_owned);
    assert_eq!(dfxp_roxmltree(doc), want, "roxmltree\n{doc}");
    assert_eq!(dfxp_ttml_subtitle(doc), want, "ttml-subtitle\n{doc}");
}
