//! Execution: the local scheduler and single-instance execution.
//!
//! The scheduler walks the instance DAG, claims ready instances in the store
//! (so concurrent `ablate run` processes on one workspace never compute the
//! same instance twice), runs up to `--jobs` at once within the `--gpus`
//! budget, and waits on instances another live process has claimed.

mod job;
pub mod slurm;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;

pub use job::{BrokenInput, Job, JobEnd, UpstreamDone, run_job, verify_inputs};

use crate::freshness::Freshness;
use crate::pipeline::Plan;
use crate::stages::{self, CancelToken, Params, Progress};
use crate::store::{AttemptStatus, Claim, DoneAttempt, HEARTBEAT_MS, Store};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub gpus: u32,
    /// CPU cores the running instances may use together (their `resources.cpus`).
    pub cpus: u32,
    pub keep_going: bool,
    /// Stage names whose instances run even when cached.
    pub force: Vec<String>,
    /// When non-empty, run only these stages' instances (and what they need).
    pub only: Vec<String>,
}

/// What the scheduler tells its caller as it goes (the CLI draws progress bars).
pub trait Observer: Send + Sync {
    fn started(&self, label: &str, key: &str) -> Arc<dyn Progress>;
    fn finished(&self, label: &str, key: &str, outcome: &NodeOutcome);
    fn waiting(&self, _label: &str, _note: &str) {}
    /// Asked once when a run that follows Slurm jobs is interrupted: whether
    /// to cancel its `jobs` jobs. The default (no one to ask) keeps them.
    fn confirm_cancel(&self, _run_id: i64, _jobs: usize) -> bool {
        false
    }
}

/// `exec` of an instance whose upstream is not done (exit code 2: the
/// wrong instance was asked for, or too early).
#[derive(Debug, thiserror::Error)]
#[error("upstream stage `{stage}` ({key}) is not done yet: run it first")]
pub struct UpstreamNotDone {
    pub stage: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeOutcome {
    Done,
    Failed(String),
    Skipped(String),
    Interrupted,
}

/// What one `run` did, per node index of the plan.
#[derive(Debug, Default)]
pub struct RunReport {
    pub executed: Vec<usize>,
    pub cached: Vec<usize>,
    /// Done by another process while this one waited.
    pub done_elsewhere: Vec<usize>,
    pub failed: Vec<(usize, String)>,
    pub skipped: Vec<usize>,
    /// Left pending when the run stopped launching (at the first failure
    /// without `--keep-going`, or interrupted).
    pub not_started: Vec<usize>,
    /// Stopped while running (their checkpoints keep what they had done).
    pub stopped: Vec<usize>,
    pub interrupted: bool,
}

#[derive(Debug, Clone)]
enum State {
    NotSelected,
    Pending,
    Running,
    Elsewhere,
    Done(DoneAttempt),
    Failed,
    Skipped,
}

/// A short human label for a node: `stage{axis=value,...}`.
pub fn node_label(plan: &Plan, node: usize) -> String {
    let binding = &plan.bindings[plan.nodes[node].bindings[0]];
    let axes: Vec<String> =
        binding.axes.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect();
    if axes.is_empty() { plan.stage_name(binding).to_owned() } else { format!("{}{{{}}}", plan.stage_name(binding), axes.join(",")) }
}

/// A `--only` or `--force` that names no stage of the plan, or a stage forced
/// that `--only` would not run (it would silently not run): a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSelection(String);

/// Checks the stages `--only` and `--force` name, before anything runs.
pub fn check_selection(plan: &Plan, options: &RunOptions) -> Result<(), BadSelection> {
    let stages = &plan.spec.stages;
    for name in options.force.iter().chain(&options.only) {
        if !stages.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            return Err(BadSelection(format!(
                "no stage named `{name}` in {} (stages: {})",
                plan.spec.file.path.display(),
                names.join(", ")
            )));
        }
    }
    if options.only.is_empty() {
        return Ok(());
    }
    // --only runs those stages and what they need.
    let mut selected: Vec<&str> = options.only.iter().map(String::as_str).collect();
    let mut i = 0;
    while i < selected.len() {
        if let Some(stage) = stages.iter().find(|s| s.name == selected[i]) {
            selected.extend(stage.needs.iter().map(String::as_str).filter(|n| !selected.contains(n)).collect::<Vec<_>>());
        }
        i += 1;
    }
    match options.force.iter().find(|f| !selected.contains(&f.as_str())) {
        Some(left) => Err(BadSelection(format!(
            "--force {left}: `{left}` does not run under --only {} (neither named nor needed by it)",
            options.only.join(" --only ")
        ))),
        None => Ok(()),
    }
}

/// Runs every selected instance that is not fresh.
#[allow(clippy::too_many_arguments)]
pub async fn run_plan(
    store: &Store,
    plan: &Plan,
    freshness: Vec<Freshness>,
    instance_ids: &[i64],
    run_id: i64,
    options: &RunOptions,
    cancel: &CancelToken,
    observer: Arc<dyn Observer>,
) -> anyhow::Result<RunReport> {
    check_selection(plan, options)?;
    let mut scheduler = Scheduler::new(store, plan, instance_ids, run_id, options, observer);
    scheduler.select(freshness).await?;
    let heartbeat = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
                if let Err(e) = store.heartbeat(run_id).await {
                    tracing::warn!("heartbeat failed: {e:#}");
                }
            }
        })
    };
    let result = scheduler.drive(cancel).await;
    heartbeat.abort();
    result?;
    scheduler.report.not_started =
        (0..plan.nodes.len()).filter(|&i| matches!(scheduler.state[i], State::Pending | State::Elsewhere)).collect();
    Ok(scheduler.report)
}

/// The state of one `run_plan`: node states and the sets that make each
/// scheduling step proportional to what changed, not to the size of the plan.
struct Scheduler<'a> {
    store: &'a Store,
    plan: &'a Plan,
    ids: &'a [i64],
    run_id: i64,
    options: &'a RunOptions,
    observer: Arc<dyn Observer>,
    state: Vec<State>,
    downstream: Vec<Vec<usize>>,
    /// Upstream nodes not yet done, per node.
    blocked: Vec<usize>,
    /// Pending nodes whose upstream is all done, in plan order.
    ready: BTreeSet<usize>,
    /// Nodes another live process is running.
    elsewhere: BTreeSet<usize>,
    /// When stale claims were last recovered while waiting on `elsewhere`.
    recovered_at: std::time::Instant,
    running: usize,
    gpus_in_use: u32,
    cpus_in_use: u32,
    stop_launching: bool,
    /// Nodes `--force` reruns (see [`forced_nodes`]).
    forced: Vec<bool>,
    /// Nodes `--force` names itself (the others are downstream of them).
    forced_directly: Vec<bool>,
    /// The done attempt each forced node had before this run: a node forced
    /// only as a dependant keeps it, without running, when its forced
    /// upstream wrote the same outputs again.
    before_force: Vec<Option<DoneAttempt>>,
    /// Forced nodes already rerun once in this run.
    forced_done: HashSet<usize>,
    /// Objects fully verified in this run.
    verified: HashSet<String>,
    report: RunReport,
}

impl<'a> Scheduler<'a> {
    fn new(store: &'a Store, plan: &'a Plan, ids: &'a [i64], run_id: i64, options: &'a RunOptions, observer: Arc<dyn Observer>) -> Self {
        let n = plan.nodes.len();
        let mut downstream = vec![Vec::new(); n];
        for (i, node) in plan.nodes.iter().enumerate() {
            for &u in &node.upstream {
                downstream[u].push(i);
            }
        }
        Scheduler {
            store,
            plan,
            ids,
            run_id,
            options,
            observer,
            state: Vec::with_capacity(n),
            downstream,
            blocked: vec![0; n],
            ready: BTreeSet::new(),
            elsewhere: BTreeSet::new(),
            recovered_at: std::time::Instant::now(),
            running: 0,
            gpus_in_use: 0,
            cpus_in_use: 0,
            stop_launching: false,
            forced: vec![false; n],
            forced_directly: vec![false; n],
            before_force: vec![None; n],
            forced_done: HashSet::new(),
            verified: HashSet::new(),
            report: RunReport::default(),
        }
    }

    /// Initial states: cached nodes are done, the targets and the upstream
    /// work they cannot do without are pending, everything else is left out.
    async fn select(&mut self, freshness: Vec<Freshness>) -> anyhow::Result<()> {
        let n = self.plan.nodes.len();
        self.forced = forced_nodes(self.plan, &self.options.force);
        self.forced_directly = (0..n).map(|i| in_stages(self.plan, i, &self.options.force)).collect();
        for (i, fresh) in freshness.into_iter().enumerate() {
            let forced = self.forced[i];
            let state = match fresh {
                Freshness::Cached(done) if !forced => State::Done(done),
                Freshness::Cached(done) => {
                    self.before_force[i] = Some(done);
                    State::Pending
                }
                Freshness::Broken(done, reason) => {
                    self.store.invalidate(done.attempt_id, &reason.to_string()).await?;
                    State::Pending
                }
                _ => State::Pending,
            };
            self.state.push(state);
        }
        let targets: Vec<bool> = (0..n).map(|i| self.options.only.is_empty() || in_stages(self.plan, i, &self.options.only)).collect();
        let pending: Vec<bool> = self.state.iter().map(|s| matches!(s, State::Pending)).collect();
        let needed = needed_nodes(self.plan, &pending, &targets);
        for i in 0..n {
            match self.state[i] {
                State::Pending if !needed[i] => self.state[i] = State::NotSelected,
                State::Done(_) if needed[i] && targets[i] => self.report.cached.push(i),
                _ => {}
            }
        }
        for i in 0..n {
            self.blocked[i] = self.plan.nodes[i].upstream.iter().filter(|&&u| !matches!(self.state[u], State::Done(_))).count();
            if self.blocked[i] == 0 && matches!(self.state[i], State::Pending) {
                self.ready.insert(i);
            }
        }
        Ok(())
    }

    fn set_done(&mut self, i: usize, done: DoneAttempt) {
        self.state[i] = State::Done(done);
        for d in self.downstream[i].clone() {
            self.blocked[d] -= 1;
            if self.blocked[d] == 0 && matches!(self.state[d], State::Pending) {
                self.ready.insert(d);
            }
        }
    }

    /// The done attempt a dependant of forced nodes keeps when none of its
    /// upstream outputs changed in the forced reruns; `None` when it runs.
    fn unchanged_dependant(&mut self, i: usize) -> Option<DoneAttempt> {
        if self.forced_directly[i] || self.before_force[i].is_none() {
            return None;
        }
        let unchanged = self.plan.nodes[i].upstream.iter().all(|&u| match (&self.before_force[u], &self.state[u]) {
            (Some(before), State::Done(now)) => before.outputs() == now.outputs(),
            _ => true,
        });
        if unchanged { self.before_force[i].take() } else { None }
    }

    /// A done node whose output turned out broken must run again first.
    fn set_pending_again(&mut self, u: usize) {
        self.state[u] = State::Pending;
        self.report.cached.retain(|&c| c != u);
        for d in self.downstream[u].clone() {
            if self.blocked[d] == 0 {
                self.ready.remove(&d);
            }
            self.blocked[d] += 1;
        }
        if self.blocked[u] == 0 {
            self.ready.insert(u);
        }
    }

    async fn drive(&mut self, cancel: &CancelToken) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, anyhow::Result<JobEnd>)>();
        loop {
            if cancel.is_cancelled() {
                self.stop_launching = true;
                self.report.interrupted = true;
            }
            if !self.stop_launching {
                self.poll_elsewhere().await?;
                self.launch_ready(&tx, cancel).await?;
            }
            let idle = self.running == 0 && (self.stop_launching || (self.ready.is_empty() && self.elsewhere.is_empty()));
            if idle {
                return Ok(());
            }
            let received = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
            if let Ok(Some((i, end))) = received {
                self.finish(i, end).await?;
            }
        }
    }

    /// Instances another process was running go back to ready once it
    /// stopped: finished, or died (then its claim is recovered here, every
    /// few seconds while waiting, by the same pid and heartbeat rules as at
    /// start, so a `kill -9` of the other process does not leave this one
    /// waiting on it for ever).
    async fn poll_elsewhere(&mut self) -> anyhow::Result<()> {
        if !self.elsewhere.is_empty() && self.recovered_at.elapsed() >= RECOVER_EVERY {
            self.recovered_at = std::time::Instant::now();
            self.store.recover_stale().await?;
        }
        for i in self.elsewhere.clone() {
            if self.store.latest_attempt_status(self.ids[i]).await? != Some(AttemptStatus::Running) {
                self.elsewhere.remove(&i);
                self.state[i] = State::Pending;
                self.ready.insert(i);
            }
        }
        Ok(())
    }

    async fn launch_ready(
        &mut self,
        tx: &mpsc::UnboundedSender<(usize, anyhow::Result<JobEnd>)>,
        cancel: &CancelToken,
    ) -> anyhow::Result<()> {
        let candidates: Vec<usize> = self.ready.iter().copied().collect();
        for i in candidates {
            if self.running >= self.options.jobs.max(1) || self.stop_launching {
                break;
            }
            if !self.ready.contains(&i) {
                continue;
            }
            let node = &self.plan.nodes[i];
            if node.gpus > self.options.gpus {
                self.ready.remove(&i);
                let message = format!("needs {} GPU(s) but the run allows {} (--gpus)", node.gpus, self.options.gpus);
                let Claim::Claimed { attempt_id } = self.store.claim(self.ids[i], self.run_id, true).await? else {
                    bail!("{} is being run by another process", node_label(self.plan, i));
                };
                self.store.end_attempt(attempt_id, crate::store::AttemptEnd::Failed, &message, &[]).await?;
                self.fail(i, message).await?;
                continue;
            }
            if self.gpus_in_use + node.gpus > self.options.gpus {
                continue;
            }
            // Instances that ask for CPUs share the --cpus budget; one asking
            // for more than the whole budget runs alone.
            if self.running > 0 && self.cpus_in_use + node.cpus > self.options.cpus.max(1) {
                continue;
            }
            let job = build_job(self.plan, &self.state, self.ids, i);
            if let Some(broken) = verify_inputs(self.store, &job, &mut self.verified).await? {
                // A cached upstream output rotted: recompute that producer first.
                let u = node.upstream[broken.upstream];
                let what = if broken.missing { "missing" } else { "corrupt" };
                tracing::warn!("artifact {} of {} is {what}; recomputing it", broken.artifact, node_label(self.plan, u));
                if let State::Done(done) = &self.state[u] {
                    self.store.invalidate(done.attempt_id, &format!("artifact {} {what}", broken.artifact)).await?;
                }
                self.set_pending_again(u);
                continue;
            }
            if let Some(kept) = self.unchanged_dependant(i) {
                // Forced only as a dependant, and every forced upstream wrote
                // what it had written before: its result still stands.
                self.ready.remove(&i);
                self.report.cached.push(i);
                self.set_done(i, kept);
                continue;
            }
            let label = node_label(self.plan, i);
            let forced = self.forced[i] && !self.forced_done.contains(&i);
            self.ready.remove(&i);
            match self.store.claim(self.ids[i], self.run_id, forced).await? {
                Claim::Claimed { attempt_id } => {
                    if forced {
                        self.store.workspace().clear_state(node.key.as_str())?;
                    }
                    self.forced_done.insert(i);
                    self.state[i] = State::Running;
                    self.running += 1;
                    self.gpus_in_use += node.gpus;
                    self.cpus_in_use += node.cpus;
                    let progress = self.observer.started(&label, node.key.as_str());
                    let (store, tx, cancel) = (self.store.clone(), tx.clone(), cancel.clone());
                    tokio::spawn(async move {
                        let end = run_job(&store, &job, attempt_id, cancel, progress).await;
                        let _ = tx.send((i, end));
                    });
                }
                Claim::Done { .. } => {
                    let done = self.store.done_attempt_of(self.ids[i]).await?.context("a done attempt vanished")?;
                    self.report.done_elsewhere.push(i);
                    self.set_done(i, done);
                }
                Claim::RunningElsewhere { run_id: other, host, pid } => {
                    self.observer.waiting(&label, &format!("running in run {other} (pid {pid} on {host})"));
                    self.state[i] = State::Elsewhere;
                    self.elsewhere.insert(i);
                }
            }
        }
        Ok(())
    }

    async fn finish(&mut self, i: usize, end: anyhow::Result<JobEnd>) -> anyhow::Result<()> {
        self.running -= 1;
        self.gpus_in_use -= self.plan.nodes[i].gpus;
        self.cpus_in_use -= self.plan.nodes[i].cpus;
        let label = node_label(self.plan, i);
        let key = self.plan.nodes[i].key.as_str();
        match end.with_context(|| format!("recording the outcome of {label}"))? {
            JobEnd::Done => {
                let done = self.store.done_attempt_of(self.ids[i]).await?.context("a committed attempt vanished")?;
                self.report.executed.push(i);
                self.observer.finished(&label, key, &NodeOutcome::Done);
                self.set_done(i, done);
            }
            JobEnd::Interrupted => {
                self.state[i] = State::Failed;
                self.report.interrupted = true;
                self.report.stopped.push(i);
                self.observer.finished(&label, key, &NodeOutcome::Interrupted);
            }
            JobEnd::Failed(message) => self.fail(i, message).await?,
        }
        Ok(())
    }

    /// Records a failure and skips everything downstream of it.
    async fn fail(&mut self, failed: usize, message: String) -> anyhow::Result<()> {
        let plan = self.plan;
        self.observer.finished(&node_label(plan, failed), plan.nodes[failed].key.as_str(), &NodeOutcome::Failed(message.clone()));
        self.state[failed] = State::Failed;
        self.report.failed.push((failed, message));
        self.stop_launching |= !self.options.keep_going;
        let reason = format!("upstream {} ({}) failed", node_label(plan, failed), plan.nodes[failed].key.short());
        let mut queue = self.downstream[failed].clone();
        while let Some(i) = queue.pop() {
            if !matches!(self.state[i], State::Pending | State::Elsewhere) {
                continue;
            }
            self.state[i] = State::Skipped;
            self.ready.remove(&i);
            self.elsewhere.remove(&i);
            self.store.record_skipped(self.run_id, self.ids[i], &reason).await?;
            self.report.skipped.push(i);
            self.observer.finished(&node_label(plan, i), plan.nodes[i].key.as_str(), &NodeOutcome::Skipped(reason.clone()));
            queue.extend(self.downstream[i].iter().copied());
        }
        self.report.skipped.sort_unstable();
        Ok(())
    }
}

/// Whether node `i` is an instance of one of the stages `names`.
pub(crate) fn in_stages(plan: &Plan, i: usize, names: &[String]) -> bool {
    plan.nodes[i].bindings.iter().any(|&b| names.iter().any(|s| s == plan.stage_name(&plan.bindings[b])))
}

/// The nodes `--force STAGE` may rerun: that stage's instances and everything
/// downstream of them, which read the outputs the rerun replaces (a key
/// names the inputs, not the bytes a nondeterministic stage wrote). A
/// dependant reruns only if an upstream rerun wrote other outputs.
pub(crate) fn forced_nodes(plan: &Plan, stages: &[String]) -> Vec<bool> {
    let mut forced = vec![false; plan.nodes.len()];
    // Nodes come in dependency order: upstream before downstream.
    for i in 0..plan.nodes.len() {
        forced[i] = in_stages(plan, i, stages) || plan.nodes[i].upstream.iter().any(|&u| forced[u]);
    }
    forced
}

/// How often a run waiting on another process's instances checks that
/// process is alive.
const RECOVER_EVERY: Duration = Duration::from_secs(2);

/// The nodes a run needs: its targets, and the upstream work that targets
/// still to run (`pending`) cannot do without. Shared by both executors.
pub(crate) fn needed_nodes(plan: &Plan, pending: &[bool], targets: &[bool]) -> Vec<bool> {
    let n = plan.nodes.len();
    let mut needed = vec![false; n];
    for i in (0..n).rev() {
        if targets[i] || (needed[i] && pending[i]) {
            needed[i] = true;
            for &u in &plan.nodes[i].upstream {
                needed[u] = true;
            }
        }
    }
    needed
}

fn build_job(plan: &Plan, state: &[State], ids: &[i64], i: usize) -> Job {
    let node = &plan.nodes[i];
    let upstream = node
        .upstream
        .iter()
        .zip(&node.upstream_stages)
        .map(|(&u, stage)| {
            let State::Done(done) = &state[u] else { unreachable!("ready nodes have done upstream") };
            UpstreamDone {
                stage: stage.clone(),
                kind: plan.nodes[u].kind.name().to_owned(),
                key: plan.nodes[u].key.to_string(),
                params: Params::clone(&plan.nodes[u].params),
                done: done.clone(),
            }
        })
        .collect();
    Job { instance_id: ids[i], key: node.key.to_string(), kind: node.kind, params: Params::clone(&node.params), upstream }
}

/// Builds the job for a stored instance (for `ablate exec`): its upstream must be done.
pub async fn job_from_store(store: &Store, instance_id: i64) -> anyhow::Result<Job> {
    let record = store.instance_by_id(instance_id).await?;
    let kind = stages::find(&record.kind).with_context(|| format!("stage kind `{}` is not known to this ablate", record.kind))?;
    if i64::from(kind.version()) != record.kind_version {
        bail!(
            "instance {} was planned with `{}` code version {}, this ablate has version {}: plan the pipeline again",
            record.key,
            record.kind,
            record.kind_version,
            kind.version()
        );
    }
    let params = Params::from(record.params.as_object().cloned().unwrap_or_default());
    let mut upstream = Vec::new();
    for (up, stage) in store.upstream_of(instance_id).await? {
        let Some(done) = store.done_attempt_of(up.id).await? else {
            return Err(UpstreamNotDone { stage, key: up.key[..12].to_owned() }.into());
        };
        upstream.push(UpstreamDone {
            stage,
            kind: up.kind.clone(),
            key: up.key.clone(),
            params: Params::from(up.params.as_object().cloned().unwrap_or_default()),
            done,
        });
    }
    Ok(Job { instance_id, key: record.key, kind, params, upstream })
}
