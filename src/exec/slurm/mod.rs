//! The Slurm executor: hands the DAG to Slurm instead of running it here.
//!
//! Every selected instance that is not done becomes a Slurm job running
//! `ablate exec --run RUN KEY` against the shared workspace, with
//! `--dependency=afterok` (or `aftercorr` between matching array tasks) on
//! the jobs of its upstream instances, so Slurm schedules the DAG. Instances
//! of one stage with the same resources go out as one job array per `sbatch`.
//!
//! The submitter then *follows* the study: one `squeue` call for all its
//! jobs per poll, with back-off while nothing changes. A job that ended is
//! *closed* once (in the store, so a second follower cannot record it
//! twice): its attempt is settled with the reason Slurm gives (node failure,
//! time limit, preemption, cancellation), `--retries` resubmits it and what
//! Slurm cancelled below it. The same loop does everything: the first
//! submission, adopting jobs an earlier submission left pending or running,
//! resubmitting what died, retries. Each round submits exactly the instances
//! that are neither done nor in Slurm and whose upstream is done or in Slurm.

mod follow;
mod submit;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{Observer, RunOptions, RunReport, needed_nodes};
use crate::freshness::Freshness;
use crate::pipeline::Plan;
use crate::slurm_commands as slurm;
use crate::stages::CancelToken;
use crate::store::{DoneAttempt, Executor, SlurmJobRow, Store};
use follow::ended_jobs;

/// How to submit (the `--executor slurm` options of `ablate run`).
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Passed to every `sbatch` as they are (`--sbatch-arg=--requeue`).
    pub sbatch_args: Vec<String>,
    /// Submit (or adopt) and return instead of following the study.
    pub detach: bool,
    /// Resubmissions of an instance whose job failed (not when cancelled).
    pub retries: u32,
    /// Most tasks per job array (one `sbatch`); larger groups are split.
    pub array_limit: usize,
}

/// What a Slurm run did beyond a local run's report.
#[derive(Debug, Default)]
pub struct SlurmSummary {
    pub jobs_submitted: usize,
    pub jobs_adopted: usize,
    /// Jobs still pending or running when the command returned (detached or interrupted).
    pub jobs_left: usize,
    pub detached: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Not part of this run (`--only`).
    Out,
    Done,
    /// Neither done nor in Slurm: the next round submits it once its upstream allows.
    Waiting,
    /// Pending or running in Slurm.
    Live(Live),
    /// Another process (not one of this study's jobs) is running it.
    Elsewhere,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq)]
struct Live {
    row: SlurmJobRow,
    /// The last state seen, for progress messages.
    seen: String,
}

/// Runs the selected, not yet done instances of a plan as Slurm jobs.
#[allow(clippy::too_many_arguments)]
pub async fn run_plan_on_slurm(
    store: &Store,
    plan: &Plan,
    freshness: Vec<Freshness>,
    ids: &[i64],
    run_id: i64,
    options: &RunOptions,
    slurm_options: &SlurmOptions,
    cancel: &CancelToken,
    observer: Arc<dyn Observer>,
) -> anyhow::Result<(RunReport, SlurmSummary)> {
    store.set_run_executor(run_id, Executor::Slurm).await?;
    let mut follower = Follower::new(store, plan, ids, run_id, options, slurm_options, observer)?;
    follower.select(freshness).await?;
    follower.adopt().await?;
    if let Err(e) = follower.submit_ready().await {
        let submitted = follower.summary.jobs_submitted;
        if submitted > 0 {
            return Err(e.context(format!(
                "{submitted} job(s) were submitted before this and keep running: `ablate cancel {run_id}` cancels them, \
                 rerunning the command follows them"
            )));
        }
        return Err(e);
    }
    if slurm_options.detach {
        follower.summary.detached = true;
        follower.summary.jobs_left = follower.live_count();
        return Ok((follower.report, follower.summary));
    }
    follower.follow(cancel).await?;
    store.finish_settled_slurm_runs(run_id).await?;
    // Left to do: cancelled by ablate at the first failure, never submitted
    // after it, or still waiting on another process when interrupted.
    follower.report.not_started =
        (0..plan.nodes.len()).filter(|&i| matches!(follower.state[i], State::Waiting | State::Elsewhere)).collect();
    Ok((follower.report, follower.summary))
}

/// `ablate cancel RUN`: cancels a Slurm run's jobs and records how they ended.
/// Returns how many jobs were cancelled.
pub async fn cancel_run(store: &Store, run_id: i64) -> anyhow::Result<usize> {
    let open = store.open_slurm_jobs_of_run(run_id).await?;
    let ids: Vec<String> = open.iter().map(|j| j.task.to_string()).collect();
    // Noted first, so whoever records the jobs' end knows it was asked for.
    store.mark_slurm_cancelled(&open.iter().map(|j| j.id).collect::<Vec<_>>()).await?;
    slurm::scancel(&ids).await?;
    // Give Slurm its KillWait to stop them, then record what it did.
    let mut pending: Vec<SlurmJobRow> = open
        .iter()
        .cloned()
        .map(|mut j| {
            j.cancelled = true;
            j
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() && std::time::Instant::now() < deadline {
        let ended = ended_jobs(&pending).await?;
        for (job, end) in &ended {
            store.close_slurm_job(job, end).await?;
        }
        let closed: HashSet<i64> = ended.iter().map(|(j, _)| j.id).collect();
        pending.retain(|j| !closed.contains(&j.id));
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(ids.len())
}

struct Follower<'a> {
    store: &'a Store,
    plan: &'a Plan,
    ids: &'a [i64],
    run_id: i64,
    options: &'a RunOptions,
    slurm: &'a SlurmOptions,
    observer: Arc<dyn Observer>,
    state: Vec<State>,
    /// Longest path from a root, per node: groups of equal depth never depend on each other.
    depth: Vec<usize>,
    /// Failed jobs of each node in this run (for `--retries`).
    failures: Vec<u32>,
    /// Submitted with `exec --force`: the stages `--force` names, and the
    /// dependants whose forced upstream wrote other outputs.
    forced: Vec<bool>,
    /// The done attempt each node `--force` may rerun had before this run. A
    /// dependant of forced nodes waits until they are done, then keeps it if
    /// they wrote what they had written before (as in a local run).
    before_force: Vec<Option<DoneAttempt>>,
    /// Interrupted with jobs left running: nobody will compare outputs.
    unattended: bool,
    /// Numbers batch scripts within the run.
    scripts: usize,
    dir: PathBuf,
    report: RunReport,
    summary: SlurmSummary,
    /// A job failed for good and `--keep-going` is off: nothing more is
    /// submitted and jobs not yet started were cancelled; running ones finish
    /// (as a local run stops launching at its first failure).
    stopping: bool,
}

impl<'a> Follower<'a> {
    fn new(
        store: &'a Store,
        plan: &'a Plan,
        ids: &'a [i64],
        run_id: i64,
        options: &'a RunOptions,
        slurm: &'a SlurmOptions,
        observer: Arc<dyn Observer>,
    ) -> anyhow::Result<Self> {
        let n = plan.nodes.len();
        let mut depth = vec![0; n];
        for (i, node) in plan.nodes.iter().enumerate() {
            // Nodes come in topological order: upstream indices are smaller.
            depth[i] = node.upstream.iter().map(|&u| depth[u] + 1).max().unwrap_or(0);
        }
        let dir = store.workspace().slurm_dir().join(format!("run-{run_id}"));
        Ok(Follower {
            store,
            plan,
            ids,
            run_id,
            options,
            slurm,
            observer,
            state: Vec::new(),
            depth,
            failures: vec![0; n],
            forced: vec![false; n],
            before_force: vec![None; n],
            unattended: false,
            scripts: 0,
            dir,
            report: RunReport::default(),
            summary: SlurmSummary::default(),
            stopping: false,
        })
    }

    fn stage_of(&self, i: usize) -> usize {
        self.plan.bindings[self.plan.nodes[i].bindings[0]].stage
    }

    fn live_count(&self) -> usize {
        self.state.iter().filter(|s| matches!(s, State::Live(_))).count()
    }

    fn live_jobs(&self) -> Vec<SlurmJobRow> {
        self.state
            .iter()
            .filter_map(|s| match s {
                State::Live(live) => Some(live.row.clone()),
                _ => None,
            })
            .collect()
    }

    /// Initial states, as the local scheduler chooses them (`--only`, `--force`, cached).
    async fn select(&mut self, freshness: Vec<Freshness>) -> anyhow::Result<()> {
        let n = self.plan.nodes.len();
        let mut pending = vec![false; n];
        let may_rerun = super::forced_nodes(self.plan, &self.options.force);
        for (i, fresh) in freshness.into_iter().enumerate() {
            // A dependant that is not done either starts afresh too (as
            // locally): a checkpoint of it was made from the old inputs.
            self.forced[i] = super::in_stages(self.plan, i, &self.options.force) || (may_rerun[i] && !fresh.is_cached());
            pending[i] = match fresh {
                Freshness::Cached(_) if !may_rerun[i] => false,
                Freshness::Cached(done) => {
                    self.before_force[i] = Some(done);
                    true
                }
                Freshness::Broken(done, reason) => {
                    self.store.invalidate(done.attempt_id, &reason.to_string()).await?;
                    true
                }
                _ => true,
            };
        }
        let targets: Vec<bool> =
            (0..n).map(|i| self.options.only.is_empty() || super::in_stages(self.plan, i, &self.options.only)).collect();
        let needed = needed_nodes(self.plan, &pending, &targets);
        for i in 0..n {
            self.state.push(match (needed[i], pending[i]) {
                (false, _) => State::Out,
                (true, true) => State::Waiting,
                (true, false) => {
                    if targets[i] {
                        self.report.cached.push(i);
                    }
                    State::Done
                }
            });
        }
        Ok(())
    }

    fn set_done(&mut self, i: usize) {
        self.state[i] = State::Done;
    }

    /// A done dependant of forced nodes, not submitted yet.
    fn is_held(&self, i: usize) -> bool {
        self.state[i] == State::Waiting && !self.forced[i] && self.before_force[i].is_some()
    }

    /// Whether every upstream node `--force` reran wrote what it had written
    /// before this run.
    async fn upstream_unchanged(&self, i: usize) -> anyhow::Result<bool> {
        for &u in &self.plan.nodes[i].upstream {
            if let Some(before) = &self.before_force[u] {
                let now = self.store.done_attempt_of(self.ids[u]).await?.context("a done attempt vanished")?;
                if before.outputs() != now.outputs() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}
