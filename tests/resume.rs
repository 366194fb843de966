//! Interruptions: kill -9 and Ctrl-C mid-run, then a rerun that finishes the work.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;

/// Six instances (`s`): `i = 0` is quick, the others slow enough that one is
/// surely mid-execution when the test kills the run; each has a quick
/// downstream (`t`). Counters are appended when a command starts, so an
/// instance killed mid-execution counts once for the killed attempt.
const SLOW: &str = r#"
[pipeline]
name = "slow"

[axes]
i = [0, 1, 2, 3, 4, 5]

[stages.s]
kind = "command"
run = "echo x >> @C@/s-${i}; sleep $(( ${i} == 0 ? 0 : 3 )); echo ${i} > $ABLATE_OUT/s.txt"

[stages.t]
kind = "command"
needs = ["s"]
run = "echo x >> @C@/t-${i}; cat $ABLATE_INPUT_S/s.txt > $ABLATE_OUT/t.txt"
"#;

fn counter_name(row: &serde_json::Value) -> String {
    format!("{}-{}", row["stage"].as_str().unwrap(), row["axes"]["i"])
}

#[test]
fn kill_9_mid_run_then_rerun_finishes_without_duplicated_work() {
    let ws = Ws::new();
    let file = ws.write("slow.toml", SLOW);
    let plan = ws.plan(&file);
    assert_eq!(plan.len(), 12);

    let run = ws.spawn(&["run", file.to_str().unwrap(), "-j", "2"]);
    // Wait until at least one instance is done and another one is executing.
    wait_until(Duration::from_secs(20), "one instance done and another running", || {
        let plan = ws.plan(&file);
        let done = plan.iter().filter(|r| r["status"] == "cached").count();
        let running = plan.iter().any(|r| r["status"] == "run" && ws.count(&counter_name(r)) > 0);
        done >= 1 && running
    });
    let killed = run.kill9();
    assert_eq!(killed.code, None, "killed by a signal");

    // What the killed process had finished, and what it was in the middle of.
    let after_kill = ws.plan(&file);
    let done_before: BTreeSet<String> = with_status(&after_kill, "cached");
    let interrupted: BTreeSet<String> = after_kill
        .iter()
        .filter(|r| r["status"] == "run" && ws.count(&counter_name(r)) > 0)
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect();
    assert!(!done_before.is_empty() && !interrupted.is_empty());

    // The killed run's rows are still `running`: the rerun must recover them,
    // not trust them and not wait for them forever.
    let started = Instant::now();
    let (code, summary, out) = ws.run_json(&file, &["-j", "6"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert!(started.elapsed() < Duration::from_secs(20), "the rerun must not wait for the dead process's lease");
    let executed = keys_in(&summary, "executed");
    assert!(executed.is_disjoint(&done_before), "finished work is not redone: {summary}");
    assert_eq!(executed.len() + done_before.len(), 12, "{summary}");
    assert!(interrupted.is_subset(&executed));

    // Counters: once in total, except instances killed mid-execution (at most twice).
    for r in &after_kill {
        let n = ws.count(&counter_name(r));
        let key = r["key"].as_str().unwrap();
        if interrupted.contains(key) {
            assert!((1..=2).contains(&n), "{} ran {n} times", counter_name(r));
        } else {
            assert_eq!(n, 1, "{} ran {n} times", counter_name(r));
        }
    }
    let plan = ws.plan(&file);
    assert!(plan.iter().all(|r| r["status"] == "cached"), "{plan:?}");

    // History: the killed run is recovered as `lost`; no attempt is left `running`.
    let runs = ws.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let first = runs.iter().find(|r| r["id"] == 1).expect("run 1");
    assert_eq!(first["status"], "lost", "{first}");
    let second = runs.iter().find(|r| r["id"] == 2).expect("run 2");
    assert_eq!(second["status"], "done", "{second}");
    for r in &plan {
        let key = r["key"].as_str().unwrap();
        let statuses = attempt_statuses(&ws.show(key));
        assert!(!statuses.iter().any(|s| s == "running"), "{} has a stale running attempt: {statuses:?}", counter_name(r));
        assert_eq!(statuses.iter().filter(|s| *s == "done").count(), 1, "{}: {statuses:?}", counter_name(r));
        if interrupted.contains(key) {
            assert!(statuses.iter().any(|s| s == "lost"), "the killed attempt is recorded lost: {statuses:?}");
        }
    }
}

#[test]
fn ctrl_c_stops_the_run_and_records_it_interrupted() {
    let ws = Ws::new();
    let file = ws.write(
        "long.toml",
        r#"
[pipeline]
name = "long"

[stages.long]
kind = "command"
run = "echo x >> @C@/long; exec sleep 30"

[stages.after]
kind = "command"
needs = ["long"]
run = "echo x >> @C@/after"
"#,
    );
    let run = ws.spawn(&["run", file.to_str().unwrap()]);
    wait_until(Duration::from_secs(20), "the stage to start", || ws.count("long") == 1);
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    let status = std::process::Command::new("kill").args(["-INT", &run.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let out = run.wait(Duration::from_secs(10));
    assert!(sent.elapsed() < Duration::from_secs(5), "Ctrl-C must stop the run within seconds, took {:?}", sent.elapsed());
    assert_eq!(out.code, Some(130), "{}", out.describe());
    assert_eq!(ws.count("after"), 0, "nothing starts after Ctrl-C");
    assert!(out.stdout.contains("0 skipped, 1 not started, 1 interrupted"), "the summary accounts for both: {}", out.describe());

    let runs = ws.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "interrupted", "{:?}", runs[0]);
    let plan = ws.plan(&file);
    let long = key_of(&plan, "long");
    assert_eq!(attempt_statuses(&ws.show(&long)), vec!["interrupted"]);
    let row = rows(&plan, "long")[0];
    assert_eq!(row["status"], "run");
    assert!(row["reason"].as_str().unwrap().contains("interrupted"), "{row}");

    // Rerunning after the interruption picks the work up again (here: make it quick).
    let file = ws.write("long.toml", &std::fs::read_to_string(&file).unwrap().replace("exec sleep 30", "true"));
    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["executed"].as_array().unwrap().len(), 2);
}

/// Whether process `pid` is still alive (not gone, not a zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 2..].starts_with('Z')))
}

/// A stopped command stops with everything it started: a stage's real work
/// (python under sh, say) must not train on, orphaned, after a Ctrl-C.
#[test]
fn ctrl_c_stops_what_a_command_started_and_a_command_leaves_nothing_running() {
    let ws = Ws::new();
    let file = ws.write(
        "tree.toml",
        r#"
[pipeline]
name = "tree"

[stages.tree]
kind = "command"
run = "sleep 300 & echo $! > @R@/background.pid; sh -c 'echo $$ > @R@/child.pid; exec sleep 300'"
"#,
    );
    let run = ws.spawn(&["run", file.to_str().unwrap()]);
    let pid = |name: &str| std::fs::read_to_string(ws.root().join(name)).unwrap_or_default().trim().to_owned();
    wait_until(Duration::from_secs(20), "the command's processes", || !pid("background.pid").is_empty() && !pid("child.pid").is_empty());
    let (background, child) = (pid("background.pid"), pid("child.pid"));
    assert!(alive(&background) && alive(&child));
    std::process::Command::new("kill").args(["-INT", &run.pid().to_string()]).status().unwrap();
    let out = run.wait(Duration::from_secs(20));
    assert_eq!(out.code, Some(130), "{}", out.describe());
    wait_until(Duration::from_secs(5), "the command's processes to end", || !alive(&background) && !alive(&child));

    // A command that finishes but leaves a process behind: the stage ends
    // with it (promptly: the leftover held the output pipe open).
    let file = ws.write("leftover.toml", "[pipeline]\nname = \"leftover\"\n\n[stages.a]\nkind = \"command\"\nrun = \"sleep 300 & echo $! > @R@/left.pid; echo ok > $ABLATE_OUT/a.txt\"\n");
    let started = Instant::now();
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    wait_until(Duration::from_secs(5), "the leftover to end", || !alive(&pid("left.pid")));
}

/// After a `kill -9` of `ablate run`, what a command's shell had started
/// lives on as an orphan. `ablate cancel` of the dead run stops it, and so
/// does a rerun before starting the stage again, so two copies never write
/// to one `$ABLATE_STATE`.
#[test]
fn what_a_killed_runs_command_left_running_is_stopped_by_cancel_or_a_rerun() {
    let ws = Ws::new();
    let file = ws.write(
        "orphan.toml",
        r#"
[pipeline]
name = "orphan"

[stages.work]
kind = "command"
run = "echo x >> @C@/work; if [ -f @R@/spawn ]; then rm @R@/spawn; sh -c 'echo $$ > @R@/worker.pid; exec sleep 300'; fi; echo ok > $ABLATE_OUT/a.txt"
"#,
    );
    let orphan = || {
        let _ = std::fs::remove_file(ws.root().join("worker.pid"));
        std::fs::write(ws.root().join("spawn"), "").unwrap();
        let run = ws.spawn(&["run", file.to_str().unwrap()]);
        let worker = || std::fs::read_to_string(ws.root().join("worker.pid")).unwrap_or_default().trim().to_owned();
        wait_until(Duration::from_secs(20), "the worker to start", || !worker().is_empty());
        assert_eq!(run.kill9().code, None);
        std::thread::sleep(Duration::from_millis(300));
        let worker = worker();
        assert!(alive(&worker), "the worker outlives the killed run (the shell's grandchild)");
        worker
    };

    let worker = orphan();
    let out = ws.run(&["cancel", "1"]).ok();
    assert!(out.stdout.contains("stopped 1 process group"), "{}", out.describe());
    assert!(!alive(&worker), "cancel stopped the orphan");

    let worker = orphan();
    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["executed"].as_array().unwrap().len(), 1);
    assert_eq!(ws.count("work"), 3);
    assert!(!alive(&worker), "the rerun stopped the orphan before starting again");
    assert!(out.stderr.contains("left running by an earlier attempt"), "{}", out.describe());
}

/// `ablate cancel` stops a live local run like Ctrl-C, and records a run whose
/// process died as lost instead of signalling its old pid.
#[test]
fn cancel_stops_a_live_run_and_records_a_dead_one_lost() {
    let ws = Ws::new();
    let file = ws.write(
        "long.toml",
        "[pipeline]\nname = \"long\"\n\n[stages.long]\nkind = \"command\"\nrun = \"echo x >> @C@/long; exec sleep 30\"\n",
    );
    let run = ws.spawn(&["run", file.to_str().unwrap()]);
    wait_until(Duration::from_secs(20), "the stage to start", || ws.count("long") == 1);
    let out = ws.run(&["cancel", "1"]).ok();
    assert!(out.stdout.contains("sent SIGINT"), "{}", out.describe());
    assert_eq!(run.wait(Duration::from_secs(10)).code, Some(130));
    assert_eq!(ws.runs()[0]["status"], "interrupted");

    let mut run = ws.spawn(&["run", file.to_str().unwrap()]);
    wait_until(Duration::from_secs(20), "the stage to start again", || ws.count("long") == 2);
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(8));
    // Read-only commands already tell the dead run from a live one.
    let seen = ws.runs().into_iter().find(|r| r["id"] == 2).unwrap();
    assert_eq!(seen["status"], "lost", "{seen}");
    assert!(seen["duration_s"].as_f64().unwrap() < 7.0, "{seen}");
    let out = ws.run(&["plan", file.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("never finished (last attempt lost)"), "{}", out.describe());
    let out = ws.run(&["cancel", "2"]).ok();
    assert!(out.stdout.contains("not running (lost)"), "{}", out.describe());
    let lost = ws.runs().into_iter().find(|r| r["id"] == 2).unwrap();
    assert_eq!(lost["status"], "lost");
    // Ended at its last heartbeat (every 5 s), not when cancel noticed.
    assert!(lost["duration_s"].as_f64().unwrap() < 7.0, "{lost}");
}
