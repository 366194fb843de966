//! The PostgreSQL store (`--db postgres://...` / `ABLATE_DB`) against a real
//! server: many `ablate exec` writers at once, and the same commands and
//! views as on SQLite. The rest of the suite runs against PostgreSQL too with
//! `ABLATE_TEST_BACKEND=postgres` (see `.ci/run`).

mod common;
#[path = "common/study.rs"]
mod study;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const SEEDS: usize = 16;
const STEPS: usize = 200;

fn wide_pipeline() -> String {
    let seeds: Vec<String> = (0..SEEDS).map(|s| s.to_string()).collect();
    format!(
        r#"
[pipeline]
name = "wide"

[axes]
seed = [{}]

[stages.data]
kind = "command"
run = "echo data > $ABLATE_OUT/data.txt"

[stages.train]
kind = "command"
needs = ["data"]
run = """
echo x >> @C@/train-${{seed}}
for s in $(seq 0 {last}); do echo "ablate:metric loss 0.${{seed}}$s $s"; done
echo "ablate:metric top1 0.${{seed}}"
echo ${{seed}} > $ABLATE_OUT/model.txt
"""

[stages.eval]
kind = "command"
needs = ["train"]
run = "echo x >> @C@/eval-${{seed}}; sleep 0.3; cat $ABLATE_INPUT_TRAIN/model.txt > $ABLATE_OUT/score.txt"
"#,
        seeds.join(", "),
        last = STEPS - 1
    )
}

#[test]
fn sixteen_concurrent_execs_lose_nothing_and_run_nothing_twice() {
    let Some(ws) = Ws::postgres() else { return };
    let file = ws.write("wide.toml", &wide_pipeline());
    let plan = ws.plan(&file);
    let (code, _, out) = ws.run_json(&file, &["--only", "data"]);
    assert_eq!(code, Some(0), "{}", out.describe());

    // Sixteen processes finish sixteen instances and write their metrics at once.
    let trains: Vec<String> = stage_keys(&plan, "train").into_iter().collect();
    assert_eq!(trains.len(), SEEDS);
    let procs: Vec<Bg> = trains.iter().map(|k| ws.spawn(&["exec", k, "--json"])).collect();
    for p in procs {
        let out = p.wait(Duration::from_secs(120));
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_no_panic(&out);
        assert_eq!(out.json()["outcome"]["status"], "done", "{}", out.describe());
    }
    for s in 0..SEEDS {
        assert_eq!(ws.count(&format!("train-{s}")), 1, "train seed {s} ran once");
    }

    // Sixteen processes race for one instance: exactly one runs it.
    let eval0 = rows(&plan, "eval").iter().find(|r| r["axes"]["seed"] == 0).unwrap()["key"].as_str().unwrap().to_owned();
    let racers: Vec<Bg> = (0..SEEDS).map(|_| ws.spawn(&["exec", &eval0, "--json"])).collect();
    let mut ran = 0;
    for p in racers {
        let out = p.wait(Duration::from_secs(120));
        assert_no_panic(&out);
        match out.code {
            Some(0) => {
                let status = out.json()["outcome"]["status"].as_str().unwrap().to_owned();
                assert!(status == "done" || status == "cached", "{}", out.describe());
                ran += usize::from(status == "done");
            }
            // Lost the race while the winner ran: refused, not run.
            Some(1) => assert!(out.stderr.contains("is being run by run"), "{}", out.describe()),
            _ => panic!("unexpected exit\n{}", out.describe()),
        }
    }
    assert_eq!(ran, 1, "one racer ran the instance");
    assert_eq!(ws.count("eval-0"), 1, "the instance ran once");

    // Nothing lost: every metric row, one done attempt per instance, no error recorded.
    let metric_rows = ws.psql("SELECT COUNT(*) FROM metrics");
    assert_eq!(metric_rows.trim(), (SEEDS * (STEPS + 1)).to_string());
    let done = ws.psql("SELECT COUNT(*), COUNT(DISTINCT instance_id) FROM attempts WHERE status = 'done'");
    assert_eq!(done.trim(), format!("{0}|{0}", SEEDS + 2), "data, 16 trains and one eval, each done once");
    assert_eq!(ws.psql("SELECT COUNT(*) FROM attempts WHERE status <> 'done'").trim(), "0");
    assert_eq!(ws.psql("SELECT COUNT(*) FROM artifacts").trim(), (SEEDS + 2).to_string());
    let curve = ws.run(&["sql", "SELECT COUNT(*) AS n, MIN(step) AS lo, MAX(step) AS hi FROM metrics WHERE name = 'loss'", "--json"]).ok();
    assert_eq!(curve.json()[0]["n"], SEEDS * STEPS);
    assert_eq!(curve.json()[0]["hi"], STEPS - 1);
}

/// Views and listings with their column names, on one store.
fn views(ws: &Ws) -> Vec<(String, BTreeSet<String>)> {
    ["v_runs", "v_instances", "v_metrics", "v_results", "v_done"]
        .iter()
        .map(|v| {
            let out = ws.run(&["sql", &format!("SELECT * FROM {v} LIMIT 1"), "--json"]).ok();
            let columns = out.json()[0].as_object().unwrap_or_else(|| panic!("{v} has rows\n{}", out.describe())).keys().cloned().collect();
            (v.to_string(), columns)
        })
        .collect()
}

#[test]
fn postgres_store_answers_like_sqlite() {
    let Some(pg) = Ws::postgres() else { return };
    let lite = Ws::new();
    if lite.db_url().is_some() {
        return; // ABLATE_TEST_BACKEND=postgres: both would be PostgreSQL.
    }
    let mut results = Vec::new();
    for ws in [&lite, &pg] {
        let file = ws.write("small.toml", study::SMALL);
        let (code, summary, out) = ws.run_json(&file, &["--jobs", "2"]);
        assert_eq!(code, Some(0), "{}", out.describe());
        assert_eq!(keys_in(&summary, "executed").len(), 9);
        let (_, again, _) = ws.run_json(&file, &[]);
        assert_eq!(keys_in(&again, "cached").len(), 9, "rerun on {:?}: all cached", ws.db_url());
        let history = ws.run(&["history", "--json", "--sort", "key"]).ok().json();
        let rows: Vec<_> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["stage"].clone(), r["axes"].clone(), r["key"].clone(), r["metrics"].clone()))
            .collect();
        let sql = ws
            .run(&[
                "sql",
                "SELECT stage, json_extract(axes, '$.loss') AS loss, metric, round(value, 3) AS v FROM v_results ORDER BY 1, 2, 3, 4",
                "--json",
            ])
            .ok()
            .json();
        results.push((rows, sql, views(ws)));
        let key = history[0]["key"].as_str().unwrap().to_owned();
        let show = ws.show(&key);
        assert!(!show["attempts"].as_array().unwrap().is_empty());
        ws.run(&["plot", "curves", &history[1]["key"].as_str().unwrap()[..8], "--metric", "loss", "-o", "c.svg"]).ok();
    }
    assert_eq!(results[0].0, results[1].0, "same instances, keys and final metrics");
    assert_eq!(results[0].1, results[1].1, "the same SQL gives the same rows");
    assert_eq!(results[0].2, results[1].2, "views have the same names and columns");

    // PostgreSQL's casts are casts, not `:name` parameters (docs/cluster.md uses them).
    let cast = pg.run(&["sql", "SELECT '7'::int AS n, json_extract(axes, '$.seed')::int AS seed FROM v_instances LIMIT 1", "--json"]).ok();
    assert_eq!(cast.json()[0]["n"], 7, "{}", cast.describe());

    // Arbitrary SQL is read-only on PostgreSQL too, and says why.
    let out = pg.run(&["sql", "DELETE FROM runs"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("refused"), "{}", out.describe());
    let out = pg.run(&["sql", "WITH gone AS (DELETE FROM runs RETURNING id) SELECT * FROM gone"]);
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert_eq!(pg.psql("SELECT COUNT(*) FROM runs").trim(), "2", "no run was deleted");
}

/// `sql` gives back the doubles the server holds, to the last bit (they
/// travel as JSON text, which serde_json alone may read one unit off).
#[test]
fn sql_gives_back_doubles_exactly() {
    let Some(pg) = Ws::postgres() else { return };
    let file = pg.write("small.toml", "[pipeline]\nname = \"d\"\n\n[stages.a]\nkind = \"command\"\nrun = \"true\"\n");
    pg.run(&["run", file.to_str().unwrap()]).ok();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let values: Vec<f64> = (0..400)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            // Mantissas of every kind, exponents from 1e-30 to 1e30.
            f64::from_bits((state >> 12) | ((1023 - 100 + (state >> 56) % 200) << 52))
        })
        .collect();
    let list: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("({i}, {v:e}::float8)")).collect();
    let out = pg.run(&["sql", &format!("SELECT x FROM (VALUES {}) AS t(i, x) ORDER BY i", list.join(", ")), "--csv"]).ok();
    let got: Vec<f64> = out.stdout.lines().skip(1).map(|l| l.parse().unwrap()).collect();
    let wrong: Vec<(f64, f64)> = values.iter().zip(&got).filter(|(a, b)| a != b).map(|(a, b)| (*a, *b)).collect();
    assert_eq!(got.len(), values.len());
    assert!(wrong.is_empty(), "{} of {} differ, e.g. {:?}", wrong.len(), values.len(), &wrong[..wrong.len().min(3)]);
}

#[test]
fn a_bad_database_url_is_named_without_its_password() {
    let ws = Ws::new();
    let file = ws.write("small.toml", study::SMALL);
    let out = ws.run(&["--db", "mysql://u:hunter2@h/db", "run", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("postgres://"), "{}", out.describe());
    assert!(!out.stderr.contains("hunter2"), "{}", out.describe());
    let out = ws.run(&["--db", "postgres://u:hunter2@127.0.0.1:9/none", "runs"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("connecting to postgres://u:***@127.0.0.1:9/none"), "{}", out.describe());
    assert!(!out.stderr.contains("hunter2"), "{}", out.describe());
}

/// A workspace used with `--db` and without it holds objects of both stores:
/// `gc` without `--db` refuses (it cannot see what the server references),
/// and with it keeps what either store references.
#[test]
fn gc_keeps_the_objects_of_both_stores_of_a_workspace() {
    let Some(mut ws) = Ws::postgres() else { return };
    let study =
        |name: &str| format!("[pipeline]\nname = \"{name}\"\n[stages.a]\nkind = \"command\"\nrun = \"echo {name} > $ABLATE_OUT/a.txt\"\n");
    let (on_server, local) = (ws.write("server.toml", &study("server")), ws.write("local.toml", &study("local")));
    ws.run(&["run", on_server.to_str().unwrap()]).ok();
    let mut server = None;
    ws.swap_db(&mut server);
    ws.run(&["run", local.to_str().unwrap()]).ok();
    let out = ws.run(&["gc"]).expect_code(2);
    assert!(out.stderr.contains("also holds objects of the PostgreSQL store") && out.stderr.contains("--db"), "{}", out.describe());
    ws.swap_db(&mut server);
    let gc = ws.run(&["gc", "--json"]).ok().json();
    assert_eq!(gc["objects_deleted"], serde_json::json!([]), "{gc}");
    assert_eq!(rows(&ws.plan(&on_server), "a")[0]["status"], "cached");
    ws.swap_db(&mut server);
    assert_eq!(rows(&ws.plan(&local), "a")[0]["status"], "cached", "the SQLite store's objects are still there");
}
