//! A failing stage: downstream skipped, `--keep-going`, and rerunning after the fix.

mod common;

use common::*;

/// `bad` fails unless the file `@R@/fixed` exists (its key does not change when
/// it is fixed); `down` needs it. `slow` → `other` is an independent branch.
const PIPE: &str = r#"
[pipeline]
name = "failing"

[axes]
seed = [0, 1]

[stages.bad]
kind = "command"
run = "echo x >> @C@/bad; test -e @R@/fixed || exit 3; echo ok > $ABLATE_OUT/bad.txt"

[stages.down]
kind = "command"
needs = ["bad"]
run = "echo x >> @C@/down-${seed}; echo ${seed} > $ABLATE_OUT/down.txt"

[stages.slow]
kind = "command"
run = "echo x >> @C@/slow; sleep 0.5; echo slow > $ABLATE_OUT/slow.txt"

[stages.other]
kind = "command"
needs = ["slow"]
run = "echo x >> @C@/other; echo other > $ABLATE_OUT/other.txt"
"#;

#[test]
fn a_failure_skips_downstream_and_stops_new_work_without_keep_going() {
    let ws = Ws::new();
    let file = ws.write("p.toml", PIPE);
    let plan = ws.plan(&file);
    let bad = key_of(&plan, "bad");
    let other = key_of(&plan, "other");

    let (code, summary, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(1), "a failed stage makes `run` exit 1\n{}", out.describe());
    assert_eq!(summary["status"], "failed");
    let failed = &summary["failed"][0];
    assert_eq!(failed["key"], bad.as_str(), "{summary}");
    assert!(failed["error"].as_str().unwrap().contains('3'), "the error gives the exit status: {failed}");
    assert_eq!(keys_in(&summary, "skipped"), stage_keys(&plan, "down"), "{summary}");
    for key in stage_keys(&plan, "down") {
        let show = ws.show(&key);
        assert_eq!(attempt_statuses(&show), vec!["skipped"], "{show}");
    }
    assert_eq!(ws.count("down-0") + ws.count("down-1"), 0);
    assert_eq!(attempt_statuses(&ws.show(&bad)), vec!["failed"]);

    // `slow` was already running and finishes; `other` was not started.
    assert_eq!(ws.count("slow"), 1);
    assert_eq!(ws.count("other"), 0, "without --keep-going no new branch starts after a failure");
    assert!(!keys_in(&summary, "executed").contains(&other));
    assert_eq!(keys_in(&summary, "not_started"), [other.clone()].into(), "the summary accounts for it: {summary}");
    assert_eq!(ws.runs()[0]["status"], "failed");

    // Fix the cause (same key) and rerun: only what is not done runs.
    let plan = ws.plan(&file);
    assert_eq!(rows(&plan, "slow")[0]["status"], "cached");
    assert!(rows(&plan, "bad")[0]["reason"].as_str().unwrap().contains("failed"), "{plan:?}");
    std::fs::write(ws.root().join("fixed"), "").unwrap();
    let (code, summary, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let mut want = stage_keys(&plan, "down");
    want.insert(bad.clone());
    want.insert(other.clone());
    assert_eq!(keys_in(&summary, "executed"), want, "{summary}");
    assert_eq!(ws.count("slow"), 1, "the finished branch is not redone");
    assert_eq!(ws.count("bad"), 2);
    assert_eq!((ws.count("down-0"), ws.count("down-1"), ws.count("other")), (1, 1, 1));
    assert!(ws.plan(&file).iter().all(|r| r["status"] == "cached"));
}

#[test]
fn keep_going_completes_independent_branches() {
    let ws = Ws::new();
    let file = ws.write("p.toml", PIPE);
    let plan = ws.plan(&file);

    let (code, summary, out) = ws.run_json(&file, &["-j", "2", "--keep-going"]);
    assert_eq!(code, Some(1), "{}", out.describe());
    assert_eq!(keys_in(&summary, "skipped"), stage_keys(&plan, "down"));
    let mut want = stage_keys(&plan, "slow");
    want.extend(stage_keys(&plan, "other"));
    assert_eq!(keys_in(&summary, "executed"), want, "the independent branch completes: {summary}");
    assert_eq!((ws.count("slow"), ws.count("other")), (1, 1));
    for key in stage_keys(&plan, "down") {
        assert_eq!(attempt_statuses(&ws.show(&key)), vec!["skipped"]);
    }

    // Fix by editing the command (new key for bad and down): only those run.
    let fixed = PIPE.replace("test -e @R@/fixed || exit 3; ", "");
    let file = ws.write("p.toml", &fixed);
    let plan = ws.plan(&file);
    assert_eq!(rows(&plan, "bad")[0]["reason"], "parameter changed (run)");
    let (code, summary, out) = ws.run_json(&file, &["-j", "2", "--keep-going"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let mut want = stage_keys(&plan, "down");
    want.insert(key_of(&plan, "bad"));
    assert_eq!(keys_in(&summary, "executed"), want, "{summary}");
    assert_eq!((ws.count("slow"), ws.count("other")), (1, 1));
}

#[test]
fn a_failing_downstream_leaves_its_upstream_done() {
    let ws = Ws::new();
    let file = ws.write(
        "p.toml",
        r#"
[pipeline]
name = "late-failure"

[stages.up]
kind = "command"
run = "echo x >> @C@/up; echo up > $ABLATE_OUT/up.txt"

[stages.broken]
kind = "command"
needs = ["up"]
run = "echo x >> @C@/broken; echo partial > $ABLATE_OUT/partial.txt; false"
"#,
    );
    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(1), "{}", out.describe());
    assert_eq!(summary["failed"].as_array().unwrap().len(), 1);
    let plan = ws.plan(&file);
    assert_eq!(rows(&plan, "up")[0]["status"], "cached");
    assert_eq!(rows(&plan, "broken")[0]["status"], "run");
    // A failed attempt records no artifacts.
    let show = ws.show(&key_of(&plan, "broken"));
    assert_eq!(show["artifacts"], serde_json::json!([]), "{show}");
    // Rerunning retries only the failed stage.
    let (code, summary, _) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(summary["executed"].as_array().unwrap().len(), 0);
    assert_eq!((ws.count("up"), ws.count("broken")), (1, 2));
}

/// A stage that declares more GPUs than the run allows fails clearly (and its
/// downstream is skipped) instead of waiting forever.
#[test]
fn a_stage_needing_more_gpus_than_allowed_fails_with_the_reason() {
    let ws = Ws::new();
    let file = ws.write(
        "gpu.toml",
        r#"
[pipeline]
name = "gpu"

[stages.train]
kind = "command"
run = "echo trained > $ABLATE_OUT/model.txt"

[stages.train.resources]
gpus = 1

[stages.eval]
kind = "command"
needs = ["train"]
run = "echo evaluated > $ABLATE_OUT/eval.txt"
"#,
    );
    let (code, summary, out) = ws.run_json(&file, &["--gpus", "0"]);
    assert_eq!(code, Some(1), "{}", out.describe());
    let failed = summary["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["error"].as_str().unwrap().contains("needs 1 GPU(s)"), "{}", out.describe());
    assert_eq!(summary["skipped"].as_array().unwrap().len(), 1);
    // With a GPU allowed it runs.
    let (code, summary, out) = ws.run_json(&file, &["--gpus", "1"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["executed"].as_array().unwrap().len(), 2);
}
