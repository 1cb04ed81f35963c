//! Checks the files under `deploy/` and `docs/operations.md` against the
//! code: every YAML and JSON file parses; alert rules and dashboard queries
//! name only the metrics (and label values) of SPEC §4; the commands,
//! flags and environment variables they use exist in the `postback` binary;
//! and, when the tools are installed, `promtool` accepts the rules, their
//! unit tests and the Prometheus configuration, and `systemd-analyze`
//! accepts the units. A missing tool skips only its own check (and says so).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

// ---------------------------------------------------------------------------
// Files

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn with_ext(exts: &[&str]) -> Vec<PathBuf> {
    files_under(&deploy())
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
        })
        .collect()
}

/// Every document of a YAML file (Kubernetes files may hold several),
/// with `<<` merge keys applied.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(&text) {
        let mut doc: Yaml = serde::Deserialize::deserialize(de)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        doc.apply_merge()
            .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    docs
}

fn yaml_one(path: &Path) -> Yaml {
    let mut docs = yaml_docs(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: expected one YAML document",
        path.display()
    );
    docs.remove(0)
}

fn get<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for key in path.split('.') {
        cur = match cur {
            Yaml::Mapping(m) => m
                .get(key)
                .unwrap_or_else(|| panic!("missing key {key:?} (of {path})")),
            Yaml::Sequence(s) => {
                let i: usize = key.parse().unwrap_or_else(|_| panic!("{key} in {path}"));
                &s[i]
            }
            other => panic!("{path}: {key:?} looked up in {other:?}"),
        };
    }
    cur
}

fn opt<'a>(v: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    v.as_mapping().and_then(|m| m.get(key))
}

fn s<'a>(v: &'a Yaml, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

fn seq<'a>(v: &'a Yaml, path: &str) -> &'a Vec<Yaml> {
    get(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

fn duration(text: &str) -> Duration {
    postback::config::parse_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The attempt timeout the deploy files configure (ConfigMap), which must
/// also be the code's default so the other files' grace periods fit it.
fn attempt_timeout() -> Duration {
    let cm = yaml_one(&deploy().join("kubernetes/configmap.yaml"));
    let t = duration(s(&cm, "data.POSTBACK_ATTEMPT_TIMEOUT"));
    assert_eq!(
        t,
        postback::Config::default().attempt_timeout,
        "the ConfigMap's POSTBACK_ATTEMPT_TIMEOUT differs from the default the other deploy files assume"
    );
    t
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// What the binary accepts

/// `postback <args> --help`.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_postback"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run postback --help");
    assert!(
        out.status.success(),
        "postback {args:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command paths of the CLI (SPEC §1).
const COMMANDS: &[&[&str]] = &[
    &["serve"],
    &["worker"],
    &["migrate"],
    &["deliveries", "list"],
    &["deliveries", "show"],
    &["replay"],
    &["purge"],
    &["listen"],
    &["healthcheck"],
    &["destinations", "list"],
    &["destinations", "reset"],
    &["customers", "secret", "rotate"],
    &["secrets", "reencrypt"],
];

struct Cli {
    /// Long flags per command path ("deliveries list" → {"--status", …}).
    flags: BTreeMap<String, BTreeSet<String>>,
    /// Every environment variable any command reads.
    env: BTreeSet<String>,
}

fn cli() -> &'static Cli {
    static CLI: OnceLock<Cli> = OnceLock::new();
    CLI.get_or_init(|| {
        let mut flags = BTreeMap::new();
        let mut env = BTreeSet::new();
        for cmd in COMMANDS {
            let text = help(cmd);
            let mut set: BTreeSet<String> = text
                .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .map(|w| w.split(['=', '<']).next().unwrap_or(w).to_owned())
                .collect();
            set.insert("--help".into());
            flags.insert(cmd.join(" "), set);
            for part in text.split("[env: ").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                env.insert(name);
            }
        }
        assert!(env.contains("DATABASE_URL") && env.contains("POSTBACK_LISTEN"));
        Cli { flags, env }
    })
}

/// Checks `postback …` words: a known command and only its flags.
/// Returns the command path.
fn check_invocation(words: &[&str], context: &str) -> String {
    let cli = cli();
    // The longest command path the words start with.
    let path = COMMANDS
        .iter()
        .filter(|c| words.len() >= c.len() && words[..c.len()] == c[..])
        .max_by_key(|c| c.len())
        .map(|c| c.join(" "))
        .unwrap_or_else(|| words.iter().take(2).copied().collect::<Vec<_>>().join(" "));
    let flags = cli
        .flags
        .get(&path)
        .unwrap_or_else(|| panic!("{context}: `postback {}` is not a command", words.join(" ")));
    for w in words {
        if w.starts_with("--") {
            let flag = w.split('=').next().unwrap_or(w);
            assert!(
                flags.contains(flag),
                "{context}: `postback {path}` has no flag {flag} (it has {flags:?})"
            );
        }
    }
    path
}

fn check_env_name(name: &str, context: &str) {
    if name.starts_with("POSTBACK_") || name == "DATABASE_URL" {
        assert!(
            cli().env.contains(name),
            "{context}: {name} is not a setting of the postback binary (known: {:?})",
            cli().env
        );
    }
}

/// Every POSTBACK_* word in a text is a real setting.
fn check_env_mentions(text: &str, context: &str) {
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("POSTBACK_") && word.len() > "POSTBACK_".len() {
            check_env_name(word, context);
        }
    }
}

// ---------------------------------------------------------------------------
// SPEC §4 metrics and a small PromQL scanner

/// A metric family of SPEC §4 as the deploy files may query it.
struct Family {
    /// `counter`, `gauge` or `histogram`.
    kind: &'static str,
    histogram: bool,
    /// label → allowed values (empty set: any value).
    labels: BTreeMap<&'static str, BTreeSet<String>>,
}

fn families() -> BTreeMap<&'static str, Family> {
    use postback::metrics as m;
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let outcomes: Vec<&str> = postback::delivery::Outcome::ALL
        .iter()
        .map(|o| o.as_str())
        .collect();
    let outcome_set = set(&outcomes);
    assert_eq!(
        outcome_set,
        set(&[
            "success",
            "http_error",
            "timeout",
            "connect_error",
            "blocked_destination",
            "other"
        ]),
        "SPEC §4 outcome values"
    );
    let fam = |kind: &'static str, labels: &[(&'static str, BTreeSet<String>)]| Family {
        kind,
        histogram: kind == "histogram",
        labels: labels.iter().cloned().collect(),
    };
    BTreeMap::from([
        (m::JOBS_CREATED, fam("counter", &[])),
        (
            m::DELIVERIES_ENQUEUED,
            // Callback types, and `generic` for POST /v1/deliveries.
            fam(
                "counter",
                &[(
                    "type",
                    set(&["analytics", "transcript", "media", "generic", "event"]),
                )],
            ),
        ),
        (
            m::DELIVERY_ATTEMPTS,
            fam("counter", &[("outcome", outcome_set.clone())]),
        ),
        (
            m::DELIVERIES_COMPLETED,
            fam("counter", &[("result", set(&["delivered", "failed"]))]),
        ),
        (
            m::ATTEMPT_DURATION,
            fam("histogram", &[("outcome", outcome_set)]),
        ),
        (m::DELIVERY_LATENCY, fam("histogram", &[])),
        (
            m::QUEUE_DEPTH,
            fam(
                "gauge",
                &[("state", set(&["due", "scheduled", "in_flight"]))],
            ),
        ),
        (m::OLDEST_DUE, fam("gauge", &[])),
        (m::DATABASE_UP, fam("gauge", &[])),
        (m::DESTINATIONS_OPEN, fam("gauge", &[])),
        (m::BUILD_INFO, fam("gauge", &[("version", BTreeSet::new())])),
        (
            m::OPERATOR_EVENTS,
            fam("counter", &[("type", set(&m::EVENT_TYPES))]),
        ),
        // Route templates and status codes: any value.
        (
            m::HTTP_REQUESTS,
            fam("counter", &[("route", set(&[])), ("status", set(&[]))]),
        ),
        (
            m::HTTP_REQUEST_DURATION,
            fam("histogram", &[("route", set(&[]))]),
        ),
    ])
}

/// Every `.rs` file under `src/`, with its text.
fn sources() -> Vec<(PathBuf, String)> {
    files_under(&root().join("src"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let text = read(&p);
            (p, text)
        })
        .collect()
}

/// A metric the code registers, as found in its source.
#[derive(Debug, Default)]
struct Registered {
    /// `counter`, `gauge` or `histogram` (every use agrees).
    kind: String,
    /// Label names given in its `metrics` macro calls.
    labels: BTreeSet<String>,
}

/// Every metric the code registers, by name: the first argument of each
/// `metrics` macro (`counter!`, `gauge!`, `histogram!` and their
/// `describe_` forms), a string constant or literal, and the `# TYPE`
/// lines that src/metrics.rs writes itself for the gauges kept outside the
/// recorder. Scanned from the source so that a metric added anywhere is
/// seen without being listed here.
fn registered_metrics() -> BTreeMap<String, Registered> {
    let sources = sources();
    let mut consts = BTreeMap::new();
    for (_, text) in &sources {
        for line in text.lines() {
            let Some((_, rest)) = line.split_once("const ") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            if let Some(value) = value.strip_suffix("\";") {
                consts.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }
    let resolve = |arg: &str, at: &Path| -> String {
        if let Some(lit) = arg.strip_prefix('"') {
            return lit.split('"').next().unwrap().to_owned();
        }
        let ident = arg.rsplit("::").next().unwrap();
        consts.get(ident).cloned().unwrap_or_else(|| {
            panic!(
                "{}: metric name {arg} is not a string constant; name metrics with constants",
                at.display()
            )
        })
    };
    let mut out: BTreeMap<String, Registered> = BTreeMap::new();
    let mut note = |name: String, kind: &str, labels: BTreeSet<String>, at: &Path| {
        let entry = out.entry(name.clone()).or_default();
        assert!(
            entry.kind.is_empty() || entry.kind == kind,
            "{}: {name} used as {kind} and as {}",
            at.display(),
            entry.kind
        );
        entry.kind = kind.to_owned();
        entry.labels.extend(labels);
    };
    for (path, text) in &sources {
        for kind in ["counter", "gauge", "histogram"] {
            for (at, _) in text.match_indices(&format!("{kind}!(")) {
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() && c != '_') {
                    continue;
                }
                let args = macro_args(&text[at + kind.len() + 2..]);
                let first: String = args
                    .trim_start()
                    .chars()
                    .take_while(|c| !matches!(c, ',' | ')') && !c.is_whitespace())
                    .collect();
                if first.is_empty() {
                    continue;
                }
                let name = resolve(&first, path);
                // The string literal before each `=>` is a label name.
                let parts: Vec<&str> = args.split("=>").collect();
                let labels = parts[..parts.len() - 1]
                    .iter()
                    .filter_map(|part| part.trim_end().strip_suffix('"'))
                    .filter_map(|part| part.rsplit('"').next())
                    .map(str::to_owned)
                    .collect();
                note(name, kind, labels, path);
            }
        }
        for (at, _) in text.match_indices("# TYPE {") {
            let rest = &text[at + "# TYPE {".len()..];
            let (ident, rest) = rest.split_once('}').expect("# TYPE {NAME}");
            let kind: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect();
            let kind = kind.as_str();
            note(resolve(ident, path), kind, BTreeSet::new(), path);
        }
    }
    out
}

/// The text of a macro call's arguments: up to the `)` that closes the
/// one opened just before `text` (nested calls and strings skipped).
fn macro_args(text: &str) -> &str {
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => depth += 1,
            ')' if depth == 0 => return &text[..i],
            ')' => depth -= 1,
            _ => {}
        }
    }
    text
}

#[test]
fn the_metric_families_checked_here_are_the_ones_the_code_registers() {
    let registered = registered_metrics();
    let fams = families();
    let code: BTreeSet<&str> = registered.keys().map(String::as_str).collect();
    let here: BTreeSet<&str> = fams.keys().copied().collect();
    assert_eq!(
        here, code,
        "families() in tests/deploy.rs and the metrics registered in src/ differ"
    );
    for (name, r) in &registered {
        let fam = &fams[name.as_str()];
        assert_eq!(fam.kind, r.kind, "{name}: type");
        for l in &r.labels {
            assert!(
                fam.labels.contains_key(l.as_str()),
                "{name}: the code labels it {l:?}, which families() does not know"
            );
        }
    }
    // The scan itself sees the forms the code uses.
    assert_eq!(registered["postback_queue_depth"].kind, "gauge");
    assert_eq!(
        registered["postback_attempt_duration_seconds"].kind,
        "histogram"
    );
    assert!(registered["postback_delivery_attempts_total"]
        .labels
        .contains("outcome"));
}

/// `(metric, matcher body)` of every `postback_*` selector in a query.
fn selectors(expr: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if is_ident_start(c) && (i == 0 || !is_ident(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if !word.starts_with("postback_") {
                continue;
            }
            let mut body = String::new();
            if i < chars.len() && chars[i] == '{' {
                let end = i + chars[i..].iter().position(|&c| c == '}').expect("}");
                body = chars[i + 1..end].iter().collect();
                i = end + 1;
            }
            out.push((word, body));
        } else {
            i += 1;
        }
    }
    out
}

/// Labels a query may group by or match on besides the SPEC ones: the
/// histogram bucket bound and what Prometheus adds when scraping.
const SCRAPE_LABELS: &[&str] = &["le", "instance", "job"];

/// The family of a series name (`…_bucket`/`_sum`/`_count` of histograms).
fn family_of<'a>(
    name: &str,
    fams: &'a BTreeMap<&'static str, Family>,
) -> Option<(&'static str, &'a Family, bool)> {
    if let Some((k, f)) = fams.get_key_value(name) {
        return Some((*k, f, false));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some((k, f)) = fams.get_key_value(base) {
                if f.histogram {
                    return Some((*k, f, suffix == "_bucket"));
                }
            }
        }
    }
    None
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Scans a PromQL expression: every `postback_*` name must be a SPEC
/// series; its label matchers must name its labels and allowed values;
/// `by`/`without` labels must be SPEC or scrape labels. Returns the
/// families used.
fn check_promql(expr: &str, context: &str) -> BTreeSet<&'static str> {
    let fams = families();
    let all_labels: BTreeSet<&str> = fams
        .values()
        .flat_map(|f| f.labels.keys().copied())
        .chain(SCRAPE_LABELS.iter().copied())
        .collect();
    let chars: Vec<char> = expr.chars().collect();
    let mut used = BTreeSet::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            panic!("{context}: a selector without a metric name in {expr:?}");
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let j = skip_ws(i);
            if matches!(word.as_str(), "by" | "without") {
                assert!(
                    j < chars.len() && chars[j] == '(',
                    "{context}: `{word}` without labels"
                );
                let end = j + chars[j..].iter().position(|&c| c == ')').expect(")");
                let labels: String = chars[j + 1..end].iter().collect();
                for l in labels.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                    assert!(
                        all_labels.contains(l),
                        "{context}: groups by unknown label {l:?} in {expr:?}"
                    );
                }
                i = end + 1;
                continue;
            }
            if !word.starts_with("postback_") {
                continue;
            }
            let (family, fam, bucket) = family_of(&word, &fams).unwrap_or_else(|| {
                panic!("{context}: {word} is not a SPEC §4 metric (in {expr:?})")
            });
            used.insert(family);
            if j < chars.len() && chars[j] == '{' {
                let end = j + chars[j..].iter().position(|&c| c == '}').expect("}");
                let body: String = chars[j + 1..end].iter().collect();
                check_matchers(&body, fam, bucket, context, expr);
                i = end + 1;
            }
        } else {
            i += 1;
        }
    }
    used
}

fn check_matchers(body: &str, fam: &Family, bucket: bool, context: &str, expr: &str) {
    for m in body.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let op_at = m
            .find(['=', '!'])
            .unwrap_or_else(|| panic!("{context}: bad matcher {m:?}"));
        let label = m[..op_at].trim();
        let rest = &m[op_at..];
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .unwrap_or_else(|| panic!("{context}: bad matcher {m:?}"));
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        if label == "le" && bucket || SCRAPE_LABELS.contains(&label) && label != "le" {
            continue;
        }
        let allowed = fam.labels.get(label).unwrap_or_else(|| {
            panic!("{context}: label {label:?} is not a label of that metric in {expr:?}")
        });
        let values: Vec<&str> = if op.contains('~') {
            value.split('|').collect()
        } else {
            vec![value]
        };
        for v in values {
            assert!(
                allowed.is_empty() || allowed.contains(v),
                "{context}: {label}={v:?} is not a SPEC value (allowed: {allowed:?}) in {expr:?}"
            );
        }
    }
}

#[test]
fn promql_scanner_catches_wrong_names_labels_and_values() {
    let ok = check_promql(
        r#"sum by (le, outcome) (rate(postback_attempt_duration_seconds_bucket{outcome=~"timeout|success"}[5m]))"#,
        "ok",
    );
    assert_eq!(ok, BTreeSet::from(["postback_attempt_duration_seconds"]));
    for bad in [
        "rate(postback_attempts_total[5m])",
        r#"postback_queue_depth{state="waiting"}"#,
        r#"postback_queue_depth{outcome="success"}"#,
        "sum by (host) (postback_queue_depth)",
        "postback_oldest_due_seconds_bucket",
    ] {
        let caught = std::panic::catch_unwind(|| check_promql(bad, "bad")).is_err();
        assert!(caught, "{bad:?} should be refused");
    }
}

// ---------------------------------------------------------------------------
// Parsing

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = with_ext(&["yml", "yaml"]);
    assert!(
        files.len() >= 10,
        "expected the deploy/ YAML files, found {files:?}"
    );
    for f in &files {
        let docs = yaml_docs(f);
        assert!(!docs.is_empty(), "{} has no document", f.display());
    }
}

#[test]
fn every_json_file_under_deploy_parses() {
    let files = with_ext(&["json"]);
    assert!(!files.is_empty(), "expected the Grafana dashboard");
    for f in &files {
        serde_json::from_str::<Json>(&read(f))
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", f.display()));
    }
}

// ---------------------------------------------------------------------------
// Prometheus

fn alert_rules() -> Vec<Yaml> {
    let doc = yaml_one(&deploy().join("prometheus/alerts.yml"));
    seq(&doc, "groups")
        .iter()
        .flat_map(|g| seq(g, "rules").clone())
        .collect()
}

/// GitHub-style anchors of the headings of docs/operations.md.
fn doc_anchors() -> BTreeSet<String> {
    read(&root().join("docs/operations.md"))
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// The absolute URL of docs/operations.md that alerts link to, as the
/// runbook states it ("the runbook base `https://…`").
fn runbook_base() -> String {
    let doc = read(&root().join("docs/operations.md"));
    let text = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let after = text
        .split_once("the runbook base `")
        .expect("docs/operations.md states the runbook base")
        .1;
    let base = after.split('`').next().unwrap().to_owned();
    assert!(
        base.starts_with("https://") && base.ends_with("/operations.md"),
        "runbook base {base}: an absolute https URL of operations.md"
    );
    base
}

#[test]
fn alert_rules_use_only_spec_metrics_and_point_at_the_runbook() {
    let rules = alert_rules();
    let anchors = doc_anchors();
    let names: BTreeSet<&str> = rules.iter().map(|r| s(r, "alert")).collect();
    assert_eq!(names.len(), rules.len(), "duplicate alert names");
    for wanted in [
        "PostbackOldestDueDeliveryTooOld",
        "PostbackNoAttemptsWhileDue",
        "PostbackDeliveryFailureRatioHigh",
        "PostbackAttemptErrorRatioHigh",
        "PostbackBlockedDestinationSpike",
    ] {
        assert!(names.contains(wanted), "alert {wanted} is missing");
    }
    for rule in &rules {
        let name = s(rule, "alert");
        let expr = s(rule, "expr");
        assert!(
            !check_promql(expr, name).is_empty(),
            "{name} uses no Postback metric"
        );
        duration(s(rule, "for"));
        let severity = s(rule, "labels.severity");
        assert!(
            matches!(severity, "critical" | "warning"),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            assert!(!s(rule, &format!("annotations.{key}")).is_empty());
        }
        assert!(
            opt(get(rule, "annotations"), "runbook").is_none(),
            "{name}: the annotation is runbook_url"
        );
        let runbook = s(rule, "annotations.runbook_url");
        let anchor = runbook
            .strip_prefix(&format!("{}#", runbook_base()))
            .unwrap_or_else(|| {
                panic!(
                    "{name}: runbook_url {runbook} is not the runbook base {}#…",
                    runbook_base()
                )
            });
        assert!(
            anchors.contains(anchor),
            "{name}: docs/operations.md has no heading for #{anchor}"
        );
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook heading");
        check_env_mentions(s(rule, "annotations.description"), name);
    }
    // The gauges are the same in every process: never summed.
    for rule in &rules {
        let expr = s(rule, "expr");
        for gauge in ["postback_queue_depth", "postback_oldest_due_seconds"] {
            assert!(
                !expr.contains(&format!("sum({gauge}")),
                "{}: sums {gauge}, which every process reports identically",
                s(rule, "alert")
            );
        }
    }
}

#[test]
fn alert_unit_tests_feed_only_spec_series() {
    let doc = yaml_one(&deploy().join("prometheus/alerts_test.yml"));
    let rules: BTreeSet<String> = alert_rules()
        .iter()
        .map(|r| s(r, "alert").to_owned())
        .collect();
    let mut tested = BTreeSet::new();
    for t in seq(&doc, "tests") {
        for series in seq(t, "input_series") {
            check_promql(s(series, "series"), "alerts_test.yml");
        }
        for a in seq(t, "alert_rule_test") {
            tested.insert(s(a, "alertname").to_owned());
        }
    }
    assert_eq!(tested, rules, "every alert has a promtool unit test");
}

#[test]
fn prometheus_config_scrapes_api_and_workers_with_the_rules() {
    let doc = yaml_one(&deploy().join("prometheus/prometheus.yml"));
    for f in seq(&doc, "rule_files") {
        let f = f.as_str().expect("rule file");
        assert!(
            deploy().join("prometheus").join(f).is_file(),
            "rule file {f}"
        );
    }
    let text = read(&deploy().join("prometheus/prometheus.yml"));
    assert!(text.contains("api:8080"), "scrapes the API");
    let compose = compose();
    let worker_listen = s(
        &compose,
        "services.worker.environment.POSTBACK_METRICS_LISTEN",
    );
    let port = worker_listen.rsplit(':').next().expect("port");
    let jobs = seq(&doc, "scrape_configs");
    let worker = jobs
        .iter()
        .find(|j| s(j, "job_name") == "postback-worker")
        .expect("postback-worker job");
    let dns = get(worker, "dns_sd_configs.0");
    assert_eq!(seq(dns, "names")[0].as_str(), Some("worker"));
    assert_eq!(
        get(dns, "port").as_u64().map(|p| p.to_string()),
        Some(port.to_owned())
    );
}

/// Dashboard queries with Grafana's variables replaced, as PromQL.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Json =
        serde_json::from_str(&read(&deploy().join("grafana/postback-dashboard.json"))).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "5m");
            out.push((p["title"].as_str().unwrap_or("?").to_owned(), expr));
        }
    }
    out
}

#[test]
fn grafana_dashboard_covers_the_spec_metrics_with_spec_names() {
    let dash: Json =
        serde_json::from_str(&read(&deploy().join("grafana/postback-dashboard.json"))).unwrap();
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dash["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(dash["title"].as_str().is_some());
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let grid = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(grid[k].as_u64().is_some(), "panel {id} gridPos.{k}");
        }
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {id} data source"
            );
            assert!(!p["targets"].as_array().expect("targets").is_empty());
        }
    }
    // Job and instance variables from the Prometheus data source, and
    // every selector of every panel filtered by both.
    for (name, label) in [("job", "job"), ("instance", "instance")] {
        let var = vars
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a `{name}` template variable"));
        assert_eq!(var["type"], "query", "{name}");
        assert_eq!(var["datasource"]["uid"], "${datasource}", "{name}");
        assert_eq!(var["includeAll"], true, "{name}: All");
        assert_eq!(var["multi"], true, "{name}: several");
        assert_eq!(var["allValue"], ".*", "{name}: All matches every value");
        let query = var["query"]["query"].as_str().expect("query.query");
        assert_eq!(var["definition"].as_str(), Some(query), "{name}");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(&format!(", {label})")))
            .unwrap_or_else(|| panic!("{name}: {query}"));
        check_promql(inner, name);
        if name == "instance" {
            assert!(inner.contains(r#"job=~"$job""#), "instance follows job");
        }
    }
    for (title, expr) in dashboard_queries() {
        let sel = selectors(&expr);
        assert!(!sel.is_empty(), "{title}: no Postback metric");
        for (metric, body) in sel {
            let matchers: BTreeSet<&str> = body.split(',').map(str::trim).collect();
            for wanted in [r#"job=~"$job""#, r#"instance=~"$instance""#] {
                assert!(
                    matchers.contains(wanted),
                    "{title}: {metric} is not filtered by {wanted} in {expr}"
                );
            }
        }
    }
    let mut used = BTreeSet::new();
    for (title, expr) in dashboard_queries() {
        used.extend(check_promql(&expr, &title));
        for gauge in ["postback_queue_depth", "postback_oldest_due_seconds"] {
            assert!(
                !expr.contains(&format!("sum({gauge}")),
                "{title}: sums {gauge}"
            );
        }
    }
    let all: BTreeSet<&str> = families().keys().copied().collect();
    assert_eq!(used, all, "the dashboard shows every SPEC §4 metric");
    for (q, what) in [
        ("histogram_quantile(0.99", "p99"),
        ("histogram_quantile(0.5", "p50"),
        (
            "postback_attempt_duration_seconds_bucket",
            "attempt duration",
        ),
        (
            "postback_delivery_latency_seconds_bucket",
            "delivery latency",
        ),
        ("by (outcome)", "attempts by outcome"),
        ("by (result)", "completed by result"),
        ("by (state)", "queue depth by state"),
        ("by (type)", "enqueued by type"),
    ] {
        assert!(
            dashboard_queries().iter().any(|(_, e)| e.contains(q)),
            "the dashboard has no {what} query ({q})"
        );
    }
}

fn promtool(args: &[&str], dir: &Path) -> Option<String> {
    let tool = which("promtool")?;
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Some(text)
}

#[test]
fn promtool_accepts_rules_rule_tests_config_and_dashboard_queries() {
    if which("promtool").is_none() {
        println!(
            "SKIPPED: promtool is not on PATH, so `promtool check rules/config` and `test rules` \
             did not run (.ci/run installs it; the other deploy checks ran)"
        );
        return;
    }
    let dir = deploy().join("prometheus");
    let out = promtool(&["check", "rules", "alerts.yml"], &dir).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "alerts_test.yml"], &dir).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "config", "prometheus.yml"], &dir).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");

    // The dashboard's queries, as recording rules, so promtool parses them.
    let tmp = std::env::temp_dir().join(format!("postback-dash-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let rules: Vec<Json> = dashboard_queries()
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    // JSON is YAML: promtool reads it as a rules file.
    std::fs::write(tmp.join("dashboard.yml"), file.to_string()).unwrap();
    let out = promtool(&["check", "rules", "dashboard.yml"], &tmp).unwrap();
    std::fs::remove_dir_all(&tmp).ok();
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---------------------------------------------------------------------------
// Containers

/// The instructions of the Dockerfile, comments and blank lines left out,
/// continuation lines joined.
fn dockerfile_instructions() -> Vec<String> {
    let text = read(&deploy().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn dockerfile_builds_the_stripped_locked_binary_into_distroless_unprivileged() {
    let text = read(&deploy().join("Dockerfile"));
    let lines = dockerfile_instructions();
    let froms: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1-bookworm AS "),
        "{}",
        froms[0]
    );
    let stage = froms[0].rsplit(' ').next().unwrap();
    // Distroless with the C runtime: the binary links glibc and libgcc_s.
    assert_eq!(froms[1], "FROM gcr.io/distroless/cc-debian12");
    let build = lines
        .iter()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.contains("cargo build --profile dist --locked --bin postback"),
        "{build}"
    );
    assert!(build.contains("target/dist/postback"), "{build}");
    // The `dist` profile is the release build, stripped, without debug info.
    // The `dist` profile is the release build, stripped, without debug
    // info (TOML, read line by line: one flat table).
    let toml = read(&root().join("Cargo.toml"));
    let table = toml
        .split("[profile.dist]")
        .nth(1)
        .expect("Cargo.toml has [profile.dist]");
    let dist: BTreeMap<&str, &str> = table
        .split("\n[")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        .collect();
    assert_eq!(dist.get("inherits"), Some(&"release"), "{dist:?}");
    assert!(
        matches!(dist.get("strip"), Some(&"true" | &"symbols")),
        "[profile.dist] strip: {dist:?}"
    );
    assert!(
        matches!(dist.get("debug"), Some(&"false" | &"0" | &"none")),
        "[profile.dist] debug: {dist:?}"
    );
    // The final stage runs no command: the image has no shell to run it.
    let final_stage: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .skip_while(|l| *l != froms[1])
        .collect();
    for l in &final_stage {
        assert!(
            !l.starts_with("RUN "),
            "the distroless stage cannot RUN (no shell): {l}"
        );
    }
    assert!(final_stage
        .iter()
        .any(|l| l.starts_with(&format!("COPY --from={stage} /usr/local/bin/postback "))));
    let user = final_stage
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert!(uid > 0, "runs as root");
    // The Kubernetes pods run as the same uid.
    for (file, d) in k8s_docs() {
        if matches!(s(&d, "kind"), "Deployment" | "Job") {
            let pod = get(&d, "spec.template.spec");
            assert_eq!(
                get(pod, "securityContext.runAsUser").as_u64(),
                Some(u64::from(uid)),
                "{file}: runAsUser differs from the image's USER"
            );
        }
    }
    assert!(final_stage.contains(&r#"ENTRYPOINT ["postback"]"#));
    assert!(final_stage.contains(&r#"CMD ["serve"]"#));
    assert!(final_stage.contains(&"EXPOSE 8080"));
    assert!(text.contains("POSTBACK_LISTEN=0.0.0.0:8080"));
    // HEALTHCHECK in exec form (a JSON array: no shell) running
    // `postback healthcheck`, with its timeout above the command's own.
    let health = final_stage
        .iter()
        .find_map(|l| l.strip_prefix("HEALTHCHECK "))
        .expect("a HEALTHCHECK");
    let (options, command) = health.split_once("CMD ").expect("HEALTHCHECK … CMD");
    let words: Vec<String> = serde_json::from_str(command.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not exec form ({e}): {command}"));
    assert_eq!(&words[..2], ["postback", "healthcheck"], "{words:?}");
    let refs: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    check_invocation(&refs, "Dockerfile HEALTHCHECK");
    let option = |name: &str| {
        options
            .split_whitespace()
            .find_map(|o| o.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("HEALTHCHECK --{name}"))
    };
    assert!(duration(option("timeout")) > HEALTHCHECK_OWN_TIMEOUT);
    duration(option("interval"));
    duration(option("start-period"));
    check_env_mentions(&text, "Dockerfile");
    // The binary the Dockerfile builds must exist under that name, and the
    // build context must carry what `cargo build` reads.
    let manifest = read(&root().join("Cargo.toml"));
    assert!(manifest.contains("name = \"postback\""));
    assert!(
        root().join("Cargo.lock").is_file(),
        "--locked needs Cargo.lock"
    );
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    let ignored: BTreeSet<&str> = ignore.lines().map(str::trim).collect();
    assert!(ignored.contains("target") && ignored.contains(".git"));
    for needed in ["src", "migrations", "Cargo.toml", "Cargo.lock"] {
        assert!(!ignored.contains(needed), "{needed} is ignored");
        assert!(root().join(needed).exists(), "{needed}");
    }
}

/// How long `postback healthcheck` itself waits for `/readyz`
/// (src/cli/healthcheck.rs): a container engine's timeout must be longer,
/// or a slow answer reads as a hung check.
const HEALTHCHECK_OWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The Dockerfile's HEALTHCHECK command, as words.
fn dockerfile_healthcheck() -> Vec<String> {
    let line = dockerfile_instructions()
        .into_iter()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    let command = line.split_once("CMD ").expect("CMD").1.trim().to_owned();
    serde_json::from_str(&command).expect("exec form")
}

fn compose() -> Yaml {
    yaml_one(&deploy().join("docker-compose.yml"))
}

fn words_of(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Yaml::Sequence(s) => s
            .iter()
            .map(|w| w.as_str().expect("word").to_owned())
            .collect(),
        other => panic!("not a command: {other:?}"),
    }
}

#[test]
fn compose_runs_postgres_migrate_api_workers_and_prometheus() {
    let doc = compose();
    let services = get(&doc, "services").as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["postgres", "migrate", "api", "worker", "prometheus"])
    );
    assert!(s(&doc, "services.postgres.image").starts_with("postgres:16"));
    assert!(opt(get(&doc, "services.postgres"), "healthcheck").is_some());
    assert!(!seq(&doc, "services.postgres.volumes").is_empty());
    let timeout = attempt_timeout();
    for (svc, cmd) in [
        ("migrate", "migrate"),
        ("api", "serve"),
        ("worker", "worker"),
    ] {
        let service = get(&doc, &format!("services.{svc}"));
        let words = words_of(get(service, "command"));
        assert_eq!(words[0], cmd, "{svc}");
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        check_invocation(&refs, &format!("compose {svc}"));
        let build = get(service, "build");
        let context = deploy().join(s(build, "context"));
        assert!(
            context.join(s(build, "dockerfile")).is_file(),
            "{svc}: dockerfile"
        );
        let env = get(service, "environment").as_mapping().expect("env map");
        for k in env.keys() {
            check_env_name(k.as_str().unwrap(), &format!("compose {svc}"));
        }
        assert!(s(service, "environment.DATABASE_URL").contains("@postgres:5432/"));
        if svc != "migrate" {
            let grace = duration(s(service, "stop_grace_period"));
            assert!(
                grace > timeout,
                "{svc}: stop_grace_period {grace:?} <= {timeout:?}"
            );
        }
    }
    assert_eq!(
        s(&doc, "services.api.environment.POSTBACK_LISTEN"),
        "0.0.0.0:8080"
    );
    assert!(s(&doc, "services.api.environment.POSTBACK_API_TOKEN").contains("${POSTBACK_API_TOKEN"));
    assert_eq!(
        s(&doc, "services.api.depends_on.migrate.condition"),
        "service_completed_successfully"
    );
    assert_eq!(
        s(&doc, "services.migrate.depends_on.postgres.condition"),
        "service_healthy"
    );
    // Scalable: no fixed host port, no container_name.
    let worker = get(&doc, "services.worker");
    assert!(opt(worker, "ports").is_none() && opt(worker, "container_name").is_none());
    // The API healthcheck is `postback healthcheck` on the port it listens
    // on (the image has no shell); worker and migrate turn the image's
    // HEALTHCHECK off, as they serve no /readyz.
    let health = words_of(get(&doc, "services.api.healthcheck.test"));
    assert_eq!(
        &health[..3],
        ["CMD", "postback", "healthcheck"],
        "{health:?}"
    );
    let refs: Vec<&str> = health[2..].iter().map(String::as_str).collect();
    check_invocation(&refs, "compose api healthcheck");
    assert!(health.join(" ").contains("http://127.0.0.1:8080"));
    assert!(duration(s(&doc, "services.api.healthcheck.timeout")) > HEALTHCHECK_OWN_TIMEOUT);
    for svc in ["worker", "migrate"] {
        assert_eq!(
            get(&doc, &format!("services.{svc}.healthcheck.disable")).as_bool(),
            Some(true),
            "{svc} inherits the image's HEALTHCHECK of the API"
        );
    }
    // Prometheus mounts files that exist.
    assert!(s(&doc, "services.prometheus.image").starts_with("prom/prometheus:"));
    let mut mounted = BTreeSet::new();
    for v in seq(&doc, "services.prometheus.volumes") {
        let v = v.as_str().unwrap();
        let (src, rest) = v.split_once(':').unwrap();
        if src.starts_with("./") {
            assert!(deploy().join(src).is_file(), "compose mounts missing {src}");
            mounted.insert(rest.split(':').next().unwrap().to_owned());
        }
    }
    assert!(mounted.contains("/etc/prometheus/prometheus.yml"));
    assert!(mounted.contains("/etc/prometheus/alerts.yml"));
}

/// A one-request HTTP server on an ephemeral loopback port answering
/// `status`; returns its port and the request line it received.
fn one_shot_server(status: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        // Read the whole request head before answering and closing.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
        }
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        first
    });
    (port, server)
}

#[test]
fn the_image_and_compose_healthchecks_really_ask_readyz() {
    // Run the HEALTHCHECK commands of the Dockerfile and the compose file
    // with the binary cargo built, pointed at a tiny server on an
    // ephemeral port, to see that they tell 200 from 503.
    let compose = words_of(get(&compose(), "services.api.healthcheck.test"));
    for (origin, words) in [
        ("Dockerfile", dockerfile_healthcheck()),
        ("compose", compose[1..].to_vec()),
    ] {
        assert_eq!(words[0], "postback", "{origin}: {words:?}");
        // The default URL is the API port of the image (EXPOSE 8080).
        let mut args: Vec<String> = words[1..].to_vec();
        match args.iter().position(|a| a == "--url") {
            Some(i) => assert_eq!(args[i + 1], "http://127.0.0.1:8080", "{origin}"),
            None => assert!(
                help(&["healthcheck"]).contains("[default: http://127.0.0.1:8080]"),
                "{origin}: healthcheck's default URL is not the image's API port"
            ),
        }
        for (status, healthy) in [("200 OK", true), ("503 Service Unavailable", false)] {
            let (port, server) = one_shot_server(status);
            let url = format!("http://127.0.0.1:{port}");
            match args.iter().position(|a| a == "--url") {
                Some(i) => args[i + 1] = url,
                None => args.extend(["--url".to_owned(), url]),
            }
            let ok = Command::new(env!("CARGO_BIN_EXE_postback"))
                .args(&args)
                .output()
                .expect("run postback healthcheck")
                .status
                .success();
            let request = server.join().unwrap();
            assert_eq!(request.trim_end(), "GET /readyz HTTP/1.1", "{origin}");
            assert_eq!(ok, healthy, "{origin}: healthcheck against {status}");
        }
    }
}

// ---------------------------------------------------------------------------
// Kubernetes

fn k8s_docs() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    for f in files_under(&deploy().join("kubernetes")) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name == "kustomization.yaml" {
            continue;
        }
        for doc in yaml_docs(&f) {
            out.push((name.clone(), doc));
        }
    }
    out
}

fn find<'a>(docs: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| s(d, "kind") == kind && s(d, "metadata.name") == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_manifests_are_consistent_with_each_other_and_the_binary() {
    let docs = k8s_docs();
    let timeout = attempt_timeout();
    for (file, d) in &docs {
        assert!(!s(d, "apiVersion").is_empty(), "{file}");
        assert!(!s(d, "metadata.name").is_empty(), "{file}");
        assert!(
            opt(get(d, "metadata"), "namespace").is_none(),
            "{file}: namespace-agnostic manifests set no namespace"
        );
    }
    let secret = find(&docs, "Secret", "postback");
    let secret_keys: BTreeSet<&str> = get(secret, "stringData")
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    for k in &secret_keys {
        check_env_name(k, "Secret");
    }
    let cm = find(&docs, "ConfigMap", "postback");
    for (k, v) in get(cm, "data").as_mapping().unwrap() {
        let k = k.as_str().unwrap();
        check_env_name(k, "ConfigMap");
        assert!(v.is_string(), "ConfigMap {k}: values must be strings");
    }
    for k in [
        "POSTBACK_ATTEMPT_TIMEOUT",
        "POSTBACK_RETRY_FIRST_DELAY",
        "POSTBACK_RETRY_MAX_DELAY",
        "POSTBACK_RETRY_GIVE_UP",
        "POSTBACK_JOB_TTL",
    ] {
        duration(s(cm, &format!("data.{k}")));
    }
    check_env_mentions(
        &read(&deploy().join("kubernetes/configmap.yaml")),
        "configmap.yaml",
    );

    let mut workloads = 0;
    for (file, d) in &docs {
        let kind = s(d, "kind");
        let pod = match kind {
            "Deployment" | "Job" => get(d, "spec.template.spec"),
            _ => continue,
        };
        workloads += 1;
        let ctx = format!("{file} ({})", s(d, "metadata.name"));
        if kind == "Deployment" {
            let selector = get(d, "spec.selector.matchLabels").as_mapping().unwrap();
            let labels = get(d, "spec.template.metadata.labels")
                .as_mapping()
                .unwrap();
            for (k, v) in selector {
                assert_eq!(labels.get(k), Some(v), "{ctx}: selector/labels");
            }
            let grace = get(pod, "terminationGracePeriodSeconds")
                .as_u64()
                .expect("grace");
            // The preStop drain runs before SIGTERM and inside the grace
            // period: the attempts in flight must still fit after it. It is
            // the kubelet's sleep action: the image has no shell or `sleep`.
            for c in seq(pod, "containers") {
                let pre_stop = get(c, "lifecycle.preStop");
                assert!(
                    opt(pre_stop, "exec").is_none(),
                    "{ctx}: preStop exec needs a shell the image lacks"
                );
                let drain = get(pre_stop, "sleep.seconds")
                    .as_u64()
                    .unwrap_or_else(|| panic!("{ctx}: preStop.sleep.seconds"));
                assert!(
                    drain >= 5,
                    "{ctx}: a {drain} s drain is too short for endpoints to catch up"
                );
                assert!(
                    Duration::from_secs(grace) > Duration::from_secs(drain) + timeout,
                    "{ctx}: terminationGracePeriodSeconds {grace} <= preStop {drain} s + attempt timeout {timeout:?}"
                );
                // What a PodDisruptionBudget counts as available.
                assert!(opt(c, "readinessProbe").is_some(), "{ctx}: readinessProbe");
            }
        } else {
            assert_eq!(s(pod, "restartPolicy"), "Never", "{ctx}");
        }
        assert_eq!(
            get(pod, "securityContext.runAsNonRoot").as_bool(),
            Some(true),
            "{ctx}"
        );
        assert!(get(pod, "securityContext.runAsUser").as_u64().unwrap() > 0);
        for c in seq(pod, "containers") {
            let words = words_of(get(c, "args"));
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            let command = check_invocation(&refs, &ctx);
            assert!(s(c, "image").starts_with("postback:"), "{ctx}: image");
            assert_eq!(
                get(c, "securityContext.readOnlyRootFilesystem").as_bool(),
                Some(true)
            );
            assert_eq!(
                get(c, "securityContext.allowPrivilegeEscalation").as_bool(),
                Some(false)
            );
            assert!(
                opt(get(c, "resources"), "requests").is_some(),
                "{ctx}: resources"
            );
            let mut env = BTreeMap::new();
            for e in opt(c, "env")
                .and_then(|e| e.as_sequence())
                .into_iter()
                .flatten()
            {
                let name = s(e, "name");
                check_env_name(name, &ctx);
                if let Some(r) = opt(e, "valueFrom") {
                    assert_eq!(s(r, "secretKeyRef.name"), "postback", "{ctx}");
                    let key = s(r, "secretKeyRef.key");
                    assert!(secret_keys.contains(key), "{ctx}: Secret has no key {key}");
                    env.insert(name.to_owned(), format!("secret:{key}"));
                } else {
                    env.insert(name.to_owned(), s(e, "value").to_owned());
                }
            }
            assert!(env.contains_key("DATABASE_URL"), "{ctx}: DATABASE_URL");
            for from in opt(c, "envFrom")
                .and_then(|e| e.as_sequence())
                .into_iter()
                .flatten()
            {
                assert_eq!(s(from, "configMapRef.name"), "postback", "{ctx}");
            }
            let ports: BTreeMap<String, u64> = opt(c, "ports")
                .and_then(|p| p.as_sequence())
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        s(p, "name").to_owned(),
                        get(p, "containerPort").as_u64().unwrap(),
                    )
                })
                .collect();
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if let Some(p) = opt(c, probe) {
                    let path = s(p, "httpGet.path");
                    let port = s(p, "httpGet.port");
                    assert!(ports.contains_key(port), "{ctx}: {probe} port {port}");
                    let allowed: &[&str] = match command.as_str() {
                        "serve" => &["/healthz", "/readyz", "/metrics"],
                        _ => &["/metrics"],
                    };
                    assert!(allowed.contains(&path), "{ctx}: {probe} {path}");
                    if command == "serve" {
                        assert!(
                            postback::api::routes()
                                .iter()
                                .any(|(m, p)| *m == "GET" && p == path),
                            "{ctx}: {probe} {path} is not a GET route of the API"
                        );
                    }
                }
            }
            match command.as_str() {
                "serve" => {
                    assert_eq!(
                        env.get("POSTBACK_LISTEN").map(String::as_str),
                        Some("0.0.0.0:8080")
                    );
                    assert_eq!(ports.get("http"), Some(&8080));
                    assert_eq!(s(c, "readinessProbe.httpGet.path"), "/readyz");
                    assert_eq!(s(c, "livenessProbe.httpGet.path"), "/healthz");
                    assert_eq!(
                        env.get("POSTBACK_API_TOKEN").map(String::as_str),
                        Some("secret:POSTBACK_API_TOKEN")
                    );
                }
                "worker" => {
                    let listen = env.get("POSTBACK_METRICS_LISTEN").expect("metrics listen");
                    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
                    assert_eq!(ports.get("metrics"), Some(&port));
                    let ann = get(d, "spec.template.metadata.annotations");
                    let ann = |k: &str| opt(ann, k).and_then(|v| v.as_str()).unwrap_or("");
                    assert_eq!(ann("prometheus.io/scrape"), "true");
                    assert_eq!(ann("prometheus.io/port"), port.to_string());
                    assert_eq!(ann("prometheus.io/path"), "/metrics");
                    assert_eq!(get(d, "spec.replicas").as_u64(), Some(2));
                }
                "migrate" => {}
                other => panic!("{ctx}: unexpected command {other}"),
            }
        }
    }
    assert_eq!(workloads, 3, "API, worker, migration Job");

    let hpa = find(&docs, "HorizontalPodAutoscaler", "postback-worker");
    let target = s(hpa, "spec.scaleTargetRef.name");
    find(&docs, "Deployment", target);
    assert_eq!(s(hpa, "spec.metrics.0.resource.name"), "cpu");

    // A PodDisruptionBudget per Deployment, selecting its pods and only
    // them, that still lets a node drain evict one.
    let deployments: Vec<&Yaml> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| s(d, "kind") == "Deployment")
        .collect();
    let selects = |selector: &Yaml, d: &Yaml| {
        let labels = get(d, "spec.template.metadata.labels")
            .as_mapping()
            .unwrap();
        get(selector, "matchLabels")
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    for d in &deployments {
        let name = s(d, "metadata.name");
        let pdb = find(&docs, "PodDisruptionBudget", name);
        assert_eq!(s(pdb, "apiVersion"), "policy/v1", "{name}: PDB");
        let selector = get(pdb, "spec.selector");
        for other in &deployments {
            assert_eq!(
                selects(selector, other),
                s(other, "metadata.name") == name,
                "PDB {name} and the pods of {}",
                s(other, "metadata.name")
            );
        }
        let spec = get(pdb, "spec");
        let replicas = get(d, "spec.replicas").as_u64().unwrap();
        match (opt(spec, "minAvailable"), opt(spec, "maxUnavailable")) {
            (Some(min), None) => {
                let min = min.as_u64().expect("minAvailable as a count");
                assert!(
                    (1..replicas).contains(&min),
                    "{name}: minAvailable {min} of {replicas} replicas"
                );
            }
            (None, Some(max)) => {
                let max = max.as_u64().expect("maxUnavailable as a count");
                assert!(max >= 1, "{name}: maxUnavailable 0 blocks every drain");
            }
            other => panic!("{name}: PDB needs one of minAvailable/maxUnavailable: {other:?}"),
        }
    }

    let svc = find(&docs, "Service", "postback-api");
    let api = find(&docs, "Deployment", "postback-api");
    let labels = get(api, "spec.template.metadata.labels")
        .as_mapping()
        .unwrap();
    for (k, v) in get(svc, "spec.selector").as_mapping().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "Service selector matches the API pods"
        );
    }
    assert_eq!(s(svc, "spec.ports.0.targetPort"), "http");
}

#[test]
fn kustomization_lists_every_manifest_but_the_secret_example() {
    let k = yaml_one(&deploy().join("kubernetes/kustomization.yaml"));
    let listed: BTreeSet<String> = seq(&k, "resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let on_disk: BTreeSet<String> = files_under(&deploy().join("kubernetes"))
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml" && !n.contains(".example."))
        .collect();
    assert_eq!(listed, on_disk);
    assert!(opt(&k, "namespace").is_none());
}

// ---------------------------------------------------------------------------
// systemd

/// `[Section]` → key → values (keys may repeat).
fn unit(path: &Path) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(path).lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: bad line {line:?}", path.display()));
        assert!(
            !section.is_empty(),
            "{}: key outside a section",
            path.display()
        );
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    out
}

fn one<'a>(
    u: &'a BTreeMap<String, BTreeMap<String, Vec<String>>>,
    sec: &str,
    key: &str,
) -> &'a str {
    u.get(sec)
        .and_then(|s| s.get(key))
        .and_then(|v| v.last())
        .unwrap_or_else(|| panic!("[{sec}] {key} missing"))
}

#[test]
fn systemd_units_are_hardened_and_run_real_commands() {
    let timeout = attempt_timeout();
    let dir = deploy().join("systemd");
    for (file, command) in [
        ("postback.service", "serve"),
        ("postback-worker@.service", "worker"),
    ] {
        let u = unit(&dir.join(file));
        let exec = one(&u, "Service", "ExecStart").replace("%i", "9091");
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], "/usr/local/bin/postback", "{file}");
        assert_eq!(words[1], command, "{file}");
        check_invocation(&words[1..], file);
        assert_eq!(one(&u, "Service", "EnvironmentFile"), "/etc/postback/env");
        assert_eq!(one(&u, "Service", "KillSignal"), "SIGTERM");
        assert_eq!(one(&u, "Service", "User"), "postback");
        let stop = one(&u, "Service", "TimeoutStopSec");
        // systemd takes bare seconds or a time span.
        let stop = match stop.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => duration(stop),
        };
        assert!(
            stop > timeout,
            "{file}: TimeoutStopSec {stop:?} <= attempt timeout"
        );
        for (k, v) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("RestartPreventExitStatus", "2"),
        ] {
            assert_eq!(one(&u, "Service", k), v, "{file}: {k}");
        }
        for env in u["Service"].get("Environment").into_iter().flatten() {
            let name = env.split('=').next().unwrap();
            check_env_name(name, file);
        }
        if command == "serve" {
            assert_eq!(one(&u, "Service", "StateDirectory"), "postback");
            let data = u["Service"]["Environment"]
                .iter()
                .find_map(|e| e.strip_prefix("POSTBACK_DATA_DIR="))
                .expect("POSTBACK_DATA_DIR");
            assert!(
                data.starts_with("/var/lib/postback/"),
                "data dir in StateDirectory"
            );
            assert_eq!(one(&u, "Service", "WorkingDirectory"), "/var/lib/postback");
            assert_eq!(one(&u, "Service", "KillMode"), "mixed");
        }
        check_env_mentions(&read(&dir.join(file)), file);
    }
    let example = read(&dir.join("env.example"));
    for line in example.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some((k, _)) = line.split_once('=') {
            if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !k.is_empty() {
                check_env_name(k, "env.example");
            }
        }
    }
    check_env_mentions(&example, "env.example");
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Some(tool) = which("systemd-analyze") else {
        println!("SKIPPED: systemd-analyze is not on PATH; the unit files were only parsed");
        return;
    };
    // Verify copies whose ExecStart points at the binary cargo built (the
    // real path, /usr/local/bin/postback, is not installed here).
    let tmp = std::env::temp_dir().join(format!("postback-units-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let bin = env!("CARGO_BIN_EXE_postback");
    let mut names = Vec::new();
    for (src, dst) in [
        ("postback.service", "postback.service"),
        ("postback-worker@.service", "postback-worker@9091.service"),
    ] {
        let text =
            read(&deploy().join("systemd").join(src)).replace("/usr/local/bin/postback", bin);
        std::fs::write(tmp.join(dst), text).unwrap();
        names.push(tmp.join(dst));
    }
    let out = Command::new(tool)
        .arg("verify")
        .arg("--man=no")
        .args(&names)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    std::fs::remove_dir_all(&tmp).ok();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() && text.contains("Failed to") && !text.contains(".service:") {
        // No usable systemd in this environment (containers without it):
        // nothing about our files was said.
        println!("SKIPPED: systemd-analyze could not run here: {text}");
        return;
    }
    let complaints: Vec<&str> = text.lines().filter(|l| l.contains(".service")).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// The runbook

#[test]
fn runbook_commands_flags_settings_and_paths_are_real() {
    let doc = read(&root().join("docs/operations.md"));
    check_env_mentions(&doc, "docs/operations.md");
    // Every `postback …` invocation, in code spans and code blocks.
    let mut spans: Vec<String> = Vec::new();
    let mut in_block = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            spans.push(line.split(" #").next().unwrap().to_owned());
        } else {
            spans.extend(line.split('`').skip(1).step_by(2).map(str::to_owned));
        }
    }
    let mut checked = BTreeSet::new();
    for span in &spans {
        let words: Vec<&str> = span.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if (*w == "postback" || w.ends_with("/postback")) && i + 1 < words.len() {
                let rest: Vec<&str> = words[i + 1..]
                    .iter()
                    .copied()
                    .take_while(|w| !matches!(*w, "|" | "&&" | ";" | "(" | ")"))
                    .collect();
                let is_command = rest
                    .first()
                    .is_some_and(|w| COMMANDS.iter().any(|c| c[0] == *w));
                if is_command {
                    checked.insert(check_invocation(&rest, &format!("docs: {span}")));
                }
            }
        }
    }
    for wanted in [
        "deliveries list",
        "deliveries show",
        "replay",
        "purge",
        "migrate",
    ] {
        assert!(
            checked.contains(wanted),
            "the runbook shows no `postback {wanted}`"
        );
    }
    for must in [
        "--status failed --since 2d --host",
        "--dry-run",
        "--rate 50/s",
        "purge --expired",
        "postback.settings",
        "GET /v1/egress",
    ] {
        assert!(doc.contains(must), "the runbook does not mention {must:?}");
    }
    // The runbook says the PostgreSQL client has no TLS: true while sqlx is
    // built without a TLS feature.
    let manifest = read(&root().join("Cargo.toml"));
    let sqlx_line = manifest
        .lines()
        .find(|l| l.starts_with("sqlx "))
        .expect("sqlx dependency");
    assert_eq!(
        doc.contains("has no TLS support"),
        !sqlx_line.contains("tls"),
        "docs/operations.md's statement about TLS to PostgreSQL no longer matches Cargo.toml"
    );
    // Each alert has its section (checked from the rules' side too).
    let anchors = doc_anchors();
    for rule in alert_rules() {
        assert!(anchors.contains(&s(&rule, "alert").to_lowercase()));
    }
    // Links and paths into the repository exist.
    for part in doc.split("](").skip(1) {
        let target = part.split(')').next().unwrap();
        if target.starts_with("http") {
            continue;
        }
        if let Some(anchor) = target.strip_prefix('#') {
            assert!(
                anchors.contains(anchor),
                "docs/operations.md links to missing #{anchor}"
            );
            continue;
        }
        let path = target.split('#').next().unwrap();
        assert!(
            root().join("docs").join(path).exists(),
            "docs/operations.md links to missing {target}"
        );
    }
    for word in doc.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
        if let Some(p) = word.strip_prefix("deploy/") {
            let p = p.trim_end_matches(['.', ',', ':', ';']);
            assert!(
                deploy().join(p).exists(),
                "docs/operations.md names missing deploy/{p}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// `--help`, grouped by who reads a setting

/// `--help` text split into its sections: heading → long flags.
fn help_sections(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut heading = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') && !line.contains("Usage") {
            heading = Some(line.trim_end_matches(':').to_owned());
            out.entry(line.trim_end_matches(':').to_owned())
                .or_default();
            continue;
        }
        let Some(h) = &heading else { continue };
        let word = line.trim_start();
        if line.starts_with("  ") && (word.starts_with("--") || word.starts_with("-h,")) {
            let flag = word
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .expect("a long flag");
            out.get_mut(h).unwrap().insert(flag.to_owned());
        }
    }
    out
}

#[test]
fn worker_help_shows_only_what_a_worker_reads() {
    use postback::config::headings;
    let serve = help_sections(&help(&["serve"]));
    let worker = help_sections(&help(&["worker"]));
    let names = |m: &BTreeMap<String, BTreeSet<String>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&serve),
        [
            "API settings",
            "Options",
            "Shared settings",
            "Worker settings"
        ],
        "serve --help sections"
    );
    assert_eq!(
        names(&worker),
        ["Options", "Shared settings", "Worker settings"],
        "worker --help sections"
    );
    assert_eq!(serve["Options"], BTreeSet::from(["--help".to_owned()]));
    for h in [headings::SHARED, headings::WORKER] {
        assert_eq!(worker[h], serve[h], "{h} differ between serve and worker");
    }
    // What only the API reads is listed by serve and never by worker.
    for api_only in [
        "--listen",
        "--api-token",
        "--insecure-no-auth",
        "--max-body",
        "--egress-public-ips",
        "--data-dir",
    ] {
        assert!(serve[headings::API].contains(api_only), "serve: {api_only}");
        assert!(
            worker.values().all(|flags| !flags.contains(api_only)),
            "worker --help lists {api_only}"
        );
    }
    // What a worker needs to run is there.
    for needed in [
        "--database-url",
        "--concurrency",
        "--attempt-timeout",
        "--metrics-listen",
        "--signing-secret",
        "--log-level",
    ] {
        assert!(
            worker.values().any(|flags| flags.contains(needed)),
            "worker --help lacks {needed}"
        );
    }
    // Every setting of serve is under one of the three headings.
    let all: usize = serve.values().map(BTreeSet::len).sum();
    let grouped: usize = [headings::SHARED, headings::API, headings::WORKER]
        .iter()
        .map(|h| serve[*h].len())
        .sum();
    assert_eq!(all, grouped + 1, "a setting of serve without a heading");
}

#[test]
fn help_sections_parser_sees_headings_and_flags() {
    let text = "About\n\nUsage: x [OPTIONS]\n\nOptions:\n  -h, --help\n          Print help\n\nShared settings:\n      --a <A>\n          one --not-a-flag\n\n          [env: A=]\n      --b\n";
    let got = help_sections(text);
    assert_eq!(got["Options"], BTreeSet::from(["--help".to_owned()]));
    assert_eq!(
        got["Shared settings"],
        BTreeSet::from(["--a".to_owned(), "--b".to_owned()])
    );
}

// ---------------------------------------------------------------------------
// The pool-size formula the deploy files state

#[test]
fn deploy_files_state_the_pool_size_formula_of_the_code() {
    let formula = |c: usize| postback::runtime::pool_size(c);
    let mut stated = 0;
    for path in [
        deploy().join("docker-compose.yml"),
        deploy().join("kubernetes/worker-deployment.yaml"),
        root().join("docs/operations.md"),
    ] {
        // "POSTBACK_CONCURRENCY/4 … between 16 and 64; 64 …default"
        let text = read(&path).replace(['#', '`', '\n'], " ");
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for (at, _) in text.match_indices("POSTBACK_CONCURRENCY") {
            let rest = text[at + "POSTBACK_CONCURRENCY".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('/') else {
                continue;
            };
            let number = |s: &str| -> usize {
                s.trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: a number in {s:?}", path.display()))
            };
            let divisor = number(rest);
            let window = &rest[..rest.len().min(200)];
            let (_, range) = window
                .split_once("between ")
                .unwrap_or_else(|| panic!("{}: no range after the formula", path.display()));
            let low = number(range);
            let high = number(range.split_once(" and ").expect("and").1);
            for c in [0, 1, 63, 64, 100, 128, 256, 1000, 100_000] {
                assert_eq!(
                    (c / divisor).clamp(low, high) as u32,
                    formula(c),
                    "{}: states POSTBACK_CONCURRENCY/{divisor} between {low} and {high}, \
                     which differs from the code at {c}",
                    path.display()
                );
            }
            let default = postback::Config::default().concurrency;
            assert!(
                window.contains(&format!("{} ", formula(default)))
                    || window.contains(&format!("{};", formula(default))),
                "{}: does not say the default pool is {}",
                path.display(),
                formula(default)
            );
            stated += 1;
        }
    }
    assert!(
        stated >= 3,
        "compose, the worker Deployment and the runbook state it"
    );
}

// ---------------------------------------------------------------------------
// docs/reference.md: the contract as implemented, kept equal to the code

/// The tables of one `## ` section of a Markdown page: rows of cells (the
/// header row and the `---` row left out).
fn md_tables(doc: &str, section: &str) -> Vec<Vec<Vec<String>>> {
    let body = doc
        .split(&format!("\n## {section}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/reference.md has no section {section:?}"));
    let body = body.split("\n## ").next().unwrap();
    let mut tables = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header_seen = false;
    for line in body.lines().chain(std::iter::once("")) {
        let line = line.trim();
        if line.starts_with('|') {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            if !header_seen {
                header_seen = true;
            } else if !cells[0].starts_with("---") {
                rows.push(cells);
            }
        } else if header_seen {
            tables.push(std::mem::take(&mut rows));
            header_seen = false;
        }
    }
    tables
}

/// The `code spans` of a Markdown text, in order.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// One flag of a command as clap defines it.
#[derive(Debug, Clone, PartialEq)]
struct FlagDef {
    env: Option<String>,
    default: Option<String>,
    heading: Option<String>,
    hidden: bool,
}

/// One leaf command of the CLI: its long flags and positional arguments.
#[derive(Debug)]
struct CommandDef {
    flags: BTreeMap<String, FlagDef>,
    positionals: usize,
}

/// Every leaf command of `postback`, by path ("deliveries list"), from
/// clap's own description of the command line.
fn command_defs() -> BTreeMap<String, CommandDef> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut BTreeMap<String, CommandDef>) {
        let subs: Vec<_> = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .collect();
        if subs.is_empty() {
            let mut flags = BTreeMap::new();
            let mut positionals = 0;
            for a in cmd.get_arguments() {
                if a.is_positional() {
                    positionals += 1;
                    continue;
                }
                let Some(long) = a.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let defaults: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                flags.insert(
                    format!("--{long}"),
                    FlagDef {
                        env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
                        default: (!defaults.is_empty()).then(|| defaults.join(",")),
                        heading: a.get_help_heading().map(str::to_owned),
                        hidden: a.is_hide_set(),
                    },
                );
            }
            out.insert(prefix.trim().to_owned(), CommandDef { flags, positionals });
        }
        for sub in subs {
            walk(sub, &format!("{prefix} {}", sub.get_name()), out);
        }
    }
    let root = postback::cli::command();
    let mut out = BTreeMap::new();
    walk(&root, "", &mut out);
    out
}

fn reference() -> String {
    read(&root().join("docs/reference.md"))
}

/// A default as the page spells it: `none`, `""` (empty list) or `value`.
fn page_default(cell: &str) -> Option<String> {
    if cell == "none" {
        return None;
    }
    let spans = code_spans(cell);
    Some(
        spans
            .first()
            .unwrap_or_else(|| panic!("default {cell:?}"))
            .trim_matches('"')
            .to_owned(),
    )
}

/// A settings-like table (variable, flag, default, …) by flag.
fn setting_rows(rows: &[Vec<String>]) -> BTreeMap<String, (String, Option<String>, Vec<String>)> {
    let mut out = BTreeMap::new();
    for row in rows {
        let env = code_spans(&row[0]).remove(0);
        let flag = code_spans(&row[1]).remove(0);
        let default = page_default(&row[2]);
        let prev = out.insert(flag.clone(), (env, default, row[3..].to_vec()));
        assert!(prev.is_none(), "docs/reference.md lists {flag} twice");
    }
    out
}

#[test]
fn reference_settings_are_the_settings_of_serve_and_worker() {
    use postback::config::headings;
    let doc = reference();
    let tables = md_tables(&doc, "Settings");
    let page = setting_rows(&tables[0]);
    let cmds = command_defs();
    let serve = &cmds["serve"].flags;
    let page_flags: BTreeSet<&String> = page.keys().collect();
    let code_flags: BTreeSet<&String> = serve.keys().collect();
    assert_eq!(
        page_flags, code_flags,
        "docs/reference.md's settings and the flags of `postback serve` differ"
    );
    for (flag, (env, default, rest)) in &page {
        let def = &serve[flag];
        assert_eq!(def.env.as_ref(), Some(env), "{flag}: variable");
        assert_eq!(&def.default, default, "{flag}: default");
        let read_by = match def.heading.as_deref() {
            Some(headings::SHARED) => "shared",
            Some(headings::API) => "API",
            Some(headings::WORKER) => "worker",
            other => panic!("{flag}: heading {other:?}"),
        };
        assert_eq!(rest[0], read_by, "{flag}: read by");
        assert!(!rest[1].is_empty(), "{flag}: meaning");
    }
    // `worker` has the same settings, the API ones hidden.
    let worker = &cmds["worker"].flags;
    for (flag, def) in serve {
        let w = &worker[flag];
        assert_eq!(
            w.hidden,
            def.heading.as_deref() == Some(headings::API),
            "worker {flag}: hidden"
        );
        assert_eq!((&w.env, &w.default), (&def.env, &def.default));
    }
    // Every setting the page names in prose is a setting.
    for word in doc.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("POSTBACK_") {
            assert!(
                page.values().any(|(env, ..)| env == word),
                "docs/reference.md names {word}, which no setting reads"
            );
        }
    }
}

#[test]
fn reference_commands_are_the_commands_and_flags_of_the_binary() {
    let doc = reference();
    let tables = md_tables(&doc, "Commands");
    assert_eq!(tables.len(), 2, "the command table and the database flags");
    let db = setting_rows(&tables[1]);
    let settings = setting_rows(&md_tables(&doc, "Settings")[0]);
    let cmds = command_defs();
    let mut listed = BTreeSet::new();
    for row in &tables[0] {
        let path = code_spans(&row[0])
            .remove(0)
            .strip_prefix("postback ")
            .expect("`postback …`")
            .to_owned();
        let def = cmds.get(&path).unwrap_or_else(|| {
            panic!("docs/reference.md lists `postback {path}`, which is not a command")
        });
        assert!(listed.insert(path.clone()), "{path} listed twice");
        assert_eq!(
            code_spans(&row[1]).len(),
            def.positionals,
            "{path}: arguments"
        );
        let cell = &row[2];
        let visible: BTreeSet<&String> = def
            .flags
            .iter()
            .filter(|(_, f)| !f.hidden)
            .map(|(k, _)| k)
            .collect();
        if path == "serve" || path == "worker" {
            let groups: &[&str] = if cell.contains("every setting below") {
                &["shared", "API", "worker"]
            } else if cell.contains("the shared and worker settings below") {
                &["shared", "worker"]
            } else {
                panic!("{path}: which settings? {cell}")
            };
            let expected: BTreeSet<&String> = settings
                .iter()
                .filter(|(_, (_, _, rest))| groups.contains(&rest[0].as_str()))
                .map(|(k, _)| k)
                .collect();
            assert_eq!(visible, expected, "{path}: settings");
            continue;
        }
        // The flags the cell names, with the defaults and variables it
        // gives them ("`--limit N` (default `100`)").
        let mut named: BTreeMap<String, FlagDef> = BTreeMap::new();
        if cell.contains("the database flags") {
            for (flag, (env, default, _)) in &db {
                named.insert(
                    flag.clone(),
                    FlagDef {
                        env: Some(env.clone()),
                        default: default.clone(),
                        heading: None,
                        hidden: false,
                    },
                );
            }
        }
        let parts: Vec<&str> = cell.split('`').collect();
        let mut current: Option<String> = None;
        for (i, span) in parts.iter().enumerate().skip(1).step_by(2) {
            let before = parts[i - 1];
            if span.starts_with("--") {
                let flag = span.split_whitespace().next().unwrap().to_owned();
                named.insert(
                    flag.clone(),
                    FlagDef {
                        env: None,
                        default: None,
                        heading: None,
                        hidden: false,
                    },
                );
                current = Some(flag);
            } else if let Some(flag) = &current {
                let f = named.get_mut(flag).unwrap();
                if before.ends_with("(default ") {
                    f.default = Some((*span).to_owned());
                } else if before.ends_with("(env ") {
                    f.env = Some((*span).to_owned());
                } else {
                    panic!("{path}: what is `{span}` in {cell}?");
                }
            }
        }
        let named_flags: BTreeSet<&String> = named.keys().collect();
        assert_eq!(named_flags, visible, "{path}: flags");
        for (flag, f) in &named {
            let code = &def.flags[flag];
            assert_eq!(f.default, code.default, "{path} {flag}: default");
            assert_eq!(f.env, code.env, "{path} {flag}: variable");
        }
    }
    let all: BTreeSet<String> = cmds.keys().cloned().collect();
    assert_eq!(
        listed, all,
        "docs/reference.md's commands and the binary's differ"
    );
    // The database flags are exactly those of `migrate`.
    let migrate: BTreeSet<&String> = cmds["migrate"].flags.keys().collect();
    assert_eq!(db.keys().collect::<BTreeSet<_>>(), migrate);
}

#[test]
fn reference_routes_are_the_routes_of_the_api() {
    let doc = reference();
    let tables = md_tables(&doc, "Routes");
    let mut page = BTreeSet::new();
    for row in &tables[0] {
        let method = code_spans(&row[0]).remove(0);
        let path = code_spans(&row[1]).remove(0);
        assert_eq!(
            row[2] == "bearer",
            path.starts_with("/v1/"),
            "{method} {path}: token column {:?}",
            row[2]
        );
        assert!(matches!(row[2].as_str(), "bearer" | "none"));
        assert!(
            page.insert((method.clone(), path.clone())),
            "{method} {path} listed twice"
        );
    }
    let code: BTreeSet<(String, String)> = postback::api::routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p))
        .collect();
    assert_eq!(
        page, code,
        "docs/reference.md's routes and the API's differ"
    );
    // The OpenAPI document describes the same routes.
    let openapi: Json = serde_json::from_str(&read(&root().join("docs/openapi.json"))).unwrap();
    let documented: BTreeSet<(String, String)> = openapi["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), p.clone()))
        })
        .collect();
    assert_eq!(page, documented, "docs/reference.md and docs/openapi.json");
}

#[test]
fn reference_metrics_are_the_metrics_the_code_registers() {
    let doc = reference();
    let tables = md_tables(&doc, "Metrics");
    let registered = registered_metrics();
    let fams = families();
    let uses_process_metrics = sources()
        .iter()
        .any(|(_, text)| text.contains("metrics_process"));
    let mut page = BTreeSet::new();
    for row in &tables[0] {
        let name = code_spans(&row[0]).remove(0);
        assert!(page.insert(name.clone()), "{name} listed twice");
        if name.starts_with("process_") {
            assert!(
                uses_process_metrics,
                "docs/reference.md lists {name}, but the code registers no process metrics"
            );
            continue;
        }
        let code = registered.get(&name).unwrap_or_else(|| {
            panic!("docs/reference.md lists {name}, which the code does not register")
        });
        assert_eq!(row[1], code.kind, "{name}: type");
        let fam = &fams[name.as_str()];
        let mut labels = BTreeMap::new();
        if !row[2].starts_with('—') {
            for part in row[2].split(';') {
                let spans = code_spans(part);
                let (label, values) = spans.split_first().expect("a label");
                labels.insert(label.clone(), values.to_vec());
            }
        }
        let names: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
        let known: BTreeSet<&str> = fam.labels.keys().copied().collect();
        assert_eq!(names, known, "{name}: labels");
        for (label, values) in &labels {
            let values: BTreeSet<String> = values.iter().cloned().collect();
            assert_eq!(
                &values,
                &fam.labels[label.as_str()],
                "{name}{{{label}}}: values"
            );
        }
    }
    let code: BTreeSet<String> = registered.keys().cloned().collect();
    let page_postback: BTreeSet<String> = page
        .iter()
        .filter(|n| !n.starts_with("process_"))
        .cloned()
        .collect();
    assert_eq!(
        page_postback, code,
        "docs/reference.md's metrics and the ones the code registers differ"
    );
    if uses_process_metrics {
        for wanted in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(page.contains(wanted), "docs/reference.md lacks {wanted}");
        }
    }
    // What the page says is not registered yet must really be missing.
    let after = doc.split("Not registered by this build:").nth(1);
    if let Some(text) = after {
        let paragraph = text.split("\n\n").next().unwrap();
        for span in code_spans(paragraph) {
            assert!(
                !registered.contains_key(&span),
                "docs/reference.md says {span} is not registered, but the code registers it"
            );
            if span.starts_with("process_") {
                assert!(
                    !uses_process_metrics,
                    "docs/reference.md says process metrics are not registered"
                );
            }
        }
    }
}

/// The exit codes the command line returns: the literals of `code: N`
/// (its `Failure`s) and `ExitCode::from(…)`, and `ExitCode::SUCCESS`.
fn exit_codes_in_code() -> BTreeSet<u8> {
    let mut out = BTreeSet::new();
    for (path, text) in sources() {
        if !path.starts_with(root().join("src/cli")) && !path.ends_with("main.rs") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap();
        if code.contains("ExitCode::SUCCESS") {
            out.insert(0);
        }
        for marker in ["code: ", "ExitCode::from("] {
            for (at, _) in code.match_indices(marker) {
                let rest = &code[at + marker.len()..];
                if marker == "code: " {
                    // A field set to a literal (not the field's type).
                    if let Ok(n) = rest.split([',', '\n']).next().unwrap().trim().parse() {
                        out.insert(n);
                    }
                    continue;
                }
                for word in macro_args(rest).split(|c: char| !c.is_ascii_alphanumeric()) {
                    if let Ok(n) = word.parse() {
                        out.insert(n);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn reference_exit_codes_are_the_codes_the_binary_returns() {
    let doc = reference();
    let page: BTreeSet<u8> = md_tables(&doc, "Exit codes")[0]
        .iter()
        .map(|row| code_spans(&row[0])[0].parse().expect("a code"))
        .collect();
    assert_eq!(page, exit_codes_in_code());
    assert_eq!(page, BTreeSet::from([0, 1, 2]), "SPEC §6");
}

#[test]
fn readme_links_the_reference_and_the_contract_inside_the_repository() {
    let readme = read(&root().join("README.md"));
    let mut targets = Vec::new();
    for part in readme.split("](").skip(1) {
        let target = part.split(')').next().unwrap();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap();
        let resolved = root().join(path);
        assert!(resolved.exists(), "README.md links to missing {target}");
        let canonical = resolved.canonicalize().unwrap();
        assert!(
            canonical.starts_with(root().canonicalize().unwrap()),
            "README.md links outside the repository: {target}"
        );
        targets.push(path.to_owned());
    }
    for wanted in ["docs/reference.md", "docs/SPEC.md"] {
        assert!(
            targets.iter().any(|t| t == wanted),
            "README.md does not link {wanted}"
        );
    }
    // The reference links the contract and the runbook, inside docs/.
    let doc = reference();
    for part in doc.split("](").skip(1) {
        let target = part.split(')').next().unwrap();
        assert!(
            root().join("docs").join(target).is_file(),
            "docs/reference.md links to missing {target}"
        );
    }
}
