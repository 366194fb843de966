//! Content addressing: shared work across files, reruns, parameter changes,
//! `--force` and `--only`.

mod common;

use std::collections::BTreeSet;

use common::*;

/// The upstream definition both files share, verbatim.
const SHARED_PREP: &str = r#"
kind = "command"
run = "echo x >> @C@/prep; echo prepared > $ABLATE_OUT/prep.txt"
"#;

#[test]
fn identical_upstream_in_two_files_has_one_key_and_runs_once() {
    let ws = Ws::new();
    let first = ws.write(
        "first.toml",
        &format!(
            r#"
[pipeline]
name = "first"
description = "one study"

[stages.prep]{SHARED_PREP}
[stages.train]
kind = "command"
needs = ["prep"]
run = "echo x >> @C@/train-first; cat $ABLATE_INPUT_PREP/prep.txt > $ABLATE_OUT/model.txt"
"#
        ),
    );
    let second = ws.write(
        "second.toml",
        &format!(
            r#"
[pipeline]
name = "second"

[axes]
seed = [1, 2]

[stages.prep]{SHARED_PREP}
[stages.eval]
kind = "command"
needs = ["prep"]
run = "echo x >> @C@/eval-${{seed}}; cat $ABLATE_INPUT_PREP/prep.txt > $ABLATE_OUT/score.txt"
"#
        ),
    );
    let plan1 = ws.plan(&first);
    let plan2 = ws.plan(&second);
    let prep = key_of(&plan1, "prep");
    assert_eq!(prep, key_of(&plan2, "prep"), "the same definition has the same key in both files");
    assert_eq!(prep.len(), 64, "keys are SHA-256 hex");
    assert!(stage_keys(&plan1, "train").is_disjoint(&stage_keys(&plan2, "eval")));

    let (code, summary, out) = ws.run_json(&first, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert!(keys_in(&summary, "executed").contains(&prep));
    assert_eq!(ws.count("prep"), 1);

    // The second file sees the shared instance as cached before running it...
    let plan2 = ws.plan(&second);
    let prep_row = rows(&plan2, "prep")[0];
    assert_eq!(prep_row["status"], "cached", "{prep_row}");
    assert_eq!(with_status(&plan2, "run"), stage_keys(&plan2, "eval"));

    // ... and running it executes the shared instance 0 times.
    let (code, summary, out) = ws.run_json(&second, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(ws.count("prep"), 1, "the shared upstream must not run again");
    assert!(keys_in(&summary, "cached").contains(&prep), "reported cached: {summary}");
    assert!(!keys_in(&summary, "executed").contains(&prep));
    assert_eq!(keys_in(&summary, "executed"), stage_keys(&plan2, "eval"));
    assert_eq!((ws.count("eval-1"), ws.count("eval-2")), (1, 1));

    // The stored instance knows both pipelines it appears in.
    let show = ws.show(&prep);
    let pipelines: BTreeSet<&str> = show["bindings"].as_array().unwrap().iter().map(|b| b["pipeline"].as_str().unwrap()).collect();
    assert_eq!(pipelines, BTreeSet::from(["first", "second"]));
}

#[test]
fn keys_are_stable_across_invocations_and_workspaces() {
    let a = Ws::new();
    let b = Ws::new();
    let text = r#"
[pipeline]
name = "stable"
[axes]
seed = [0, 1, 2]
[stages.s]
kind = "command"
run = "echo ${seed} > $ABLATE_OUT/o.txt"
"#;
    // Same text (the counter dir is not used, so the files are byte-identical).
    let fa = a.write("p.toml", text);
    let fb = b.write("p.toml", text);
    let ka = all_keys(&a.plan(&fa));
    assert_eq!(ka, all_keys(&a.plan(&fa)));
    assert_eq!(ka, all_keys(&b.plan(&fb)));
    // Formatting and comments do not change keys; parameter values do.
    let fc = b.write("q.toml", &format!("# a comment\n{}", text.replace("run = ", "run     =   ")));
    assert_eq!(ka, all_keys(&b.plan(&fc)));
    let fd = b.write("r.toml", &text.replace("> $ABLATE_OUT", ">$ABLATE_OUT"));
    assert!(ka.is_disjoint(&all_keys(&b.plan(&fd))));
}

const CHAIN: &str = r#"
[pipeline]
name = "chain"

[axes]
seed = [0, 1]

[stages.data]
kind = "command"
run = "echo x >> @C@/data; echo data > $ABLATE_OUT/data.txt"

[stages.train]
kind = "command"
needs = ["data"]
env = ["LR=0.1"]
run = "echo x >> @C@/train-${seed}; echo $LR ${seed} > $ABLATE_OUT/model.txt"

[stages.eval]
kind = "command"
needs = ["train"]
run = "echo x >> @C@/eval-${seed}; cat $ABLATE_INPUT_TRAIN/model.txt > $ABLATE_OUT/score.txt"

[stages.stats]
kind = "command"
needs = ["data"]
run = "echo x >> @C@/stats; echo 3 > $ABLATE_OUT/stats.txt"
"#;

#[test]
fn a_rerun_executes_nothing() {
    let ws = Ws::new();
    let file = ws.write("chain.toml", CHAIN);
    let (code, first, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(first["status"], "done");
    assert_eq!(first["executed"].as_array().unwrap().len(), 6);
    let counts = ws.all_counts();
    assert_eq!(counts.len(), 6);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");

    let plan = ws.plan(&file);
    assert!(plan.iter().all(|r| r["status"] == "cached" && r["reason"].is_null()), "{plan:?}");

    let (code, second, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(second["executed"].as_array().unwrap().len(), 0, "nothing to do: {second}");
    assert_eq!(keys_in(&second, "cached"), all_keys(&plan));
    assert_eq!(ws.all_counts(), counts, "no stage command ran again");
}

/// The reason names what changed since the instance last ran, not since
/// the last `plan` (an edit planned but never run is no baseline).
#[test]
fn the_reason_compares_with_what_last_ran() {
    let ws = Ws::new();
    let stage =
        |run: &str, env: &str| format!("[pipeline]\nname = \"r\"\n\n[stages.a]\nkind = \"command\"\nrun = \"{run}\"\nenv = [\"{env}\"]\n");
    let file = ws.write("r.toml", &stage("true", "A=1"));
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let file = ws.write("r.toml", &stage("true", "A=2"));
    assert_eq!(ws.plan(&file)[0]["reason"], "parameter changed (env)");
    let file = ws.write("r.toml", &stage("echo", "A=2"));
    assert_eq!(ws.plan(&file)[0]["reason"], "parameter changed (env, run)");
}

/// A store that cannot record the plan (a read-only workspace) holds only
/// the earlier bindings: the reason still names what changed. On a writable
/// store, planning loads history only for cells with more than one binding.
#[test]
fn a_read_only_store_still_explains_what_changed() {
    let ws = Ws::new();
    let stage = |env: &str| format!("[pipeline]\nname = \"r\"\n\n[stages.a]\nkind = \"command\"\nrun = \"true\"\nenv = [\"{env}\"]\n");
    let file = ws.write("r.toml", &stage("A=1"));
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let source = ablate::pipeline::SourceFile { path: "r.toml".into(), text: stage("A=2") };
    let plan = ablate::pipeline::compile_source(source).expect("valid pipeline");
    let workspace = ablate::store::Workspace::new(ws.store()).with_db(ws.db_url().map(str::to_owned)).unwrap();
    let reasons = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = ablate::store::Store::open_read_only(&workspace).await.unwrap().expect("the run made a store");
        assert!(store.is_read_only());
        let fresh = ablate::freshness::assess(&plan, Some(&store)).await.unwrap();
        store.close().await;
        fresh.iter().map(|f| f.reason().map(ToString::to_string)).collect::<Vec<_>>()
    });
    assert_eq!(reasons, [Some("parameter changed (env)".to_owned())]);
    // The same through `plan`, which records the new binding first.
    assert_eq!(ws.plan(&ws.write("r.toml", &stage("A=2")))[0]["reason"], "parameter changed (env)");
}

#[test]
fn changing_one_parameter_reruns_exactly_the_affected_instances() {
    let ws = Ws::new();
    let file = ws.write("chain.toml", CHAIN);
    let (code, _, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let before = ws.plan(&file);

    let file = ws.write("chain.toml", &CHAIN.replace("LR=0.1", "LR=0.2"));
    let plan = ws.plan(&file);
    assert_eq!(plan.len(), 6);
    for r in &plan {
        let stage = r["stage"].as_str().unwrap();
        match stage {
            "data" | "stats" => {
                assert_eq!(r["status"], "cached", "{r}");
                assert!(stage_keys(&before, stage).contains(r["key"].as_str().unwrap()), "unchanged key: {r}");
            }
            "train" => {
                assert_eq!(r["status"], "run", "{r}");
                assert_eq!(r["reason"], "parameter changed (env)", "{r}");
            }
            "eval" => {
                assert_eq!(r["status"], "run", "{r}");
                assert_eq!(r["reason"], "upstream changed", "{r}");
            }
            other => panic!("unexpected stage {other}"),
        }
    }

    let (code, summary, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(keys_in(&summary, "executed"), with_status(&plan, "run"), "exactly the affected instances: {summary}");
    assert_eq!(ws.count("data"), 1);
    assert_eq!(ws.count("stats"), 1);
    for seed in 0..2 {
        assert_eq!(ws.count(&format!("train-{seed}")), 2);
        assert_eq!(ws.count(&format!("eval-{seed}")), 2);
    }
    assert!(ws.plan(&file).iter().all(|r| r["status"] == "cached"));

    // Changing a value back finds the old results again.
    let file = ws.write("chain.toml", CHAIN);
    let plan = ws.plan(&file);
    assert!(plan.iter().all(|r| r["status"] == "cached"), "the LR=0.1 results are still stored: {plan:?}");
}

#[test]
fn force_reruns_a_cached_stage() {
    let ws = Ws::new();
    let file = ws.write("chain.toml", CHAIN);
    let (code, _, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&file);

    let (code, summary, out) = ws.run_json(&file, &["--force", "train"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let executed = keys_in(&summary, "executed");
    assert!(executed.is_superset(&stage_keys(&plan, "train")), "every train instance reran: {summary}");
    assert!(!executed.contains(&key_of(&plan, "data")), "its cached upstream did not: {summary}");
    assert!(!executed.contains(&key_of(&plan, "stats")));
    assert_eq!(ws.count("train-0"), 2);
    assert_eq!(ws.count("train-1"), 2);
    assert_eq!(ws.count("data"), 1);
    assert_eq!(ws.count("stats"), 1);
    for key in stage_keys(&plan, "train") {
        assert_eq!(attempt_statuses(&ws.show(&key)).iter().filter(|s| *s == "done").count(), 2);
    }
    // train wrote the same bytes again: what read them stands.
    assert!(executed.is_disjoint(&stage_keys(&plan, "eval")), "{summary}");
    assert_eq!((ws.count("eval-0"), ws.count("eval-1")), (1, 1));

    // An unknown stage name is a usage error.
    let out = ws.run(&["run", file.to_str().unwrap(), "--force", "nosuch"]).expect_code(2);
    assert!(out.stderr.contains("nosuch"), "{}", out.describe());
}

#[test]
fn only_runs_one_stage_and_the_upstream_it_needs() {
    let ws = Ws::new();
    let file = ws.write("chain.toml", CHAIN);
    let plan = ws.plan(&file);
    let (code, summary, out) = ws.run_json(&file, &["--only", "train"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let mut want = stage_keys(&plan, "train");
    want.insert(key_of(&plan, "data"));
    assert_eq!(keys_in(&summary, "executed"), want, "{summary}");
    assert_eq!(ws.count("stats"), 0);
    assert_eq!(ws.count("eval-0") + ws.count("eval-1"), 0);

    let plan = ws.plan(&file);
    assert_eq!(with_status(&plan, "run"), {
        let mut s = stage_keys(&plan, "eval");
        s.insert(key_of(&plan, "stats"));
        s
    });
    // The rest runs later without redoing anything.
    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["executed"].as_array().unwrap().len(), 3);
    assert!(ws.all_counts().values().all(|&n| n == 1), "{:?}", ws.all_counts());
}

#[test]
fn a_stage_whose_kind_changed_says_so() {
    let ws = Ws::new();
    let file = ws.write("k.toml", "[pipeline]\nname = \"k\"\n\n[stages.data]\nkind = \"command\"\nrun = \"echo x > $ABLATE_OUT/x.txt\"\n");
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let file = ws
        .write("k.toml", "[pipeline]\nname = \"k\"\n\n[stages.data]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\nimages = 8\n");
    let plan = ws.plan(&file);
    assert_eq!(plan[0]["reason"], "stage kind changed (command → caption_ingest)", "{plan:?}");
}

/// A forced stage that writes other bytes this time (a timestamp, a
/// nondeterministic GPU sum) takes what read its outputs along; one that
/// writes the same bytes does not.
/// A dependant left out of a forced rerun (`--only`, or a Slurm submitter
/// that died while the forced job ran) that read outputs since replaced by
/// other bytes is stale: `plan` says so and the next run reruns it alone.
#[test]
fn a_dependant_that_read_replaced_outputs_runs_again() {
    let ws = Ws::new();
    let file = ws.write("nd.toml", FORCED);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let (code, summary, out) = ws.run_json(&file, &["--force", "stamp", "--force", "fixed", "--only", "stamp", "--only", "fixed"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["executed"].as_array().unwrap().len(), 2, "{summary}");

    let plan = ws.plan(&file);
    let copy = rows(&plan, "copy")[0];
    assert_eq!((copy["status"].as_str(), copy["reason"].as_str()), (Some("run"), Some("upstream output changed (stamp)")), "{copy}");
    assert_eq!(rows(&plan, "reader")[0]["status"], "cached", "fixed wrote the same bytes");
    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(keys_in(&summary, "executed"), BTreeSet::from([key_of(&plan, "copy")]), "{summary}");
    assert_eq!((ws.count("copy"), ws.count("reader")), (2, 1));
    let show = ws.show(&key_of(&plan, "copy"));
    assert_eq!(attempt_statuses(&show), vec!["invalidated", "done"], "{show}");
    assert!(ws.plan(&file).iter().all(|r| r["status"] == "cached"));
}

#[test]
fn force_restarts_a_dependant_that_was_not_done() {
    let ws = Ws::new();
    forced_dependant_starts_afresh(&ws, |file, extra| ws.run_json(file, extra));
}

#[test]
fn force_reruns_dependants_whose_inputs_changed() {
    let ws = Ws::new();
    let file = ws.write("nd.toml", FORCED);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let (code, summary, out) = ws.run_json(&file, &["--force", "stamp", "--force", "fixed"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_forced_outcome(&ws, &file, &summary);
    let plan = ws.plan(&file);
    let read = |stage: &str, name: &str| {
        let show = ws.show(&key_of(&plan, stage));
        let a = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap().clone();
        std::fs::read_to_string(ws.store().join(a["path"].as_str().unwrap())).unwrap()
    };
    assert_eq!(read("stamp", "x.txt"), read("copy", "y.txt"), "the copy is of the new stamp");
}
