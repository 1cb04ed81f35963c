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
    let first = words.first().copied().unwrap_or("");
    let path = if first == "deliveries" {
        format!("deliveries {}", words.get(1).copied().unwrap_or(""))
    } else {
        first.to_owned()
    };
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

struct Family {
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
    let fam = |histogram, labels: &[(&'static str, BTreeSet<String>)]| Family {
        histogram,
        labels: labels.iter().cloned().collect(),
    };
    BTreeMap::from([
        (m::JOBS_CREATED, fam(false, &[])),
        (
            m::DELIVERIES_ENQUEUED,
            // Callback types, and `generic` for POST /v1/deliveries.
            fam(
                false,
                &[(
                    "type",
                    set(&["analytics", "transcript", "media", "generic", "event"]),
                )],
            ),
        ),
        (
            m::DELIVERY_ATTEMPTS,
            fam(false, &[("outcome", outcome_set.clone())]),
        ),
        (
            m::DELIVERIES_COMPLETED,
            fam(false, &[("result", set(&["delivered", "failed"]))]),
        ),
        (m::ATTEMPT_DURATION, fam(true, &[("outcome", outcome_set)])),
        (m::DELIVERY_LATENCY, fam(true, &[])),
        (
            m::QUEUE_DEPTH,
            fam(false, &[("state", set(&["due", "scheduled", "in_flight"]))]),
        ),
        (m::OLDEST_DUE, fam(false, &[])),
        (m::DATABASE_UP, fam(false, &[])),
        (m::DESTINATIONS_OPEN, fam(false, &[])),
        (
            m::OPERATOR_EVENTS,
            fam(false, &[("type", set(&m::EVENT_TYPES))]),
        ),
        // Route templates and status codes: any value.
        (
            m::HTTP_REQUESTS,
            fam(false, &[("route", set(&[])), ("status", set(&[]))]),
        ),
        (m::HTTP_REQUEST_DURATION, fam(true, &[("route", set(&[]))])),
    ])
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
            matches!(severity, "page" | "ticket"),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            assert!(!s(rule, &format!("annotations.{key}")).is_empty());
        }
        let runbook = s(rule, "annotations.runbook");
        let anchor = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook {runbook}"));
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

#[test]
fn dockerfile_builds_the_locked_binary_and_runs_it_unprivileged() {
    let text = read(&deploy().join("Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1-bookworm AS "),
        "{}",
        froms[0]
    );
    let stage = froms[0].rsplit(' ').next().unwrap();
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    assert!(text.contains("cargo build --release --locked --bin postback"));
    assert!(text.contains(&format!("COPY --from={stage} ")));
    assert!(text.contains("ca-certificates"));
    let user = lines
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
    assert!(lines.contains(&r#"ENTRYPOINT ["postback"]"#));
    assert!(lines.contains(&r#"CMD ["serve"]"#));
    assert!(lines.contains(&"EXPOSE 8080"));
    assert!(text.contains("POSTBACK_LISTEN=0.0.0.0:8080"));
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
    // The API healthcheck asks /readyz on the port it listens on.
    let health = words_of(get(&doc, "services.api.healthcheck.test")).join(" ");
    assert!(health.contains("/dev/tcp/127.0.0.1/8080") && health.contains("GET /readyz"));
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

#[test]
fn api_healthcheck_really_speaks_http_to_a_listener() {
    // The compose healthcheck is a bash one-liner; run it against a tiny
    // HTTP server on an ephemeral port to see that it detects 200 and 503.
    if which("bash").is_none() {
        println!("SKIPPED: no bash to run the compose healthcheck with");
        return;
    }
    let doc = compose();
    let test = words_of(get(&doc, "services.api.healthcheck.test"));
    assert_eq!(&test[..3], ["CMD", "bash", "-c"]);
    let script = test[3].clone();
    for (status, healthy) in [("200 OK", true), ("503 Service Unavailable", false)] {
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
            let _ = write!(stream, "HTTP/1.0 {status}\r\ncontent-length: 0\r\n\r\n");
            first
        });
        let ok = Command::new("bash")
            .arg("-c")
            .arg(script.replace("127.0.0.1/8080", &format!("127.0.0.1/{port}")))
            .status()
            .unwrap()
            .success();
        let request = server.join().unwrap();
        assert_eq!(request.trim_end(), "GET /readyz HTTP/1.0");
        assert_eq!(ok, healthy, "healthcheck against {status}");
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
            assert!(
                Duration::from_secs(grace) > timeout,
                "{ctx}: terminationGracePeriodSeconds {grace} <= attempt timeout {timeout:?}"
            );
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
