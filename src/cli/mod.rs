//! The command line. The only module that writes to stdout.

mod args;
mod claims;
mod history;
mod plot;
mod progress;
mod render;
mod results;
mod running;
mod serve;
mod tabular;
mod tools;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::exec::{self, RunOptions};
use crate::pipeline::{self, Diagnostics, Plan};
use crate::store::{Store, Workspace};
use crate::train::bench::BenchSpec;
use args::{Cli, Command, PlanFormat};

/// Exit codes: 0 success, 1 a stage or command failed, 2 bad input, 130 interrupted.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let bars = progress::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli, bars));
    // A stage thread given up on after an interrupt (`StageKind::interrupt_grace`)
    // is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(d) = e.downcast_ref::<Diagnostics>() {
                eprintln!("{d}");
                return ExitCode::from(2);
            }
            // Mistakes in what was asked for (the command line, the
            // workspace or database named) exit 2, printed as they are; a
            // server that cannot be reached is not one (exit 1).
            let usage = e
                .downcast_ref::<UsageError>()
                .map(|UsageError(message)| message.clone())
                .or_else(|| e.downcast_ref::<crate::store::NotAStore>().map(ToString::to_string))
                .or_else(|| e.downcast_ref::<crate::store::BadDatabaseUrl>().map(ToString::to_string))
                .or_else(|| e.downcast_ref::<exec::UpstreamNotDone>().map(ToString::to_string))
                .or_else(|| e.downcast_ref::<exec::BadSelection>().map(ToString::to_string));
            if let Some(message) = usage {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Checks a file path to write: its folder exists and it is not a folder.
pub(super) fn check_output_path(path: &std::path::Path) -> Result<(), UsageError> {
    if path.is_dir() {
        return Err(UsageError(format!("{} is a directory: give a file name to write", path.display())));
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) if !folder.is_dir() => {
            Err(UsageError(format!("cannot write {}: there is no folder {}", path.display(), folder.display())))
        }
        _ => Ok(()),
    }
}

/// A mistake in what the user asked for (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

async fn dispatch(cli: Cli, bars: indicatif::MultiProgress) -> anyhow::Result<ExitCode> {
    let workspace = Workspace::new(cli.workspace).with_db(cli.db).map_err(|e| UsageError(format!("{e:#}")))?;
    if workspace.root.exists() && !workspace.root.is_dir() {
        return Err(UsageError(format!("the workspace {} is not a directory", workspace.root.display())).into());
    }
    if cli.command.may_use_a_gpu() {
        crate::device::use_kernel_cache(&workspace.root)?;
    }
    match cli.command {
        Command::Plan { file, format, json } => running::plan(&workspace, &file, if json { PlanFormat::Json } else { format }).await,
        Command::Run { file, jobs, gpus, cpus, keep_going, force, only, json, executor, slurm } => {
            let options = RunOptions {
                jobs: jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                gpus: gpus.unwrap_or_else(crate::gpu::count),
                cpus: cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
                keep_going,
                force,
                only,
            };
            let slurm = slurm.options_for(executor)?;
            running::run(&workspace, &file, options, slurm, json, bars).await
        }
        Command::Exec { key, json, run, force } => running::exec_one(&workspace, &key, json, run, force, bars).await,
        Command::Cancel { run_id } => running::cancel(&workspace, run_id).await,
        Command::Runs { limit, json } => history::runs(&workspace, limit, json).await,
        Command::Show { id, json } => history::show(&workspace, &id, json).await,
        Command::Lineage { id, json } => history::lineage(&workspace, &id, json).await,
        Command::Gc { dry_run, json } => history::gc(&workspace, dry_run, json).await,
        Command::Kinds { json } => tools::kinds(json),
        Command::BenchTrain { model, loss, batch, precision, steps, warmup, device, decomposed, phases, json } => {
            crate::model::fused::set_enabled(!decomposed);
            let bench = BenchSpec { model: &model, loss, batch, precision, warmup, steps, phases };
            tools::bench_train(bench, &device, json)
        }
        Command::Warmup { model, batch, precision, loss, device, json } => {
            let bench = BenchSpec { model: &model, loss, batch, precision, warmup: 1, steps: 2, phases: false };
            tools::warmup(bench, &device, &workspace.root, json)
        }
        Command::Embed { encoder, pooling, max_tokens, device, precision, json, texts } => {
            tools::embed(&encoder, pooling.as_deref(), max_tokens, (&device, precision), json, &texts)
        }
        Command::History { pipeline, filter, sort, limit, json, csv } => {
            results::history(
                &workspace,
                pipeline.as_deref(),
                filter.as_deref(),
                sort.as_deref(),
                limit,
                tabular::Format::from_flags(json, csv),
            )
            .await
        }
        Command::Results { file, metrics, by, ci, json, csv } => {
            results::results(&workspace, &file, &metrics, &by, ci, tabular::Format::from_flags(json, csv)).await
        }
        Command::Claims { file, json } => claims::claims(&workspace, &file, json).await,
        Command::Compare { a, b, json } => results::compare(&workspace, &a, &b, json).await,
        Command::Sql { query, json, csv, timeout } => {
            let limit = timeout.map(std::time::Duration::from_secs_f64);
            results::sql(&workspace, &query, tabular::Format::from_flags(json, csv), limit).await
        }
        Command::Plot { what } => plot::plot(&workspace, what).await,
        Command::Serve { port, bind, dashboards, query_timeout } => {
            serve::serve(&workspace, bind, port, dashboards, std::time::Duration::from_secs_f64(query_timeout)).await
        }
        Command::Report { file, html } => serve::report(&workspace, &file, &html).await,
    }
}

fn compile(file: &Path) -> anyhow::Result<Plan> {
    let plan = pipeline::compile(file)?;
    for unused in plan.unused_axes() {
        tracing::warn!("{unused}");
    }
    Ok(plan)
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON values serialise"));
}

/// Resolves a key prefix to exactly one stored instance.
async fn resolve_instance(store: &Store, prefix: &str) -> anyhow::Result<crate::store::InstanceRecord> {
    if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(UsageError(format!("`{prefix}` is not a stage key (give at least 4 hex digits)")).into());
    }
    let mut found = store.instances_by_prefix(&prefix.to_ascii_lowercase()).await?;
    match found.len() {
        0 => Err(UsageError(format!("no stage instance with key {prefix} in this workspace")).into()),
        1 => Ok(found.remove(0)),
        _ => Err(UsageError(format!(
            "key prefix {prefix} is ambiguous: {}",
            found.iter().map(|i| &i.key[..16]).collect::<Vec<_>>().join(", ")
        ))
        .into()),
    }
}
