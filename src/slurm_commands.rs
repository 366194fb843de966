//! Slurm's command-line tools as ablate uses them: `sbatch` to submit,
//! `squeue` to poll every job of a study in one call, `scontrol show job` for
//! how a finished job ended (exit code, node), `scancel` to cancel. Nothing
//! here needs accounting (`sacct`), which many clusters, and the CI's single
//! node, do not run.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::store::SlurmTask;

/// What Slurm says about one job or array task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub task: SlurmTask,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `TIMEOUT`, ...
    pub state: String,
    pub reason: Option<String>,
    pub node: Option<String>,
    /// `status:signal`, from `scontrol` only.
    pub exit_code: Option<String>,
}

/// States after which a job never runs again. Anything else (pending,
/// running, completing, suspended, requeued, ...) is a job still in play.
const ENDED: &[&str] =
    &["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"];

pub fn has_ended(state: &str) -> bool {
    ENDED.contains(&state)
}

async fn tool(name: &str, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<std::process::Output> {
    let mut command = tokio::process::Command::new(name);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().await.with_context(|| format!("running `{name}` (is this a Slurm login node with Slurm's tools on PATH?)"))
}

fn failure(name: &str, out: &std::process::Output) -> anyhow::Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::anyhow!("`{name}` failed ({}): {}", out.status, stderr.trim())
}

/// Submits a batch script; returns the new job's id.
pub async fn sbatch(options: &[String], script: &Path, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut args = vec!["--parsable".to_owned()];
    args.extend(options.iter().cloned());
    args.push(script.display().to_string());
    let out = tool("sbatch", &args, env).await?;
    if !out.status.success() {
        return Err(failure("sbatch", &out).context(format!("submitting {}", script.display())));
    }
    // --parsable prints `JOBID` or `JOBID;CLUSTER`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_owned();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("sbatch printed no job id for {} (it said {:?})", script.display(), text.trim());
    }
    Ok(id)
}

/// The state of every task of these jobs, in one `squeue` call (finished
/// jobs stay listed for the controller's MinJobAge). Jobs Slurm has
/// forgotten are simply absent.
pub async fn squeue(job_ids: &[String]) -> anyhow::Result<Vec<JobInfo>> {
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    let args = vec![
        "--noheader".to_owned(),
        "--array".to_owned(),
        "--states=all".to_owned(),
        format!("--jobs={}", job_ids.join(",")),
        "--format=%F|%K|%T|%r|%N".to_owned(),
    ];
    let out = tool("squeue", &args, &[]).await?;
    if !out.status.success() {
        // Every id unknown: squeue refuses instead of listing nothing.
        if String::from_utf8_lossy(&out.stderr).contains("Invalid job id") {
            return Ok(Vec::new());
        }
        return Err(failure("squeue", &out));
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout)))
}

fn optional(value: &str) -> Option<String> {
    match value.trim() {
        "" | "None" | "(null)" | "N/A" | "n/a" => None,
        v => Some(v.to_owned()),
    }
}

fn parse_squeue(text: &str) -> Vec<JobInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim().split('|').collect();
            let [job, task, state, reason, node] = fields[..] else { return None };
            let array_task = task.trim().parse::<i64>().ok();
            Some(JobInfo {
                task: SlurmTask { job_id: job.trim().to_owned(), array_task },
                state: state.trim().to_owned(),
                reason: optional(reason),
                node: optional(node),
                exit_code: None,
            })
        })
        .collect()
}

/// Every task of one job as `scontrol show job` describes it, with exit
/// codes; empty when Slurm has forgotten the job.
pub async fn scontrol_show(job_id: &str) -> anyhow::Result<Vec<JobInfo>> {
    let out = tool("scontrol", &["--oneliner".to_owned(), "show".to_owned(), "job".to_owned(), job_id.to_owned()], &[]).await?;
    if !out.status.success() {
        if String::from_utf8_lossy(&out.stderr).contains("Invalid job id") {
            return Ok(Vec::new());
        }
        return Err(failure("scontrol", &out));
    }
    Ok(parse_scontrol(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_scontrol(text: &str) -> Vec<JobInfo> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let fields: HashMap<&str, &str> = line.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
            let array_job = fields.get("ArrayJobId").and_then(|v| optional(v));
            let array_task = fields.get("ArrayTaskId").and_then(|v| v.parse::<i64>().ok());
            let job_id = match (array_job, array_task) {
                (Some(array), Some(_)) => array,
                _ => fields.get("JobId")?.to_string(),
            };
            Some(JobInfo {
                task: SlurmTask { job_id, array_task },
                state: fields.get("JobState")?.to_string(),
                reason: fields.get("Reason").and_then(|v| optional(v)),
                node: fields.get("NodeList").and_then(|v| optional(v)),
                exit_code: fields.get("ExitCode").and_then(|v| optional(v)),
            })
        })
        .collect()
}

/// Cancels jobs, array tasks (`JOB_TASK`) or whole arrays (`JOB`).
pub async fn scancel(ids: &[String]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let out = tool("scancel", ids, &[]).await?;
    if !out.status.success() {
        return Err(failure("scancel", &out));
    }
    Ok(())
}

/// Cancels those of the jobs (or array tasks) that have not started yet;
/// running ones are left alone (`scancel --state=PENDING`).
pub async fn scancel_pending(ids: &[String]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut args = vec!["--state=PENDING".to_owned()];
    args.extend(ids.iter().cloned());
    let out = tool("scancel", &args, &[]).await?;
    if !out.status.success() && !only_already_ended(&String::from_utf8_lossy(&out.stderr)) {
        return Err(failure("scancel", &out));
    }
    Ok(())
}

/// Whether scancel's complaints are all about jobs that ended before it
/// came (Slurm cancels the jobs below a failed one itself): nothing was
/// left to cancel.
fn only_already_ended(stderr: &str) -> bool {
    let mut complaints = stderr.lines().filter(|l| !l.trim().is_empty()).peekable();
    complaints.peek().is_some()
        && complaints.all(|l| l.contains("already completing or completed") || l.contains("Invalid job id specified"))
}

/// Quotes a word for `sh`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b)) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scancel_complaints_about_ended_jobs_are_not_failures() {
        assert!(only_already_ended("scancel: error: Kill job error on job id 12: Job/step already completing or completed\n"));
        assert!(only_already_ended("scancel: error: Kill job error on job id 13_1: Invalid job id specified\n"));
        assert!(!only_already_ended("scancel: error: Unable to contact slurm controller (connect failure)\n"));
        assert!(!only_already_ended(""));
    }

    #[test]
    fn squeue_lines_name_array_tasks_and_plain_jobs() {
        let jobs = parse_squeue("12|3|RUNNING|None|node7\n13|N/A|PENDING|Dependency|\n");
        assert_eq!(jobs[0].task, SlurmTask { job_id: "12".into(), array_task: Some(3) });
        assert_eq!(jobs[0].node.as_deref(), Some("node7"));
        assert_eq!(jobs[0].reason, None);
        assert_eq!(jobs[1].task, SlurmTask { job_id: "13".into(), array_task: None });
        assert_eq!(jobs[1].reason.as_deref(), Some("Dependency"));
        assert_eq!(jobs[1].node, None);
    }

    #[test]
    fn scontrol_lines_give_exit_codes() {
        let text = "JobId=5 ArrayJobId=1 ArrayTaskId=3 JobName=a JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 NodeList=vm StdOut=/x\n\
                    JobId=9 JobName=b JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0 NodeList=(null)\n";
        let jobs = parse_scontrol(text);
        assert_eq!(jobs[0].task.to_string(), "1_3");
        assert_eq!(jobs[0].state, "TIMEOUT");
        assert_eq!(jobs[0].exit_code.as_deref(), Some("0:15"));
        assert_eq!(jobs[1].task.to_string(), "9");
        assert_eq!(jobs[1].node, None);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(shell_quote("it's here"), "'it'\\''s here'");
        assert_eq!(shell_quote(""), "''");
    }
}
