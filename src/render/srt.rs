//! The `srt` transcript format (`text/srt`): SubRip cues numbered from 1,
//! `HH:MM:SS,mmm --> HH:MM:SS,mmm` timing lines, one text line per cue,
//! blocks separated by one blank line, `\n` line ends, UTF-8 without BOM.
//!
//! SubRip has no escaping. Cue text is already a single non-empty line (see
//! [`cues`](mod@crate::render::cues)), so it cannot hold a blank line; the one thing
//! left to neutralise is `-->`, which readers take for a timing line: any run
//! of two or more `-` followed by `>` is written as `->`. `<`, `>` and `&`
//! are written as they are (SubRip readers show them literally, apart from
//! the `<i>`-style tags some players interpret).
//!
//! Pure function, one pass into one pre-sized `String`: no I/O, no
//! database, no cue grouping (it takes cues).

use std::fmt::Write as _;

use crate::render::cues::{push_clock, Cue};

/// Content-Type of the `srt` format.
pub const CONTENT_TYPE: &str = "text/srt";

/// Renders cues as a SubRip document (empty string for no cues).
pub fn render(cues: &[Cue]) -> String {
    let capacity = cues.iter().map(|c| c.text.len() + 48).sum();
    let mut out = String::with_capacity(capacity);
    for (i, cue) in cues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Writing into a String cannot fail.
        let _ = writeln!(out, "{}", i + 1);
        push_clock(&mut out, cue.start_ms, ',');
        out.push_str(" --> ");
        push_clock(&mut out, cue.end_ms.max(cue.start_ms), ',');
        out.push('\n');
        push_text(&mut out, &cue.text);
        out.push('\n');
    }
    out
}

/// Appends cue text as one line with no `-->` in it.
fn push_text(out: &mut String, text: &str) {
    let line_start = out.len();
    for c in text.chars() {
        match c {
            // Line breaks cannot occur in cue text; keep the invariant anyway.
            '\n' | '\r' => out.push(' '),
            '>' => {
                // Collapse `-…->` to `->` (only within this line).
                while out.len() >= line_start + 2 && out.ends_with("--") {
                    out.pop();
                }
                out.push('>');
            }
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
            word(1700, 1900, "there"),
            word(1900, 2000, "."),
            word(3_723_004, 3_724_000, "Later"),
        ]);
        assert_eq!(
            render(&c),
            "1\n00:00:01,370 --> 00:00:02,000\nHi there.\n\n\
             2\n01:02:03,004 --> 01:02:04,000\nLater\n"
        );
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn arrows_and_line_breaks_are_neutralised() {
        let c = vec![Cue {
            start_ms: 0,
            end_ms: 1,
            text: "a --> b ---> c -> d <-- e -->".into(),
        }];
        let out = render(&c);
        assert_eq!(
            out,
            "1\n00:00:00,000 --> 00:00:00,001\na -> b -> c -> d <-- e ->\n"
        );
        let c = cues(&[word(0, 1, "one\n\ntwo"), word(1, 2, "-->")]);
        let out = render(&c);
        assert_eq!(out.matches("-->").count(), 1, "{out}");
        assert!(!out.trim_end().contains("\n\n"), "{out}");
    }

    #[test]
    fn independent_readers_load_it() {
        let words = vec![
            word(1370, 1609, "Hi"),
            word(1700, 1900, "<there>"),
            word(2000, 2100, "&"),
            word(2100, 2200, "-->"),
            word(2300, 2400, "friend"),
            word(2400, 2410, "."),
            word(9000, 9500, "Ünïcödé"),
            word(9500, 20_000, "long"),
            word(360_000_000 - 2000, 360_000_000 - 1, "late"),
        ];
        let c = cues(&words);
        assert_eq!(c.len(), 4);
        readers::check_srt(&render(&c), &c);
    }
}
