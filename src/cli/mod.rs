//! The command line. The only module that writes to stdout.

mod claims;
mod history;
mod plot;
mod progress;
mod render;
mod results;
mod serve;
mod tabular;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::exec::slurm::SlurmOptions;
use crate::exec::{self, NodeOutcome, Observer, RunOptions, node_label};
use crate::freshness;
use crate::loss::Loss;
use crate::pipeline::{self, Diagnostics, Plan};
use crate::stages::{self, CancelToken, NoProgress, Progress};
use crate::store::{Claim, RunStatus, SlurmTask, Store, Workspace};

#[derive(Parser)]
#[command(name = "ablate", version, about = "Declarative ablation pipelines for language–image alignment research")]
pub struct Cli {
    /// Workspace directory holding ablate.db and objects/.
    #[arg(long, global = true, env = "ABLATE_WORKSPACE", default_value = ".ablate")]
    workspace: PathBuf,
    /// Keep the store in this PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB) instead of
    /// the workspace's SQLite file; artifacts stay in the workspace. Needed when jobs run on several nodes.
    #[arg(long, global = true, env = "ABLATE_DB", value_name = "URL", hide_env_values = true)]
    db: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Executor {
    /// Run stages here, in this process.
    Local,
    /// Submit each instance as a Slurm job (sbatch), with dependencies on its upstream jobs.
    Slurm,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum PlanFormat {
    Table,
    Json,
    Dot,
    Mermaid,
}

#[derive(Subcommand)]
enum Command {
    /// Show every stage instance of a pipeline, its key and whether it is cached or must run (and why);
    /// records the instances in the store so `ablate exec KEY` can run them.
    Plan {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: PlanFormat,
        /// Same as --format json.
        #[arg(long)]
        json: bool,
    },
    /// Run what is not done yet.
    Run {
        file: PathBuf,
        /// Instances run at the same time (default: the number of CPU cores).
        #[arg(long, short = 'j', value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        jobs: Option<usize>,
        /// GPUs available to stages that declare them (default: as many as `nvidia-smi -L` lists).
        #[arg(long)]
        gpus: Option<u32>,
        /// CPU cores that running stages declaring `resources.cpus` may use together (default: this machine's).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        cpus: Option<u32>,
        /// After a failure, keep running branches that do not depend on it.
        #[arg(long)]
        keep_going: bool,
        /// Recompute this stage's instances from scratch even when cached, and
        /// what depends on them where their outputs changed (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Run only this stage's instances and the upstream work they need (repeatable).
        #[arg(long, value_name = "STAGE")]
        only: Vec<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Where stages run: here, or as Slurm jobs (see docs/cluster.md).
        #[arg(long, value_enum, default_value = "local")]
        executor: Executor,
        #[command(flatten)]
        slurm: SlurmArgs,
    },
    /// Run one planned instance by itself (its upstream instances must be done).
    Exec {
        /// The instance's key (or a unique prefix).
        key: String,
        #[arg(long)]
        json: bool,
        /// Record the attempt under this run (what the Slurm executor's jobs do) instead of a run of its own.
        #[arg(long, value_name = "RUN_ID")]
        run: Option<i64>,
        /// Run it even if it is done (`ablate run --force` on Slurm).
        #[arg(long)]
        force: bool,
    },
    /// Cancel a run: a Slurm run's jobs (scancel), or a local run on this host (SIGINT).
    Cancel { run_id: i64 },
    /// List runs, newest first.
    Runs {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show a run (by id) or a stage instance (by key or prefix).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The upstream chain of an instance (by key) or of the producer of an artifact (by hash).
    Lineage {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete objects that no artifact references, and stale scratch directories.
    Gc {
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Training throughput of a model preset on synthetic data (images/s, achieved GFLOP/s).
    BenchTrain {
        #[arg(long, default_value = "vit-micro")]
        model: String,
        #[arg(long, default_value = "infonce", value_parser = loss_named)]
        loss: Loss,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Measured steps, after `--warmup` unmeasured ones.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// auto | cpu | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Run the transformer blocks as separate burn ops instead of the
        /// fused CPU kernels (to measure what the fusion buys).
        #[arg(long)]
        decomposed: bool,
        /// Also time each phase of a step (data, forward, backward, gradient
        /// norm, optimizer), waiting for the device after each one.
        #[arg(long)]
        phases: bool,
        #[arg(long)]
        json: bool,
    },
    /// Embed texts with a frozen text encoder, to check an encoder without a pipeline.
    Embed {
        /// A model directory, a .gguf file, or a built-in name (minilm, smollm2).
        #[arg(long)]
        encoder: String,
        /// mean | cls | eos (default: the encoder family's own: mean for BERT, eos for decoders).
        #[arg(long)]
        pooling: Option<String>,
        /// Texts longer than this many tokens are truncated (default and largest: the encoder's own limit).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// auto | cpu | cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print one JSON array: {"text", "tokens", "embedding"} per text, in order.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// List the registered stage kinds and their parameters.
    Kinds {
        #[arg(long)]
        json: bool,
    },
    /// Every finished stage instance with its pipeline, stage, axis values, parameters and final metrics.
    History {
        /// Only this pipeline's instances.
        #[arg(long)]
        pipeline: Option<String>,
        /// Filter, e.g. `loss = "cosine" and (captions = "long" or metric.compositional.mean > 0.7)`;
        /// operators = != < <= > >= ~ (contains); fields: axis or parameter names, param.X, axis.X, metric.X.
        #[arg(long = "where", value_name = "EXPR")]
        filter: Option<String>,
        /// Sort by a field (metric.zero_shot.top1, loss, done_at, ...); a leading `-` sorts descending.
        #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
        sort: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// A study's results table: the latest finished instances of a pipeline by its axes,
    /// mean ± std (and n) over the axes left out (seeds).
    Results {
        /// The pipeline file (or its name in the store).
        file: String,
        /// A metric to show (repeatable; default: compositional.mean, zero_shot.top1,
        /// retrieval.i2t.r1, retrieval.t2i.r1).
        #[arg(long = "metric", value_name = "M")]
        metrics: Vec<String>,
        /// An axis to group by (repeatable; default: every axis that varies, except seeds).
        #[arg(long = "by", value_name = "AXIS")]
        by: Vec<String>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// The pipeline file's [[claims]], each decided on the study's results: mean a − b over
    /// paired cells, its 95 % bootstrap CI and the verdict.
    Claims {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Two instances (keys) or two runs (ids) side by side: parameters that differ, metrics with deltas.
    Compare {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a read-only SQL query on the store (views: v_runs, v_instances, v_metrics, v_results, v_done).
    Sql {
        query: String,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
        /// Stop the query after this many seconds (default: no limit).
        #[arg(long, value_name = "SECS", value_parser = positive_seconds)]
        timeout: Option<f64>,
    },
    /// Draw training curves or ablation bars to an SVG or PNG file.
    Plot {
        #[command(subcommand)]
        what: plot::PlotCommand,
    },
    /// Serve the web dashboard (runs, DAGs, instances, pivots, dashboards/*.toml) from a read-only store.
    Serve {
        #[arg(long, default_value_t = 8787)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Directory of dashboard files.
        #[arg(long, default_value = "dashboards")]
        dashboards: PathBuf,
        /// Seconds a dashboard panel's SQL may run before it is stopped (its panel then shows why).
        #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_seconds)]
        query_timeout: f64,
    },
    /// Write a study's tables and charts as one self-contained HTML file.
    Report {
        /// The pipeline file (or pipeline name).
        file: String,
        #[arg(long, value_name = "OUT.html")]
        html: PathBuf,
    },
}

const DEFAULT_ARRAY_LIMIT: usize = 1000;

/// `ablate run --executor slurm` options.
#[derive(clap::Args)]
struct SlurmArgs {
    /// Slurm partition for the jobs.
    #[arg(long, help_heading = "Slurm")]
    partition: Option<String>,
    /// Slurm account to charge.
    #[arg(long, help_heading = "Slurm")]
    account: Option<String>,
    /// Slurm quality of service.
    #[arg(long, help_heading = "Slurm")]
    qos: Option<String>,
    /// Extra sbatch option, passed as is (repeatable), e.g. --sbatch-arg=--requeue.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true, help_heading = "Slurm")]
    sbatch_args: Vec<String>,
    /// Submit (or adopt) the jobs and return instead of following them.
    #[arg(long, help_heading = "Slurm")]
    detach: bool,
    /// Resubmit an instance whose job failed (node failure, time limit, preemption, error) up to N times.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Slurm")]
    retries: u32,
    /// Most tasks in one job array (one sbatch call).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ARRAY_LIMIT, help_heading = "Slurm")]
    array_limit: usize,
}

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
    match runtime.block_on(dispatch(cli, bars)) {
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
                .or_else(|| e.downcast_ref::<exec::UpstreamNotDone>().map(ToString::to_string));
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
    match cli.command {
        Command::Plan { file, format, json } => plan(&workspace, &file, if json { PlanFormat::Json } else { format }).await,
        Command::Run { file, jobs, gpus, cpus, keep_going, force, only, json, executor, slurm } => {
            let options = RunOptions {
                jobs: jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                gpus: gpus.unwrap_or_else(crate::gpu::count),
                cpus: cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
                keep_going,
                force,
                only,
            };
            if executor != Executor::Slurm {
                let given = [
                    ("--partition", slurm.partition.is_some()),
                    ("--account", slurm.account.is_some()),
                    ("--qos", slurm.qos.is_some()),
                    ("--sbatch-arg", !slurm.sbatch_args.is_empty()),
                    ("--detach", slurm.detach),
                    ("--retries", slurm.retries != 0),
                    ("--array-limit", slurm.array_limit != DEFAULT_ARRAY_LIMIT),
                ];
                if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                    return Err(UsageError(format!("{flag} is an option of --executor slurm; this run is local")).into());
                }
            }
            if slurm.array_limit == 0 {
                return Err(UsageError("--array-limit must be 1 or more".into()).into());
            }
            let slurm = (executor == Executor::Slurm).then_some(SlurmOptions {
                partition: slurm.partition,
                account: slurm.account,
                qos: slurm.qos,
                sbatch_args: slurm.sbatch_args,
                detach: slurm.detach,
                retries: slurm.retries,
                array_limit: slurm.array_limit,
            });
            run(&workspace, &file, options, slurm, json, bars).await
        }
        Command::Exec { key, json, run, force } => exec_one(&workspace, &key, json, run, force, bars).await,
        Command::Cancel { run_id } => cancel(&workspace, run_id).await,
        Command::Runs { limit, json } => history::runs(&workspace, limit, json).await,
        Command::Show { id, json } => history::show(&workspace, &id, json).await,
        Command::Lineage { id, json } => history::lineage(&workspace, &id, json).await,
        Command::Gc { dry_run, json } => history::gc(&workspace, dry_run, json).await,
        Command::Kinds { json } => kinds(json),
        Command::BenchTrain { model, loss, batch, steps, warmup, device, decomposed, phases, json } => {
            crate::model::fused::set_enabled(!decomposed);
            bench_train(Bench { model: &model, loss, batch, warmup, steps, phases }, &device, json)
        }
        Command::Embed { encoder, pooling, max_tokens, device, json, texts } => {
            embed(&encoder, pooling.as_deref(), max_tokens, &device, json, &texts)
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
        Command::Results { file, metrics, by, json, csv } => {
            results::results(&workspace, &file, &metrics, &by, tabular::Format::from_flags(json, csv)).await
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

/// A number of seconds for a time limit: more than 0, at most a day.
fn loss_named(name: &str) -> Result<Loss, String> {
    Loss::from_name(name).ok_or_else(|| format!("not a loss ({})", Loss::NAMES.join(", ")))
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err(format!("`{text}` is not a number of seconds between 0 (excluded) and 86400")),
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

fn axes_text(axes: &[(String, serde_json::Value)]) -> String {
    axes.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect::<Vec<_>>().join(" ")
}

async fn plan(workspace: &Workspace, file: &Path, format: PlanFormat) -> anyhow::Result<ExitCode> {
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
            print!("{}", table.render());
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

async fn run(
    workspace: &Workspace,
    file: &Path,
    options: RunOptions,
    slurm: Option<SlurmOptions>,
    json: bool,
    bars: indicatif::MultiProgress,
) -> anyhow::Result<ExitCode> {
    let plan = compile(file)?;
    for name in options.force.iter().chain(&options.only) {
        if !plan.spec.stages.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = plan.spec.stages.iter().map(|s| s.name.as_str()).collect();
            return Err(UsageError(format!("no stage named `{name}` in {} (stages: {})", file.display(), names.join(", "))).into());
        }
    }
    if !options.only.is_empty() {
        // --only runs those stages and what they need: a forced stage outside that would silently not run.
        let mut selected: Vec<&str> = options.only.iter().map(String::as_str).collect();
        let mut i = 0;
        while i < selected.len() {
            if let Some(stage) = plan.spec.stages.iter().find(|s| s.name == selected[i]) {
                selected.extend(stage.needs.iter().map(String::as_str).filter(|n| !selected.contains(n)).collect::<Vec<_>>());
            }
            i += 1;
        }
        if let Some(left) = options.force.iter().find(|f| !selected.contains(&f.as_str())) {
            return Err(UsageError(format!(
                "--force {left}: `{left}` does not run under --only {} (neither named nor needed by it)",
                options.only.join(" --only ")
            ))
            .into());
        }
    }
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
            store.finish_run(run_id, RunStatus::Failed).await?;
            return Err(e);
        }
    };
    // A Slurm run whose jobs still run (detached, or Ctrl-C without cancelling
    // them) stays `running`: rerunning the command follows it again.
    let jobs_left = slurm_summary.as_ref().map_or(0, |s| s.jobs_left);
    let status = if report.interrupted {
        RunStatus::Interrupted
    } else if report.failed.is_empty() {
        RunStatus::Done
    } else {
        RunStatus::Failed
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
            "status": match status { RunStatus::Done => "done", RunStatus::Failed => "failed", RunStatus::Interrupted => "interrupted" },
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
                results::print_summary(&table, tabular::Format::Table);
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
        RunStatus::Done => ExitCode::SUCCESS,
        RunStatus::Failed => ExitCode::from(1),
        RunStatus::Interrupted => ExitCode::from(130),
    })
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

async fn exec_one(
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
            if store.run_executor(id).await?.is_none() {
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
                store.finish_run(run_id, RunStatus::Done).await?;
            }
            (json!({"status": "cached", "attempt_id": attempt_id}), ExitCode::SUCCESS)
        }
        Claim::RunningElsewhere { run_id: other, host, pid } => {
            if own_run {
                store.finish_run(run_id, RunStatus::Failed).await?;
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
                exec::JobEnd::Done => ("done", NodeOutcome::Done, ExitCode::SUCCESS, RunStatus::Done),
                exec::JobEnd::Interrupted => ("interrupted", NodeOutcome::Interrupted, ExitCode::from(130), RunStatus::Interrupted),
                exec::JobEnd::Failed(e) => ("failed", NodeOutcome::Failed(e), ExitCode::from(1), RunStatus::Failed),
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

fn bench_train(bench: Bench<'_>, device: &str, json: bool) -> anyhow::Result<ExitCode> {
    use crate::text::device::DeviceRequest;
    let request = DeviceRequest::parse(device).map_err(UsageError)?;
    if crate::model::VitPreset::named(bench.model, "avg").is_none() {
        return Err(
            UsageError(format!("--model {}: not a model preset ({})", bench.model, crate::model::VitPreset::NAMES.join(", "))).into()
        );
    }
    if bench.batch < 2 || bench.steps < 1 {
        return Err(UsageError("--batch must be at least 2 and --steps at least 1".into()).into());
    }
    let device = request.resolve().map_err(|e| UsageError(format!("{e:#}")))?;
    let device_name = device.name();
    let result = device.run(bench)?;
    if json {
        print_json(&json!({"device": device_name, "result": result}));
    } else {
        println!(
            "{} {} batch {} on {device_name}: {:.1} images/s, {:.1} GFLOP/s (image tower fwd+bwd) over {} steps",
            result.model,
            result.loss.name(),
            result.batch,
            result.images_per_s,
            result.gflops,
            result.steps
        );
        if let Some(p) = result.phases_ms {
            println!(
                "per step: data {:.1} ms, forward {:.1} ms, backward {:.1} ms, gradient norm {:.1} ms, optimizer {:.1} ms",
                p.data, p.forward, p.backward, p.grad_norm, p.optimizer
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench-train`'s measurement on the requested backend.
struct Bench<'a> {
    model: &'a str,
    loss: Loss,
    batch: usize,
    warmup: usize,
    steps: usize,
    phases: bool,
}

impl crate::text::device::OnBackend for Bench<'_> {
    type Output = crate::train::bench::BenchResult;
    fn run<B: burn::tensor::backend::Backend>(self, device: &B::Device) -> anyhow::Result<Self::Output> {
        crate::train::bench::run::<burn::backend::Autodiff<B>>(
            self.model,
            self.loss,
            self.batch,
            self.warmup,
            self.steps,
            self.phases,
            device,
        )
    }
}

/// `ablate cancel RUN_ID`.
async fn cancel(workspace: &Workspace, run_id: i64) -> anyhow::Result<ExitCode> {
    let Some(store) = Store::open_read_only(workspace).await? else {
        return Err(UsageError(format!("no ablate store in {}", workspace.db_display())).into());
    };
    store.close().await;
    let store = Store::open(workspace).await?;
    // A local run whose process died (or stopped heartbeating: its pid may
    // now be another program's) is recorded lost first, and never signalled.
    store.recover_stale().await?;
    let Some((executor, host, pid, status)) = store.run_executor(run_id).await? else {
        return Err(UsageError(format!("no run {run_id} in this store")).into());
    };
    if executor == "slurm" {
        let cancelled = exec::slurm::cancel_run(&store, run_id).await?;
        if status == "running" {
            store.finish_run(run_id, RunStatus::Interrupted).await?;
        }
        println!("run {run_id}: cancelled {cancelled} Slurm job(s)");
        return Ok(ExitCode::SUCCESS);
    }
    if status == "lost" && host == crate::store::host_name() {
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
    if status != "running" {
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

fn embed(
    encoder: &str,
    pooling: Option<&str>,
    max_tokens: Option<usize>,
    device: &str,
    json: bool,
    texts: &[String],
) -> anyhow::Result<ExitCode> {
    use crate::text::device::{DeviceRequest, LoadedEncoder};
    use crate::text::{EmbedOptions, EncoderSpec, Pooling, check_max_tokens};
    let usage = |e: anyhow::Error| UsageError(format!("{e:#}"));
    let spec = EncoderSpec::resolve(encoder).map_err(usage)?;
    let pooling: Pooling = match pooling {
        Some(p) => p.parse().map_err(usage)?,
        None => spec.family().map_err(usage)?.default_pooling(),
    };
    let limit = spec.token_limit().map_err(usage)?;
    let max_tokens = max_tokens.unwrap_or(limit);
    check_max_tokens(max_tokens, limit).map_err(|e| UsageError(format!("--max-tokens {e}")))?;
    // A GPU asked for that is not there is a usage error.
    let device = DeviceRequest::parse(device).map_err(UsageError)?.resolve().map_err(usage)?;
    let loaded = LoadedEncoder::load(&spec, device)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = EmbedOptions { pooling, max_tokens, batch_size: 64, normalize: true };
    let embedded = loaded.embed_with_progress(&refs, &options, |_| Ok(()))?;
    if json {
        let rows: Vec<_> =
            texts.iter().zip(&embedded).map(|(t, e)| json!({"text": t, "tokens": e.tokens, "embedding": e.embedding})).collect();
        print_json(&serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    println!("encoder {} ({} dims, {} pooling, {})", spec.path().display(), loaded.dim(), pooling.name(), loaded.device_name());
    let mut table = render::Table::new(&["TEXT", "TOKENS", "TRUNCATED", "FIRST DIMS"]);
    for (t, e) in texts.iter().zip(&embedded) {
        let head: Vec<String> = e.embedding.iter().take(4).map(|v| format!("{v:+.4}")).collect();
        table.row(vec![t.clone(), e.tokens.len().to_string(), e.truncated.to_string(), format!("{} …", head.join(" "))]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

fn kinds(json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let kinds: Vec<_> = stages::KINDS
            .iter()
            .map(|k| {
                json!({
                    "name": k.name(),
                    "version": k.version(),
                    "summary": k.summary(),
                    "params": k.params().iter().map(|p| json!({"name": p.name, "type": format!("{:?}", p.ty), "choices": p.ty.choices(), "default": p.default_value(), "required": matches!(p.default, stages::ParamDefault::Required), "doc": p.doc})).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(kinds));
        return Ok(ExitCode::SUCCESS);
    }
    for kind in stages::KINDS {
        println!("{} (version {}): {}", kind.name(), kind.version(), kind.summary());
        let mut table = render::Table::new(&["  PARAMETER", "DEFAULT", "DESCRIPTION"]);
        for p in kind.params() {
            let default = match p.default {
                stages::ParamDefault::Required => "required".to_owned(),
                stages::ParamDefault::Absent => "-".to_owned(),
                _ => p.default_value().map(|v| v.to_string()).unwrap_or_default(),
            };
            let doc = match p.ty {
                stages::ParamType::OneOf(choices) => format!("{}; one of {}", p.doc, choices.join(" | ")),
                stages::ParamType::ListOf(choices) => format!("{}; any of {}", p.doc, choices.join(" | ")),
                _ => p.doc.to_owned(),
            };
            table.row(vec![format!("  {}", p.name), default, doc]);
        }
        println!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}
