//! How one recognised word becomes displayable text: whitespace and control
//! character clean-up, the joining rule (which words attach to the previous
//! one without a space) and what ends a sentence.
//!
//! Shared by the cue grouping and the plain-text renderer so that every
//! format shows the same words the same way. Pure functions on `&str`: no
//! I/O, no database, no allocation unless a word actually needs cleaning.

use std::borrow::Cow;

/// Characters removed from words outright: control characters that are not
/// whitespace (NUL, ESC, DEL, C1 controls…) and the two noncharacters that
/// XML 1.0 forbids. None of them can be shown, and several break readers.
fn is_dropped(c: char) -> bool {
    (c.is_control() && !c.is_whitespace()) || c == '\u{FFFE}' || c == '\u{FFFF}'
}

/// The displayable form of a word, or `None` when nothing displayable is
/// left (empty or whitespace-only words are skipped by every renderer).
///
/// Runs of whitespace of any kind (newlines, tabs, U+2028…) become one space
/// and the ends are trimmed, so a word is always a single line; dropped
/// characters (see [`is_dropped`]) are removed. Already-clean words are
/// borrowed, not copied.
pub(crate) fn clean(word: &str) -> Option<Cow<'_, str>> {
    // Fast path: one scan to see whether the word is already clean.
    let mut after_space = true; // at the start, a space would be leading
    let mut is_clean = true;
    for c in word.chars() {
        if c.is_whitespace() {
            if after_space || c != ' ' {
                is_clean = false;
                break;
            }
            after_space = true;
        } else if is_dropped(c) {
            is_clean = false;
            break;
        } else {
            after_space = false;
        }
    }
    // `after_space` at the end means empty or a trailing space.
    if is_clean && !after_space {
        return Some(Cow::Borrowed(word));
    }

    let mut out = String::with_capacity(word.len());
    let mut pending_space = false;
    for c in word.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else if !is_dropped(c) {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(Cow::Owned(out))
    }
}

/// Punctuation that closes something and so sits against the word before it.
/// Opening marks (`(`, `¿`, `“`) and ambiguous ones (`"`, `'`, `-`) are not
/// here: they keep their leading space.
fn is_closing_punctuation(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | ';'
            | ':'
            | '!'
            | '?'
            | '…'
            | ')'
            | ']'
            | '}'
            | '%'
            | '”'
            | '’'
            | '»'
            | '。'
            | '，'
            | '、'
            | '？'
            | '！'
            | '：'
            | '；'
            | '）'
    )
}

/// Whether a (clean) word attaches to the previous word without a space:
/// true for punctuation-only words such as `.`, `,`, `?!` or `...`.
pub(crate) fn attaches(word: &str) -> bool {
    !word.is_empty() && word.chars().all(is_closing_punctuation)
}

/// Number of characters (Unicode scalar values) `word` adds to a line that
/// already holds text: the word plus its separating space, if any.
pub(crate) fn added_chars(word: &str, line_is_empty: bool) -> usize {
    let space = usize::from(!line_is_empty && !attaches(word));
    space + word.chars().count()
}

/// Appends a clean word to `line` with the joining rule: a space between
/// words, none before the first word or before a punctuation-only word.
pub(crate) fn push_word(line: &mut String, word: &str) {
    if !line.is_empty() && !attaches(word) {
        line.push(' ');
    }
    line.push_str(word);
}

/// Whether a (clean) word ends a sentence: its last character, ignoring
/// closing quotes and brackets, is `.`, `?` or `!` (or the ellipsis and the
/// full-width CJK forms of those marks).
pub(crate) fn ends_sentence(word: &str) -> bool {
    let core = word.trim_end_matches(['"', '\'', '”', '’', ')', ']', '}', '»', '）']);
    core.ends_with(['.', '?', '!', '…', '。', '？', '！'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_borrows_clean_words() {
        assert!(matches!(clean("Hello"), Some(Cow::Borrowed("Hello"))));
        assert!(matches!(clean("New York"), Some(Cow::Borrowed("New York"))));
    }

    #[test]
    fn clean_collapses_whitespace_and_drops_controls() {
        assert_eq!(clean("  New\n\t York \r\n").as_deref(), Some("New York"));
        assert_eq!(clean("a\u{2028}b").as_deref(), Some("a b"));
        assert_eq!(clean("a\u{0}b\u{1b}").as_deref(), Some("ab"));
        assert_eq!(clean("a \u{7f} b").as_deref(), Some("a b"));
        assert_eq!(clean("x\u{FFFF}").as_deref(), Some("x"));
    }

    #[test]
    fn clean_skips_empty_and_whitespace_words() {
        assert_eq!(clean(""), None);
        assert_eq!(clean("   "), None);
        assert_eq!(clean("\n\t\r"), None);
        assert_eq!(clean("\u{0}\u{1}"), None);
    }

    #[test]
    fn joining_rule() {
        let mut line = String::new();
        for w in ["Hi", ",", "how", "are", "you", "?!", "(fine)", "..."] {
            push_word(&mut line, w);
        }
        assert_eq!(line, "Hi, how are you?! (fine)...");
        // A punctuation word first in a line gets no space either way.
        let mut line = String::new();
        push_word(&mut line, ".");
        assert_eq!(line, ".");
        assert_eq!(added_chars("word", true), 4);
        assert_eq!(added_chars("word", false), 5);
        assert_eq!(added_chars(".", false), 1);
        assert_eq!(added_chars("héllo", false), 6);
        assert!(!attaches("\""));
        assert!(!attaches("-"));
        assert!(!attaches("a."));
    }

    #[test]
    fn sentence_ends() {
        for w in [
            "end.",
            "why?",
            "stop!",
            ".",
            "\"Yes.\"",
            "(really?)",
            "wait…",
            "终。",
        ] {
            assert!(ends_sentence(w), "{w}");
        }
        for w in ["word", "3.5", "a,", "\"quoted\"", "--"] {
            assert!(!ends_sentence(w), "{w}");
        }
    }
}
