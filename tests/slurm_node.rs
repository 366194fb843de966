//! A Slurm job ended under ablate by its node failing (`scontrol update
//! state=down`) or by preemption (a higher-tier partition's job), on the
//! CI's real single-node cluster. A test binary of its own: the node is the
//! one every Slurm test runs on, and cargo runs test binaries one at a time,
//! so no other test binary's jobs are on it when it goes down or is taken
//! (and its own two tests take turns).

mod common;

use std::process::Command;
use std::time::Duration;

use common::services::{self, require};
use common::*;

const LONG: Duration = Duration::from_secs(120);

/// `work` hangs on its first start (so the node can fail under it) and
/// finishes at once when started again.
const HANGS_ONCE: &str = r#"
[pipeline]
name = "hangs-once"

[stages.work]
kind = "command"
run = """
echo x >> @C@/work
if [ "$(wc -l < @C@/work)" -eq 1 ]; then sleep 300; fi
echo done > $ABLATE_OUT/out.txt
"""

[stages.after]
kind = "command"
needs = ["work"]
run = "cat $ABLATE_INPUT_WORK/out.txt > $ABLATE_OUT/after.txt"
"#;

fn scontrol(args: &[&str]) -> Result<(), String> {
    let out = Command::new("scontrol").args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// Puts the node back in service however the test ends (Slurm's
/// `ReturnToService=2` does too, once slurmd registers again).
struct Resume(String);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = scontrol(&["update", &format!("nodename={}", self.0), "state=resume"]);
    }
}

/// Runs `HANGS_ONCE` under Slurm with one retry and jobs Slurm may not
/// requeue itself, calls `disrupt(job, node)` once its first job runs, and
/// checks that job's end is recorded as `state` with an error that says
/// `says`, and that the retry finished the study.
fn ended_under_a_running_job_then_retried(disrupt: impl FnOnce(&str, &str), state: &str, says: &str) {
    // One disruption at a time: either one would end the other test's job.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let ws = Ws::new();
    let file = ws.write("hangs.toml", HANGS_ONCE);
    // Without --no-requeue Slurm would requeue the job itself (JobRequeue=1).
    let run = ws.spawn(&["run", file.to_str().unwrap(), "--executor", "slurm", "--json", "--retries", "1", "--sbatch-arg=--no-requeue"]);
    wait_until(LONG, "the job to start", || ws.count("work") == 1);
    let key = key_of(&ws.plan(&file), "work");
    let (mut job, mut node) = (String::new(), String::new());
    wait_until(LONG, "the job's node", || {
        let show = ws.show(&key);
        let Some(j) = show["attempts"][0]["slurm_job"].as_str() else { return false };
        job = j.to_owned();
        let out = Command::new("squeue").args(["--noheader", "--format=%N", &format!("--jobs={job}")]).output().unwrap();
        node = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        !node.is_empty()
    });
    disrupt(&job, &node);

    let out = run.wait(LONG);
    assert_no_panic(&out);
    assert_eq!(out.code, Some(0), "the retry finished the study\n{}", out.describe());
    assert_eq!(ws.count("work"), 2, "started once, then once more as the retry");
    let show = ws.show(&key);
    assert_eq!(attempt_statuses(&show), vec!["failed", "done"], "{show}");
    let failed = &show["attempts"][0];
    assert!(failed["exit_state"].as_str().unwrap().starts_with(state), "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(says) && error.contains(&node) && error.contains(state), "{error}");
    assert_eq!(attempt_statuses(&ws.show(&key_of(&ws.plan(&file), "after"))), vec!["done"]);
}

#[test]
fn a_node_failure_under_a_job_is_recorded_and_retried() {
    if require("Slurm", services::slurm()).is_none() {
        return;
    }
    let mut resume = None;
    let node_fails = |_: &str, node: &str| {
        resume = Some(Resume(node.to_owned()));
        scontrol(&["update", &format!("nodename={node}"), "state=down", "reason=ablate-test"]).expect("scontrol update");
    };
    ended_under_a_running_job_then_retried(node_fails, "NODE_FAIL", "node");
}

#[test]
fn a_preempted_job_is_recorded_and_retried() {
    if require("Slurm", services::slurm()).is_none() {
        return;
    }
    // A job of the higher-tier partition that needs the whole node
    // (scripts/ci-services sets up partition-priority preemption).
    let preempt = |_: &str, node: &str| {
        let out = Command::new("sbatch")
            .args([
                "--parsable",
                "--partition=urgent",
                "--exclusive",
                &format!("--nodelist={node}"),
                "--output=/dev/null",
                "--wrap=sleep 1",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "sbatch: {}", String::from_utf8_lossy(&out.stderr));
    };
    ended_under_a_running_job_then_retried(preempt, "PREEMPTED", "preempted");
}
