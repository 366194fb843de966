//! Execution: the local scheduler and single-instance execution.
//!
//! The scheduler walks the instance DAG, claims ready instances in the store
//! (so concurrent `ablate run` processes on one workspace never compute the
//! same instance twice), runs up to `--jobs` at once within the `--gpus`
//! budget, and waits on instances another live process has claimed.

mod job;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;

pub use job::{BrokenInput, Job, JobEnd, UpstreamDone, run_job, verify_inputs};

use crate::freshness::Freshness;
use crate::pipeline::Plan;
use crate::stages::{self, CancelToken, Params, Progress};
use crate::store::{Claim, DoneAttempt, HEARTBEAT_MS, Store};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub gpus: u32,
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
    for name in options.force.iter().chain(&options.only) {
        if !plan.spec.stages.iter().any(|s| &s.name == name) {
            bail!("no stage named `{name}` in {}", plan.spec.file.path.display());
        }
    }
    let n = plan.nodes.len();
    let in_stages = |node: usize, names: &[String]| {
        plan.nodes[node].bindings.iter().any(|&b| names.iter().any(|s| s == plan.stage_name(&plan.bindings[b])))
    };
    let targets: Vec<bool> = (0..n).map(|i| options.only.is_empty() || in_stages(i, &options.only)).collect();
    let mut report = RunReport::default();
    let mut state: Vec<State> = Vec::with_capacity(n);
    for (i, fresh) in freshness.into_iter().enumerate() {
        let forced = in_stages(i, &options.force);
        state.push(match fresh {
            Freshness::Cached(done) if !forced => State::Done(done),
            Freshness::Broken(done, reason) => {
                store.invalidate(done.attempt_id, &reason.to_string()).await?;
                State::Pending
            }
            _ => State::Pending,
        });
    }
    // Select targets and, transitively, the upstream work they cannot do without.
    let mut needed = vec![false; n];
    for i in (0..n).rev() {
        if targets[i] || (needed[i] && matches!(state[i], State::Pending)) {
            needed[i] = true;
            for &u in &plan.nodes[i].upstream {
                needed[u] = true;
            }
        }
    }
    for i in 0..n {
        match state[i] {
            State::Pending if !needed[i] => state[i] = State::NotSelected,
            State::Done(_) if needed[i] && targets[i] => report.cached.push(i),
            _ => {}
        }
    }

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

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, anyhow::Result<JobEnd>)>();
    let mut running = 0usize;
    let mut gpus_in_use = 0u32;
    let mut stop_launching = false;
    let mut forced_done: HashSet<usize> = HashSet::new();
    let mut verified: HashSet<String> = HashSet::new();
    let result: anyhow::Result<()> = async {
        loop {
            if cancel.is_cancelled() {
                stop_launching = true;
                report.interrupted = true;
            }
            let mut waiting_elsewhere = false;
            if !stop_launching {
                for i in 0..n {
                    if running >= options.jobs.max(1) {
                        break;
                    }
                    match state[i] {
                        State::Pending => {}
                        State::Elsewhere => {
                            waiting_elsewhere = true;
                            match store.latest_attempt_status(instance_ids[i]).await?.as_deref() {
                                Some("running") => continue,
                                _ => state[i] = State::Pending,
                            }
                        }
                        _ => continue,
                    }
                    let node = &plan.nodes[i];
                    if !node.upstream.iter().all(|&u| matches!(state[u], State::Done(_))) {
                        continue;
                    }
                    if node.gpus > options.gpus {
                        let message = format!("needs {} GPU(s) but the run allows {} (--gpus)", node.gpus, options.gpus);
                        fail_node(store, plan, instance_ids, run_id, &mut state, &mut report, &*observer, i, message).await?;
                        stop_launching |= !options.keep_going;
                        continue;
                    }
                    if gpus_in_use + node.gpus > options.gpus {
                        continue;
                    }
                    let job = build_job(plan, &state, instance_ids, i);
                    if let Some(broken) = verify_inputs(store, &job, &mut verified).await? {
                        // A cached upstream output rotted: recompute that producer first.
                        let u = node.upstream[broken.upstream];
                        let what = if broken.missing { "missing" } else { "corrupt" };
                        tracing::warn!("artifact {} of {} is {what}; recomputing it", broken.artifact, node_label(plan, u));
                        if let State::Done(done) = &state[u] {
                            store.invalidate(done.attempt_id, &format!("artifact {} {what}", broken.artifact)).await?;
                        }
                        state[u] = State::Pending;
                        report.cached.retain(|&c| c != u);
                        continue;
                    }
                    let label = node_label(plan, i);
                    let forced = in_stages(i, &options.force) && !forced_done.contains(&i);
                    let claim = store.claim(instance_ids[i], run_id, forced).await?;
                    match claim {
                        Claim::Claimed { attempt_id } => {
                            forced_done.insert(i);
                            state[i] = State::Running;
                            running += 1;
                            gpus_in_use += node.gpus;
                            let progress = observer.started(&label, node.key.as_str());
                            let (store, tx, cancel) = (store.clone(), tx.clone(), cancel.clone());
                            tokio::spawn(async move {
                                let end = run_job(&store, &job, attempt_id, cancel, progress).await;
                                let _ = tx.send((i, end));
                            });
                        }
                        Claim::Done { .. } => {
                            let done = store.done_attempt_of(instance_ids[i]).await?.context("a done attempt vanished")?;
                            state[i] = State::Done(done);
                            report.done_elsewhere.push(i);
                        }
                        Claim::RunningElsewhere { run_id: other, host, pid } => {
                            observer.waiting(&label, &format!("running in run {other} (pid {pid} on {host})"));
                            state[i] = State::Elsewhere;
                            waiting_elsewhere = true;
                        }
                    }
                }
            }
            let launchable = !stop_launching
                && (0..n).any(|i| {
                    matches!(state[i], State::Pending) && plan.nodes[i].upstream.iter().all(|&u| matches!(state[u], State::Done(_)))
                });
            if running == 0 && !waiting_elsewhere && (stop_launching || !launchable) {
                break;
            }
            let received = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
            let Ok(Some((i, end))) = received else { continue };
            running -= 1;
            gpus_in_use -= plan.nodes[i].gpus;
            let label = node_label(plan, i);
            match end.with_context(|| format!("recording the outcome of {label}"))? {
                JobEnd::Done => {
                    let done = store.done_attempt_of(instance_ids[i]).await?.context("a committed attempt vanished")?;
                    state[i] = State::Done(done);
                    report.executed.push(i);
                    observer.finished(&label, plan.nodes[i].key.as_str(), &NodeOutcome::Done);
                }
                JobEnd::Interrupted => {
                    state[i] = State::Failed;
                    report.interrupted = true;
                    observer.finished(&label, plan.nodes[i].key.as_str(), &NodeOutcome::Interrupted);
                }
                JobEnd::Failed(message) => {
                    observer.finished(&label, plan.nodes[i].key.as_str(), &NodeOutcome::Failed(message.clone()));
                    state[i] = State::Failed;
                    report.failed.push((i, message));
                    skip_downstream(store, plan, instance_ids, run_id, &mut state, &mut report, &*observer, i).await?;
                    stop_launching |= !options.keep_going;
                }
            }
        }
        Ok(())
    }
    .await;
    heartbeat.abort();
    result?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn fail_node(
    store: &Store,
    plan: &Plan,
    ids: &[i64],
    run_id: i64,
    state: &mut [State],
    report: &mut RunReport,
    observer: &dyn Observer,
    i: usize,
    message: String,
) -> anyhow::Result<()> {
    let Claim::Claimed { attempt_id } = store.claim(ids[i], run_id, true).await? else {
        bail!("{} is being run by another process", node_label(plan, i));
    };
    store.end_attempt(attempt_id, crate::store::AttemptEnd::Failed, &message, &[]).await?;
    observer.finished(&node_label(plan, i), plan.nodes[i].key.as_str(), &NodeOutcome::Failed(message.clone()));
    state[i] = State::Failed;
    report.failed.push((i, message));
    skip_downstream(store, plan, ids, run_id, state, report, observer, i).await
}

/// Records every pending downstream instance of a failed one as skipped.
#[allow(clippy::too_many_arguments)]
async fn skip_downstream(
    store: &Store,
    plan: &Plan,
    ids: &[i64],
    run_id: i64,
    state: &mut [State],
    report: &mut RunReport,
    observer: &dyn Observer,
    failed: usize,
) -> anyhow::Result<()> {
    let reason = format!("upstream {} ({}) failed", node_label(plan, failed), plan.nodes[failed].key.short());
    let mut doomed = vec![false; plan.nodes.len()];
    doomed[failed] = true;
    for i in failed + 1..plan.nodes.len() {
        if plan.nodes[i].upstream.iter().any(|&u| doomed[u]) && matches!(state[i], State::Pending | State::Elsewhere) {
            doomed[i] = true;
            state[i] = State::Skipped;
            store.record_skipped(run_id, ids[i], &reason).await?;
            report.skipped.push(i);
            observer.finished(&node_label(plan, i), plan.nodes[i].key.as_str(), &NodeOutcome::Skipped(reason.clone()));
        }
    }
    Ok(())
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
                params: plan.nodes[u].params.clone(),
                done: done.clone(),
            }
        })
        .collect();
    Job { instance_id: ids[i], key: node.key.to_string(), kind: node.kind, params: node.params.clone(), upstream }
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
    let params = Params(record.params.as_object().cloned().unwrap_or_default());
    let mut upstream = Vec::new();
    for (up, stage) in store.upstream_of(instance_id).await? {
        let Some(done) = store.done_attempt_of(up.id).await? else {
            bail!("upstream stage `{stage}` ({}) is not done yet: run it first", &up.key[..12]);
        };
        upstream.push(UpstreamDone {
            stage,
            kind: up.kind.clone(),
            key: up.key.clone(),
            params: Params(up.params.as_object().cloned().unwrap_or_default()),
            done,
        });
    }
    Ok(Job { instance_id, key: record.key, kind, params, upstream })
}
