//! Test-only guard of [`ErrorCode`]: scans the crate's sources and tests so
//! that an API error code can only be spelled through the enum. It owns a
//! small Rust tokenizer (strings, comments, char literals) and the rules
//! below; it must not be compiled outside `cfg(test)` or depend on anything
//! but `ErrorCode` and the files on disk.
//!
//! Rules, over code outside `#[cfg(test)]` modules:
//! - `Error::invalid(code, ..)`, `ApiError::new(_, code, ..)` and
//!   `Conflict { code: .. }` never take a string literal;
//! - `"code": "literal"` (a hand-built error body) and `code: "literal"`
//!   appear nowhere in the API surface (`src/api`, `src/intake`,
//!   `src/validate.rs`, `src/error.rs`), and neither does any wire name:
//!   those files say `ErrorCode::X`;
//! - every `NotFound { what: "x" }` has its `x_not_found` code;
//! - every code is produced somewhere (no dead codes in the document).
//!
//! And over `tests/`: every code a test expects (`expect_error(.., "x")`,
//! `["code"] == "x"`, `error_code(..), "x"`, `(.., 404, "x")` rows) is in
//! [`ErrorCode::ALL`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Error, ErrorCode};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Ident(String),
    Num(String),
    Punct(char),
}

/// Tokens of `src` with their 1-based line numbers; comments dropped.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && matches!(at(i + 2), '"' | '#')))
        {
            // Raw string r"..." / r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1; // the opening quote
            let body_start = j;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    break;
                }
                line += usize::from(chars[j] == '\n');
                j += 1;
            }
            out.push((
                Tok::Str(chars[body_start..j.min(chars.len())].iter().collect()),
                start_line,
            ));
            i = j + 1 + hashes;
        } else if c == '"' || (c == 'b' && at(i + 1) == '"') {
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            let mut s = String::new();
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    s.push(chars[j]);
                    j += 1;
                }
                line += usize::from(chars[j] == '\n');
                s.push(chars[j]);
                j += 1;
            }
            out.push((Tok::Str(s), start_line));
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}', '"') or a lifetime.
            if at(i + 1) == '\\' {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1; // lifetime: the name follows as an identifier
            }
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            out.push((Tok::Ident(chars[i..j].iter().collect()), start_line));
            i = j;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            out.push((Tok::Num(chars[i..j].iter().collect()), start_line));
            i = j;
        } else {
            out.push((Tok::Punct(c), start_line));
            i += 1;
        }
    }
    out
}

fn punct(t: &Tok, c: char) -> bool {
    *t == Tok::Punct(c)
}

fn ident(t: &Tok, name: &str) -> bool {
    matches!(t, Tok::Ident(s) if s == name)
}

/// Index just past the bracket group opening at `open`.
fn group_end(toks: &[(Tok, usize)], open: usize) -> usize {
    let mut depth = 0i32;
    for (k, (t, _)) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// Drops `#[cfg(test)] mod name { .. }` (and `#[cfg(test)] mod name;`).
fn without_test_modules(toks: Vec<(Tok, usize)>) -> Vec<(Tok, usize)> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let cfg_test = punct(&toks[i].0, '#')
            && toks.get(i + 1).is_some_and(|t| punct(&t.0, '['))
            && toks.get(i + 2).is_some_and(|t| ident(&t.0, "cfg"))
            && toks.get(i + 3).is_some_and(|t| punct(&t.0, '('))
            && toks.get(i + 4).is_some_and(|t| ident(&t.0, "test"))
            && toks.get(i + 5).is_some_and(|t| punct(&t.0, ')'));
        if cfg_test {
            let mut j = group_end(&toks, i + 1);
            if toks.get(j).is_some_and(|t| ident(&t.0, "mod")) {
                while j < toks.len() && !punct(&toks[j].0, '{') && !punct(&toks[j].0, ';') {
                    j += 1;
                }
                i = if toks.get(j).is_some_and(|t| punct(&t.0, '{')) {
                    group_end(&toks, j)
                } else {
                    j + 1
                };
                continue;
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// The top-level arguments of the call whose `(` is at `open`.
fn call_args(toks: &[(Tok, usize)], open: usize) -> Vec<&[(Tok, usize)]> {
    let end = group_end(toks, open) - 1;
    let (mut args, mut depth, mut from) = (Vec::new(), 0, open + 1);
    for k in open + 1..end {
        match toks[k].0 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                args.push(&toks[from..k]);
                from = k + 1;
            }
            _ => {}
        }
    }
    if from < end {
        args.push(&toks[from..end]);
    }
    args
}

/// The name of the struct literal (`Name { .. }`) that token `k` is in.
fn enclosing_struct(toks: &[(Tok, usize)], k: usize) -> Option<&str> {
    let mut depth = 0;
    for j in (0..k).rev() {
        match toks[j].0 {
            Tok::Punct(')' | ']' | '}') => depth += 1,
            Tok::Punct('(' | '[') if depth > 0 => depth -= 1,
            Tok::Punct('{') if depth > 0 => depth -= 1,
            Tok::Punct('(' | '[') => return None,
            Tok::Punct('{') => {
                return match j.checked_sub(1).map(|p| &toks[p].0) {
                    Some(Tok::Ident(name)) => Some(name.as_str()),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    None
}

fn has_string(arg: &[(Tok, usize)]) -> bool {
    arg.iter().any(|(t, _)| matches!(t, Tok::Str(_)))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files whose code builds API error answers.
fn api_surface(rel: &str) -> bool {
    rel.starts_with("src/api/")
        || rel.starts_with("src/intake/")
        || rel == "src/validate.rs"
        || rel == "src/error.rs"
}

fn wire_names() -> BTreeSet<&'static str> {
    ErrorCode::ALL.iter().map(|c| c.as_str()).collect()
}

/// What the source rules find in one file of `src/` (`rel` is its path
/// from the crate root): violations, `NotFound` kinds, variants produced.
fn scan_source(rel: &str, text: &str) -> (Vec<String>, BTreeSet<String>, BTreeSet<String>) {
    let toks = without_test_modules(tokenize(text));
    let wires = wire_names();
    let (mut bad, mut what, mut used) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    let t = |k: usize| toks.get(k).map(|(t, _)| t);
    for k in 0..toks.len() {
        let (tok, line) = (&toks[k].0, toks[k].1);
        let here = format!("{rel}:{line}");
        // Error::invalid(code, ..) / ApiError::new(status, code, ..)
        let call = |ty: &str, f: &str| {
            ident(tok, ty)
                && t(k + 1).is_some_and(|t| punct(t, ':'))
                && t(k + 2).is_some_and(|t| punct(t, ':'))
                && t(k + 3).is_some_and(|t| ident(t, f))
                && t(k + 4).is_some_and(|t| punct(t, '('))
        };
        if call("Error", "invalid") || call("ApiError", "new") {
            let args = call_args(&toks, k + 4);
            let position = usize::from(ident(tok, "ApiError"));
            if args.get(position).is_some_and(|a| has_string(a)) {
                bad.push(format!("{here}: a string literal as the error code"));
            }
        }
        // `code: "x"` (a struct field) in any file of the API surface, and
        // in `Conflict { code: .. }` everywhere.
        if ident(tok, "code")
            && t(k + 1).is_some_and(|t| punct(t, ':'))
            && !t(k + 2).is_some_and(|t| punct(t, ':'))
            && matches!(t(k + 2), Some(Tok::Str(_)))
        {
            // The job's own failure code (`JobError`) is the caller's, not ours.
            let within = enclosing_struct(&toks, k);
            if within == Some("Conflict") || (api_surface(rel) && within != Some("JobError")) {
                bad.push(format!("{here}: `code: \"..\"` is a raw error code"));
            }
        }
        if let Tok::Str(s) = tok {
            // A hand-built `"code": "x"`.
            if s == "code"
                && api_surface(rel)
                && t(k + 1).is_some_and(|t| punct(t, ':'))
                && matches!(t(k + 2), Some(Tok::Str(_)))
            {
                bad.push(format!("{here}: a hand-built \"code\": \"..\""));
            }
            if api_surface(rel) && wires.contains(s.as_str()) {
                bad.push(format!(
                    "{here}: \"{s}\" is an error code; say ErrorCode::.. instead"
                ));
            }
        }
        // NotFound { what: "x", .. }
        if ident(tok, "what")
            && t(k + 1).is_some_and(|t| punct(t, ':'))
            && !t(k + 2).is_some_and(|t| punct(t, ':'))
        {
            if let Some(Tok::Str(s)) = t(k + 2) {
                what.insert(s.clone());
            }
        }
        // ErrorCode::Variant
        if ident(tok, "ErrorCode")
            && t(k + 1).is_some_and(|t| punct(t, ':'))
            && t(k + 2).is_some_and(|t| punct(t, ':'))
        {
            if let Some(Tok::Ident(v)) = t(k + 3) {
                used.insert(v.clone());
            }
        }
    }
    (bad, what, used)
}

/// The codes a test file expects in API answers, with where.
fn expected_codes(rel: &str, text: &str) -> Vec<(String, String)> {
    let toks = tokenize(text);
    let t = |k: usize| toks.get(k).map(|(t, _)| t);
    // Token indices of expected codes (a row may match two rules).
    let mut at = BTreeSet::new();
    let push = |at: &mut BTreeSet<usize>, k: usize| {
        if matches!(toks.get(k), Some((Tok::Str(_), _))) {
            at.insert(k);
        }
    };
    for k in 0..toks.len() {
        let tok = &toks[k].0;
        // expect_error(response, status, "code")
        if ident(tok, "expect_error") && t(k + 1).is_some_and(|t| punct(t, '(')) {
            let args = call_args(&toks, k + 1);
            if args.len() > 1 && args.last().is_some_and(|a| a.len() == 1) {
                let last = group_end(&toks, k + 1) - 2;
                push(&mut at, last);
            }
        }
        // x["code"] ... , "code"   |   x["code"] == "code"
        // error_code(..), "code"    |   code == "code"
        let after = if matches!(tok, Tok::Str(s) if s == "code")
            && k > 0
            && punct(&toks[k - 1].0, '[')
            && t(k + 1).is_some_and(|t| punct(t, ']'))
        {
            Some(k + 2)
        } else if ident(tok, "error_code") && t(k + 1).is_some_and(|t| punct(t, '(')) {
            Some(group_end(&toks, k + 1))
        } else if matches!(tok, Tok::Ident(s) if s == "code" || s.ends_with("_code"))
            && t(k + 1).is_some_and(|t| punct(t, '='))
            && t(k + 2).is_some_and(|t| punct(t, '='))
        {
            Some(k + 1)
        } else {
            None
        };
        if let Some(mut j) = after {
            // Skip indexing and method calls, stop at the first operator.
            while j < toks.len() {
                match &toks[j].0 {
                    Tok::Punct('[' | '(') => j = group_end(&toks, j),
                    Tok::Punct('.') | Tok::Ident(_) => j += 1,
                    _ => break,
                }
            }
            if t(j).is_some_and(|t| punct(t, ',')) {
                push(&mut at, j + 1);
            } else if t(j).is_some_and(|t| punct(t, '=')) && t(j + 1).is_some_and(|t| punct(t, '='))
            {
                push(&mut at, j + 2);
            }
        }
        // A bad-input table row: (.., 404, "job_not_found")
        if let Tok::Num(n) = tok {
            let status: u16 = n.parse().unwrap_or(0);
            if (400..600).contains(&status)
                && t(k + 1).is_some_and(|t| punct(t, ','))
                && matches!(t(k + 2), Some(Tok::Str(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                && (t(k + 3).is_some_and(|t| punct(t, ')'))
                    || (t(k + 3).is_some_and(|t| punct(t, ','))
                        && t(k + 4).is_some_and(|t| punct(t, ')'))))
            {
                push(&mut at, k + 2);
            }
        }
    }
    at.into_iter()
        .filter_map(|k| match &toks[k] {
            (Tok::Str(s), line) => Some((s.clone(), format!("{rel}:{line}"))),
            _ => None,
        })
        .collect()
}

#[test]
fn the_tokenizer_sees_strings_not_comments_chars_or_test_modules() {
    let src = r##"
        // Error::invalid("in_a_comment", ..)
        /* "block" /* nested */ */
        let q = '"'; let e = '\''; fn f<'a>(x: &'a str) {}
        let s = r#"raw "quoted""#;
        let u = "https://example.org/";
        #[cfg(test)]
        mod tests { const X: &str = "hidden"; }
        const Y: &str = "seen";
    "##;
    let strings: Vec<String> = without_test_modules(tokenize(src))
        .into_iter()
        .filter_map(|(t, _)| match t {
            Tok::Str(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(strings, ["raw \"quoted\"", "https://example.org/", "seen"]);
}

#[test]
fn the_source_rules_catch_raw_codes() {
    let cases = [
        r#"fn f() { Error::invalid("brand_new", "f", "r") }"#,
        r#"fn f() { ApiError::new(StatusCode::GONE, "brand_new", "gone") }"#,
        r#"fn f() { ApiError::new(s, if x { "a" } else { "b" }, "m") }"#,
        r#"fn f() { Err(Error::Conflict { code: "brand_new", message: m }) }"#,
        r#"fn f() { json!({"error": {"code": "brand_new", "message": "m"}}) }"#,
        r#"fn f() { let c = "job_not_found"; }"#,
        r#"fn f() { Error::Validation { field, reason, code: "brand_new" } }"#,
    ];
    for case in cases {
        let (bad, _, _) = scan_source("src/api/x.rs", case);
        assert!(!bad.is_empty(), "not caught: {case}");
    }
    let (bad, _, _) = scan_source(
        "src/delivery/x.rs",
        r#"fn f() { Err(Error::Conflict { code: "brand_new", message: m }) }"#,
    );
    assert!(!bad.is_empty(), "a Conflict's code is checked everywhere");
    let fine = r#"fn f() { Error::invalid(ErrorCode::InvalidUrl, "url", "bad");
        let e = JobError { code: "failed".into(), message: m };
        ApiError::new(StatusCode::GONE, code, format!("{x}")); }"#;
    let (bad, _, used) = scan_source("src/api/x.rs", fine);
    assert!(bad.is_empty(), "{bad:?}");
    assert!(used.contains("InvalidUrl"));
    let rows = expected_codes(
        "tests/x.rs",
        r#"expect_error(r, 404, "a"); assert_eq!(body["error"]["code"], "b");
           assert_eq!(error_code(&body), "c"); if code == "d" {}
           let cases = [(p, Body::Raw(""), 400, "e"), (p, b, 413, "f",)];
           let code = error["code"].as_str().unwrap_or_else(|| panic!("no code: {body}"));"#,
    );
    let names: Vec<&str> = rows.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e", "f"]);
}

#[test]
fn sources_spell_every_error_code_through_the_enum() {
    let root = root();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let (mut bad, mut what, mut used) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    for path in &files {
        let rel = path.strip_prefix(&root).expect("under the root");
        let rel = rel.to_string_lossy().replace('\\', "/");
        if rel == "src/error/code.rs" || rel == "src/error/code_scan.rs" {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("readable source");
        let (b, w, u) = scan_source(&rel, &text);
        bad.extend(b);
        what.extend(w);
        used.extend(u);
    }
    assert!(files.len() > 20, "the scan saw too few files: {files:?}");
    assert!(bad.is_empty(), "raw error codes:\n{}", bad.join("\n"));

    assert!(!what.is_empty(), "the scan found no NotFound");
    for kind in &what {
        let kind: &'static str = Box::leak(kind.clone().into_boxed_str());
        let code = Error::NotFound {
            what: kind,
            id: String::new(),
        }
        .code();
        assert_eq!(
            code.as_str(),
            format!("{kind}_not_found"),
            "NotFound {{ what: {kind:?} }} has no {kind}_not_found code"
        );
    }

    // Error::code produces these without naming them in a call.
    used.extend(["JobExpired", "InternalError"].map(String::from));
    let unused: Vec<_> = ErrorCode::ALL
        .iter()
        .filter(|c| !used.contains(&format!("{c:?}")))
        .collect();
    assert!(unused.is_empty(), "codes nothing produces: {unused:?}");
}

#[test]
fn tests_expect_only_codes_the_enum_has() {
    let root = root();
    let mut files = Vec::new();
    rust_files(&root.join("tests"), &mut files);
    let wires = wire_names();
    let mut found = 0;
    let mut unknown = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&root).expect("under the root");
        let text = std::fs::read_to_string(path).expect("readable test");
        for (code, at) in expected_codes(&rel.to_string_lossy(), &text) {
            found += 1;
            if !wires.contains(code.as_str()) {
                unknown.push(format!("{at}: {code:?}"));
            }
        }
    }
    assert!(
        found > 50,
        "the scan found only {found} expected codes in tests/"
    );
    assert!(
        unknown.is_empty(),
        "tests expect codes ErrorCode lacks:\n{}",
        unknown.join("\n")
    );
}
