//! The default study (`pipelines/lift-vs-clip.toml`) end to end at a reduced
//! size: every stage runs, the results table has every cell, a rerun executes
//! nothing, and a run killed during training then rerun reproduces the same
//! table. Needs the frozen encoders (`scripts/fetch-models`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// The shipped study with fewer images, steps and SugarCrepe pairs.
fn reduced_study() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/lift-vs-clip.toml")).unwrap();
    let sugarcrepe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sugarcrepe");
    // Sizes by key, whatever values the shipped file has: each must be there.
    let sizes = [
        ("images", "images = 120"),
        ("steps", "steps = 6"),
        ("warmup_steps", "warmup_steps = 2\ncheckpoint_every = 2"),
        ("max_pairs", "max_pairs = 3"),
    ];
    for (key, _) in sizes {
        assert!(text.lines().any(|l| l.starts_with(&format!("{key} = "))), "the default study sets no `{key}`");
    }
    let reduced: Vec<String> = text
        .lines()
        .map(|line| match sizes.iter().find(|(key, _)| line.starts_with(&format!("{key} = "))) {
            Some((_, small)) => small.to_string(),
            None => line.to_owned(),
        })
        .collect();
    reduced.join("\n").replace("\"data/sugarcrepe\"", &format!("{:?}", sugarcrepe.display().to_string())) + "\n"
}

fn results(ws: &Ws, file: &std::path::Path) -> Value {
    ws.run(&["results", file.to_str().unwrap(), "--json"]).ok().json()
}

/// `ablate ARGS` with room for a whole study.
fn long_run(ws: &Ws, args: &[&str]) -> Out {
    ws.spawn(args).wait(Duration::from_secs(1200))
}

fn training_checkpoints(ws: &Ws) -> usize {
    std::fs::read_dir(ws.store().join("state"))
        .map_or(0, |d| d.flatten().filter(|e| e.path().join("checkpoint.safetensors").is_file()).count())
}

#[test]
fn default_study_runs_end_to_end_reruns_nothing_and_survives_a_kill() {
    if models_dir().is_none() {
        return;
    }
    let text = reduced_study();
    let ws = Ws::new();
    let file = ws.write("lift-vs-clip.toml", &text);
    let plan = ws.plan(&file);
    assert_eq!(rows(&plan, "lift").len(), 24);
    assert_eq!(rows(&plan, "clip").len(), 12);
    assert_eq!(rows(&plan, "text").len(), 4, "one embedding cache per (encoder, captions), shared by loss and seed");
    let out = long_run(&ws, &["run", file.to_str().unwrap(), "--json"]).ok();
    let summary = out.json();
    assert_eq!(summary["executed"].as_array().unwrap().len(), plan.len());

    let table = results(&ws, &file);
    let rows = table.as_array().unwrap();
    assert_eq!(rows.len(), 12, "8 LIFT cells (encoder × loss × captions) and 4 CLIP cells: {table:#}");
    for row in rows {
        for m in ["compositional.mean", "zero_shot.top1", "retrieval.i2t.r1", "retrieval.t2i.r1"] {
            assert_eq!(row["metrics"][m]["n"], 3, "every cell averages three seeds: {row}");
        }
    }
    let text_table = ws.run(&["results", file.to_str().unwrap()]).ok().stdout;
    assert!(text_table.contains("eval_lift") && text_table.contains("eval_clip") && text_table.contains("±"), "{text_table}");

    let (_, again, _) = ws.run_json(&file, &[]);
    assert!(again["executed"].as_array().unwrap().is_empty(), "a rerun executes nothing: {again}");

    let killed = Ws::new();
    let file2 = killed.write("lift-vs-clip.toml", &text);
    let run = killed.spawn(&["run", file2.to_str().unwrap()]);
    wait_until(Duration::from_secs(600), "a training checkpoint", || training_checkpoints(&killed) > 0);
    assert_eq!(run.kill9().code, None);
    long_run(&killed, &["run", file2.to_str().unwrap()]).ok();
    assert_eq!(results(&killed, &file2), table, "the interrupted study reproduces the same table");
}

#[test]
fn sources_pipeline_ingests_trains_and_evaluates_every_file_format() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{repo}/pipelines/sources.toml"))
        .unwrap()
        .replace("pipelines/data", &format!("{repo}/pipelines/data"));
    let ws = Ws::new();
    let file = ws.write("sources.toml", &text);
    let out = long_run(&ws, &["run", file.to_str().unwrap(), "--json"]).ok();
    assert_eq!(out.json()["executed"].as_array().unwrap().len(), 9, "{}", out.describe());
    let table = results(&ws, &file);
    let rows = table.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{table:#}");
    for row in rows {
        assert!(row["metrics"]["retrieval.i2t.r1"]["n"] == 1, "{row}");
    }
}
