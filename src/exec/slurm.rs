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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{NodeOutcome, Observer, RunOptions, RunReport, needed_nodes, node_label};
use crate::freshness::Freshness;
use crate::pipeline::Plan;
use crate::slurm::{self, JobInfo, shell_quote};
use crate::stages::CancelToken;
use crate::store::{DoneAttempt, JobClosed, SlurmJobEnd, SlurmJobRow, SlurmTask, Store};

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
    store.set_run_executor(run_id, "slurm").await?;
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

/// The jobs of `jobs` that are over, with how they ended: one `squeue` for
/// all, then one `scontrol` per job (array) among those that ended, for
/// exit codes. A job Slurm no longer knows is over too (`GONE`).
async fn ended_jobs(jobs: &[SlurmJobRow]) -> anyhow::Result<Vec<(SlurmJobRow, SlurmJobEnd)>> {
    let (_, ended) = poll(jobs).await?;
    Ok(ended)
}

/// Live states (by job row id) and ended jobs of `jobs`.
async fn poll(jobs: &[SlurmJobRow]) -> anyhow::Result<(HashMap<i64, JobInfo>, Vec<(SlurmJobRow, SlurmJobEnd)>)> {
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

    /// Takes over jobs earlier submissions left for this plan's instances:
    /// live ones are followed, not submitted again; ended ones are closed,
    /// and what they left undone is submitted anew.
    async fn adopt(&mut self) -> anyhow::Result<()> {
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
    async fn find_elsewhere(&mut self) -> anyhow::Result<()> {
        for i in 0..self.state.len() {
            if self.state[i] == State::Waiting && self.store.latest_attempt_status(self.ids[i]).await?.as_deref() == Some("running") {
                self.observer.waiting(&node_label(self.plan, i), "running in another process");
                self.state[i] = State::Elsewhere;
            }
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

    /// Submits every waiting instance whose upstream is done or in Slurm,
    /// grouped into arrays by (depth, stage, resources), shallowest first so
    /// that deeper groups can depend on the jobs just submitted.
    async fn submit_ready(&mut self) -> anyhow::Result<()> {
        let n = self.plan.nodes.len();
        let mut ready = vec![false; n];
        for i in 0..n {
            if self.state[i] != State::Waiting {
                continue;
            }
            let upstream = &self.plan.nodes[i].upstream;
            if let Some(&bad) = upstream.iter().find(|&&u| matches!(self.state[u], State::Failed | State::Skipped)) {
                self.skip(i, bad).await?;
                continue;
            }
            if self.is_held(i) {
                // A done dependant of forced reruns. With nobody left to
                // compare their outputs (detached, or interrupted), it reruns.
                if !self.slurm.detach && !self.unattended {
                    if !upstream.iter().all(|&u| self.state[u] == State::Done) {
                        continue;
                    }
                    if self.upstream_unchanged(i).await? {
                        self.before_force[i] = None;
                        self.report.cached.push(i);
                        self.set_done(i);
                        continue;
                    }
                }
                self.forced[i] = true;
            }
            ready[i] = upstream.iter().all(|&u| ready[u] || matches!(self.state[u], State::Done | State::Live(_)));
        }
        if self.stopping {
            return Ok(());
        }
        type Group = (usize, usize, u32, u32, Option<String>, Option<String>, bool);
        let mut groups: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
        for i in (0..n).filter(|&i| ready[i]) {
            let node = &self.plan.nodes[i];
            let group = (self.depth[i], self.stage_of(i), node.cpus, node.gpus, node.mem.clone(), node.time.clone(), self.forced[i]);
            groups.entry(group).or_default().push(i);
        }
        for (_, members) in groups {
            for chunk in members.chunks(self.slurm.array_limit.max(1)) {
                self.submit(chunk).await?;
            }
        }
        Ok(())
    }

    /// Records that an instance was not run because `upstream` failed (or was skipped).
    async fn skip(&mut self, i: usize, upstream: usize) -> anyhow::Result<()> {
        let plan = self.plan;
        let reason = format!("upstream {} ({}) failed", node_label(plan, upstream), plan.nodes[upstream].key.short());
        self.state[i] = State::Skipped;
        self.store.record_skipped(self.run_id, self.ids[i], &reason).await?;
        self.report.skipped.push(i);
        self.observer.finished(&node_label(plan, i), plan.nodes[i].key.as_str(), &NodeOutcome::Skipped(reason));
        Ok(())
    }

    /// One `sbatch` for a group of instances with no dependency between them.
    async fn submit(&mut self, chunk: &[usize]) -> anyhow::Result<()> {
        let plan = self.plan;
        let first = &plan.nodes[chunk[0]];
        let stage = plan.spec.stages[self.stage_of(chunk[0])].name.as_str();
        let upstream: Vec<Vec<SlurmTask>> = chunk
            .iter()
            .map(|&i| {
                let mut tasks: Vec<SlurmTask> = plan.nodes[i]
                    .upstream
                    .iter()
                    .filter_map(|&u| match &self.state[u] {
                        State::Live(live) => Some(live.row.task.clone()),
                        _ => None,
                    })
                    .collect();
                tasks.sort_by_key(|t| t.to_string());
                tasks.dedup();
                tasks
            })
            .collect();
        let Dependencies { task_ids, dependency } = dependencies(&upstream);
        let as_array = chunk.len() > 1 || task_ids.is_some();
        let task_ids = task_ids.unwrap_or_else(|| (0..chunk.len() as i64).collect());

        self.scripts += 1;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let name = safe_name(stage);
        let script = self.dir.join(format!("{:03}-{name}.sh", self.scripts));
        let log_pattern = self.dir.join(format!("{:03}-{name}-{}.log", self.scripts, if as_array { "%A_%a" } else { "%j" }));
        let keys: Vec<(i64, &str)> = task_ids.iter().copied().zip(chunk.iter().map(|&i| plan.nodes[i].key.as_str())).collect();
        let forced = self.forced[chunk[0]];
        std::fs::write(&script, self.script_text(stage, &keys, as_array, forced)?)
            .with_context(|| format!("writing {}", script.display()))?;
        if forced {
            // Here, not in the job: a job Slurm requeues must resume.
            for (_, key) in &keys {
                self.store.workspace().clear_state(key)?;
            }
        }

        let mut args = vec![
            format!("--job-name=ablate:{}:{stage}", plan.spec.name),
            format!("--output={}", log_pattern.display()),
            // A requeued job appends to its log instead of truncating it.
            "--open-mode=append".to_owned(),
            // Jobs below a failed one are cancelled by Slurm instead of pending forever.
            "--kill-on-invalid-dep=yes".to_owned(),
            format!("--chdir={}", std::env::current_dir()?.display()),
            format!("--cpus-per-task={}", first.cpus.max(1)),
        ];
        if first.gpus > 0 {
            args.push(format!("--gres=gpu:{}", first.gpus));
        }
        args.extend(first.mem.iter().map(|m| format!("--mem={m}")));
        args.extend(first.time.iter().map(|t| format!("--time={t}")));
        args.extend(self.slurm.partition.iter().map(|p| format!("--partition={p}")));
        args.extend(self.slurm.account.iter().map(|a| format!("--account={a}")));
        args.extend(self.slurm.qos.iter().map(|q| format!("--qos={q}")));
        if as_array {
            args.push(format!("--array={}", task_ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")));
        }
        if let Some(dependency) = &dependency {
            args.push(format!("--dependency={dependency}"));
        }
        args.extend(self.slurm.sbatch_args.iter().cloned());
        // The database URL travels in the job's environment, not on its command line.
        let db = self.store.workspace().db.clone();
        let env: Vec<(&str, &str)> = db.as_deref().map(|url| ("ABLATE_DB", url)).into_iter().collect();
        let job_id = slurm::sbatch(&args, &script, &env)
            .await
            .with_context(|| format!("submitting {} instance(s) of stage `{stage}` (sbatch options: {})", chunk.len(), args.join(" ")))?;

        let log = |task: i64| {
            let pattern = log_pattern.display().to_string();
            if as_array { pattern.replace("%A", &job_id).replace("%a", &task.to_string()) } else { pattern.replace("%j", &job_id) }
        };
        let rows: Vec<(i64, Option<i64>, String)> =
            chunk.iter().zip(&task_ids).map(|(&i, &t)| (self.ids[i], as_array.then_some(t), log(t))).collect();
        self.store.record_submission(self.run_id, &job_id, &rows).await?;
        for (&i, &t) in chunk.iter().zip(&task_ids) {
            let task = SlurmTask { job_id: job_id.clone(), array_task: as_array.then_some(t) };
            self.observer.waiting(&node_label(plan, i), &format!("submitted as Slurm job {task}"));
            let row = SlurmJobRow {
                id: 0,
                run_id: self.run_id,
                follower_id: self.run_id,
                instance_id: self.ids[i],
                task,
                log_path: log(t),
                state: "PENDING".into(),
                cancelled: false,
            };
            self.state[i] = State::Live(Live { row, seen: "PENDING".into() });
        }
        self.summary.jobs_submitted += chunk.len();
        // Row ids are needed to close jobs: read them back.
        self.refresh_rows().await
    }

    /// Fills in store row ids of live jobs recorded in this process.
    async fn refresh_rows(&mut self) -> anyhow::Result<()> {
        let open = self.store.open_slurm_jobs_of_run(self.run_id).await?;
        let by_task: HashMap<(i64, SlurmTask), SlurmJobRow> = open.into_iter().map(|j| ((j.instance_id, j.task.clone()), j)).collect();
        for (i, state) in self.state.iter_mut().enumerate() {
            if let State::Live(live) = state
                && live.row.id == 0
                && let Some(row) = by_task.get(&(self.ids[i], live.row.task.clone()))
            {
                live.row.id = row.id;
            }
        }
        Ok(())
    }

    fn script_text(&self, stage: &str, keys: &[(i64, &str)], as_array: bool, force: bool) -> anyhow::Result<String> {
        let ws = self.store.workspace();
        let bin = match std::env::var_os("ABLATE_SLURM_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => std::env::current_exe().context("finding the ablate binary to run in jobs")?,
        };
        let mut text = format!(
            "#!/bin/sh\n# ablate run {}: {} instance(s) of stage `{stage}` of pipeline `{}`.\n\
             # Written by ablate for Slurm; each task runs one instance with `ablate exec`.\n",
            self.run_id,
            keys.len(),
            self.plan.spec.name
        );
        let exec = format!(
            "exec {} --workspace {} exec --run {}{}",
            shell_quote(&bin.display().to_string()),
            shell_quote(&ws.root.display().to_string()),
            self.run_id,
            if force { " --force" } else { "" }
        );
        if as_array {
            text.push_str("case \"${SLURM_ARRAY_TASK_ID-}\" in\n");
            for (task, key) in keys {
                text.push_str(&format!("  {task}) key={key} ;;\n"));
            }
            text.push_str("  *) echo \"ablate: array task ${SLURM_ARRAY_TASK_ID-(none)} has no instance in $0\" >&2; exit 2 ;;\nesac\n");
            text.push_str(&format!("{exec} \"$key\"\n"));
        } else {
            text.push_str(&format!("{exec} {}\n", keys[0].1));
        }
        Ok(text)
    }

    /// Follows the jobs until none is left, with back-off while nothing changes.
    async fn follow(&mut self, cancel: &CancelToken) -> anyhow::Result<()> {
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
    async fn poll_once(&mut self) -> anyhow::Result<bool> {
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
            if self.state[i] == State::Elsewhere && self.store.latest_attempt_status(self.ids[i]).await?.as_deref() != Some("running") {
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
    async fn closed(&mut self, i: usize, end: &SlurmJobEnd, closed: JobClosed) -> anyhow::Result<()> {
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
    async fn stop_at_first_failure(&mut self) -> anyhow::Result<()> {
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
    async fn interrupted(&mut self) -> anyhow::Result<()> {
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

/// How a job array depends on the jobs of its upstream instances.
#[derive(Debug, PartialEq)]
struct Dependencies {
    /// Array task ids to use, when they follow an upstream array's (`aftercorr`).
    task_ids: Option<Vec<i64>>,
    dependency: Option<String>,
}

/// Tasks above this many of one upstream array are waited for as the whole array.
const MAX_TASK_DEPENDENCIES: usize = 64;

/// The `--dependency` of a group, given each member's live upstream tasks.
/// When every member depends on exactly one task of the same upstream array,
/// each on a different one, the group takes those task ids and depends with
/// `aftercorr` (task N waits only for upstream task N); everything else is
/// `afterok` on the exact tasks (or on whole arrays past a limit).
fn dependencies(upstream: &[Vec<SlurmTask>]) -> Dependencies {
    let arrays: Vec<&str> =
        upstream.first().map_or(Vec::new(), |first| first.iter().filter(|t| t.array_task.is_some()).map(|t| t.job_id.as_str()).collect());
    let correlated = arrays.into_iter().find_map(|array| {
        let tasks: Option<Vec<i64>> = upstream
            .iter()
            .map(|refs| {
                let mut of_array = refs.iter().filter(|t| t.job_id == array);
                match (of_array.next(), of_array.next()) {
                    (Some(t), None) => t.array_task,
                    _ => None,
                }
            })
            .collect();
        let tasks = tasks?;
        let distinct: HashSet<i64> = tasks.iter().copied().collect();
        (distinct.len() == tasks.len()).then(|| (array.to_owned(), tasks))
    });
    let mut parts: Vec<String> = Vec::new();
    if let Some((array, _)) = &correlated {
        parts.push(format!("aftercorr:{array}"));
    }
    let mut plain: Vec<String> = Vec::new();
    let mut tasks_of: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for task in upstream.iter().flatten() {
        if correlated.as_ref().is_some_and(|(array, _)| *array == task.job_id) {
            continue;
        }
        match task.array_task {
            Some(t) => tasks_of.entry(task.job_id.clone()).or_default().push(t),
            None => plain.push(task.job_id.clone()),
        }
    }
    plain.sort();
    plain.dedup();
    for (array, mut tasks) in tasks_of {
        tasks.sort_unstable();
        tasks.dedup();
        if tasks.len() > MAX_TASK_DEPENDENCIES {
            plain.push(array);
        } else {
            plain.extend(tasks.iter().map(|t| format!("{array}_{t}")));
        }
    }
    if !plain.is_empty() {
        parts.push(format!("afterok:{}", plain.join(":")));
    }
    Dependencies { task_ids: correlated.map(|(_, tasks)| tasks), dependency: (!parts.is_empty()).then(|| parts.join(",")) }
}

/// A stage name fit for file names.
fn safe_name(stage: &str) -> String {
    stage.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(job: &str, t: Option<i64>) -> SlurmTask {
        SlurmTask { job_id: job.into(), array_task: t }
    }

    #[test]
    fn one_to_one_upstream_tasks_correlate() {
        let d = dependencies(&[vec![task("7", Some(0)), task("5", None)], vec![task("7", Some(1)), task("5", None)]]);
        assert_eq!(d.task_ids, Some(vec![0, 1]));
        assert_eq!(d.dependency.as_deref(), Some("aftercorr:7,afterok:5"));
    }

    #[test]
    fn shared_upstream_tasks_are_waited_for_exactly() {
        let d = dependencies(&[vec![task("7", Some(0))], vec![task("7", Some(0))]]);
        assert_eq!(d.task_ids, None);
        assert_eq!(d.dependency.as_deref(), Some("afterok:7_0"));
        let none = dependencies(&[vec![], vec![]]);
        assert_eq!(none, Dependencies { task_ids: None, dependency: None });
    }

    fn row(cancelled: bool) -> SlurmJobRow {
        SlurmJobRow {
            id: 1,
            run_id: 1,
            follower_id: 1,
            instance_id: 1,
            task: task("12", Some(3)),
            log_path: "/ws/slurm/run-1/001-train-12_3.log".into(),
            state: "RUNNING".into(),
            cancelled,
        }
    }

    fn info(state: &str, reason: Option<&str>, node: Option<&str>) -> JobInfo {
        JobInfo {
            task: task("12", Some(3)),
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

    #[test]
    fn many_tasks_of_one_array_become_the_array() {
        let refs: Vec<Vec<SlurmTask>> = vec![(0..100).map(|t| task("9", Some(t))).collect()];
        assert_eq!(dependencies(&refs).dependency.as_deref(), Some("afterok:9"));
    }
}
