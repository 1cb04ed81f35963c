//! The `text` transcript format (`text/plain`): the transcript's words on
//! one line, a space between words and none before punctuation-only words
//! (`"Hi" "," "there" "."` → `Hi, there.`). Empty and whitespace-only words
//! are skipped and whitespace inside a word becomes one space, as in cues.
//! No trailing newline.
//!
//! Pure function, one pass into one pre-sized `String`: no I/O, no
//! database, no cue grouping.

use crate::model::Word;
use crate::render::words;

/// Content-Type of the `text` format.
pub const CONTENT_TYPE: &str = "text/plain";

/// Renders the words as plain text.
pub fn render(transcript_words: &[Word]) -> String {
    let capacity = transcript_words.iter().map(|w| w.w.len() + 1).sum();
    let mut out = String::with_capacity(capacity);
    for word in transcript_words {
        if let Some(text) = words::clean(&word.w) {
            words::push_word(&mut out, &text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<Word> {
        list.iter()
            .enumerate()
            .map(|(i, t)| Word {
                p: i as u64,
                s: i as u64 * 100,
                e: i as u64 * 100 + 90,
                c: 1.0,
                w: (*t).to_owned(),
            })
            .collect()
    }

    #[test]
    fn words_with_spaces_and_attached_punctuation() {
        let out = render(&words(&[
            "Hi", ",", "how", "are", "you", "?", "I'm", "fine", ".",
        ]));
        assert_eq!(out, "Hi, how are you? I'm fine.");
    }

    #[test]
    fn empty_and_whitespace_words() {
        assert_eq!(render(&[]), "");
        assert_eq!(render(&words(&["", " ", "\n"])), "");
        assert_eq!(render(&words(&["", "a", "  ", "b\nc", "\t"])), "a b c");
        // Leading punctuation has no leading space.
        assert_eq!(render(&words(&[".", "a"])), ". a");
    }

    #[test]
    fn text_is_not_escaped() {
        assert_eq!(render(&words(&["<b>", "&", "-->"])), "<b> & -->");
    }
}
