//! The architecture's rules, checked on the source (docs/architecture.md
//! explains them): the module graph of `src/` has no cycle and its leaves
//! stay leaves, and the states of `postback::state` are spelled nowhere
//! else outside SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    assert!(out.len() > 20, "src/ should hold the crate's modules");
    out
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and
/// main.rs, which assemble the others).
fn module_of(path: &Path) -> Option<String> {
    let rel = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Code lines only: comments (doc comments included) are not dependencies.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//"))
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let Some(from) = module_of(&path) else {
            continue;
        };
        let edges = graph.entry(from.clone()).or_default();
        for line in code_lines(&text) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let to: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from {
                    edges.insert(to);
                }
            }
        }
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("queue") && graph.contains_key("delivery"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn leaves_stay_leaves_and_layers_point_down() {
    let graph = module_graph();
    for leaf in [
        "state",
        "error",
        "schedule",
        "signing",
        "pgcluster",
        "media",
        "throttle",
    ] {
        let deps = graph.get(leaf).cloned().unwrap_or_default();
        assert!(
            deps.is_empty(),
            "{leaf} must import nothing of the crate: {deps:?}"
        );
    }
    // The SSRF guard names its refusals with the shared error codes only.
    let egress = graph.get("egress").cloned().unwrap_or_default();
    assert!(
        egress.iter().all(|m| m == "error"),
        "egress may import only error: {egress:?}"
    );
    // The queue protocol sits below intake and the engine: it knows neither.
    let queue = &graph["queue"];
    for above in ["intake", "delivery", "api", "runtime", "render", "validate"] {
        assert!(!queue.contains(above), "queue must not depend on {above}");
    }
    // Intake never reaches the engine (it hands deliveries over through
    // `queue::Handoff`), and the engine never reads intake.
    assert!(!graph["intake"].contains("delivery"), "intake -> delivery");
    assert!(!graph["delivery"].contains("intake"), "delivery -> intake");
    assert!(!graph["store"].contains("queue"), "store -> queue");
}

#[test]
fn states_are_spelled_only_in_the_state_module() {
    // A state name as a whole Rust string literal outside `state.rs` is a
    // state kept as a string. SQL keeps its own spelling ('pending' inside
    // a statement), which is the database boundary and allowed.
    let spellings = [
        "\"pending\"",
        "\"delivering\"",
        "\"delivered\"",
        "\"in_progress\"",
        "\"completed\"",
        "\"generic\"",
        "\"InProgress\"",
        "\"Completed\"",
    ];
    let mut found = Vec::new();
    for (path, text) in sources() {
        if path.ends_with("state.rs") {
            continue;
        }
        // Unit tests may assert on the wire spelling.
        let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
        for (n, line) in code_lines(code).enumerate() {
            // Log messages and `expect` texts are prose, not states.
            if line.contains("tracing::") || line.contains(".expect(") {
                continue;
            }
            for s in spellings {
                if line.contains(s) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "string states outside postback::state:\n{}",
        found.join("\n")
    );
}
