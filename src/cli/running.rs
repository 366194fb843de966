//! Running a study: `plan`, `run`, `exec` (one instance, as a Slurm job
//! runs it) and `cancel`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use serde_json::json;

use super::args::PlanFormat;
use super::{UsageError, claims, compile, print_json, progress, render, resolve_instance, results, tabular};
use crate::exec::slurm::SlurmOptions;
use crate::exec::{self, NodeOutcome, Observer, RunOptions, node_label};
use crate::freshness;
use crate::pipeline::Plan;
use crate::stages::{CancelToken, NoProgress, Progress};
use crate::store::{Claim, Executor, RunEnd, RunProcess, RunStatus, SlurmTask, Store, Workspace};

pub(super) async fn plan(workspace: &Workspace, file: &Path, format: PlanFormat) -> anyhow::Result<ExitCode> {
    let plan = compile(file)?;
    let store = register_for_plan(workspace, file, &plan).await?;
    let freshness = freshness::assess(&plan, store.as_ref()).await?;
    match format {
        PlanFormat::Dot => print!("{}", render::dot(&plan, &freshness)),
        PlanFormat::Mermaid => print!("{}", render::mermaid(&plan, &freshness)),
        PlanFormat::Json => {
            let rows: Vec<_> = plan
                .bindings
                .iter()
                .map(|b| {
                    let node = &plan.nodes[b.node];
                    let fresh = &freshness[b.node];
                    json!({
                        "stage": plan.stage_name(b),
                        "kind": node.kind.name(),
                        "key": node.key.as_str(),
                        "axes": Plan::axes_json(b),
                        "status": if fresh.is_cached() { "cached" } else { "run" },
                        "reason": fresh.reason().map(|r| r.to_string()),
                        "upstream": node.upstream.iter().map(|&u| plan.nodes[u].key.as_str()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            print_json(&serde_json::Value::Array(rows));
        }
        PlanFormat::Table => {
            let mut table = render::Table::new(&["STAGE", "KEY", "AXES", "STATUS", "REASON"]);
            for b in &plan.bindings {
                let (status, reason) = match freshness[b.node].reason() {
                    None => ("cached", String::new()),
                    Some(r) => ("run", r.to_string()),
                };
                table.row(vec![
                    plan.stage_name(b).to_owned(),
                    plan.nodes[b.node].key.short().to_owned(),
                    axes_text(&b.axes),
                    status.into(),
                    reason,
                ]);
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            table.write_to(&mut out).and_then(|()| std::io::Write::flush(&mut out))?;
            drop(out);
            let to_run = freshness.iter().filter(|f| !f.is_cached()).count();
            println!(
                "{} instances ({} unique), {} to run, {} cached",
                plan.bindings.len(),
                plan.nodes.len(),
                to_run,
                plan.nodes.len() - to_run
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records the planned instances so that `ablate exec KEY` (on this machine or
/// a cluster node) can run any of them; falls back to read-only where the
/// workspace is not writable, since planning must still answer.
async fn register_for_plan(workspace: &Workspace, file: &Path, plan: &Plan) -> anyhow::Result<Option<Store>> {
    match Store::open(workspace).await {
        Ok(store) => {
            let pipeline_id = store.register_pipeline(&plan.spec.name, &file.display().to_string(), &plan.spec.file.text).await?;
            store.record_plan(plan, pipeline_id).await?;
            Ok(Some(store))
        }
        Err(e) => {
            tracing::warn!("cannot write to {} ({e:#}); planning read-only", workspace.root.display());
            Store::open_read_only(workspace).await
        }
    }
}

/// Ctrl-C (and SIGTERM, which schedulers send before killing) cancel the run;
/// a second one exits at once (claims are then recovered by the next run).
fn install_interrupt(cancel: CancelToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut count = 0;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            count += 1;
            if count > 1 {
                eprintln!("interrupted again: exiting now");
                std::process::exit(130);
            }
            tracing::warn!("interrupting: stopping running stages (press Ctrl-C again to exit at once)");
            cancel.cancel();
        }
    });
}

pub(super) async fn run(
    workspace: &Workspace,
    file: &Path,
    options: RunOptions,
    slurm: Option<SlurmOptions>,
    json: bool,
    bars: indicatif::MultiProgress,
) -> anyhow::Result<ExitCode> {
    let plan = compile(file)?;
    exec::check_selection(&plan, &options)?;
    if slurm.is_some() && workspace.db.is_none() {
        tracing::warn!(
            "the store is SQLite ({}): fine when the jobs run on this machine, unsafe on a network file system; \
             multi-node studies use --db postgres://... (see docs/cluster.md)",
            workspace.db_path().display()
        );
    }
    let store = Store::open(workspace).await?;
    let recovered = store.recover_stale().await?;
    if recovered > 0 {
        tracing::warn!("recovered {recovered} attempt(s)/run(s) left running by processes that died");
    }
    let pipeline_id = store.register_pipeline(&plan.spec.name, &file.display().to_string(), &plan.spec.file.text).await?;
    let argv: Vec<String> = std::env::args().collect();
    let run_id = store.start_run(Some(pipeline_id), "run", &argv).await?;
    let ids = store.register_plan(&plan, pipeline_id).await?;
    let freshness = freshness::assess(&plan, Some(&store)).await?;
    let cancel = CancelToken::default();
    install_interrupt(cancel.clone());
    let observer: Arc<dyn Observer> = progress::Bars::new(bars);
    let outcome = match &slurm {
        None => exec::run_plan(&store, &plan, freshness, &ids, run_id, &options, &cancel, observer).await.map(|r| (r, None)),
        Some(slurm) => exec::slurm::run_plan_on_slurm(&store, &plan, freshness, &ids, run_id, &options, slurm, &cancel, observer)
            .await
            .map(|(r, s)| (r, Some(s))),
    };
    let (report, slurm_summary) = match outcome {
        Ok(r) => r,
        Err(e) => {
            store.finish_run(run_id, RunEnd::Failed).await?;
            return Err(e);
        }
    };
    // A Slurm run whose jobs still run (detached, or Ctrl-C without cancelling
    // them) stays `running`: rerunning the command follows it again.
    let jobs_left = slurm_summary.as_ref().map_or(0, |s| s.jobs_left);
    let status = if report.interrupted {
        RunEnd::Interrupted
    } else if report.failed.is_empty() {
        RunEnd::Done
    } else {
        RunEnd::Failed
    };
    if jobs_left == 0 {
        store.finish_run(run_id, status).await?;
    }
    let keys = |nodes: &[usize]| {
        nodes.iter().map(|&i| json!({"label": node_label(&plan, i), "key": plan.nodes[i].key.as_str()})).collect::<Vec<_>>()
    };
    if json {
        print_json(&json!({
            "run_id": run_id,
            "status": RunStatus::from(status).as_str(),
            "executed": keys(&report.executed),
            "cached": keys(&report.cached),
            "done_elsewhere": keys(&report.done_elsewhere),
            "failed": report.failed.iter().map(|(i, e)| json!({"label": node_label(&plan, *i), "key": plan.nodes[*i].key.as_str(), "error": e})).collect::<Vec<_>>(),
            "skipped": keys(&report.skipped),
            "not_started": keys(&report.not_started),
            "interrupted": keys(&report.stopped),
            "slurm": slurm_summary.as_ref().map(|s| json!({
                "jobs_submitted": s.jobs_submitted,
                "jobs_adopted": s.jobs_adopted,
                "jobs_left": s.jobs_left,
                "detached": s.detached,
            })),
        }));
    } else {
        for (i, error) in &report.failed {
            println!("failed  {}  {}: {}", plan.nodes[*i].key.short(), node_label(&plan, *i), error);
        }
        let not_started = match report.not_started.len() {
            0 => String::new(),
            n if report.interrupted => format!(", {n} not started"),
            n => format!(", {n} not started (the run stops at the first failure; --keep-going runs the rest)"),
        };
        let interrupted = match report.stopped.len() {
            0 if report.interrupted => " (interrupted)".to_owned(),
            0 => String::new(),
            n => format!(", {n} interrupted"),
        };
        println!(
            "run {run_id}: {} executed, {} cached, {} done by another run, {} failed, {} skipped{not_started}{interrupted}",
            report.executed.len(),
            report.cached.len(),
            report.done_elsewhere.len(),
            report.failed.len(),
            report.skipped.len(),
        );
        // A study with evaluation results ends with its table (`ablate results`).
        if !report.interrupted {
            let axis_values: Vec<(String, Vec<serde_json::Value>)> =
                plan.spec.axes.iter().map(|a| (a.name.clone(), a.values.clone())).collect();
            let (rows, left_out) = crate::pivot::current_version(store.history(Some(&plan.spec.name)).await?, &plan.spec);
            if let Ok(Some(table)) = results::summary_table(&rows, &[], &[], &axis_values) {
                results::warn_left_out(left_out);
                println!();
                results::print_summary(&table, tabular::Format::Table, false);
            }
            claims::print_after_results(&plan.spec, &rows);
        }
        if let Some(s) = &slurm_summary {
            println!("slurm: {} job(s) submitted, {} adopted, {} still pending or running", s.jobs_submitted, s.jobs_adopted, s.jobs_left);
            if s.jobs_left > 0 {
                println!("follow them: rerun this command; cancel them: ablate cancel {run_id}; list them: ablate show {run_id}");
            }
        }
    }
    store.close().await;
    Ok(match status {
        RunEnd::Done => ExitCode::SUCCESS,
        RunEnd::Failed => ExitCode::from(1),
        RunEnd::Interrupted => ExitCode::from(130),
    })
}

pub(super) async fn exec_one(
    workspace: &Workspace,
    key: &str,
    json: bool,
    run: Option<i64>,
    force: bool,
    bars: indicatif::MultiProgress,
) -> anyhow::Result<ExitCode> {
    let Some(existing) = Store::open_read_only(workspace).await? else {
        return Err(UsageError(format!(
            "no ablate store in {} (run `ablate plan FILE` or `ablate run FILE` first, or pass --workspace/--db)",
            workspace.db_display()
        ))
        .into());
    };
    existing.close().await;
    let store = Store::open(workspace).await?;
    store.recover_stale().await?;
    let instance = resolve_instance(&store, key).await?;
    let job = exec::job_from_store(&store, instance.id).await?;
    if let Some(broken) = exec::verify_inputs(&store, &job, &mut Default::default()).await? {
        let up = &job.upstream[broken.upstream];
        store.invalidate(up.done.attempt_id, &format!("artifact {} missing or corrupt", broken.artifact)).await?;
        bail!("input artifact {} of upstream `{}` ({}) is missing or corrupt: rerun it first", broken.artifact, up.stage, &up.key[..12]);
    }
    // Inside a Slurm job of a run, the attempt belongs to that run; alone, exec is a run of its own.
    let run_id = match run {
        Some(id) => {
            if store.run_process(id).await?.is_none() {
                return Err(UsageError(format!("no run {id} in this store")).into());
            }
            id
        }
        None => {
            let argv: Vec<String> = std::env::args().collect();
            store.start_run(None, "exec", &argv).await?
        }
    };
    let own_run = run.is_none();
    let slurm_task = SlurmTask::from_env();
    let claim = store.claim_as(instance.id, run_id, force, slurm_task.as_ref()).await?;
    let (outcome, code) = match claim {
        Claim::Done { attempt_id } => {
            if own_run {
                store.finish_run(run_id, RunEnd::Done).await?;
            }
            (json!({"status": "cached", "attempt_id": attempt_id}), ExitCode::SUCCESS)
        }
        Claim::RunningElsewhere { run_id: other, host, pid } => {
            if own_run {
                store.finish_run(run_id, RunEnd::Failed).await?;
            }
            bail!("instance {} is being run by run {other} (pid {pid} on {host})", &instance.key[..12]);
        }
        Claim::Claimed { attempt_id } => {
            // A forced exec of its own computes afresh; inside a Slurm job the
            // follower cleared the state at submission (a requeued job resumes).
            if force && own_run {
                workspace.clear_state(&instance.key)?;
            }
            let cancel = CancelToken::default();
            install_interrupt(cancel.clone());
            // Keep the claim's lease fresh: other hosts judge liveness by it.
            let heartbeat = {
                let store = store.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_millis(crate::store::HEARTBEAT_MS)).await;
                        if let Err(e) = store.heartbeat(run_id).await {
                            tracing::warn!("heartbeat failed: {e:#}");
                        }
                    }
                })
            };
            let observer = progress::Bars::new(bars);
            let label = format!("{} {}", instance.kind, &instance.key[..12]);
            let progress: Arc<dyn Progress> = if json { Arc::new(NoProgress) } else { observer.started(&label, &instance.key) };
            let end = exec::run_job(&store, &job, attempt_id, cancel, progress).await;
            heartbeat.abort();
            let (status, outcome, code, run_status) = match end? {
                exec::JobEnd::Done => ("done", NodeOutcome::Done, ExitCode::SUCCESS, RunEnd::Done),
                exec::JobEnd::Interrupted => ("interrupted", NodeOutcome::Interrupted, ExitCode::from(130), RunEnd::Interrupted),
                exec::JobEnd::Failed(e) => ("failed", NodeOutcome::Failed(e), ExitCode::from(1), RunEnd::Failed),
            };
            observer.finished(&label, &instance.key, &outcome);
            if own_run {
                store.finish_run(run_id, run_status).await?;
            }
            let error = if let NodeOutcome::Failed(e) = &outcome { json!(e) } else { json!(null) };
            (json!({"status": status, "attempt_id": attempt_id, "error": error}), code)
        }
    };
    if json {
        print_json(&json!({"key": instance.key, "kind": instance.kind, "outcome": outcome}));
    } else {
        println!("{} {} {}", &instance.key[..12], instance.kind, outcome["status"].as_str().unwrap_or(""));
    }
    Ok(code)
}

/// `ablate cancel RUN_ID`.
pub(super) async fn cancel(workspace: &Workspace, run_id: i64) -> anyhow::Result<ExitCode> {
    let Some(store) = Store::open_read_only(workspace).await? else {
        return Err(UsageError(format!("no ablate store in {}", workspace.db_display())).into());
    };
    store.close().await;
    let store = Store::open(workspace).await?;
    // A local run whose process died (or stopped heartbeating: its pid may
    // now be another program's) is recorded lost first, and never signalled.
    store.recover_stale().await?;
    let Some(RunProcess { executor, host, pid, status }) = store.run_process(run_id).await? else {
        return Err(UsageError(format!("no run {run_id} in this store")).into());
    };
    if executor == Executor::Slurm {
        let cancelled = exec::slurm::cancel_run(&store, run_id).await?;
        if status == RunStatus::Running {
            store.finish_run(run_id, RunEnd::Interrupted).await?;
        }
        println!("run {run_id}: cancelled {cancelled} Slurm job(s)");
        return Ok(ExitCode::SUCCESS);
    }
    if status == RunStatus::Lost && host == crate::store::host_name() {
        // Its process died, but the commands it ran may have left processes
        // behind (a `kill -9` does not reach a shell's children).
        let mut stopped = 0;
        for key in store.lost_instances_of_run(run_id).await? {
            // Asked again for each: a new run may have taken the instance up meanwhile.
            if !store.lost_instances_of_run(run_id).await?.contains(&key) {
                continue;
            }
            if let Ok(state_dir) = std::fs::canonicalize(workspace.state_dir(&key)) {
                stopped += crate::process_group::stop_leftovers(&state_dir, crate::process_group::STOP_GRACE);
            }
        }
        if stopped > 0 {
            println!("run {run_id} is not running (lost): stopped {stopped} process group(s) its commands had left running");
            return Ok(ExitCode::SUCCESS);
        }
    }
    if status != RunStatus::Running {
        println!("run {run_id} is not running ({status}): nothing to cancel");
        return Ok(ExitCode::SUCCESS);
    }
    if host != crate::store::host_name() {
        return Err(UsageError(format!("run {run_id} runs on {host} (pid {pid}): cancel it there (Ctrl-C, or kill -INT {pid})")).into());
    }
    let Ok(pid_t) = libc::pid_t::try_from(pid) else { bail!("run {run_id} has no valid pid ({pid})") };
    // SAFETY: sending SIGINT to a process id; the run's own handler stops it cleanly.
    if unsafe { libc::kill(pid_t, libc::SIGINT) } != 0 {
        bail!("cannot signal process {pid} of run {run_id}: {}", std::io::Error::last_os_error());
    }
    println!("run {run_id}: sent SIGINT to process {pid}; it stops its stages and records them interrupted");
    Ok(ExitCode::SUCCESS)
}

fn axes_text(axes: &crate::pipeline::Axes) -> String {
    axes.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect::<Vec<_>>().join(" ")
}
