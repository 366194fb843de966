//! DAG rendering, lineage, runs/show and gc.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// 1 data + 2 text + 12 train = 15 unique nodes with 14 edges; `data_copy` is
/// identical to `data` (a 16th binding, no new node).
const GRID: &str = r#"
[pipeline]
name = "graph"

[axes]
loss = ["infonce", "cosine"]
captions = ["short", "long"]
seed = [0, 1, 2]

[stages.data]
kind = "command"
run = "echo data > $ABLATE_OUT/data.txt"

[stages.data_copy]
kind = "command"
run = "echo data > $ABLATE_OUT/data.txt"

[stages.text]
kind = "command"
needs = ["data"]
run = "echo ${captions} > $ABLATE_OUT/text.txt"

[stages.train]
kind = "command"
needs = ["text"]
run = "echo ${loss} ${seed} > $ABLATE_OUT/model.txt"
"#;

/// Node ids and edges of a DOT or Mermaid rendering.
fn graph(text: &str, arrow: &str, node_open: char) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let mut nodes = BTreeSet::new();
    let mut edges = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some((a, b)) = line.split_once(arrow) {
            let clean = |s: &str| s.trim().trim_end_matches(';').trim().to_owned();
            edges.insert((clean(a), clean(b)));
        } else if let Some(i) = line.find(node_open) {
            let id = &line[..i].trim();
            if id.starts_with('n') && id[1..].chars().all(|c| c.is_ascii_digit()) && id.len() > 1 {
                nodes.insert(id.to_string());
            }
        }
    }
    (nodes, edges)
}

/// Names and axis values with backslashes, quotes, line breaks and markup
/// stay inside their DOT strings and Mermaid labels.
#[test]
fn dot_and_mermaid_escape_what_they_quote() {
    let ws = Ws::new();
    let file = ws.write(
        "odd.toml",
        "[pipeline]\nname = 'ends\\'\n\n[axes]\nv = ['x\\', \"two\\nlines\", '<b>\"q\"&']\n\n\
         [stages.s]\nkind = \"command\"\nenv = [\"V=${v}\"]\nrun = \"true\"\n",
    );
    let dot = ws.run(&["plan", file.to_str().unwrap(), "--format", "dot"]).ok().stdout;
    assert!(dot.starts_with("digraph \"ends\\\\\" {"), "{dot}");
    assert!(dot.contains("v=x\\\\ ") && dot.contains("v=two\\nlines") && dot.contains("v=<b>\\\"q\\\"&"), "{dot}");
    assert_eq!(dot.lines().count(), 3 + 3 + 1, "one line a node: {dot}");
    let mermaid = ws.run(&["plan", file.to_str().unwrap(), "--format", "mermaid"]).ok().stdout;
    assert!(mermaid.contains("v=#lt;b#gt;#quot;q#quot;#amp;") && mermaid.contains("v=two lines"), "{mermaid}");
    assert!(!mermaid.contains("<b>"), "{mermaid}");
}

#[test]
fn dot_and_mermaid_have_one_node_per_unique_instance_and_every_edge() {
    let ws = Ws::new();
    let file = ws.write("g.toml", GRID);
    let plan = ws.plan(&file);
    assert_eq!(plan.len(), 16);
    assert_eq!(all_keys(&plan).len(), 15);

    let dot = ws.run(&["plan", file.to_str().unwrap(), "--format", "dot"]).ok().stdout;
    assert!(dot.trim_start().starts_with("digraph"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    let (nodes, edges) = graph(&dot, "->", '[');
    assert_eq!(nodes.len(), 15, "one node per unique instance\n{dot}");
    assert_eq!(edges.len(), 14, "data→text ×2, text→train ×12\n{dot}");
    assert!(edges.iter().all(|(a, b)| nodes.contains(a) && nodes.contains(b)), "{dot}");
    // Keys appear in the labels (short form).
    for key in all_keys(&plan) {
        assert!(dot.contains(&key[..12]), "node for {key} missing\n{dot}");
    }

    let mermaid = ws.run(&["plan", file.to_str().unwrap(), "--format", "mermaid"]).ok().stdout;
    assert!(mermaid.starts_with("flowchart") || mermaid.starts_with("graph"), "{mermaid}");
    let (m_nodes, m_edges) = graph(&mermaid, "-->", '[');
    assert_eq!(m_nodes.len(), 15, "{mermaid}");
    assert_eq!(m_edges.len(), 14, "{mermaid}");
    assert!(m_edges.iter().all(|(a, b)| m_nodes.contains(a) && m_nodes.contains(b)), "{mermaid}");

    // The table form summarises the same counts.
    let table = ws.run(&["plan", file.to_str().unwrap()]).ok().stdout;
    assert!(table.contains("16 instances (15 unique)"), "{table}");
    // Out-degree of the data node is 2 (the two text instances).
    let data_short = &key_of(&plan, "data")[..12];
    let data_node = dot.lines().find(|l| l.contains(data_short)).unwrap().split_whitespace().next().unwrap().to_owned();
    assert_eq!(edges.iter().filter(|(a, _)| *a == data_node).count(), 2);
}

const CHAIN: &str = r#"
[pipeline]
name = "lineage"

[stages.data]
kind = "command"
env = ["N=5"]
run = "echo data $N > $ABLATE_OUT/data.txt"

[stages.train]
kind = "command"
needs = ["data"]
env = ["LR=0.1"]
run = "cat $ABLATE_INPUT_DATA/data.txt > $ABLATE_OUT/model.txt; echo $LR >> $ABLATE_OUT/model.txt; echo 'ablate:metric loss 0.25 10'"

[stages.eval]
kind = "command"
needs = ["train"]
run = "cat $ABLATE_INPUT_TRAIN/model.txt > $ABLATE_OUT/score.txt; echo 'ablate:metric acc 0.75'"
"#;

#[test]
fn lineage_by_key_and_by_artifact_hash() {
    let ws = Ws::new();
    let file = ws.write("c.toml", CHAIN);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&file);
    let (data, train, eval) = (key_of(&plan, "data"), key_of(&plan, "train"), key_of(&plan, "eval"));

    let tree = ws.run(&["lineage", &eval, "--json"]).ok().json();
    assert_eq!(tree["key"], eval.as_str());
    let up = &tree["upstream"];
    assert_eq!(up.as_array().unwrap().len(), 1, "{tree}");
    assert_eq!(up[0]["key"], train.as_str());
    assert_eq!(up[0]["params"]["env"], serde_json::json!(["LR=0.1"]), "each stage's parameters: {tree}");
    assert_eq!(up[0]["upstream"][0]["key"], data.as_str());
    assert_eq!(up[0]["upstream"][0]["params"]["env"], serde_json::json!(["N=5"]));
    assert_eq!(up[0]["upstream"][0]["upstream"], serde_json::json!([]));

    // By the hash of an artifact: the chain of its producer.
    let show = ws.show(&train);
    let hash = show["artifacts"][0]["hash"].as_str().unwrap().to_owned();
    let tree = ws.run(&["lineage", &hash, "--json"]).ok().json();
    let tree = if let Value::Array(trees) = &tree { trees[0].clone() } else { tree };
    assert_eq!(tree["key"], train.as_str(), "{tree}");
    assert_eq!(tree["upstream"][0]["key"], data.as_str());
    // The text form works too.
    let text = ws.run(&["lineage", &hash]).ok().stdout;
    assert!(text.contains(&train[..12]) && text.contains(&data[..12]), "{text}");

    // show: metrics and artifacts; runs: one done run.
    assert_eq!(show["metrics"][0]["name"], "loss");
    assert_eq!(show["metrics"][0]["step"], 10);
    assert_eq!(show["metrics"][0]["value"], 0.25);
    let runs = ws.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "done");
    assert_eq!(runs[0]["pipeline"], "lineage");
    let run = ws.run(&["show", "1", "--json"]).ok().json();
    assert_eq!(run["run"]["id"], 1);
    assert_eq!(run["attempts"].as_array().unwrap().len(), 3);

    let out = ws.run(&["lineage", "0123456789abcdef"]);
    assert_eq!(out.code, Some(2), "an unknown id is a usage error\n{}", out.describe());
}

#[test]
fn gc_deletes_unreferenced_objects_only() {
    let ws = Ws::new();
    let file = ws.write("c.toml", CHAIN);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&file);
    let referenced: Vec<_> = all_keys(&plan)
        .iter()
        .flat_map(|k| ws.show(k)["artifacts"].as_array().unwrap().clone())
        .map(|a| ws.store().join(a["path"].as_str().unwrap()))
        .collect();
    assert_eq!(referenced.len(), 3);

    let stray_hash = format!("ab{}", "0".repeat(62));
    let stray = ws.store().join("objects").join("ab").join(&stray_hash);
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"nobody references me").unwrap();

    let dry = ws.run(&["gc", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["objects_deleted"], serde_json::json!([stray_hash]), "{dry}");
    assert!(stray.exists(), "--dry-run deletes nothing");

    let out = ws.run(&["gc", "--json"]).ok().json();
    assert_eq!(out["objects_deleted"], serde_json::json!([stray_hash]), "{out}");
    assert_eq!(out["bytes_freed"], 20);
    assert!(!stray.exists(), "the unreferenced object is deleted");
    for path in &referenced {
        assert!(path.is_file(), "referenced object {} kept", path.display());
    }
    assert!(ws.plan(&file).iter().all(|r| r["status"] == "cached"));
    let again = ws.run(&["gc", "--json"]).ok().json();
    assert_eq!(again["objects_deleted"], serde_json::json!([]));
}

#[test]
fn gc_spares_new_objects_while_an_attempt_runs() {
    // A running attempt stores an object a moment before it records it; gc
    // must not take it for garbage in between.
    let ws = Ws::new();
    let file = ws.write("slow.toml", "[pipeline]\nname = \"slow\"\n[stages.slow]\nkind = \"command\"\nrun = \"sleep 60\"\n");
    let run = ws.spawn(&["run", file.to_str().unwrap()]);
    let running = || {
        let out = ws.run(&["sql", "SELECT count(*) AS n FROM attempts WHERE status = 'running'", "--json"]);
        out.code == Some(0) && out.json()[0]["n"] == 1
    };
    wait_until(Duration::from_secs(60), "a running attempt", running);
    let stray_hash = format!("cd{}", "0".repeat(62));
    let stray = ws.store().join("objects").join("cd").join(&stray_hash);
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"stored, not yet recorded").unwrap();

    let out = ws.run(&["gc", "--json"]).ok().json();
    assert_eq!((out["objects_deleted"].clone(), out["objects_spared"].clone()), (serde_json::json!([]), serde_json::json!(1)), "{out}");
    assert!(stray.exists());

    // Once nothing runs (the killed run's attempt is recovered as lost), it goes.
    assert_eq!(run.kill9().code, None);
    let out = ws.run(&["gc", "--json"]).ok().json();
    assert_eq!(out["objects_deleted"], serde_json::json!([stray_hash]), "{out}");
    assert!(!stray.exists());
}

#[test]
fn history_commands_on_an_empty_workspace_are_usage_errors() {
    let ws = Ws::new();
    for args in [&["runs", "--json"][..], &["show", "1"], &["lineage", "abcdabcd"], &["gc"]] {
        let out = ws.run(args);
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(!ws.db().exists(), "{args:?} must not create a store");
    }
    // plan on an empty workspace works (everything is new).
    let file = ws.write("c.toml", CHAIN);
    let plan = ws.plan(&file);
    assert!(plan.iter().all(|r| r["status"] == "run" && r["reason"] == "never run"), "{plan:?}");
}

#[test]
fn every_command_has_help() {
    let ws = Ws::new();
    for cmd in ["plan", "run", "exec", "runs", "show", "lineage", "gc"] {
        let out = ws.run(&[cmd, "--help"]).ok();
        assert!(out.stdout.contains("Usage"), "{}", out.describe());
    }
    let run = ws.run(&["run", "--help"]).ok().stdout;
    for flag in ["--jobs", "--gpus", "--keep-going", "--force", "--only", "--json"] {
        assert!(run.contains(flag), "run --help lists {flag}\n{run}");
    }
    let plan = ws.run(&["plan", "--help"]).ok().stdout;
    for format in ["json", "dot", "mermaid"] {
        assert!(plan.contains(format), "plan --help lists --format {format}\n{plan}");
    }
}

/// Metrics, including non-finite ones (SQLite stores no NaN), reach `show`.
#[test]
fn metrics_with_steps_and_non_finite_values_are_recorded() {
    let ws = Ws::new();
    let file = ws.write(
        "m.toml",
        r#"
[pipeline]
name = "metrics"

[stages.train]
kind = "command"
run = "for s in 1 2 3; do echo ablate:metric loss 0.$s $s; done; echo ablate:metric grad_norm nan 3; echo ablate:metric acc 0.75"
"#,
    );
    ws.run(&["run", file.to_str().unwrap()]).ok();
    let key = key_of(&ws.plan(&file), "train");
    let show = ws.show(&key);
    let metrics = show["metrics"].as_array().unwrap();
    let loss: Vec<(i64, f64)> =
        metrics.iter().filter(|m| m["name"] == "loss").map(|m| (m["step"].as_i64().unwrap(), m["value"].as_f64().unwrap())).collect();
    assert_eq!(loss, vec![(1, 0.1), (2, 0.2), (3, 0.3)]);
    let acc = metrics.iter().find(|m| m["name"] == "acc").unwrap();
    assert_eq!((acc["step"].clone(), acc["value"].as_f64()), (Value::Null, Some(0.75)));
    let grad = metrics.iter().find(|m| m["name"] == "grad_norm").unwrap();
    assert_eq!(grad["value"], Value::Null, "NaN is stored as NULL");
}

/// A key prefix made of digits only is still a key prefix when no run has
/// that id (runs take short all-digit ids).
#[test]
fn an_all_digit_key_prefix_shows_its_instance() {
    let ws = Ws::new();
    let seeds: Vec<String> = (0..40).map(|s| s.to_string()).collect();
    let file = ws.write(
        "digits.toml",
        &format!(
            "[pipeline]\nname = \"digits\"\n\n[axes]\nseed = [{}]\n\n[stages.a]\nkind = \"command\"\nrun = \"echo ${{seed}}\"\n",
            seeds.join(", ")
        ),
    );
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let keys = all_keys(&ws.plan(&file));
    // The keys are fixed: at least one of these 40 starts with 4 digits.
    let (key, prefix) = keys
        .iter()
        .map(|k| (k.clone(), k.chars().take_while(char::is_ascii_digit).take(11).collect::<String>()))
        .find(|(_, p)| p.len() >= 4)
        .expect("a key starting with four digits");
    let show = ws.show(&prefix);
    assert_eq!(show["instance"]["key"], key.as_str(), "{show}");
    let out = ws.run(&["show", "1", "--json"]).ok();
    assert_eq!(out.json()["run"]["id"], 1, "a short id is still a run's");
}
