//! `[[claims]]`: a tiny study of `command` stages that record a metric, its
//! claims decided by `ablate claims`, and shown by `results`, `run` and `report`.

mod common;
#[path = "common/http.rs"]
mod http;

use common::*;
use serde_json::Value;

const STUDY: &str = r#"[pipeline]
name = "claims"

[axes]
method = ["new", "old"]
seed = [0, 1, 2, 3]

[stages.eval]
kind = "command"
run = '''awk -v m=${method} -v s=${seed} 'BEGIN { if (m == "new") v = 0.7 + s * 0.013; else v = 0.5 + (s % 2) * 0.03; print "ablate:metric acc", v }' '''

[[claims]]
name = "new beats old"
metric = "acc"
a = { stage = "eval", method = "new" }
b = { stage = "eval", method = "old" }
expect = "greater"
margin = 0.1

[[claims]]
name = "new is worse"
metric = "acc"
a = { method = "new" }
b = { method = "old" }
expect = "less"

[[claims]]
name = "new is as good as old"
metric = "acc"
a = { method = "new" }
b = { method = "old" }
expect = "equivalent"
margin = 0.05
"#;

fn claims(ws: &Ws, file: &std::path::Path) -> Vec<Value> {
    ws.run(&["claims", file.to_str().unwrap(), "--json"]).ok().json().as_array().cloned().expect("claims --json is a list")
}

#[test]
fn claims_are_decided_on_the_finished_study() {
    let ws = Ws::new();
    let file = ws.write("p.toml", STUDY);

    // Nothing has run: every claim is incomplete, with the count of missing instances.
    let before = claims(&ws, &file);
    assert_eq!(before.len(), 3);
    for c in &before {
        assert_eq!((c["verdict"].as_str(), c["missing"].as_u64(), c["n"].as_u64()), (Some("incomplete"), Some(8), Some(0)), "{c}");
        assert!(c["mean_diff"].is_null() && c["ci_low"].is_null() && c["ci_high"].is_null(), "{c}");
    }

    // The run ends with the claims table.
    let out = ws.run(&["run", file.to_str().unwrap()]).ok();
    assert!(
        out.stdout.contains("VERDICT") && out.stdout.contains("new beats old") && out.stdout.contains("supported"),
        "{}",
        out.describe()
    );

    let after = claims(&ws, &file);
    let by_name = |name: &str| after.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} in {after:?}"));
    // Differences per seed: 0.2, 0.183, 0.226, 0.209.
    for c in &after {
        for field in ["name", "metric", "expect", "margin", "n", "mean_diff", "ci_low", "ci_high", "verdict"] {
            assert!(c.get(field).is_some(), "{field} in {c}");
        }
        assert_eq!((c["metric"].as_str(), c["n"].as_u64()), (Some("acc"), Some(4)), "{c}");
        let (mean, lo, hi) = (c["mean_diff"].as_f64().unwrap(), c["ci_low"].as_f64().unwrap(), c["ci_high"].as_f64().unwrap());
        assert!((mean - 0.2045).abs() < 1e-9, "{c}");
        assert!(0.183 <= lo && lo <= mean && mean <= hi && hi <= 0.226, "{c}");
        assert_eq!(c["paired_on"], serde_json::json!(if c["name"] == "new beats old" { vec!["seed"] } else { vec!["stage", "seed"] }));
    }
    assert_eq!(
        (by_name("new beats old")["expect"].as_str(), by_name("new beats old")["verdict"].as_str()),
        (Some("greater"), Some("supported"))
    );
    assert_eq!(by_name("new beats old")["margin"].as_f64(), Some(0.1));
    assert_eq!(
        (by_name("new is worse")["expect"].as_str(), by_name("new is worse")["verdict"].as_str()),
        (Some("less"), Some("contradicted"))
    );
    assert_eq!(by_name("new is worse")["margin"].as_f64(), Some(0.0));
    let equivalent = by_name("new is as good as old");
    assert_eq!((equivalent["expect"].as_str(), equivalent["verdict"].as_str()), (Some("equivalent"), Some("contradicted")));
    // Deterministic: the same results give the same interval.
    assert_eq!(claims(&ws, &file), after);

    // `results` shows the same table after its own.
    let text = ws.run(&["claims", file.to_str().unwrap()]).ok().stdout;
    assert!(text.contains("paired on seed"), "{text}");
    let results = ws.run(&["results", file.to_str().unwrap(), "--metric", "acc"]).ok().stdout;
    assert!(results.ends_with(&text), "results:\n{results}\nclaims:\n{text}");

    // The report shows the verdicts.
    let html = ws.root().join("report.html");
    ws.run(&["report", file.to_str().unwrap(), "--html", html.to_str().unwrap()]).ok();
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("Claims") && html.contains("new is as good as old") && html.contains("contradicted"), "{html}");

    // The study page and a dashboard panel list them too.
    let dir = ws.root().join("dashboards");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.toml"), "[params]\npipeline = \"claims\"\n[[panels]]\ntitle = \"verdicts\"\nclaims = {}\n").unwrap();
    let server = http::Server::start(&ws, &dir);
    let page = http::fetch(server.addr, "/pipelines/claims");
    assert!(page.body.contains("new beats old") && page.body.contains("supported"), "{}", page.body);
    let panel = http::fetch(server.addr, "/dashboards/c");
    assert!(panel.body.contains("<h2>verdicts</h2>") && panel.body.contains("new is worse"), "{}", panel.body);
    assert!(panel.body.contains("contradicted") && !panel.body.contains("class=\"error\""), "{}", panel.body);
}

#[test]
fn an_undecidable_claim_is_a_located_error() {
    let ws = Ws::new();
    let file = ws.write("p.toml", STUDY);
    ws.run(&["run", file.to_str().unwrap()]).ok();
    // A metric no instance recorded, once everything ran.
    let text = STUDY.replacen("metric = \"acc\"", "metric = \"accuracy\"", 1);
    let file = ws.write("p.toml", &text);
    let out = ws.run(&["claims", file.to_str().unwrap(), "--json"]).expect_code(2);
    let line = text.lines().position(|l| l == "metric = \"accuracy\"").unwrap() + 1;
    let want = format!("p.toml:{line}:10: claims[0].metric: claim `new beats old`: unknown metric `accuracy`");
    assert!(out.stderr.contains(&want), "want {want}\n{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());

    // A selection that matches no instance is found before anything is read (also by `plan`).
    let text = STUDY.replacen("a = { stage = \"eval\", method = \"new\" }", "a = { stage = \"eval\", method = \"newer\" }", 1);
    let file = ws.write("p.toml", &text);
    let out = ws.run(&["plan", file.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("claims[0].a.method: not a value of axis `method`"), "{}", out.describe());
}
