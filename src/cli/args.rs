//! The command line's arguments: the commands and their options (clap).

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};

use super::{UsageError, plot};
use crate::exec::slurm::SlurmOptions;
use crate::loss::Loss;
use crate::precision::Precision;
use crate::store::Executor;

#[derive(Parser)]
#[command(name = "ablate", version, about = "Declarative ablation pipelines for language–image alignment research")]
pub struct Cli {
    /// Workspace directory holding ablate.db and objects/.
    #[arg(long, global = true, env = "ABLATE_WORKSPACE", default_value = ".ablate")]
    pub(super) workspace: PathBuf,
    /// Keep the store in this PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB) instead of
    /// the workspace's SQLite file; artifacts stay in the workspace. Needed when jobs run on several nodes.
    #[arg(long, global = true, env = "ABLATE_DB", value_name = "URL", hide_env_values = true)]
    pub(super) db: Option<String>,
    #[command(subcommand)]
    pub(super) command: Command,
}

/// `--executor`: the store's executor, named by its stored word.
impl ValueEnum for Executor {
    fn value_variants<'a>() -> &'a [Self] {
        &[Executor::Local, Executor::Slurm]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Executor::Local => "Run stages here, in this process",
            Executor::Slurm => "Submit each instance as a Slurm job (sbatch), with dependencies on its upstream jobs",
        };
        Some(PossibleValue::new(self.as_str()).help(help))
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(super) enum PlanFormat {
    Table,
    Json,
    Dot,
    Mermaid,
}

#[derive(Subcommand)]
pub(super) enum Command {
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
        /// f32 | bf16 (bf16 matmuls and activations, f32 weights, statistics and loss).
        #[arg(long, default_value = "f32", value_parser = precision_named)]
        precision: Precision,
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
    /// Fill the workspace's GPU kernel cache before a study: a few training steps of a model preset
    /// on synthetic data at this batch and precision, so that burn's CUDA backend tunes and
    /// compiles its kernels now and every later stage and process using the workspace starts from
    /// them.
    Warmup {
        /// Image tower preset (vit-micro, vit-tiny, vit-s16, vit-b16, ...).
        #[arg(long)]
        model: String,
        #[arg(long)]
        batch: usize,
        /// f32 | bf16 (the kernels differ: warm the precision the study trains in).
        #[arg(long, default_value = "f32", value_parser = precision_named)]
        precision: Precision,
        #[arg(long, default_value = "infonce", value_parser = loss_named)]
        loss: Loss,
        /// auto | cpu | cuda:N (only a GPU has kernels to tune; on the CPU this only trains).
        #[arg(long, default_value = "auto")]
        device: String,
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
        /// f32 | bf16 (bf16 matmuls and activations, f32 weights and statistics).
        #[arg(long, default_value = "f32", value_parser = precision_named)]
        precision: Precision,
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
        /// Show each cell's 95 % Student-t interval of the mean instead of its std
        /// (CSV: `.ci_low` and `.ci_high` columns; JSON always has them).
        #[arg(long)]
        ci: bool,
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

impl Command {
    /// Whether the command may run work on a GPU, and so needs the
    /// workspace's kernel cache set up before anything starts on one.
    pub(super) fn may_use_a_gpu(&self) -> bool {
        matches!(
            self,
            Command::Run { .. } | Command::Exec { .. } | Command::BenchTrain { .. } | Command::Warmup { .. } | Command::Embed { .. }
        )
    }
}

const DEFAULT_ARRAY_LIMIT: usize = 1000;

/// `ablate run --executor slurm` options.
#[derive(clap::Args)]
pub(super) struct SlurmArgs {
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

impl SlurmArgs {
    /// The Slurm executor's options, `None` for a local run; a Slurm option
    /// given to a local run is a usage error rather than silently unused.
    pub(super) fn options_for(self, executor: Executor) -> Result<Option<SlurmOptions>, UsageError> {
        if executor != Executor::Slurm {
            let given = [
                ("--partition", self.partition.is_some()),
                ("--account", self.account.is_some()),
                ("--qos", self.qos.is_some()),
                ("--sbatch-arg", !self.sbatch_args.is_empty()),
                ("--detach", self.detach),
                ("--retries", self.retries != 0),
                ("--array-limit", self.array_limit != DEFAULT_ARRAY_LIMIT),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                return Err(UsageError(format!("{flag} is an option of --executor slurm; this run is local")));
            }
        }
        if self.array_limit == 0 {
            return Err(UsageError("--array-limit must be 1 or more".into()));
        }
        Ok((executor == Executor::Slurm).then_some(SlurmOptions {
            partition: self.partition,
            account: self.account,
            qos: self.qos,
            sbatch_args: self.sbatch_args,
            detach: self.detach,
            retries: self.retries,
            array_limit: self.array_limit,
        }))
    }
}

/// A loss by its name, for `bench-train --loss`.
fn loss_named(name: &str) -> Result<Loss, String> {
    Loss::from_name(name).ok_or_else(|| format!("not a loss ({})", Loss::NAMES.join(", ")))
}

fn precision_named(name: &str) -> Result<Precision, String> {
    Precision::from_name(name).ok_or_else(|| format!("not a precision ({})", Precision::NAMES.join(", ")))
}

/// A number of seconds for a time limit: more than 0, at most a day.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err(format!("`{text}` is not a number of seconds between 0 (excluded) and 86400")),
    }
}
