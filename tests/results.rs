//! Result history from the CLI: `history` filters, `compare`, read-only `sql`,
//! `plot` files and `report`.

mod common;
#[path = "common/study.rs"]
mod study;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

fn history(ws: &Ws, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    ws.run(&all).ok().json().as_array().cloned().expect("history --json is an array")
}

/// (stage, loss, captions, seed) of each row.
fn cells(rows: &[Value]) -> BTreeSet<(String, String, String, i64)> {
    rows.iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap().to_owned(),
                r["axes"]["loss"].as_str().unwrap_or("").to_owned(),
                r["axes"]["captions"].as_str().unwrap_or("").to_owned(),
                r["axes"]["seed"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[test]
fn history_lists_every_finished_instance_and_filters_with_and_or_parentheses() {
    let ws = Ws::new();
    study::build(&ws);
    let all = history(&ws, &[]);
    assert_eq!(all.len(), 1 + 8 + 8, "data, 8 train, 8 eval");
    let train = all.iter().find(|r| r["stage"] == "train" && r["axes"]["loss"] == "cosine").unwrap();
    assert_eq!(train["pipeline"], "study");
    assert_eq!(train["params"]["env"], serde_json::json!(["LR=0.001"]), "parameters: {train}");
    assert!(train["metrics"]["sugarcrepe.mean"].as_f64().is_some(), "final metrics: {train}");
    assert!(train["metrics"]["loss"].as_f64().is_some(), "a stepped metric's final value is its last step: {train}");

    // The issue's example: metric names with dots, `or` inside parentheses.
    let rows = history(&ws, &["--where", r#"loss = "cosine" and (captions = "long" or metric.sugarcrepe.mean > 0.655)"#]);
    // cosine-long (0.80, 0.81) in train; cosine-short has 0.65, 0.66 → only seed 1 passes; eval rows have captions=long.
    let expected: BTreeSet<_> =
        [("train", "long", 0), ("train", "long", 1), ("train", "short", 1), ("eval", "long", 0), ("eval", "long", 1)]
            .iter()
            .map(|(s, c, seed)| (s.to_string(), "cosine".to_owned(), c.to_string(), *seed as i64))
            .collect();
    assert_eq!(cells(&rows), expected);

    // Precedence: and binds tighter than or.
    let rows = history(&ws, &["--where", "stage = 'eval' and seed = 1 or metric.sugarcrepe.mean >= 0.8"]);
    assert_eq!(rows.len(), 4 + 2, "{rows:?}");
    // Bare names reach parameters too; `~` is substring; axis./param. prefixes.
    assert_eq!(history(&ws, &["--where", "run ~ \"sugarcrepe\""]).len(), 8);
    assert_eq!(history(&ws, &["--where", "param.run ~ 'zero_shot' and axis.seed != 0"]).len(), 4);
    assert_eq!(history(&ws, &["--where", "metric.zero_shot.top1 > 0.51"]).len(), 4);
    let out = ws.run(&["history", "--pipeline", "nope"]).expect_code(2);
    assert!(out.stderr.contains("no pipeline `nope`") && out.stderr.contains("pipelines: study"), "{}", out.describe());
    let out = ws.run(&["history", "--sort", "nosuchfield"]).expect_code(2);
    assert!(out.stderr.contains("no row has this field"), "{}", out.describe());
    // A misspelt field in --where is an error at its column, not an empty listing.
    let out = ws.run(&["history", "--where", "loss = 'cosine' and metric.sugarcrepe.maen > 0.5"]).expect_code(2);
    assert!(out.stderr.contains("column 21: no row has the field `metric.sugarcrepe.maen`"), "{}", out.describe());
    let out = ws.run(&["results", "study", "--metric", "zero_shot.top1", "--metric", "zero_shot.tpo5"]).expect_code(2);
    assert!(out.stderr.contains("--metric zero_shot.tpo5"), "{}", out.describe());

    // --sort (descending with -) and --limit.
    let top = history(&ws, &["--where", "stage = \"train\"", "--sort", "-metric.sugarcrepe.mean", "--limit", "3"]);
    let values: Vec<f64> = top.iter().map(|r| r["metrics"]["sugarcrepe.mean"].as_f64().unwrap()).collect();
    assert_eq!(values.len(), 3);
    assert!((values[0] - 0.81).abs() < 1e-9 && (values[1] - 0.80).abs() < 1e-9 && (values[2] - 0.71).abs() < 1e-9, "{values:?}");

    // CSV has flattened columns, the table a count.
    let csv = ws.run(&["history", "--csv", "--where", "stage = 'eval'"]).ok().stdout;
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("pipeline,stage,key,kind,done_at,run,"), "{header}");
    assert!(header.contains("axis.captions") && header.contains("metric.zero_shot.top1") && header.contains("param.run"), "{header}");
    // Multi-line parameters are quoted fields: count records by their first field.
    assert_eq!(csv.lines().filter(|l| l.starts_with("study,eval,")).count(), 8, "{csv}");
    let table = ws.run(&["history", "--pipeline", "study"]).ok().stdout;
    assert!(table.contains("17 instance(s)") && table.contains("sugarcrepe.mean="), "{table}");
}

#[test]
fn a_malformed_expression_is_reported_at_its_column() {
    let ws = Ws::new();
    study::build(&ws);
    for (expr, column) in
        [("loss = \"cosine\" and (captions = ", 33), ("loss = cosine", 8), ("loss = 'a' captions = 'b'", 12), ("loss $ 1", 6)]
    {
        let out = ws.run(&["history", "--where", expr]).expect_code(2);
        assert!(out.stderr.contains(&format!("column {column}")), "{expr}\n{}", out.describe());
        // The expression is echoed with a caret under the column.
        let lines: Vec<&str> = out.stderr.lines().collect();
        let at = lines.iter().position(|l| l.trim_end() == format!("  {expr}").trim_end()).unwrap_or_else(|| panic!("{}", out.describe()));
        assert_eq!(lines[at + 1].find('^'), Some(column + 1), "{}", out.describe());
    }
}

#[test]
fn compare_instances_and_runs() {
    let ws = Ws::new();
    let file = study::build(&ws);
    let plan = ws.plan(&file);
    let key = |stage: &str, loss: &str, captions: &str, seed: i64| {
        plan.iter()
            .find(|r| r["stage"] == stage && r["axes"]["loss"] == loss && r["axes"]["captions"] == captions && r["axes"]["seed"] == seed)
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a, b) = (key("train", "infonce", "short", 0), key("train", "cosine", "long", 0));
    let cmp = ws.run(&["compare", &a[..10], &b, "--json"]).ok().json();
    let params = cmp["params"].as_array().unwrap();
    assert_eq!(params.len(), 1, "only `run` differs: {cmp}");
    assert_eq!(params[0]["name"], "run");
    let sc = cmp["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "sugarcrepe.mean").unwrap();
    assert!((sc["a"].as_f64().unwrap() - 0.60).abs() < 1e-9 && (sc["b"].as_f64().unwrap() - 0.80).abs() < 1e-9);
    assert!((sc["delta"].as_f64().unwrap() - 0.20).abs() < 1e-9, "{sc}");
    let text = ws.run(&["compare", &a, &b]).ok().stdout;
    assert!(text.contains("sugarcrepe.mean") && text.contains("+0.2"), "{text}");

    // A second run with a changed parameter: compare pairs instances by (stage, axes).
    let changed = study::STUDY.replace("LR=0.001", "LR=0.01");
    let file2 = ws.write("study.toml", &changed);
    let (code, _, out) = ws.run_json(&file2, &["--jobs", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let cmp = ws.run(&["compare", "1", "2", "--json"]).ok().json();
    let pairs = cmp["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 17, "{cmp}");
    let trains: Vec<&Value> = pairs.iter().filter(|p| p["stage"] == "study/train").collect();
    assert_eq!(trains.len(), 8);
    for t in &trains {
        assert_eq!(t["same_key"], false);
        assert_eq!(t["params"], serde_json::json!([{"name": "env", "a": ["LR=0.001"], "b": ["LR=0.01"]}]), "{t}");
    }
    assert!(pairs.iter().any(|p| p["stage"] == "study/data" && p["same_key"] == true));
    // Runs with nothing in common say so (not "parameters: identical").
    let other = ws.write("other.toml", "[pipeline]\nname = \"other\"\n\n[stages.o]\nkind = \"command\"\nrun = \"true\"\n");
    ws.run(&["run", other.to_str().unwrap()]).ok();
    let text = ws.run(&["compare", "1", "3"]).ok().stdout;
    assert!(text.contains("no instance in common") && !text.contains("identical"), "{text}");
    // Errors: unknown run, mixed kinds.
    ws.run(&["compare", "1", "99"]).expect_code(2);
    ws.run(&["compare", "1", &a]).expect_code(2);
}

#[test]
fn a_query_past_its_time_limit_is_stopped() {
    let ws = Ws::new();
    study::build(&ws);
    // Never ends by itself: counting an unbounded recursive sequence.
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS n FROM c";
    let began = std::time::Instant::now();
    let out = ws.run(&["sql", "--timeout", "0.5", endless]).expect_code(2);
    assert!(out.stderr.contains("the query ran longer than 0.5 s and was stopped"), "{}", out.describe());
    assert!(began.elapsed() < std::time::Duration::from_secs(20), "stopped after {:?}", began.elapsed());
    // A query within its limit answers as usual.
    let ok = ws.run(&["sql", "--timeout", "30", "SELECT COUNT(*) AS n FROM runs", "--json"]).ok().json();
    assert_eq!(ok, serde_json::json!([{"n": 1}]));
    for bad in ["0", "-1", "soon", "1e9"] {
        let out = ws.run(&["sql", &format!("--timeout={bad}"), "SELECT 1"]).expect_code(2);
        assert!(out.stderr.contains("--timeout"), "{}", out.describe());
    }
}

#[test]
fn sql_is_read_only() {
    let ws = Ws::new();
    study::build(&ws);
    let out = ws
        .run(&["sql", "SELECT pipeline, stage, COUNT(*) AS n FROM v_results WHERE metric = 'zero_shot.top1' GROUP BY 1, 2", "--json"])
        .ok();
    assert_eq!(out.json(), serde_json::json!([{"pipeline": "study", "stage": "eval", "n": 8}]));
    let table = ws.run(&["sql", "SELECT id, status FROM v_runs"]).ok().stdout;
    assert!(table.starts_with("id") && table.contains("done"), "{table}");
    let csv = ws.run(&["sql", "SELECT 'a,b' AS x, NULL AS y, 1.5 AS z", "--csv"]).ok().stdout;
    assert_eq!(csv, "x,y,z\n\"a,b\",,1.5\n");
    let empty = ws.run(&["sql", "SELECT id FROM runs WHERE id < 0", "--json"]).ok().json();
    assert_eq!(empty, serde_json::json!([]));
    // One result set per call, and JSON objects that keep every column.
    let several = ws.run(&["sql", "SELECT 1 AS a; SELECT 'x' AS b, 3 AS c"]).expect_code(2);
    assert!(several.stderr.contains("one statement at a time"), "{}", several.describe());
    let same = ws.run(&["sql", "SELECT 1 AS a, 2 AS a", "--json"]).expect_code(2);
    assert!(same.stderr.contains("`a` appears twice"), "{}", same.describe());
    let quoted = ws.run(&["sql", "SELECT ';' AS a; -- a comment", "--csv"]).ok().stdout;
    assert_eq!(quoted, "a\n;\n");

    let snapshot = |ws: &Ws| {
        let counts = ws
            .run(&["sql", "SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM attempts), (SELECT COUNT(*) FROM metrics)", "--csv"])
            .ok()
            .stdout;
        let bytes = std::fs::read(ws.db()).unwrap();
        (counts, bytes)
    };
    let before = snapshot(&ws);
    for write in [
        "INSERT INTO runs (command, argv, host, pid, user, ablate_version, started_at, heartbeat_at, status) VALUES ('x', '[]', 'h', 1, 'u', 'v', 't', 0, 'done')",
        "DELETE FROM metrics",
        "DROP TABLE metrics",
        "UPDATE runs SET status = 'failed'",
        "SELECT 1; DELETE FROM attempts",
        "CREATE TABLE evil (x)",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode=DELETE",
        "PRAGMA main . journal_mode (delete)",
        "PRAGMA /* c */ query_only = 0",
        "PRAGMA \"journal_mode\" = DELETE",
        "PRAGMA 'cache_size' = 1",
        "PRAGMA [main].\"journal_mode\" = DELETE",
        "PRAGMA `main`.cache_size(1)",
    ] {
        let out = ws.run(&["sql", write]);
        assert_ne!(out.code, Some(0), "{write} must fail\n{}", out.describe());
        let clear = ["read-only", "readonly", "one statement at a time"].iter().any(|w| out.stderr.contains(w));
        assert!(clear, "a clear error for {write}\n{}", out.describe());
    }
    // Statements that would write files next to a read-only store are refused too.
    let copy = ws.root().join("copy.db");
    for write in [format!("VACUUM INTO '{}'", copy.display()), format!("ATTACH DATABASE '{}' AS x", copy.display())] {
        let out = ws.run(&["sql", &write]).expect_code(2);
        assert!(out.stderr.contains("refused"), "{}", out.describe());
        assert!(!copy.exists(), "{write} created a file");
    }
    ws.run(&["sql", " ; "]).expect_code(2);
    assert_eq!(snapshot(&ws), before, "the store is unchanged");
    // Pragmas that read still answer.
    for read in
        ["PRAGMA table_info(runs)", "PRAGMA main.index_list('metrics')", "PRAGMA user_version", "SELECT * FROM pragma_table_info('runs')"]
    {
        let out = ws.run(&["sql", read, "--csv"]).ok();
        assert!(out.stdout.lines().count() >= 2, "{read}: {}", out.describe());
    }
    let out = ws.run(&["sql", "SELEC 1"]).expect_code(2);
    assert!(out.stderr.contains("syntax error"), "{}", out.describe());
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()))
}

#[test]
fn plots_write_svg_and_png() {
    let ws = Ws::new();
    let file = study::build(&ws);
    let plan = ws.plan(&file);
    let trains: Vec<String> = stage_keys(&plan, "train").into_iter().take(2).collect();
    let svg_path = ws.root().join("curves.svg");
    let mut args = vec!["plot", "curves"];
    args.extend(trains.iter().map(String::as_str));
    args.extend(["--metric", "loss", "-o", svg_path.to_str().unwrap()]);
    ws.run(&args).ok();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<polyline").count() >= 2 || svg.matches("<path").count() >= 2, "two series drawn");
    for key in &trains {
        assert!(svg.contains(&key[..8]), "legend names the instance {key}");
    }

    let png_path = ws.root().join("bars.png");
    let out = ws.run(&[
        "plot",
        "bars",
        file.to_str().unwrap(),
        "--metric",
        "sugarcrepe.mean",
        "--by",
        "loss",
        "--series",
        "captions",
        "-o",
        png_path.to_str().unwrap(),
        "--width",
        "640",
        "--height",
        "400",
    ]);
    out.ok();
    assert_eq!(png_size(&std::fs::read(&png_path).unwrap()), (640, 400));
    // By pipeline name, to SVG: the categories and the series appear.
    let bars_svg = ws.root().join("bars.svg");
    ws.run(&["plot", "bars", "study", "--metric", "zero_shot.top1", "--by", "captions", "-o", bars_svg.to_str().unwrap()]).ok();
    let text = std::fs::read_to_string(&bars_svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("short") && text.contains("long") && text.contains("mean ± std over"), "{text}");

    // Mistakes name what is wrong.
    let out = ws.run(&["plot", "bars", "study", "--metric", "nope", "--by", "loss", "-o", bars_svg.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("sugarcrepe.mean"), "lists the metrics there are\n{}", out.describe());
    let out =
        ws.run(&["plot", "bars", "study", "--metric", "zero_shot.top1", "--by", "lr", "-o", bars_svg.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("not an axis"), "{}", out.describe());
    ws.run(&["plot", "curves", &trains[0], "--metric", "loss", "-o", "x.pdf"]).expect_code(2);
    ws.run(&["plot", "curves", &trains[0], "--metric", "zero_shot.top1", "-o", svg_path.to_str().unwrap()]).expect_code(2);
}

#[test]
fn report_is_one_self_contained_html_file() {
    let ws = Ws::new();
    let file = study::build(&ws);
    let out_path = ws.root().join("report.html");
    ws.run(&["report", file.to_str().unwrap(), "--html", out_path.to_str().unwrap()]).ok();
    let html = std::fs::read_to_string(&out_path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for needle in ["Study study", "sugarcrepe.mean", "zero_shot.top1", "<svg class=\"dag\"", "<table", "± ", "loss curves"] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    // Self-contained: nothing is fetched from anywhere.
    for foreign in ["http://", "https://", "src=\"", "<link", "@import", "url("] {
        let allowed = html.matches("http://www.w3.org/2000/svg").count();
        let found = html.matches(foreign).count();
        assert!(found == 0 || (foreign == "http://" && found == allowed), "report references {foreign}");
    }
    ws.run(&["report", "missing-study", "--html", out_path.to_str().unwrap()]).expect_code(2);
}

#[test]
fn new_commands_on_an_empty_workspace_are_usage_errors() {
    let ws = Ws::new();
    for args in [&["history"][..], &["sql", "SELECT 1"], &["compare", "1", "2"], &["report", "x", "--html", "x.html"]] {
        let out = ws.run(args);
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(!ws.db().exists(), "{args:?} must not create a store");
    }
    for cmd in ["history", "compare", "sql", "plot", "serve", "report"] {
        assert!(ws.run(&[cmd, "--help"]).ok().stdout.contains("Usage"));
    }
}

/// `results FILE` says when its table is not the file's as it stands.
#[test]
fn results_of_an_edited_file_say_which_rows_are_stale() {
    let ws = Ws::new();
    let pipeline = |value: &str, seeds: &str| {
        format!(
            "[pipeline]\nname = \"edited\"\n\n[axes]\nseed = [{seeds}]\n\n[stages.eval]\nkind = \"command\"\nrun = \"echo ablate:metric zero_shot.top1 {value} ${{seed}}\"\n"
        )
    };
    let file = ws.write("edited.toml", &pipeline("0.5", "0, 1"));
    let f = file.to_str().unwrap();
    ws.run(&["run", f]).ok();
    let fresh = ws.run(&["results", f]).ok();
    assert!(!fresh.stderr.contains("earlier version"), "{}", fresh.describe());

    ws.write("edited.toml", &pipeline("0.7", "0"));
    let stale = ws.run(&["results", f]).ok();
    assert!(stale.stderr.contains("1 result row(s) come from an earlier version"), "{}", stale.describe());
    assert!(stale.stderr.contains("left out 1 result row(s) of stages, axes or values the study no longer has"), "{}", stale.describe());
    ws.run(&["run", f]).ok();
    let rerun = ws.run(&["results", f]).ok();
    assert!(!rerun.stderr.contains("earlier version"), "{}", rerun.describe());
}

/// An edit that drops an axis leaves the older rows in the store; the
/// results of the study as it stands must not average them in as seeds.
#[test]
fn results_leave_out_rows_of_axes_a_study_no_longer_has() {
    let ws = Ws::new();
    let v1 = "[pipeline]\nname = \"axes\"\n\n[axes]\nloss = [\"a\", \"b\"]\nseed = [0]\n\n[stages.eval]\nkind = \"command\"\nrun = \": ${loss} ${seed}; echo ablate:metric m 1\"\n";
    let v2 = "[pipeline]\nname = \"axes\"\n\n[axes]\nloss = [\"a\", \"b\"]\n\n[stages.eval]\nkind = \"command\"\nrun = \": ${loss}; echo ablate:metric m 2\"\n";
    let file = ws.write("axes.toml", v1);
    let f = file.to_str().unwrap();
    ws.run(&["run", f]).ok();
    ws.write("axes.toml", v2);
    ws.run(&["run", f]).ok();
    for target in [f, "axes"] {
        let out = ws.run(&["results", target, "--metric", "m", "--json"]).ok();
        let rows = out.json();
        let cells: Vec<(String, f64, u64)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["axes"]["loss"].as_str().unwrap().to_owned(),
                    r["metrics"]["m"]["mean"].as_f64().unwrap(),
                    r["metrics"]["m"]["n"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(cells, vec![("a".into(), 2.0, 1), ("b".into(), 2.0, 1)], "{target}: {}", out.describe());
        assert!(out.stderr.contains("left out 2 result row(s)"), "{}", out.describe());
    }
    assert_eq!(history(&ws, &[]).len(), 4, "history still lists every row");
}

/// A metric that went NaN or infinite (a diverged training) is a result:
/// listed, and the cell it falls in reads NaN instead of vanishing.
#[test]
fn a_non_finite_metric_is_shown_not_dropped() {
    let ws = Ws::new();
    let file = ws.write(
        "nan.toml",
        "[pipeline]\nname = \"nan\"\n\n[axes]\nx = [1, 2]\n\n[stages.s]\nkind = \"command\"\nrun = \"[ ${x} = 2 ] && echo ablate:metric m nan || echo ablate:metric m 1\"\n",
    );
    let f = file.to_str().unwrap();
    ws.run(&["run", f]).ok();
    let rows = history(&ws, &[]);
    assert!(rows.iter().all(|r| r["metrics"].as_object().unwrap().contains_key("m")), "{rows:?}");
    let table = ws.run(&["results", f, "--metric", "m"]).ok().stdout;
    assert!(table.lines().any(|l| l.starts_with('2') && l.contains("NaN")), "{table}");
    ws.run(&["plot", "bars", f, "--metric", "m", "--by", "x", "-o", ws.root().join("m.svg").to_str().unwrap()]).ok();
}
