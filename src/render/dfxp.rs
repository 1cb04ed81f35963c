//! The `dfxp` transcript format (`application/ttaf+xml`): a TTML 1 / DFXP
//! document in the `http://www.w3.org/ns/ttml` namespace with
//! `xml:lang="en"`, one `<p begin="HH:MM:SS.mmm" end="HH:MM:SS.mmm">` per
//! cue inside `<body><div>`. UTF-8 with an XML declaration.
//!
//! Cue text is escaped for XML character data (`&`, `<`, `>`); characters
//! XML 1.0 forbids never reach here (they are dropped when words are
//! cleaned), so the document is always well-formed.
//!
//! Pure function, one pass into one pre-sized `String`: no I/O, no
//! database, no cue grouping (it takes cues).

use crate::render::cues::{push_clock, Cue};

/// Content-Type of the `dfxp` format.
pub const CONTENT_TYPE: &str = "application/ttaf+xml";

const HEAD: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
<tt xmlns=\"http://www.w3.org/ns/ttml\" xml:lang=\"en\">\n  <body>\n    <div>\n";
const TAIL: &str = "    </div>\n  </body>\n</tt>\n";

/// Renders cues as a TTML/DFXP document (an empty `<div>` for no cues).
pub fn render(cues: &[Cue]) -> String {
    let capacity = HEAD.len() + TAIL.len() + cues.iter().map(|c| c.text.len() + 56).sum::<usize>();
    let mut out = String::with_capacity(capacity);
    out.push_str(HEAD);
    for cue in cues {
        out.push_str("      <p begin=\"");
        push_clock(&mut out, cue.start_ms, '.');
        out.push_str("\" end=\"");
        push_clock(&mut out, cue.end_ms.max(cue.start_ms), '.');
        out.push_str("\">");
        push_escaped(&mut out, &cue.text);
        out.push_str("</p>\n");
    }
    out.push_str(TAIL);
    out
}

/// Appends text escaped as XML character data.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
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
        let c = cues(&[word(1370, 1609, "Hi"), word(1700, 2000, "<you> & \"me\"")]);
        assert_eq!(
            render(&c),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
             <tt xmlns=\"http://www.w3.org/ns/ttml\" xml:lang=\"en\">\n  <body>\n    <div>\n      \
             <p begin=\"00:00:01.370\" end=\"00:00:02.000\">Hi &lt;you&gt; &amp; \"me\"</p>\n    \
             </div>\n  </body>\n</tt>\n"
        );
    }

    #[test]
    fn empty_transcript_is_a_valid_document() {
        let out = render(&[]);
        readers::check_dfxp(&out, &[]);
    }

    #[test]
    fn independent_readers_load_it() {
        let words = vec![
            word(1370, 1609, "Hi"),
            word(1700, 1900, "<there>"),
            word(2000, 2100, "&amp;"),
            word(2100, 2200, "]]>"),
            word(2300, 2400, "'quote\""),
            word(2400, 2410, "."),
            word(9000, 9500, "Ünïcödé 字幕 \u{1}\u{FFFE}"),
            word(9500, 20_000, "long"),
            word(360_000_000 - 2000, 360_000_000 - 1, "late"),
        ];
        let c = cues(&words);
        assert_eq!(c.len(), 4);
        readers::check_dfxp(&render(&c), &c);
    }
}
