//! Following a study's jobs: adopting those an earlier submission left,
//! polling Slurm with back-off, closing ended jobs with Slurm's reason,
//! retries, stopping at the first failure, and Ctrl-C.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{Follower, Live, State, cancel_run};
use crate::exec::{NodeOutcome, node_label};
use crate::slurm_commands::{self as slurm, JobInfo};
use crate::stages::CancelToken;
use crate::store::{AttemptStatus, JobClosed, SlurmJobEnd, SlurmJobRow, SlurmTask};

/// The jobs of `jobs` that are over, with how they ended: one `squeue` for
/// all, then one `scontrol` per job (array) among those that ended, for
/// exit codes. A job Slurm no longer knows is over too (`GONE`).
pub(super) async fn ended_jobs(jobs: &[SlurmJobRow]) -> anyhow::Result<Vec<(SlurmJobRow, SlurmJobEnd)>> {
    let (_, ended) = poll(jobs).await?;
    Ok(ended)
}

/// Live states (by job row id) and ended jobs of `jobs`.
pub(super) async fn poll(jobs: &[SlurmJobRow]) -> anyhow::Result<(HashMap<i64, JobInfo>, Vec<(SlurmJobRow, SlurmJobEnd)>)> {
    let mut job_ids: Vec<String> = jobs.iter().map(|j| j.task.job_id.clone()).collect();
    job_ids.sort();
    job_ids.dedup();
    let seen: HashMap<SlurmTask, JobInfo> = slurm::squeue(&job_ids).await?.into_iter().map(|i| (i.task.clone(), i)).collect();
    let mut live = HashMap::new();
    let mut over: Vec<&SlurmJobRow> = Vec::new();
    for job in jobs {
        match seen.get(&job.task) {
            Some(info) if !slurm::has_ended(&info.state) => {
                live.insert(job.id, info.clone());
            }
            _ => over.push(job),
        }
    }
    let mut details: HashMap<SlurmTask, JobInfo> = HashMap::new();
    let mut asked: HashSet<&str> = HashSet::new();
    for job in &over {
        if asked.insert(job.task.job_id.as_str()) {
            details.extend(slurm::scontrol_show(&job.task.job_id).await?.into_iter().map(|i| (i.task.clone(), i)));
        }
    }
    let mut ended = Vec::new();
    for job in over {
        let info = details.get(&job.task).or_else(|| seen.get(&job.task));
        match info {
            // squeue said it ended but scontrol still sees it running (or the
            // other way round): ask again next poll.
            Some(info) if !slurm::has_ended(&info.state) => {
                live.insert(job.id, info.clone());
            }
            _ => ended.push((job.clone(), job_end(job, info))),
        }
    }
    Ok((live, ended))
}

/// How a job ended, in words for its attempt's error.
fn job_end(job: &SlurmJobRow, info: Option<&JobInfo>) -> SlurmJobEnd {
    let Some(info) = info else {
        return SlurmJobEnd {
            state: "GONE".into(),
            reason: None,
            node: None,
            exit_code: None,
            never_started: false,
            message: format!(
                "Slurm job {} ended while no ablate followed it and Slurm no longer knows how (see its log {})",
                job.task, job.log_path
            ),
        };
    };
    let on = info.node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
    let code = info.exit_code.as_deref().map(|c| format!(", exit code {c}")).unwrap_or_default();
    let task = &job.task;
    let what = match info.state.as_str() {
        "COMPLETED" => format!("Slurm job {task} completed{on} without finishing the instance"),
        "FAILED" => format!("Slurm job {task} failed{on}{code}"),
        "CANCELLED" if job.cancelled => format!("Slurm job {task} was cancelled by ablate{on}"),
        "CANCELLED" => format!("Slurm job {task} was cancelled{on} (scancel or an administrator)"),
        "TIMEOUT" => format!("Slurm job {task} reached its time limit{on} (TIMEOUT)"),
        "NODE_FAIL" => format!("the node{on} failed under Slurm job {task} (NODE_FAIL)"),
        "PREEMPTED" => format!("Slurm job {task} was preempted{on} (PREEMPTED)"),
        "OUT_OF_MEMORY" => format!("Slurm job {task} ran out of memory{on} (OUT_OF_MEMORY)"),
        "BOOT_FAIL" => format!("the node{on} failed to boot for Slurm job {task} (BOOT_FAIL)"),
        "DEADLINE" => format!("Slurm job {task} missed its deadline (DEADLINE)"),
        other => format!("Slurm job {task} ended {other}{on}{code}"),
    };
    let never_started = info.node.is_none() || info.reason.as_deref().is_some_and(|r| r.contains("Dependency"));
    SlurmJobEnd {
        state: info.state.clone(),
        reason: info.reason.clone(),
        node: info.node.clone(),
        exit_code: info.exit_code.clone(),
        never_started,
        message: format!("{what}; log: {}", job.log_path),
    }
}

/// A job that failed for one of these reasons is worth running again.
fn retryable(end: &SlurmJobEnd) -> bool {
    !matches!(end.state.as_str(), "CANCELLED")
}

impl Follower<'_> {
    /// Takes over jobs earlier submissions left for this plan's instances:
    /// live ones are followed, not submitted again; ended ones are closed,
    /// and what they left undone is submitted anew.
    pub(super) async fn adopt(&mut self) -> anyhow::Result<()> {
        let by_instance: HashMap<i64, usize> = self.ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let open = self.store.open_slurm_jobs(self.ids).await?;
        if open.is_empty() {
            return self.find_elsewhere().await;
        }
        let (live, ended) = poll(&open).await?;
        let mut adopted = Vec::new();
        for job in &open {
            let i = by_instance[&job.instance_id];
            if let Some(info) = live.get(&job.id)
                && self.state[i] == State::Waiting
            {
                adopted.push(job.id);
                self.observer.waiting(&node_label(self.plan, i), &format!("adopting Slurm job {} ({})", job.task, info.state));
                self.state[i] = State::Live(Live { row: job.clone(), seen: info.state.clone() });
            }
        }
        self.store.adopt_slurm_jobs(&adopted, self.run_id).await?;
        self.summary.jobs_adopted = adopted.len();
        for (job, end) in ended {
            let i = by_instance[&job.instance_id];
            // Failures of earlier submissions do not count against this run's --retries.
            if self.store.close_slurm_job(&job, &end).await? == JobClosed::Done && self.state[i] == State::Waiting {
                self.set_done(i);
            }
        }
        self.find_elsewhere().await
    }

    /// Instances another live process is running (a local `ablate run`, or a
    /// job this store does not know) are waited for, not submitted.
    pub(super) async fn find_elsewhere(&mut self) -> anyhow::Result<()> {
        for i in 0..self.state.len() {
            if self.state[i] == State::Waiting && self.store.latest_attempt_status(self.ids[i]).await? == Some(AttemptStatus::Running) {
                self.observer.waiting(&node_label(self.plan, i), "running in another process");
                self.state[i] = State::Elsewhere;
            }
        }
        Ok(())
    }

    /// Follows the jobs until none is left, with back-off while nothing changes.
    pub(super) async fn follow(&mut self, cancel: &CancelToken) -> anyhow::Result<()> {
        let min = Duration::from_millis(500);
        let max =
            Duration::from_secs(std::env::var("ABLATE_SLURM_POLL_MAX_SECS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(30).max(1));
        let mut interval = min;
        let mut poll_errors = 0;
        loop {
            // A busy controller may time out a poll now and then: try again later.
            let changed = match self.poll_once().await {
                Ok(changed) => {
                    poll_errors = 0;
                    changed
                }
                Err(e) if poll_errors < 10 => {
                    poll_errors += 1;
                    tracing::warn!("polling Slurm failed ({poll_errors} in a row), trying again: {e:#}");
                    false
                }
                Err(e) => return Err(e.context("polling Slurm failed 10 times in a row")),
            };
            self.submit_ready().await?;
            let elsewhere = self.state.contains(&State::Elsewhere);
            if self.live_count() == 0 && !elsewhere {
                return Ok(());
            }
            interval = if changed { min } else { (interval * 2).min(max) };
            let deadline = tokio::time::Instant::now() + interval;
            while tokio::time::Instant::now() < deadline {
                if cancel.is_cancelled() {
                    return self.interrupted().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// One poll: new states of live jobs, and ended jobs closed. Returns whether anything changed.
    pub(super) async fn poll_once(&mut self) -> anyhow::Result<bool> {
        let jobs = self.live_jobs();
        let mut changed = false;
        let by_row: HashMap<i64, usize> = self
            .state
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                State::Live(live) => Some((live.row.id, i)),
                _ => None,
            })
            .collect();
        if !jobs.is_empty() {
            let (live, ended) = poll(&jobs).await?;
            for (row_id, info) in live {
                let i = by_row[&row_id];
                let State::Live(current) = &mut self.state[i] else { continue };
                if current.seen != info.state {
                    current.seen = info.state.clone();
                    changed = true;
                    self.store.note_slurm_state(row_id, &info.state, info.reason.as_deref(), info.node.as_deref()).await?;
                    let label = node_label(self.plan, i);
                    let on = info.node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
                    self.observer.waiting(&label, &format!("Slurm job {}: {}{on}", current.row.task, info.state));
                }
            }
            for (job, end) in ended {
                changed = true;
                let i = by_row[&job.id];
                self.closed(i, &end, self.store.close_slurm_job(&job, &end).await?).await?;
            }
        }
        for i in 0..self.state.len() {
            if self.state[i] == State::Elsewhere && self.store.latest_attempt_status(self.ids[i]).await? != Some(AttemptStatus::Running) {
                changed = true;
                self.state[i] = if self.store.done_attempt_of(self.ids[i]).await?.is_some() {
                    self.report.done_elsewhere.push(i);
                    State::Done
                } else {
                    State::Waiting
                };
            }
        }
        Ok(changed)
    }

    /// What a closed job means for its instance.
    pub(super) async fn closed(&mut self, i: usize, end: &SlurmJobEnd, closed: JobClosed) -> anyhow::Result<()> {
        let plan = self.plan;
        let (label, key) = (node_label(plan, i), plan.nodes[i].key.as_str());
        match closed {
            JobClosed::Done => {
                self.report.executed.push(i);
                self.observer.finished(&label, key, &NodeOutcome::Done);
                self.set_done(i);
            }
            // Slurm cancelled it before it started (its upstream failed, or
            // someone cancelled it while pending): decide again next round.
            JobClosed::NeverStarted => self.state[i] = State::Waiting,
            JobClosed::AlreadyClosed => {
                self.state[i] = if self.store.done_attempt_of(self.ids[i]).await?.is_some() { State::Done } else { State::Waiting };
            }
            JobClosed::Failed(message) => {
                self.failures[i] += 1;
                if retryable(end) && self.failures[i] <= self.slurm.retries {
                    self.observer
                        .waiting(&label, &format!("{message}; resubmitting (retry {} of {})", self.failures[i], self.slurm.retries));
                    self.state[i] = State::Waiting;
                } else {
                    self.observer.finished(&label, key, &NodeOutcome::Failed(message.clone()));
                    self.report.failed.push((i, message));
                    // Waiting instances below it are skipped by the next round; jobs
                    // already queued below it are cancelled by Slurm (kill-on-invalid-dep).
                    self.state[i] = State::Failed;
                    if !self.options.keep_going && !self.stopping {
                        self.stop_at_first_failure().await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Without `--keep-going`: submits nothing more and cancels the run's
    /// jobs that have not started (they close as never started and stay to
    /// do); jobs already running finish.
    pub(super) async fn stop_at_first_failure(&mut self) -> anyhow::Result<()> {
        self.stopping = true;
        let mut pending: Vec<&mut SlurmJobRow> = self
            .state
            .iter_mut()
            .filter_map(|s| match s {
                State::Live(live) if live.seen != "RUNNING" && live.seen != "COMPLETING" => Some(&mut live.row),
                _ => None,
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        tracing::warn!("a job failed: cancelling {} job(s) not started yet (--keep-going runs them)", pending.len());
        let ids: Vec<String> = pending.iter().map(|j| j.task.to_string()).collect();
        let rows: Vec<i64> = pending.iter().map(|j| j.id).collect();
        for job in &mut pending {
            job.cancelled = true; // its end then reads "cancelled by ablate"
        }
        self.store.mark_slurm_cancelled(&rows).await?;
        // Not an error of the poll that got here: the jobs then close as
        // they end, cancelled or not.
        if let Err(e) = slurm::scancel_pending(&ids).await {
            tracing::warn!("cancelling the jobs not started yet failed, so they may run: {e:#}");
        }
        Ok(())
    }

    /// Ctrl-C while following: offer to cancel the study's jobs.
    pub(super) async fn interrupted(&mut self) -> anyhow::Result<()> {
        self.report.interrupted = true;
        let live = self.live_jobs();
        self.summary.jobs_left = live.len();
        if live.is_empty() {
            return Ok(());
        }
        if !self.observer.confirm_cancel(self.run_id, live.len()) {
            // Dependants held back to compare a forced job's outputs would
            // be left on the old ones, cached: they rerun after it instead.
            let held = (0..self.state.len()).filter(|&i| self.is_held(i)).count();
            if held > 0 {
                tracing::warn!("submitting {held} job(s) that depend on the forced stage(s), to rerun once those end");
                self.unattended = true;
                self.submit_ready().await?;
                self.summary.jobs_left = self.live_count();
            }
            return Ok(());
        }
        cancel_run(self.store, self.run_id).await?;
        self.summary.jobs_left = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cancelled: bool) -> SlurmJobRow {
        SlurmJobRow {
            id: 1,
            run_id: 1,
            follower_id: 1,
            instance_id: 1,
            task: SlurmTask { job_id: "12".into(), array_task: Some(3) },
            log_path: "/ws/slurm/run-1/001-train-12_3.log".into(),
            state: "RUNNING".into(),
            cancelled,
        }
    }

    fn info(state: &str, reason: Option<&str>, node: Option<&str>) -> JobInfo {
        JobInfo {
            task: SlurmTask { job_id: "12".into(), array_task: Some(3) },
            state: state.into(),
            reason: reason.map(str::to_owned),
            node: node.map(str::to_owned),
            exit_code: Some("0:15".into()),
        }
    }

    #[test]
    fn ended_jobs_are_described_with_slurms_reason() {
        let cases = [
            ("NODE_FAIL", "the node on n1 failed under Slurm job 12_3 (NODE_FAIL)", true),
            ("TIMEOUT", "Slurm job 12_3 reached its time limit on n1 (TIMEOUT)", true),
            ("PREEMPTED", "Slurm job 12_3 was preempted on n1 (PREEMPTED)", true),
            ("FAILED", "Slurm job 12_3 failed on n1, exit code 0:15", true),
            ("CANCELLED", "Slurm job 12_3 was cancelled on n1 (scancel or an administrator)", false),
        ];
        for (state, text, retry) in cases {
            let end = job_end(&row(false), Some(&info(state, None, Some("n1"))));
            assert!(end.message.starts_with(text), "{state}: {}", end.message);
            assert!(end.message.ends_with("log: /ws/slurm/run-1/001-train-12_3.log"));
            assert_eq!(retryable(&end), retry, "{state}");
            assert!(!end.never_started);
        }
        let end = job_end(&row(true), Some(&info("CANCELLED", Some("DependencyNeverSatisfied"), None)));
        assert!(end.never_started && end.message.contains("cancelled by ablate"), "{end:?}");
        let gone = job_end(&row(false), None);
        assert_eq!(gone.state, "GONE");
        assert!(retryable(&gone));
    }
}
