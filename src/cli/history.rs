//! What happened before: `runs`, `show`, `lineage`, `gc`.

use std::collections::HashSet;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::render::Table;
use super::{UsageError, print_json, resolve_instance};
use crate::store::{InstanceRecord, Store, Workspace};

pub(super) async fn open(workspace: &Workspace) -> anyhow::Result<Store> {
    Store::open_read_only(workspace).await?.ok_or_else(|| {
        UsageError(format!("no ablate store in {} (nothing has run here yet; pass --workspace?)", workspace.root.display())).into()
    })
}

pub async fn runs(workspace: &Workspace, limit: i64, json: bool) -> anyhow::Result<ExitCode> {
    let store = open(workspace).await?;
    let runs = store.runs(limit).await?;
    if json {
        print_json(&serde_json::to_value(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["RUN", "PIPELINE", "COMMAND", "STATUS", "STARTED", "DURATION", "DONE", "FAILED", "SKIPPED", "HOST"]);
    for r in runs {
        table.row(vec![
            r.id.to_string(),
            r.pipeline.unwrap_or_else(|| "-".into()),
            r.command,
            r.status.to_string(),
            r.started_at,
            r.duration_s.map_or_else(String::new, |d| format!("{d:.1}s")),
            r.done.to_string(),
            r.failed.to_string(),
            r.skipped.to_string(),
            r.host,
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// Whether `text` names a run rather than an instance: a short all-digit id
/// is a run's unless there is no such run and it starts an instance key
/// (keys are 64 hex digits, so a prefix may be all digits too).
pub(super) async fn names_a_run(store: &Store, text: &str) -> anyhow::Result<bool> {
    if text.is_empty() || text.len() >= 12 || !text.chars().all(|c| c.is_ascii_digit()) {
        return Ok(false);
    }
    let Ok(id) = text.parse::<i64>() else { return Ok(false) };
    if store.run_by_id(id).await?.is_some() || text.len() < 4 {
        return Ok(true);
    }
    Ok(store.instances_by_prefix(text).await?.is_empty())
}

pub async fn show(workspace: &Workspace, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = open(workspace).await?;
    if id.is_empty() {
        return Err(UsageError("give a run id or an instance key (prefix)".into()).into());
    }
    if names_a_run(&store, id).await? {
        let run_id: i64 = id.parse().map_err(|_| UsageError(format!("bad run id {id}")))?;
        let Some(run) = store.run_by_id(run_id).await? else {
            return Err(UsageError(format!("no run {run_id} in this workspace")).into());
        };
        let attempts = store.attempts_of_run(run_id).await?;
        let jobs = store.slurm_jobs_of_run(run_id).await?;
        if json {
            print_json(&json!({"run": run, "attempts": attempts, "slurm_jobs": jobs}));
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "run {}  {}  {}  {} by {}@{}",
            run.id,
            run.pipeline.as_deref().unwrap_or("-"),
            run.command,
            run.status,
            run.user,
            run.host
        );
        println!("started {}  ended {}", run.started_at, run.ended_at.as_deref().unwrap_or("-"));
        let slurm = attempts.iter().any(|a| a.slurm_job.is_some());
        let mut headers = vec!["ATTEMPT", "KEY", "KIND", "STATUS", "STARTED", "ENDED"];
        if slurm {
            headers.extend(["SLURM JOB", "NODE", "EXIT", "LOG"]);
        }
        headers.push("ERROR");
        let mut table = Table::new(&headers);
        for a in attempts {
            let mut row =
                vec![a.id.to_string(), a.key[..12].to_owned(), a.kind, a.status.to_string(), a.started_at, a.ended_at.unwrap_or_default()];
            if slurm {
                row.extend([a.slurm_job.unwrap_or_default(), a.host, a.exit_state.unwrap_or_default(), a.log_path.unwrap_or_default()]);
            }
            row.push(a.error.unwrap_or_default());
            table.row(row);
        }
        print!("{}", table.render());
        // Every job, ended ones too: a job cancelled before it started
        // (by ablate, Slurm or someone) has no attempt above.
        if !jobs.is_empty() {
            let open = jobs.iter().filter(|j| j.open).count();
            if open > 0 {
                println!(
                    "\nSlurm jobs ({open} not finished yet: `ablate run FILE --executor slurm` follows them, `ablate cancel {run_id}` cancels them):"
                );
            } else {
                println!("\nSlurm jobs:");
            }
            let mut table = Table::new(&["SLURM JOB", "KEY", "KIND", "STATE", "REASON", "NODE", "EXIT", "LOG"]);
            for j in jobs {
                let state = if j.open { format!("{} (open)", j.state) } else { j.state };
                table.row(vec![
                    j.job,
                    j.key[..12].to_owned(),
                    j.kind,
                    state,
                    j.reason.unwrap_or_default(),
                    j.node.unwrap_or_default(),
                    j.exit_code.unwrap_or_default(),
                    j.log_path,
                ]);
            }
            print!("{}", table.render());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let instance = resolve_instance(&store, id).await?;
    let bindings = store.bindings_of(instance.id).await?;
    let upstream = store.upstream_of(instance.id).await?;
    let downstream = store.downstream_of(instance.id).await?;
    let attempts = store.attempts_of_instance(instance.id).await?;
    let done = store.done_attempt_of(instance.id).await?;
    let metrics = match &done {
        Some(d) => store.metrics_of_attempt(d.attempt_id).await?,
        None => Vec::new(),
    };
    if json {
        print_json(&json!({
            "instance": instance,
            "bindings": bindings,
            "upstream": upstream.iter().map(|(u, s)| json!({"stage": s, "key": u.key, "kind": u.kind})).collect::<Vec<_>>(),
            "downstream": downstream.iter().map(|d| json!({"key": d.key, "kind": d.kind})).collect::<Vec<_>>(),
            "attempts": attempts,
            "artifacts": done.as_ref().map(|d| json!(d.artifacts)).unwrap_or(json!([])),
            "metrics": metrics,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("instance {}\nkind     {} (version {})\nparams   {}", instance.key, instance.kind, instance.kind_version, instance.params);
    for b in &bindings {
        println!("in       {} / {} {}", b.pipeline, b.stage, b.axes);
    }
    for (u, s) in &upstream {
        println!("needs    {s}: {} ({})", &u.key[..12], u.kind);
    }
    for d in &downstream {
        println!("used by  {} ({})", &d.key[..12], d.kind);
    }
    let slurm = attempts.iter().any(|a| a.slurm_job.is_some());
    let mut headers = vec!["ATTEMPT", "RUN", "STATUS", "STARTED", "ENDED", "HOST", "DEVICE"];
    if slurm {
        headers.extend(["SLURM JOB", "EXIT", "LOG"]);
    }
    headers.push("ERROR");
    let mut table = Table::new(&headers);
    for a in attempts {
        let mut row = vec![
            a.id.to_string(),
            a.run_id.to_string(),
            a.status.to_string(),
            a.started_at,
            a.ended_at.unwrap_or_default(),
            format!("{}:{}", a.host, a.pid),
            a.device,
        ];
        if slurm {
            row.extend([a.slurm_job.unwrap_or_default(), a.exit_state.unwrap_or_default(), a.log_path.unwrap_or_default()]);
        }
        row.push(a.error.unwrap_or_default());
        table.row(row);
    }
    println!();
    print!("{}", table.render());
    if let Some(done) = &done {
        let mut table = Table::new(&["ARTIFACT", "BYTES", "SHA-256", "PATH"]);
        for a in &done.artifacts {
            table.row(vec![a.name.clone(), a.bytes.to_string(), a.hash.clone(), workspace.root.join(&a.path).display().to_string()]);
        }
        println!();
        print!("{}", table.render());
        // Final values: the unstepped value, else the last step.
        let mut seen = HashSet::new();
        let mut table = Table::new(&["METRIC", "VALUE", "STEP"]);
        for m in metrics.iter().rev() {
            if seen.insert(m.name.clone()) {
                table.row(vec![
                    m.name.clone(),
                    m.value.map_or_else(|| "NaN/inf".to_owned(), |v| v.to_string()),
                    m.step.map_or_else(String::new, |s| s.to_string()),
                ]);
            }
        }
        if !seen.is_empty() {
            println!();
            print!("{}", table.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The upstream chain of an instance, as nested JSON.
fn lineage_tree<'a>(
    store: &'a Store,
    instance: InstanceRecord,
    stage: Option<String>,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Value>> + Send + 'a>> {
    Box::pin(async move {
        anyhow::ensure!(depth < 256, "lineage deeper than 256 levels");
        let mut upstream = Vec::new();
        for (u, s) in store.upstream_of(instance.id).await? {
            upstream.push(lineage_tree(store, u, Some(s), depth + 1).await?);
        }
        let stages: Vec<String> = store
            .bindings_of(instance.id)
            .await?
            .into_iter()
            .map(|b| format!("{}/{}", b.pipeline, b.stage))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let artifacts = match store.done_attempt_of(instance.id).await? {
            Some(d) => d.artifacts.iter().map(|a| json!({"name": a.name, "hash": a.hash})).collect(),
            None => Vec::new(),
        };
        Ok(json!({
            "key": instance.key,
            "kind": instance.kind,
            "kind_version": instance.kind_version,
            "needs_name": stage,
            "stages": stages,
            "params": instance.params,
            "artifacts": artifacts,
            "upstream": upstream,
        }))
    })
}

fn print_tree(node: &Value, prefix: &str, last: bool, root: bool) {
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let name = node["needs_name"].as_str().map(|s| format!("{s}: ")).unwrap_or_default();
    println!(
        "{prefix}{branch}{name}{} {} {}",
        node["kind"].as_str().unwrap_or(""),
        &node["key"].as_str().unwrap_or("")[..12],
        node["params"]
    );
    let child_prefix = format!(
        "{prefix}{}",
        if root {
            ""
        } else if last {
            "   "
        } else {
            "│  "
        }
    );
    for a in node["artifacts"].as_array().into_iter().flatten() {
        println!("{child_prefix}   artifact {} {}", a["name"].as_str().unwrap_or(""), &a["hash"].as_str().unwrap_or("")[..12]);
    }
    let children = node["upstream"].as_array().cloned().unwrap_or_default();
    for (i, child) in children.iter().enumerate() {
        print_tree(child, &child_prefix, i + 1 == children.len(), false);
    }
}

pub async fn lineage(workspace: &Workspace, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = open(workspace).await?;
    let lowered = id.to_ascii_lowercase();
    let roots: Vec<(InstanceRecord, Option<String>)> = match resolve_instance(&store, &lowered).await {
        Ok(instance) => vec![(instance, None)],
        Err(e) => {
            let producers = store.producers_of_hash(&lowered).await?;
            if producers.is_empty() || lowered.len() < 4 {
                return Err(e);
            }
            producers.into_iter().map(|(i, name, hash)| (i, Some(format!("{name} {hash}")))).collect()
        }
    };
    let mut trees = Vec::new();
    for (instance, artifact) in roots {
        let mut tree = lineage_tree(&store, instance, None, 0).await?;
        tree["artifact"] = json!(artifact);
        trees.push(tree);
    }
    if json {
        print_json(&if trees.len() == 1 { trees.remove(0) } else { Value::Array(trees) });
        return Ok(ExitCode::SUCCESS);
    }
    for tree in &trees {
        if let Some(a) = tree["artifact"].as_str() {
            println!("artifact {a} produced by:");
        }
        print_tree(tree, "", true, true);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn gc(workspace: &Workspace, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    // Objects written for a PostgreSQL store are unknown to the SQLite file.
    let servers = workspace.servers_used();
    if workspace.db.is_none() && !servers.is_empty() {
        return Err(UsageError(format!(
            "{} also holds objects of the PostgreSQL store {}: run gc with --db (it keeps what either store references)",
            workspace.root.display(),
            servers.join(", ")
        ))
        .into());
    }
    // Only an existing store decides what is unreferenced: a new, empty one
    // (a lost or replaced ablate.db) references nothing.
    let store =
        Store::open_read_only(workspace).await?.ok_or_else(|| UsageError(format!("no ablate store in {}", workspace.root.display())))?;
    let store = if dry_run {
        // A dry run writes nothing: attempts whose process died are not
        // settled first, so their objects count as in use (spared).
        store
    } else {
        store.close().await;
        let store = Store::open(workspace).await?;
        store.recover_stale().await?;
        store
    };
    let mut referenced = store.referenced_hashes().await?;
    let mut running = store.running_attempt_ids().await?;
    // A running attempt stores an object a moment before it records it, so
    // an object that changed since the oldest running attempt began may be
    // one of those: spared (from a minute earlier, for the clocks of other
    // hosts sharing the workspace).
    let mut oldest = store.oldest_running_start().await?;
    // A workspace used with --db and without it holds objects of both stores.
    if workspace.db.is_some()
        && let Some(local) = Store::open_read_only(&Workspace { db: None, ..workspace.clone() }).await?
    {
        referenced.extend(local.referenced_hashes().await?);
        running.extend(local.running_attempt_ids().await?);
        oldest = oldest.into_iter().chain(local.oldest_running_start().await?).min();
        local.close().await;
    }
    let spare_since = oldest.map(|t| t - std::time::Duration::from_secs(60));
    let mut deleted = Vec::new();
    let mut spared = 0;
    let mut bytes = 0u64;
    for (hash, path) in workspace.objects().list()? {
        if !referenced.contains(&hash) {
            if let Some(since) = spare_since
                && changed_at(&path).is_none_or(|t| t >= since)
            {
                spared += 1;
                continue;
            }
            bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                std::fs::remove_file(&path)?;
            }
            deleted.push(hash);
        }
    }
    let mut scratch = 0;
    if let Ok(entries) = std::fs::read_dir(workspace.root.join("tmp")) {
        for entry in entries.flatten() {
            let attempt: Option<i64> = entry.file_name().to_str().and_then(|s| s.parse().ok());
            if attempt.is_some_and(|a| !running.contains(&a)) {
                scratch += 1;
                if !dry_run {
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
        }
    }
    if !dry_run {
        store.forget_objects(&deleted).await?;
    }
    if json {
        print_json(&json!({
            "dry_run": dry_run,
            "objects_deleted": deleted,
            "bytes_freed": bytes,
            "scratch_dirs_deleted": scratch,
            "objects_spared": spared,
        }));
    } else {
        let verb = if dry_run { "would delete" } else { "deleted" };
        println!("{verb} {} unreferenced object(s), {} bytes, and {scratch} stale scratch dir(s)", deleted.len(), bytes);
        if spared > 0 {
            println!("kept {spared} unreferenced object(s) newer than the oldest running attempt (it may not have recorded them yet)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// When a file's inode last changed (moving it into the object store counts).
fn changed_at(path: &std::path::Path) -> Option<std::time::SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(u64::try_from(meta.ctime()).ok()?, u32::try_from(meta.ctime_nsec()).ok()?))
}
