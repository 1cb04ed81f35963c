//! The `webvtt` transcript format (`text/vtt`): a `WEBVTT` header line and
//! a blank line, then one block per cue, blocks separated by a blank line: a numeric cue identifier, an
//! `HH:MM:SS.mmm --> HH:MM:SS.mmm` timing line and one text line. `\n` line
//! ends, UTF-8 without BOM.
//!
//! Cue text is escaped as the WebVTT cue-text syntax requires: `&` → `&amp;`,
//! `<` → `&lt;`, `>` → `&gt;` (which also keeps `-->` out of cue payloads).
//! Cue text is already one non-empty line, so no blank line can end a cue
//! early.
//!
//! Pure function, one pass into one pre-sized `String`: no I/O, no
//! database, no cue grouping (it takes cues).

use std::fmt::Write as _;

use crate::render::cues::{push_clock, Cue};

/// Content-Type of the `webvtt` format.
pub const CONTENT_TYPE: &str = "text/vtt";

/// Renders cues as a WebVTT document (the header and a blank line for no
/// cues: some readers insist on the blank line).
pub fn render(cues: &[Cue]) -> String {
    let capacity = 8 + cues.iter().map(|c| c.text.len() + 48).sum::<usize>();
    let mut out = String::with_capacity(capacity);
    out.push_str("WEBVTT\n\n");
    for (i, cue) in cues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Writing into a String cannot fail.
        let _ = writeln!(out, "{}", i + 1);
        push_clock(&mut out, cue.start_ms, '.');
        out.push_str(" --> ");
        push_clock(&mut out, cue.end_ms.max(cue.start_ms), '.');
        out.push('\n');
        push_escaped(&mut out, &cue.text);
        out.push('\n');
    }
    out
}

/// Appends cue text escaped for WebVTT cue payloads, on one line.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // Line breaks cannot occur in cue text; keep the invariant anyway.
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Word;
    use crate::render::cues::cues;
    use crate::render::readers;

    fn word(s: u64, e: u64, w: &str) -> Word {
        Word {
            p: 0,
            s,
            e,
            c: 0.5,
            w: w.to_owned(),
        }
    }

    #[test]
    fn exact_output() {
        let c = cues(&[
            word(1370, 1609, "Hi"),
            word(1700, 2000, "there."),
            word(3_723_004, 3_724_000, "Later"),
        ]);
        assert_eq!(
            render(&c),
            "WEBVTT\n\n1\n00:00:01.370 --> 00:00:02.000\nHi there.\n\n\
             2\n01:02:03.004 --> 01:02:04.000\nLater\n"
        );
        assert_eq!(render(&[]), "WEBVTT\n\n");
    }

    #[test]
    fn cue_text_is_escaped() {
        let c = cues(&[
            word(0, 1, "<b>Tom"),
            word(1, 2, "&"),
            word(2, 3, "Jerry</b>"),
            word(3, 4, "-->"),
        ]);
        let out = render(&c);
        assert!(
            out.ends_with("\n&lt;b&gt;Tom &amp; Jerry&lt;/b&gt; --&gt;\n"),
            "{out}"
        );
        let body = out.split_once("\n\n").map(|x| x.1).unwrap_or_default();
        assert_eq!(body.matches("-->").count(), 1);
        assert!(!body.contains('<'));
    }

    #[test]
    fn independent_readers_load_it() {
        let words = vec![
            word(1370, 1609, "Hi"),
            word(1700, 1900, "<there>"),
            word(2000, 2100, "&amp;"),
            word(2100, 2200, "-->"),
            word(2300, 2400, "NOTE"),
            word(2400, 2410, "."),
            word(9000, 9500, "Ünïcödé 字幕"),
            word(9500, 20_000, "long"),
            word(360_000_000 - 2000, 360_000_000 - 1, "late"),
        ];
        let c = cues(&words);
        assert_eq!(c.len(), 4);
        readers::check_webvtt(&render(&c), &c);
    }
}
