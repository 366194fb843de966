//! `ablate run --executor slurm` against a real Slurm cluster (the CI's
//! single node, started by scripts/ci-services): same keys and metrics as a
//! local run, one job or array task per instance, adoption after the
//! submitter dies, cancelled jobs recorded failed and rerun, retries, Ctrl-C
//! (with and without a terminal to ask in), `ablate cancel`, and a requeued
//! job resuming from its checkpoint.

mod common;
#[path = "common/study.rs"]
mod study;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::services::{self, require};
use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn slurm() -> bool {
    require("Slurm", services::slurm()).is_some()
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state Slurm reports for a job or array task (`JOB` or `JOB_TASK`).
fn slurm_state(job: &str) -> String {
    let out =
        Command::new("squeue").args(["--noheader", "--array", "--states=all", "--format=%T", &format!("--jobs={job}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `run --executor slurm --json` in the foreground.
#[track_caller]
fn run_slurm(ws: &Ws, file: &std::path::Path, extra: &[&str]) -> (Option<i32>, Value, Out) {
    let mut args = vec!["run", file.to_str().unwrap(), "--executor", "slurm", "--json"];
    args.extend_from_slice(extra);
    let out = ws.spawn(&args).wait(LONG);
    assert_no_panic(&out);
    let json = out.json();
    (out.code, json, out)
}

/// Slurm jobs of a run by instance key, from `show RUN --json`.
fn jobs_by_key(ws: &Ws, run: i64) -> BTreeMap<String, Vec<Value>> {
    let show = ws.show(&run.to_string());
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for job in show["slurm_jobs"].as_array().unwrap() {
        out.entry(job["key"].as_str().unwrap().to_owned()).or_default().push(job.clone());
    }
    out
}

/// Final metrics per key, from `history --json`.
fn metrics(ws: &Ws) -> BTreeMap<String, Value> {
    let history = ws.run(&["history", "--json"]).ok().json();
    history.as_array().unwrap().iter().map(|r| (r["key"].as_str().unwrap().to_owned(), r["metrics"].clone())).collect()
}

#[test]
fn slurm_study_matches_a_local_run_one_job_per_instance() {
    if !slurm() {
        return;
    }
    let local = Ws::new();
    let cluster = Ws::new();
    let file_local = local.write("small.toml", study::SMALL);
    let file_cluster = cluster.write("small.toml", study::SMALL);
    let (code, _, out) = local.run_json(&file_local, &["--jobs", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());

    let (code, summary, out) = run_slurm(&cluster, &file_cluster, &["--partition", "debug"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = cluster.plan(&file_cluster);
    assert_eq!(all_keys(&plan), all_keys(&local.plan(&file_local)), "the same stage keys");
    assert_eq!(keys_in(&summary, "executed"), all_keys(&plan), "every instance ran as a job");
    assert_eq!(summary["slurm"]["jobs_submitted"], 9);
    assert_eq!(metrics(&cluster), metrics(&local), "the same metrics");

    // One job (or array task) per instance; each stage's instances in one array.
    let run = summary["run_id"].as_i64().unwrap();
    let show = cluster.show(&run.to_string());
    let attempts = show["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 9, "{show}");
    let mut tasks = BTreeSet::new();
    for a in attempts {
        assert_eq!(a["status"], "done", "{a}");
        assert!(a["exit_state"].as_str().unwrap().starts_with("COMPLETED"), "{a}");
        assert!(std::path::Path::new(a["log_path"].as_str().unwrap()).is_file(), "{a}");
        assert!(tasks.insert(a["slurm_job"].as_str().unwrap().to_owned()), "one job per instance: {a}");
    }
    let arrays: BTreeSet<&str> = tasks.iter().map(|t| t.split('_').next().unwrap()).collect();
    assert_eq!(arrays.len(), 3, "one sbatch per stage: {tasks:?}");
    let mut seen = 0;
    for job in &arrays {
        let text = tool("scontrol", &["--oneliner", "show", "job", job]);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            assert!(line.contains("JobState=COMPLETED"), "{line}");
            assert!(line.contains("JobName=ablate:small:"), "{line}");
            seen += 1;
        }
    }
    assert_eq!(seen, 9, "Slurm shows one job or array task per instance");
    let train_key = stage_keys(&plan, "train").into_iter().next().unwrap();
    let train_task = attempts.iter().find(|a| a["key"] == train_key.as_str()).unwrap()["slurm_job"].as_str().unwrap();
    let train = tool("scontrol", &["--oneliner", "show", "job", train_task]);
    assert!(train.contains("MinMemoryNode=100M") && train.contains("TimeLimit=00:05:00"), "resources reach sbatch: {train}");

    // Everything is cached now: nothing is submitted.
    let (code, again, out) = run_slurm(&cluster, &file_cluster, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(again["slurm"]["jobs_submitted"], 0);
    assert_eq!(keys_in(&again, "cached"), all_keys(&plan));
}

/// `work` instances that announce they started, then wait for a go file.
const WAITING: &str = r#"
[pipeline]
name = "waiting"

[axes]
seed = [0, 1]

[stages.data]
kind = "command"
run = "echo data > $ABLATE_OUT/data.txt"

[stages.work]
kind = "command"
needs = ["data"]
run = """
echo x >> @C@/work-${seed}
while [ ! -f @R@/go ]; do sleep 0.2; done
echo ${seed} > $ABLATE_OUT/out.txt
"""
"#;

fn go(ws: &Ws) {
    std::fs::write(ws.root().join("go"), "").unwrap();
}

#[test]
fn killing_the_submitter_and_rerunning_adopts_running_jobs() {
    if !slurm() {
        return;
    }
    let ws = Ws::new();
    let file = ws.write("waiting.toml", WAITING);
    let submitter = ws.spawn(&["run", file.to_str().unwrap(), "--executor", "slurm", "--json"]);
    wait_until(LONG, "both work jobs to start", || ws.count("work-0") == 1 && ws.count("work-1") == 1);
    submitter.kill9();

    let rerun = ws.spawn(&["run", file.to_str().unwrap(), "--executor", "slurm", "--json"]);
    std::thread::sleep(Duration::from_millis(1500));
    go(&ws);
    let out = rerun.wait(LONG);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let summary = out.json();
    assert_eq!(summary["slurm"]["jobs_adopted"], 2, "{summary}");
    assert_eq!(summary["slurm"]["jobs_submitted"], 0, "no duplicate submission: {summary}");
    assert_eq!(keys_in(&summary, "executed").len(), 2, "{summary}");
    assert_eq!((ws.count("work-0"), ws.count("work-1")), (1, 1), "each instance ran once");
    let plan = ws.plan(&file);
    for key in stage_keys(&plan, "work") {
        assert_eq!(attempt_statuses(&ws.show(&key)), vec!["done"]);
    }
    let runs = ws.runs();
    let first = runs.iter().find(|r| r["id"] == 1).unwrap();
    assert_eq!(first["status"], "done", "the adopted run is settled once its jobs are: {first}");
}

#[test]
fn scancelled_job_is_recorded_failed_and_rerun_and_ctrl_c_keeps_jobs() {
    if !slurm() {
        return;
    }
    let ws = Ws::new();
    let file = ws.write("waiting.toml", WAITING);
    let follower = ws.spawn(&["run", file.to_str().unwrap(), "--executor", "slurm", "--json"]);
    wait_until(LONG, "both work jobs to start", || ws.count("work-0") == 1 && ws.count("work-1") == 1);

    // Ctrl-C without a terminal: nothing is asked, the jobs keep running, and it says what to run.
    tool("kill", &["-INT", &follower.pid().to_string()]);
    let out = follower.wait(LONG);
    assert_eq!(out.code, Some(130), "{}", out.describe());
    assert!(out.stderr.contains("ablate cancel 1"), "{}", out.describe());
    let plan = ws.plan(&file);
    let work0 = rows(&plan, "work").iter().find(|r| r["axes"]["seed"] == 0).unwrap()["key"].as_str().unwrap().to_owned();
    let jobs = jobs_by_key(&ws, 1);
    let job0 = jobs[&work0][0]["job"].as_str().unwrap().to_owned();
    assert_eq!(slurm_state(&job0), "RUNNING", "Ctrl-C cancelled nothing");

    // Killed behind ablate's back: recorded failed, and the next submission reruns it.
    tool("scancel", &[&job0]);
    wait_until(LONG, "the job to be cancelled", || slurm_state(&job0) == "CANCELLED");
    go(&ws);
    let (code, summary, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["slurm"]["jobs_submitted"], 1, "only the cancelled instance: {summary}");
    assert_eq!(summary["slurm"]["jobs_adopted"], 1, "{summary}");
    let show = ws.show(&work0);
    assert_eq!(attempt_statuses(&show), vec!["failed", "done"], "{show}");
    let failed = &show["attempts"][0];
    assert!(failed["error"].as_str().unwrap().contains("cancelled"), "{failed}");
    assert!(failed["exit_state"].as_str().unwrap().starts_with("CANCELLED"), "{failed}");
    assert_eq!(failed["slurm_job"], job0.as_str());
    assert_eq!((ws.count("work-0"), ws.count("work-1")), (2, 1));
}

/// `ablate ARGS...` with a pseudo-terminal for its stdin, stdout and stderr
/// (through util-linux `script`), as in an interactive shell; what it
/// writes lands in `log`, what the test writes to the returned stdin reaches
/// it as typed input.
fn spawn_in_terminal(ws: &Ws, args: &[&str], log: &std::path::Path) -> std::process::Child {
    let inner = ws.command(args);
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_str().unwrap().replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(inner.get_program()).chain(inner.get_args()).map(quote).collect();
    let mut outer = Command::new("script");
    outer.args(["-qfec", &line.join(" "), "/dev/null"]).current_dir(ws.root());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    let log = std::fs::File::create(log).unwrap();
    outer.stdin(std::process::Stdio::piped()).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("running script(1)")
}

/// The `ablate` process under `script` (its child, or its shell's child).
fn ablate_under(script: u32) -> Option<u32> {
    let children = |pid: u32| -> Vec<u32> {
        let out = Command::new("pgrep").args(["-P", &pid.to_string()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    };
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned();
    children(script).into_iter().flat_map(|c| std::iter::once(c).chain(children(c))).find(|&p| comm(p) == "ablate")
}

#[test]
fn ctrl_c_in_a_terminal_asks_and_yes_cancels_the_jobs() {
    if !slurm() {
        return;
    }
    let ws = Ws::new();
    let file = ws.write("waiting.toml", WAITING);
    let log = ws.root().join("terminal.log");
    let mut term = spawn_in_terminal(&ws, &["run", file.to_str().unwrap(), "--executor", "slurm"], &log);
    wait_until(LONG, "both work jobs to start", || ws.count("work-0") == 1 && ws.count("work-1") == 1);
    let pid = ablate_under(term.id()).expect("ablate runs under script");
    tool("kill", &["-INT", &pid.to_string()]);
    let screen = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(LONG, "the cancel prompt", || screen().contains("Slurm job(s) of run 1? [y/N]"));
    use std::io::Write as _;
    term.stdin.as_mut().unwrap().write_all(b"y\n").unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = term.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LONG {
            let _ = term.kill();
            panic!("ablate did not exit after the answer\n{}", screen());
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(status.code(), Some(130), "{}", screen());
    assert!(!screen().contains("panicked"), "{}", screen());

    assert_eq!(ws.runs()[0]["status"], "interrupted");
    let plan = ws.plan(&file);
    for key in stage_keys(&plan, "work") {
        let show = ws.show(&key);
        assert_eq!(attempt_statuses(&show), vec!["failed"], "{show}");
        assert!(show["attempts"][0]["error"].as_str().unwrap().contains("cancelled by ablate"), "{show}");
        let job = show["attempts"][0]["slurm_job"].as_str().unwrap().to_owned();
        wait_until(LONG, "the job to be cancelled", || slurm_state(&job).starts_with("CANCELLED"));
    }
}

#[test]
fn ablate_cancel_cancels_a_detached_run() {
    if !slurm() {
        return;
    }
    let ws = Ws::new();
    let file = ws.write("waiting.toml", WAITING);
    let (code, summary, out) = run_slurm(&ws, &file, &["--detach"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["slurm"]["detached"], true);
    assert_eq!(summary["slurm"]["jobs_left"], 3, "{summary}");
    let run = summary["run_id"].as_i64().unwrap();
    wait_until(LONG, "both work jobs to start", || ws.count("work-0") == 1 && ws.count("work-1") == 1);
    assert_eq!(ws.runs()[0]["status"], "running", "a detached run runs on in Slurm");

    let out = ws.run(&["cancel", &run.to_string()]).ok();
    assert!(out.stdout.contains("cancelled 2 Slurm job(s)") || out.stdout.contains("cancelled 3 Slurm job(s)"), "{}", out.describe());
    assert_eq!(ws.runs()[0]["status"], "interrupted");
    let plan = ws.plan(&file);
    for key in stage_keys(&plan, "work") {
        let show = ws.show(&key);
        assert_eq!(attempt_statuses(&show), vec!["failed"], "{show}");
        assert!(show["attempts"][0]["error"].as_str().unwrap().contains("cancelled by ablate"), "{show}");
    }
    go(&ws);
    let (code, summary, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["slurm"]["jobs_submitted"], 2, "{summary}");
}

const FLAKY: &str = r#"
[pipeline]
name = "flaky"

[stages.flaky]
kind = "command"
run = """
echo x >> @C@/flaky
if [ ! -f @R@/failed-once ]; then touch @R@/failed-once; echo 'broken' >&2; exit 3; fi
echo ok > $ABLATE_OUT/ok.txt
"""

[stages.after]
kind = "command"
needs = ["flaky"]
run = "echo x >> @C@/after; cat $ABLATE_INPUT_FLAKY/ok.txt > $ABLATE_OUT/after.txt"
"#;

#[test]
fn a_failed_job_skips_its_downstream_and_retries_resubmit_it() {
    if !slurm() {
        return;
    }
    // Without retries: failed, and the job queued below it never runs.
    let ws = Ws::new();
    let file = ws.write("flaky.toml", FLAKY);
    let (code, summary, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(1), "{}", out.describe());
    assert_eq!(summary["failed"].as_array().unwrap().len(), 1, "{summary}");
    assert!(summary["failed"][0]["error"].as_str().unwrap().contains("exit"), "{summary}");
    assert_eq!(summary["skipped"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(ws.count("after"), 0);
    assert!(!out.stderr.contains("polling Slurm failed"), "{}", out.describe());

    // With --retries 1 (on a fresh workspace): failed once, resubmitted, done, and its downstream too.
    let ws = Ws::new();
    let file = ws.write("flaky.toml", FLAKY);
    let (code, summary, out) = run_slurm(&ws, &file, &["--retries", "1"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(keys_in(&summary, "executed").len(), 2, "{summary}");
    assert_eq!((ws.count("flaky"), ws.count("after")), (2, 1));
    let plan = ws.plan(&file);
    let show = ws.show(&key_of(&plan, "flaky"));
    assert_eq!(attempt_statuses(&show), vec!["failed", "done"], "{show}");
    assert!(show["attempts"][0]["exit_state"].as_str().unwrap().starts_with("FAILED"), "{show}");
}

/// One stage fails as soon as a slow independent job runs (however busy the
/// node is), while the job below the slow one is still queued.
const FAIL_FAST: &str = r#"
[pipeline]
name = "failfast"

[stages.bad]
kind = "command"
run = "for i in $(seq 500); do [ -f @C@/slow ] && break; sleep 0.2; done; echo x >> @C@/bad; exit 3"

[stages.slow]
kind = "command"
run = "echo x >> @C@/slow; sleep 6; echo done > $ABLATE_OUT/slow.txt"

[stages.later]
kind = "command"
needs = ["slow"]
run = "echo x >> @C@/later; echo done > $ABLATE_OUT/later.txt"
"#;

#[test]
fn without_keep_going_a_failure_cancels_jobs_not_started_and_with_it_they_run() {
    if !slurm() {
        return;
    }
    // Like a local run: the first failure stops new work; a job already
    // running finishes, one still queued is cancelled and stays to do.
    let ws = Ws::new();
    let file = ws.write("failfast.toml", FAIL_FAST);
    let (code, summary, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(1), "{}", out.describe());
    assert_eq!(summary["failed"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!((ws.count("bad"), ws.count("slow"), ws.count("later")), (1, 1, 0), "{}", out.describe());
    let plan = ws.plan(&file);
    assert_eq!(with_status(&plan, "run"), BTreeSet::from([key_of(&plan, "bad"), key_of(&plan, "later")]), "what is left to do");
    assert_eq!(keys_in(&summary, "not_started"), BTreeSet::from([key_of(&plan, "later")]), "the summary accounts for it: {summary}");
    // `show RUN` lists that job too, though it never made an attempt.
    let show = ws.run(&["show", "1"]).ok().stdout;
    let jobs = show.split_once("\nSlurm jobs").map(|(_, j)| j.to_owned()).unwrap_or_default();
    assert!(jobs.contains(&key_of(&plan, "later")[..12]), "{show}");
    assert!(!out.stderr.contains("polling Slurm failed"), "{}", out.describe());

    // --keep-going: everything independent of the failure runs.
    let ws = Ws::new();
    let file = ws.write("failfast.toml", FAIL_FAST);
    let (code, summary, out) = run_slurm(&ws, &file, &["--keep-going"]);
    assert_eq!(code, Some(1), "{}", out.describe());
    assert_eq!(keys_in(&summary, "executed").len(), 2, "{summary}");
    assert_eq!((ws.count("bad"), ws.count("slow"), ws.count("later")), (1, 1, 1));
}

/// `--force` under Slurm, as locally: a dependant whose forced upstream
/// wrote other bytes reruns, one whose upstream wrote the same bytes stands.
#[test]
fn force_reruns_the_dependants_whose_inputs_changed() {
    if !slurm() {
        return;
    }
    let ws = Ws::new();
    let file = ws.write("nd.toml", FORCED);
    let (code, _, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let (code, summary, out) = run_slurm(&ws, &file, &["--force", "stamp", "--force", "fixed"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_forced_outcome(&ws, &file, &summary);
}

/// Ctrl-C while a forced job runs, keeping the jobs: the dependants that
/// waited to compare its outputs are submitted to rerun after it, instead
/// of staying cached on the old outputs.
#[test]
fn force_interrupted_while_its_job_runs_leaves_no_stale_dependant() {
    if !slurm() {
        return;
    }
    let (ws, file, follower) = forced_stamp_running();
    tool("kill", &["-INT", &follower.pid().to_string()]);
    let out = follower.wait(LONG);
    assert_eq!(out.code, Some(130), "{}", out.describe());
    assert!(out.stderr.contains("submitting 1 job(s) that depend on the forced stage"), "{}", out.describe());
    go(&ws);
    wait_until(LONG, "the dependant to rerun", || ws.count("copy") == 2 && ws.plan(&file).iter().all(|r| r["status"] == "cached"));
    let (code, summary, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["executed"].as_array().unwrap().len(), 0, "{summary}");
    assert_eq!((ws.count("stamp"), ws.count("copy"), ws.count("reader")), (2, 2, 1));
}

/// The submitter killed (-9) while a forced job runs: nobody is left to
/// decide the held dependant, so the lineage check must. Once the forced job
/// ends, `plan` names the changed upstream and the next run reruns only it.
#[test]
fn force_whose_submitter_dies_leaves_the_dependant_to_the_lineage_check() {
    if !slurm() {
        return;
    }
    let (ws, file, follower) = forced_stamp_running();
    follower.kill9();
    go(&ws);
    let status_of = |stage: &str| {
        let plan = ws.plan(&file);
        let row = plan.iter().find(|r| r["stage"] == stage).unwrap().clone();
        (row["status"].as_str().unwrap().to_owned(), row["reason"].as_str().unwrap_or("").to_owned())
    };
    let stamp = key_of(&ws.plan(&file), "stamp");
    wait_until(LONG, "the forced job to finish on its own", || attempt_statuses(&ws.show(&stamp)) == ["done", "done"]);
    assert_eq!(status_of("copy"), ("run".to_owned(), "upstream output changed (stamp)".to_owned()));
    assert_eq!(status_of("reader").0, "cached");
    let (code, summary, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&file);
    assert_eq!(keys_in(&summary, "executed"), BTreeSet::from([key_of(&plan, "copy")]), "{summary}");
    assert_eq!((ws.count("stamp"), ws.count("copy"), ws.count("reader")), (2, 2, 1));
}

/// [`FORCED`] run once under Slurm, then `run --force stamp` following it,
/// its forced `stamp` job started and waiting for `@R@/go`.
fn forced_stamp_running() -> (Ws, std::path::PathBuf, Bg) {
    let ws = Ws::new();
    let slow = FORCED.replace(
        "run = \"date +%s%N > $ABLATE_OUT/x.txt\"",
        "run = \"echo x >> @C@/stamp; while [ ! -f @R@/go ]; do sleep 0.2; done; date +%s%N > $ABLATE_OUT/x.txt\"",
    );
    let file = ws.write("nd.toml", &slow);
    go(&ws);
    let (code, _, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    std::fs::remove_file(ws.root().join("go")).unwrap();
    let follower = ws.spawn(&["run", file.to_str().unwrap(), "--executor", "slurm", "--json", "--force", "stamp"]);
    wait_until(LONG, "the forced job to start", || ws.count("stamp") == 2);
    (ws, file, follower)
}

#[test]
fn force_restarts_a_dependant_that_was_not_done() {
    if !slurm() {
        return;
    }
    let ws = Ws::new();
    forced_dependant_starts_afresh(&ws, |file, extra| run_slurm(&ws, file, extra));
}

const SLEEPY: &str = r#"
[pipeline]
name = "sleepy"

[stages.sleepy]
kind = "command"
run = "echo x >> @C@/sleepy; sleep 600"

[stages.sleepy.resources]
time = "1"
"#;

#[test]
fn a_job_past_its_time_limit_is_recorded_failed_with_timeout() {
    if !slurm() {
        return;
    }
    // Slurm ends it a minute in (its limit checks run every 30 s or so).
    let ws = Ws::new();
    let file = ws.write("sleepy.toml", SLEEPY);
    let out = ws.spawn(&["run", file.to_str().unwrap(), "--executor", "slurm", "--json"]).wait(Duration::from_secs(300));
    assert_no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let summary = out.json();
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("reached its time limit") && error.contains("TIMEOUT"), "{summary}");
    let show = ws.show(&key_of(&ws.plan(&file), "sleepy"));
    assert_eq!(attempt_statuses(&show), vec!["failed"], "{show}");
    assert!(show["attempts"][0]["exit_state"].as_str().unwrap().starts_with("TIMEOUT"), "{show}");
    assert_eq!(ws.count("sleepy"), 1, "not retried without --retries");
}

const RESUMABLE: &str = r#"
[pipeline]
name = "resumable"

[stages.train]
kind = "command"
run = """
n=$(cat $ABLATE_STATE/ckpt 2>/dev/null || echo 0)
echo "start $n" >> @C@/starts
while [ $n -lt 12 ]; do n=$((n + 1)); echo $n > $ABLATE_STATE/ckpt; sleep 0.25; done
echo $n > $ABLATE_OUT/final.txt
"""
"#;

#[test]
fn a_requeued_job_resumes_from_its_checkpoint() {
    if !slurm() {
        return;
    }
    let ws = Ws::new();
    let file = ws.write("resumable.toml", RESUMABLE);
    let (code, summary, out) = run_slurm(&ws, &file, &["--detach", "--sbatch-arg=--requeue"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let run = summary["run_id"].as_i64().unwrap();
    let key = key_of(&ws.plan(&file), "train");
    let ckpt = ws.store().join("state").join(&key).join("ckpt");
    wait_until(LONG, "a checkpoint", || std::fs::read_to_string(&ckpt).is_ok_and(|s| s.trim().parse::<u32>().is_ok_and(|n| n >= 3)));
    let job = jobs_by_key(&ws, run)[&key][0]["job"].as_str().unwrap().to_owned();
    tool("scontrol", &["requeue", &job]);
    // Slurm holds a requeued batch job back for a while; let it start again
    // soon, but not within the second of the requeue: slurmd revokes the
    // job's credential at the requeue and refuses ("Job credential revoked")
    // an incarnation that starts in the same second.
    std::thread::sleep(Duration::from_secs(3));
    wait_until(LONG, "the job to run again", || {
        let _ = Command::new("scontrol").args(["update", &format!("JobId={job}"), "StartTime=now"]).output();
        ws.count("starts") == 2
    });
    let (code, summary, out) = run_slurm(&ws, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["slurm"]["jobs_submitted"], 0, "{summary}");
    let starts = std::fs::read_to_string(ws.counts().join("starts")).unwrap();
    let resumed_at: u32 = starts.lines().nth(1).unwrap().trim_start_matches("start ").parse().unwrap();
    assert!(resumed_at >= 3, "the second incarnation resumed from the checkpoint: {starts}");
    let show = ws.show(&key);
    let statuses = attempt_statuses(&show);
    assert_eq!(statuses.last().map(String::as_str), Some("done"), "{show}");
    assert_eq!(statuses.len(), 2, "one attempt per incarnation: {show}");
    for a in show["attempts"].as_array().unwrap() {
        assert_eq!(a["slurm_job"], job.as_str(), "both incarnations are the same job: {a}");
    }
}

#[test]
fn slurm_jobs_write_to_a_postgresql_store() {
    if !slurm() {
        return;
    }
    let Some(cluster) = Ws::postgres() else { return };
    let local = Ws::new();
    let file_local = local.write("small.toml", study::SMALL);
    let (code, _, out) = local.run_json(&file_local, &["--jobs", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());

    // The jobs get the database URL from the submitter's environment, not their command line.
    let file = cluster.write("small.toml", study::SMALL);
    let (code, summary, out) = run_slurm(&cluster, &file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(summary["slurm"]["jobs_submitted"], 9, "{summary}");
    assert_eq!(metrics(&cluster), metrics(&local), "the same metrics");
    let url = cluster.db_url().unwrap();
    let password = url.split(':').nth(2).and_then(|rest| rest.split('@').next()).unwrap();
    for script in std::fs::read_dir(cluster.store().join("slurm").join("run-1")).unwrap() {
        let text = std::fs::read_to_string(script.unwrap().path()).unwrap();
        assert!(!text.contains(password), "no password in batch scripts or logs:\n{text}");
    }
    assert_eq!(cluster.psql("SELECT COUNT(*) FROM attempts WHERE status = 'done' AND slurm_job_id IS NOT NULL").trim(), "9");
    assert!(!cluster.db().exists(), "no SQLite file next to a PostgreSQL store");
}
