//! Cue grouping: turns a transcript's words into timed cues for the caption
//! formats (SRT, WebVTT, DFXP), by the rules of SPEC §2 "What a callback
//! carries", and formats cue times as clock time.
//!
//! Rules: a cue holds at most [`MAX_CUE_MS`] from its earliest start to its
//! latest end and at most [`MAX_CUE_CHARS`] characters of text; a word that
//! ends a sentence (`.`, `?`, `!`) ends its cue. A single word over either
//! limit still forms a cue of its own: words are never dropped, reordered or
//! split. Empty and whitespace-only words are skipped; a word whose end is
//! before its start is treated as ending at its start.
//!
//! Pure functions, one pass, linear in the number of words: no I/O, no
//! database, no knowledge of any output format's syntax or escaping.

use std::fmt::Write as _;

use crate::model::Word;
use crate::render::words;

/// Longest a cue may run, from its first word's start to its last word's end.
pub const MAX_CUE_MS: u64 = 7_000;

/// Most characters (Unicode scalar values, spaces included) of a cue's text.
pub const MAX_CUE_CHARS: usize = 84;

/// One caption cue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    /// Start, milliseconds from the beginning of the media: the earliest
    /// start of its words (its first word's start when times are in order).
    pub start_ms: u64,
    /// End, milliseconds: the latest end of its words (its last word's end
    /// when times are in order); never before `start_ms`.
    pub end_ms: u64,
    /// The cleaned words joined on one line: single spaces, none before
    /// punctuation-only words; never empty, never containing a line break.
    /// Not escaped for any format.
    pub text: String,
}

/// Groups words into cues (see the module documentation for the rules).
pub fn cues(words: &[Word]) -> Vec<Cue> {
    let mut out = Vec::with_capacity(words.len() / 8 + 1);
    // The cue being filled, with its length in characters.
    let mut current: Option<(Cue, usize)> = None;

    for word in words {
        let Some(text) = words::clean(&word.w) else {
            continue;
        };
        let start = word.s;
        let end = word.e.max(word.s);

        if let Some((cue, chars)) = current.as_mut() {
            let new_start = cue.start_ms.min(start);
            let new_end = cue.end_ms.max(end);
            let new_chars = *chars + words::added_chars(&text, false);
            if new_end - new_start <= MAX_CUE_MS && new_chars <= MAX_CUE_CHARS {
                words::push_word(&mut cue.text, &text);
                cue.start_ms = new_start;
                cue.end_ms = new_end;
                *chars = new_chars;
            } else if let Some((full, _)) = current.replace(new_cue(start, end, &text)) {
                out.push(full);
            }
        } else {
            current = Some(new_cue(start, end, &text));
        }

        if words::ends_sentence(&text) {
            if let Some((cue, _)) = current.take() {
                out.push(cue);
            }
        }
    }
    if let Some((cue, _)) = current {
        out.push(cue);
    }
    out
}

fn new_cue(start_ms: u64, end_ms: u64, text: &str) -> (Cue, usize) {
    let cue = Cue {
        start_ms,
        end_ms,
        text: text.to_owned(),
    };
    (cue, words::added_chars(text, true))
}

/// Appends `ms` as clock time `HH:MM:SS<sep>mmm` (hours grow past two digits
/// beyond 99 hours). SRT uses `,` as `sep`; WebVTT and TTML use `.`.
pub(crate) fn push_clock(out: &mut String, ms: u64, sep: char) {
    let hours = ms / 3_600_000;
    let minutes = ms / 60_000 % 60;
    let seconds = ms / 1_000 % 60;
    let millis = ms % 1_000;
    // Writing into a String cannot fail.
    let _ = write!(out, "{hours:02}:{minutes:02}:{seconds:02}{sep}{millis:03}");
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    fn w(s: u64, e: u64, text: &str) -> Word {
        Word {
            p: 0,
            s,
            e,
            c: 0.9,
            w: text.to_owned(),
        }
    }

    fn texts(cues: &[Cue]) -> Vec<&str> {
        cues.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn empty_input_gives_no_cues() {
        assert!(cues(&[]).is_empty());
        assert!(cues(&[w(0, 10, ""), w(10, 20, "  "), w(20, 30, "\n\t")]).is_empty());
    }

    #[test]
    fn a_cue_runs_from_first_start_to_last_end() {
        let c = cues(&[w(1370, 1609, "Hi"), w(1700, 2000, "there")]);
        assert_eq!(
            c,
            vec![Cue {
                start_ms: 1370,
                end_ms: 2000,
                text: "Hi there".into()
            }]
        );
    }

    #[test]
    fn whitespace_words_are_skipped_not_counted() {
        let c = cues(&[w(0, 100, "a"), w(100, 200, " "), w(200, 300, "b")]);
        assert_eq!(texts(&c), ["a b"]);
        assert_eq!((c[0].start_ms, c[0].end_ms), (0, 300));
    }

    #[test]
    fn end_before_start_is_clamped() {
        let c = cues(&[w(5000, 4000, "back")]);
        assert_eq!((c[0].start_ms, c[0].end_ms), (5000, 5000));
        let c = cues(&[w(1000, 1500, "a"), w(2000, 10, "b")]);
        assert_eq!((c[0].start_ms, c[0].end_ms), (1000, 2000));
    }

    #[test]
    fn seven_second_limit_with_exact_boundary() {
        // One word a second, 500 ms long: words 0..=6 span 0..6500.
        let words: Vec<Word> = (0..10).map(|i| w(i * 1000, i * 1000 + 500, "x")).collect();
        let c = cues(&words);
        assert_eq!(texts(&c), ["x x x x x x x", "x x x"]);
        assert_eq!((c[0].start_ms, c[0].end_ms), (0, 6500));
        assert_eq!((c[1].start_ms, c[1].end_ms), (7000, 9500));

        // Exactly 7000 ms fits; 7001 does not.
        let c = cues(&[w(0, 100, "a"), w(6000, 7000, "b")]);
        assert_eq!(texts(&c), ["a b"]);
        let c = cues(&[w(0, 100, "a"), w(6000, 7001, "b")]);
        assert_eq!(texts(&c), ["a", "b"]);
    }

    #[test]
    fn eighty_four_character_limit_with_exact_boundary() {
        // 13 words of 5 chars + 12 spaces = 77 characters.
        let base: Vec<Word> = (0..13).map(|i| w(i, i + 1, "abcde")).collect();
        let with = |extra: &[&str]| {
            let mut words = base.clone();
            words.extend(extra.iter().map(|t| w(20, 21, t)));
            cues(&words)
        };
        // " abcdef" brings it to exactly 84: one cue.
        let c = with(&["abcdef"]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].text.chars().count(), 84);
        // " abcdefg" would make 85: the word starts the next cue.
        let c = with(&["abcdefg"]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].text.chars().count(), 77);
        assert_eq!(c[1].text, "abcdefg");
        // At 84, even an attaching "," does not fit.
        let c = with(&["abcdef", ","]);
        assert_eq!(texts(&c)[1], ",");
    }

    #[test]
    fn characters_not_bytes_are_counted() {
        let word = "é".repeat(84);
        let c = cues(&[w(0, 1, &word), w(1, 2, "ü")]);
        assert_eq!(texts(&c), [word.as_str(), "ü"]);
        let c = cues(&[w(0, 1, &"é".repeat(41)), w(1, 2, &"é".repeat(42))]);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn punctuation_attaches_and_counts_without_space() {
        let c = cues(&[w(0, 1, "Hi"), w(1, 2, ","), w(2, 3, "there"), w(3, 4, ".")]);
        assert_eq!(texts(&c), ["Hi, there."]);
        // 84 chars then "," still fits only if within 84.
        let long = "a".repeat(83);
        let c = cues(&[w(0, 1, &long), w(1, 2, ",")]);
        assert_eq!(c.len(), 1);
        let c = cues(&[w(0, 1, &long), w(1, 2, "b")]);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn sentences_end_cues() {
        let words: Vec<Word> = "Hello world. How are you? Fine! \"Good.\" ok"
            .split(' ')
            .enumerate()
            .map(|(i, t)| w(i as u64 * 100, i as u64 * 100 + 50, t))
            .collect();
        assert_eq!(
            texts(&cues(&words)),
            ["Hello world.", "How are you?", "Fine!", "\"Good.\"", "ok"]
        );
        // A separate "." word ends the cue it attaches to.
        let c = cues(&[w(0, 1, "Yes"), w(1, 2, "."), w(2, 3, "No")]);
        assert_eq!(texts(&c), ["Yes.", "No"]);
    }

    #[test]
    fn oversized_single_words_stand_alone() {
        let long = "x".repeat(200);
        let c = cues(&[w(0, 1, "a"), w(1, 2, &long), w(2, 3, "b")]);
        assert_eq!(texts(&c), ["a", long.as_str(), "b"]);
        let c = cues(&[w(0, 1, "a"), w(1, 20_000, "slow"), w(20_000, 20_001, "b")]);
        assert_eq!(texts(&c), ["a", "slow", "b"]);
        assert_eq!((c[1].start_ms, c[1].end_ms), (1, 20_000));
    }

    #[test]
    fn word_text_is_cleaned() {
        let c = cues(&[w(0, 1, " New\nYork "), w(1, 2, "\u{0}city")]);
        assert_eq!(texts(&c), ["New York city"]);
    }

    #[test]
    fn clock_format() {
        let mut s = String::new();
        push_clock(&mut s, 1370, '.');
        s.push(' ');
        push_clock(&mut s, 3_723_004, ',');
        s.push(' ');
        push_clock(&mut s, 100 * 3_600_000 + 59_999, '.');
        assert_eq!(s, "00:00:01.370 01:02:03,004 100:00:59.999");
    }

    #[test]
    fn ten_thousand_words_is_linear() {
        let words: Vec<Word> = (0..10_000u64)
            .map(|i| {
                w(
                    i * 360,
                    i * 360 + 300,
                    if i % 12 == 11 { "end." } else { "word" },
                )
            })
            .collect();
        let c = cues(&words);
        let total: usize = c.iter().map(|c| c.text.split(' ').count()).sum();
        assert_eq!(total, 10_000);
    }

    /// Splits cue texts back into the words, proving each cue is a run of
    /// consecutive (non-empty) words. Returns each cue's word indices.
    pub(crate) fn partition(words: &[Word], cues: &[Cue]) -> Vec<Vec<usize>> {
        let clean: Vec<(usize, String)> = words
            .iter()
            .enumerate()
            .filter_map(|(i, w)| words::clean(&w.w).map(|c| (i, c.into_owned())))
            .collect();
        let mut next = 0;
        let mut out = Vec::new();
        for cue in cues {
            let mut joined = String::new();
            let mut members = Vec::new();
            while joined.len() < cue.text.len() {
                let (i, word) = clean.get(next).expect("cue text longer than words left");
                if !joined.is_empty() && !words::attaches(word) {
                    joined.push(' ');
                }
                joined.push_str(word);
                members.push(*i);
                next += 1;
            }
            assert_eq!(joined, cue.text, "cue is not the next run of words");
            assert!(!members.is_empty());
            out.push(members);
        }
        assert_eq!(next, clean.len(), "words left over");
        out
    }

    pub(crate) fn arb_word_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[A-Za-z']{1,10}",
            2 => "[.,?!]|\\.\\.\\.",
            1 => "[a-z]{1,6}[.?!]\"?",
            1 => "[ -~]{0,12}",
            1 => "[a-z \\x00-\\x1f\\x7f\\u{85}\\u{2028}\\u{FFFF}\n\r\t]{0,8}",
            1 => "\\PC{1,12}",
            1 => "[-<>&]{1,6}",
            1 => "[a-z]{80,100}",
        ]
    }

    /// Words with mostly increasing times, sometimes long, sometimes with
    /// the end before the start, sometimes out of order.
    pub(crate) fn arb_words(max: usize) -> impl Strategy<Value = Vec<Word>> {
        let item = (
            arb_word_text(),
            prop_oneof![8 => 0u64..2_000, 1 => 0u64..9_000],
            prop_oneof![8 => 0u64..1_500, 1 => 6_000u64..20_000],
            prop_oneof![18 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        );
        prop::collection::vec(item, 0..max).prop_map(|items| {
            let mut at = 0u64;
            items
                .into_iter()
                .enumerate()
                .map(|(i, (text, gap, dur, quirk))| {
                    at += gap;
                    let (s, e) = match quirk {
                        1 => (at, at.saturating_sub(dur)),         // end before start
                        2 => (at.saturating_sub(5_000), at + dur), // goes back in time
                        _ => (at, at + dur),
                    };
                    Word {
                        p: i as u64,
                        s,
                        e,
                        c: 0.5,
                        w: text,
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn cues_respect_limits_and_keep_every_word(words in arb_words(120)) {
            let c = cues(&words);
            let groups = partition(&words, &c);
            for (k, (cue, members)) in c.iter().zip(&groups).enumerate() {
                prop_assert!(cue.start_ms <= cue.end_ms);
                prop_assert!(!cue.text.is_empty());
                prop_assert!(!cue.text.contains(['\n', '\r']));
                let first = &words[members[0]];
                let last = &words[members[members.len() - 1]];
                if members.len() > 1 {
                    prop_assert!(cue.end_ms - cue.start_ms <= MAX_CUE_MS, "{cue:?}");
                    prop_assert!(cue.text.chars().count() <= MAX_CUE_CHARS, "{cue:?}");
                } else {
                    prop_assert_eq!(cue.start_ms, first.s);
                    prop_assert_eq!(cue.end_ms, first.e.max(first.s));
                }
                // Only the last word of a cue may end a sentence.
                for &i in &members[..members.len() - 1] {
                    let text = words::clean(&words[i].w).unwrap_or_default();
                    prop_assert!(!words::ends_sentence(&text), "{cue:?}");
                }
                // Greedy: a cue that did not end a sentence could not take
                // the next cue's first word without breaking a limit.
                let last_text = words::clean(&last.w).unwrap_or_default();
                if let (false, Some(next)) = (words::ends_sentence(&last_text), groups.get(k + 1)) {
                    let nw = &words[next[0]];
                    let nt = words::clean(&nw.w).unwrap_or_default();
                    let span = cue.end_ms.max(nw.e.max(nw.s)) - cue.start_ms.min(nw.s);
                    let chars = cue.text.chars().count() + words::added_chars(&nt, false);
                    prop_assert!(span > MAX_CUE_MS || chars > MAX_CUE_CHARS, "{cue:?} then {nw:?}");
                }
            }
        }
    }
}
