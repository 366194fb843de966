//! Axis expansion: which instances exist, how they connect, and typed substitution.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};

const GRID: &str = r#"
[pipeline]
name = "lift-vs-clip"

[axes]
loss = ["infonce", "cosine"]
captions = ["short", "long"]
seed = [0, 1, 2]

[stages.data]
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

#[test]
fn grid_2x2x3_expands_to_the_referenced_axes_only() {
    let ws = Ws::new();
    let file = ws.write("grid.toml", GRID);
    let plan = ws.plan(&file);

    let data = rows(&plan, "data");
    let text = rows(&plan, "text");
    let train = rows(&plan, "train");
    assert_eq!(data.len(), 1, "data references no axis: one instance");
    assert_eq!(text.len(), 2, "text references only captions");
    assert_eq!(train.len(), 12, "train: loss × seed, and captions through text");
    assert_eq!(plan.len(), 15);
    assert_eq!(all_keys(&plan).len(), 15, "every instance has its own key");
    for r in &plan {
        assert_eq!(r["status"], "run");
        assert_eq!(r["reason"], "never run");
    }

    // Axis values: exactly the axes each stage spans.
    assert_eq!(data[0]["axes"], json!({}));
    let text_captions: BTreeSet<String> = text
        .iter()
        .map(|r| {
            let axes = r["axes"].as_object().unwrap();
            assert_eq!(axes.keys().collect::<Vec<_>>(), vec!["captions"], "text spans only captions: {r}");
            axes["captions"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text_captions, BTreeSet::from(["long".to_owned(), "short".to_owned()]));

    let combos: BTreeSet<String> = train
        .iter()
        .map(|r| {
            let axes = r["axes"].as_object().unwrap();
            let mut names: Vec<&String> = axes.keys().collect();
            names.sort();
            assert_eq!(names, vec!["captions", "loss", "seed"], "train spans loss, captions, seed: {r}");
            assert!(axes["seed"].is_i64(), "axis values keep their type in plan JSON: {r}");
            format!("{} {} {}", axes["loss"], axes["captions"], axes["seed"])
        })
        .collect();
    assert_eq!(combos.len(), 12, "each combination once");

    // Edges: data ← text ← train, matching on shared axis values.
    let text_by_captions: BTreeMap<String, String> =
        text.iter().map(|r| (r["axes"]["captions"].as_str().unwrap().to_owned(), r["key"].as_str().unwrap().to_owned())).collect();
    let data_key = data[0]["key"].as_str().unwrap();
    assert_eq!(data[0]["upstream"], json!([]));
    for r in &text {
        assert_eq!(r["upstream"], json!([data_key]), "text needs the one data instance");
    }
    for r in &train {
        let captions = r["axes"]["captions"].as_str().unwrap();
        assert_eq!(
            r["upstream"],
            json!([text_by_captions[captions]]),
            "train instance {} must depend on the text instance with the same captions",
            r["axes"]
        );
    }
}

#[test]
fn identical_stage_definitions_in_one_file_are_one_node() {
    let ws = Ws::new();
    let file = ws.write(
        "dup.toml",
        &format!(
            "{GRID}\n[stages.data_again]\nkind = \"command\"\nrun = \"echo data > $ABLATE_OUT/data.txt\"\n\n\
             [stages.text_again]\nkind = \"command\"\nneeds = [\"data_again\"]\nrun = \"echo ${{captions}} > $ABLATE_OUT/text.txt\"\n"
        ),
    );
    let plan = ws.plan(&file);
    assert_eq!(plan.len(), 18);
    assert_eq!(key_of(&plan, "data"), key_of(&plan, "data_again"));
    assert_eq!(stage_keys(&plan, "text"), stage_keys(&plan, "text_again"));
    assert_eq!(all_keys(&plan).len(), 15, "equal keys are one node");

    // Running it executes each unique node once.
    let (code, summary, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(keys_in(&summary, "executed"), all_keys(&plan));
    assert_eq!(summary["executed"].as_array().unwrap().len(), 15, "no node executed twice: {summary}");
}

#[test]
fn whole_axis_reference_keeps_its_type_and_text_interpolates() {
    let ws = Ws::new();
    let file = ws.write(
        "typed.toml",
        r#"
[pipeline]
name = "typed"

[axes]
seed = [0, 1]
frac = [0.25]
flag = [true]

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
images = 4
resolution = 8
seed = "${seed}"            # int parameter: must receive the integer
test_fraction = "${frac}"   # float parameter: must receive the float

[stages.tag]
kind = "command"
needs = ["data"]
run = "echo run-${seed} > $ABLATE_OUT/tag.txt"
env = ["TAG=run-${seed}", "FLAG=${flag}", "FRAC=${frac}"]
"#,
    );
    let plan = ws.plan(&file);
    assert_eq!(rows(&plan, "data").len(), 2);
    assert_eq!(rows(&plan, "tag").len(), 2);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());

    for r in rows(&plan, "data") {
        let seed = r["axes"]["seed"].as_i64().unwrap();
        let show = ws.show(r["key"].as_str().unwrap());
        let params = &show["instance"]["params"];
        assert_eq!(params["seed"], json!(seed), "\"${{seed}}\" keeps the integer type: {params}");
        assert!(params["seed"].is_i64());
        assert_eq!(params["test_fraction"], json!(0.25), "\"${{frac}}\" keeps the float type: {params}");
        assert!(params["test_fraction"].is_f64());
    }
    for r in rows(&plan, "tag") {
        let seed = r["axes"]["seed"].as_i64().unwrap();
        let show = ws.show(r["key"].as_str().unwrap());
        let params = &show["instance"]["params"];
        assert_eq!(params["run"], Value::from(format!("echo run-{seed} > $ABLATE_OUT/tag.txt")));
        assert_eq!(params["env"], json!([format!("TAG=run-{seed}"), "FLAG=true", "FRAC=0.25"]), "interpolated as text");
        // The substituted command really ran with the interpolated value.
        let artifact = &show["artifacts"][0];
        assert_eq!(artifact["name"], "tag.txt");
        let text = std::fs::read_to_string(ws.store().join(artifact["path"].as_str().unwrap())).unwrap();
        assert_eq!(text.trim(), format!("run-{seed}"));
    }
}

/// A training grid whose `train` stage takes `extra` parameter lines.
fn training_grid(extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "golden"

[axes]
loss = ["infonce", "cosine"]

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
images = 64

[stages.train]
kind = "train"
needs = ["data"]
text = "scratch"
loss = "${{loss}}"
steps = 2
{extra}
"#
    )
}

/// Keys are what a store's cache hits rest on: a change of code that moves
/// them silently reruns every user's finished work. These were computed by
/// the build before `train` had `crop_scale` and `flip` (parameters added
/// later are left out of the key at their default), and must not move
/// unless a kind's version is bumped on purpose.
#[test]
fn keys_are_stable_across_builds_and_explicit_defaults() {
    let ws = Ws::new();
    let golden = [
        ("data", "20b9d13fa3104996ee3f7fff218128524893d0f62042de316c559fc0b3cb425b"),
        ("train", "54a88dd88e249a5b003c6eb556f4654c7725d3bb01051a931a1007cd07f15c25"),
        ("train", "c912ea589f71f36eb0cf8f30b1c0fb798cbcaf329020f26ef0a463ca55e80323"),
    ];
    let keys = |extra: &str| -> Vec<(String, String)> {
        let plan = ws.plan(&ws.write("golden.toml", &training_grid(extra)));
        plan.iter().map(|r| (r["stage"].as_str().unwrap().to_owned(), r["key"].as_str().unwrap().to_owned())).collect()
    };
    let expected: Vec<(String, String)> = golden.iter().map(|(s, k)| (s.to_string(), k.to_string())).collect();
    assert_eq!(keys(""), expected);
    assert_eq!(keys("crop_scale = 0.9\nflip = false"), expected, "an explicit default is the same work");
    for changed in ["flip = true", "crop_scale = 1", "crop_scale = 0.5"] {
        let got = keys(changed);
        assert_eq!(got[0], expected[0], "{changed}: the ingest is untouched");
        assert!(got[1..].iter().all(|k| !expected.contains(k)), "{changed} is other work: {got:?}");
    }

    let file = ws.write("bad.toml", &training_grid("crop_scale = 0"));
    let out = ws.run(&["plan", file.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("stages.train.crop_scale") && out.stderr.contains("(0, 1]"), "{}", out.describe());
}

/// `evaluate`'s default `suites` is part of the key of every instance left
/// at it. These keys were computed by the build before suites became a
/// registry: a suite added since (registered under `listed:`) leaves them
/// where they were, and so does writing the default out.
#[test]
fn adding_an_evaluation_suite_keeps_the_keys_of_default_suites() {
    let ws = Ws::new();
    let golden = [
        "71492ea0616e234462a67d6a873385803fce6760e852f2d22c573ab4b132831c",
        "b53da92612a9b98b84149ba7b11ca1ab5183ef28250acfc28d2554fbdad29816",
    ];
    let keys = |suites: &str| -> Vec<String> {
        let text = format!("{}\n[stages.eval]\nkind = \"evaluate\"\nneeds = [\"train\"]\n{suites}\n", training_grid(""));
        let plan = ws.plan(&ws.write("suites.toml", &text));
        rows(&plan, "eval").iter().map(|r| r["key"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(keys(""), golden);
    assert_eq!(keys(r#"suites = ["zero_shot", "retrieval", "compositional"]"#), golden, "an explicit default is the same work");
    let fewer = keys(r#"suites = ["retrieval"]"#);
    assert!(fewer.iter().all(|k| !golden.contains(&k.as_str())), "other suites are other work: {fewer:?}");
}
