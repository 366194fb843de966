//! Writes: registering plans, claiming and finishing attempts, recording outputs.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::{Any, Row};

use super::backend::Dialect;
use super::objects::{ObjectStat, PutObject};
use super::{Store, host_name, now_ms, now_text, pid_alive};
use crate::pipeline::Plan;
use crate::stages::MetricPoint;

/// How long a running attempt on another host may go without a heartbeat
/// before it is presumed dead (on this host, process liveness decides at once).
pub fn lease_ms() -> i64 {
    std::env::var("ABLATE_LEASE_SECS").ok().and_then(|s| s.parse::<i64>().ok()).map_or(60_000, |s| s * 1000)
}

/// Heartbeat period: well inside the lease.
pub const HEARTBEAT_MS: u64 = 5_000;

/// Outcome of trying to claim an instance for execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process now owns a new running attempt.
    Claimed { attempt_id: i64 },
    /// Already done by an earlier attempt.
    Done { attempt_id: i64 },
    /// A live process is running it now.
    RunningElsewhere { run_id: i64, host: String, pid: i64 },
}

/// The Slurm job (or array task) this process runs in, from the variables
/// Slurm sets: a requeued job starts again under the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlurmTask {
    /// The job id; for an array task, the array's job id.
    pub job_id: String,
    pub array_task: Option<i64>,
}

impl SlurmTask {
    /// This process's Slurm job, if it runs in one.
    pub fn from_env() -> Option<SlurmTask> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let task = var("SLURM_ARRAY_TASK_ID").and_then(|t| t.parse::<i64>().ok());
        match (var("SLURM_ARRAY_JOB_ID"), task) {
            (Some(array), Some(task)) => Some(SlurmTask { job_id: array, array_task: Some(task) }),
            _ => var("SLURM_JOB_ID").map(|job_id| SlurmTask { job_id, array_task: None }),
        }
    }
}

impl std::fmt::Display for SlurmTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.array_task {
            Some(task) => write!(f, "{}_{task}", self.job_id),
            None => f.write_str(&self.job_id),
        }
    }
}

/// Final state of an attempt that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    Failed,
    Interrupted,
}

impl AttemptEnd {
    fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Failed => "failed",
            AttemptEnd::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Done,
    Failed,
    Interrupted,
}

/// Metric rows per INSERT statement.
const METRIC_ROWS_PER_INSERT: usize = 100_000;

impl Store {
    pub(super) fn check_writable(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.read_only, "the store was opened read-only");
        Ok(())
    }

    /// A transaction that will write (see `Dialect::begin_write`).
    pub(super) async fn begin_write(&self) -> anyhow::Result<sqlx::Transaction<'static, Any>> {
        Ok(self.pool.begin_with(self.sql.begin_write).await?)
    }

    /// Records a pipeline file's text (once per distinct text) and returns its id.
    pub async fn register_pipeline(&self, name: &str, path: &str, source: &str) -> anyhow::Result<i64> {
        self.check_writable()?;
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(source.as_bytes()));
        sqlx::query(
            "INSERT INTO pipelines (name, source_hash, path, source, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, source_hash) DO NOTHING",
        )
            .bind(name)
            .bind(&hash)
            .bind(path)
            .bind(source)
            .bind(now_text())
            .execute(&self.pool)
            .await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM pipelines WHERE name = $1 AND source_hash = $2")
            .bind(name)
            .bind(&hash)
            .fetch_one(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn start_run(&self, pipeline_id: Option<i64>, command: &str, argv: &[String]) -> anyhow::Result<i64> {
        self.check_writable()?;
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| account_name());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (pipeline_id, command, argv, host, pid, \"user\", git_revision, ablate_version, started_at, heartbeat_at, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'running') RETURNING id",
        )
        .bind(pipeline_id)
        .bind(command)
        .bind(serde_json::to_string(argv)?)
        .bind(host_name())
        .bind(i64::from(std::process::id()))
        .bind(user)
        .bind(git_revision())
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(now_text())
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// Marks a run as one whose work Slurm runs: its liveness is its jobs',
    /// so `recover_stale` never presumes it lost when its submitter exits.
    pub async fn set_run_executor(&self, run_id: i64, executor: &str) -> anyhow::Result<()> {
        self.check_writable()?;
        sqlx::query("UPDATE runs SET executor = $1 WHERE id = $2").bind(executor).bind(run_id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn finish_run(&self, run_id: i64, status: RunStatus) -> anyhow::Result<()> {
        let status = match status {
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        };
        sqlx::query("UPDATE runs SET status = $1, ended_at = $2 WHERE id = $3")
            .bind(status)
            .bind(now_text())
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records every node, binding and edge of a plan; returns each node's instance id.
    pub async fn register_plan(&self, plan: &Plan, pipeline_id: i64) -> anyhow::Result<Vec<i64>> {
        self.record_plan(plan, pipeline_id).await?;
        let mut conn = self.pool.acquire().await?;
        instance_ids(self.sql, &mut conn, plan).await
    }

    /// Records every node, binding and edge of a plan.
    ///
    /// A pipeline text whose plan (the same node keys, so the same kind
    /// versions too) was recorded before is not written again: planning an
    /// unchanged 100,000-instance study stays a read.
    pub async fn record_plan(&self, plan: &Plan, pipeline_id: i64) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        for node in &plan.nodes {
            sha2::Digest::update(&mut hasher, node.key.as_str().as_bytes());
        }
        let plan_hash = hex::encode(sha2::Digest::finalize(hasher));
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT plan_hash FROM pipelines WHERE id = $1").bind(pipeline_id).fetch_one(&self.pool).await?;
        if recorded.as_deref() == Some(plan_hash.as_str()) {
            return Ok(());
        }
        let now = now_text();
        let mut tx = self.begin_write().await?;
        if let Some(lock) = self.sql.serialize_writers {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        // Multi-row VALUES with bound values, 1000 rows a statement: text
        // columns (parameters, axes) go in faster bound than unpacked from JSON.
        for chunk in plan.nodes.chunks(1000) {
            let sql = format!(
                "INSERT INTO stage_instances (key, kind, kind_version, params, created_at) VALUES {} ON CONFLICT (key) DO NOTHING",
                values_list(self.sql.param_prefix, chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for n in chunk {
                q = q
                    .bind(n.key.as_str())
                    .bind(n.kind.name())
                    .bind(i64::from(n.kind.version()))
                    .bind(serde_json::Value::Object(n.params.0.clone()).to_string())
                    .bind(&now);
            }
            q.execute(&mut *tx).await?;
        }
        let ids = instance_ids(self.sql, &mut tx, plan).await?;
        for chunk in plan.bindings.chunks(1000) {
            let sql = format!(
                "INSERT INTO instance_bindings (pipeline_name, stage, axes, instance_id, pipeline_id, seen_at) VALUES {}
                 ON CONFLICT (pipeline_name, stage, axes, instance_id) DO UPDATE SET pipeline_id = excluded.pipeline_id, seen_at = excluded.seen_at",
                values_list(self.sql.param_prefix, chunk.len(), 6)
            );
            let mut q = sqlx::query(&sql);
            for b in chunk {
                q = q
                    .bind(&plan.spec.name)
                    .bind(plan.stage_name(b))
                    .bind(Plan::axes_json(b).to_string())
                    .bind(ids[b.node])
                    .bind(pipeline_id)
                    .bind(&now);
            }
            q.execute(&mut *tx).await?;
        }
        let edges: Vec<(i64, i64, &str)> = plan
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.upstream.iter().zip(&n.upstream_stages).map(move |(&u, s)| (u, i, s.as_str())))
            .map(|(u, d, s)| (ids[u], ids[d], s))
            .collect();
        for chunk in edges.chunks(1000) {
            let sql = format!(
                "INSERT INTO edges (upstream_id, downstream_id, stage) VALUES {} ON CONFLICT DO NOTHING",
                values_list(self.sql.param_prefix, chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for (u, d, stage) in chunk {
                q = q.bind(*u).bind(*d).bind(*stage);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE pipelines SET plan_hash = $1 WHERE id = $2").bind(&plan_hash).bind(pipeline_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks attempts and runs whose process is gone (or whose lease ran out)
    /// as lost. Slurm runs are left alone: their jobs, not their submitting
    /// process, say whether they still run (the attempts inside those jobs
    /// heartbeat like any other).
    pub async fn recover_stale(&self) -> anyhow::Result<usize> {
        self.check_writable()?;
        let host = host_name();
        let cutoff = now_ms() - lease_ms();
        let mut tx = self.begin_write().await?;
        let mut recovered = 0;
        let attempts = sqlx::query("SELECT id, host, pid, heartbeat_at FROM attempts WHERE status = 'running'").fetch_all(&mut *tx).await?;
        for row in attempts {
            let (id, h, pid, beat): (i64, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
            if is_stale(&host, cutoff, &h, pid, beat) {
                mark_lost(&mut tx, id, format!("process {pid} on {h} stopped without finishing"), beat).await?;
                recovered += 1;
            }
        }
        let runs = sqlx::query("SELECT id, host, pid, heartbeat_at FROM runs WHERE status = 'running' AND executor = 'local'")
            .fetch_all(&mut *tx)
            .await?;
        for row in runs {
            let (id, h, pid, beat): (i64, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
            if is_stale(&host, cutoff, &h, pid, beat) {
                sqlx::query("UPDATE runs SET status = 'lost', ended_at = $1 WHERE id = $2 AND status = 'running'")
                    .bind(super::heartbeat_text(beat))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                recovered += 1;
            }
        }
        tx.commit().await?;
        Ok(recovered)
    }

    /// Claims an instance for this run, unless it is live elsewhere or (without
    /// `even_if_done`, which `--force` uses) already done.
    pub async fn claim(&self, instance_id: i64, run_id: i64, even_if_done: bool) -> anyhow::Result<Claim> {
        self.claim_as(instance_id, run_id, even_if_done, None).await
    }

    /// [`Store::claim`] from inside a Slurm job. A running attempt made by the
    /// same job (or array task) is an earlier incarnation of this one that
    /// Slurm requeued (preemption, node failure): Slurm runs a job once at a
    /// time, so that attempt is over, and the new one resumes from the
    /// instance's state directory.
    pub async fn claim_as(&self, instance_id: i64, run_id: i64, even_if_done: bool, slurm: Option<&SlurmTask>) -> anyhow::Result<Claim> {
        self.check_writable()?;
        let host = host_name();
        let mut tx = self.begin_write().await?;
        if let Some(lock) = self.sql.lock_instance {
            sqlx::query(lock).bind(instance_id).execute(&mut *tx).await?;
        }
        let rows = sqlx::query(
            "SELECT id, status, run_id, host, pid, heartbeat_at, slurm_job_id, slurm_array_task FROM attempts
             WHERE instance_id = $1 AND status IN ('running', 'done') ORDER BY id DESC",
        )
        .bind(instance_id)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let (id, status, other_run, h, pid, beat): (i64, String, i64, String, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
            if status == "done" {
                if even_if_done {
                    continue;
                }
                tx.commit().await?;
                return Ok(Claim::Done { attempt_id: id });
            }
            let same_job = slurm.is_some_and(|s| {
                row.get::<Option<String>, _>(6).as_deref() == Some(s.job_id.as_str()) && row.get::<Option<i64>, _>(7) == s.array_task
            });
            if same_job || is_stale(&host, now_ms() - lease_ms(), &h, pid, beat) {
                let why = match slurm {
                    Some(s) if same_job => format!("Slurm requeued job {s}; process {pid} on {h} was stopped"),
                    _ => format!("process {pid} on {h} stopped without finishing"),
                };
                mark_lost(&mut tx, id, why, beat).await?;
            } else {
                tx.commit().await?;
                return Ok(Claim::RunningElsewhere { run_id: other_run, host: h, pid });
            }
        }
        let attempt_id: i64 = sqlx::query_scalar(
            "INSERT INTO attempts (run_id, instance_id, status, started_at, heartbeat_at, host, pid, slurm_job_id, slurm_array_task, log_path)
             VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8,
                     (SELECT MAX(log_path) FROM slurm_jobs WHERE job_id = $7 AND COALESCE(array_task, -1) = COALESCE($8, -1)))
             RETURNING id",
        )
        .bind(run_id)
        .bind(instance_id)
        .bind(now_text())
        .bind(now_ms())
        .bind(&host)
        .bind(i64::from(std::process::id()))
        .bind(slurm.map(|s| s.job_id.clone()))
        .bind(slurm.and_then(|s| s.array_task))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Claim::Claimed { attempt_id })
    }

    /// Keeps this process's claims in a run alive. Only its own: attempts of
    /// one Slurm run are made by many processes on many nodes, and a dead
    /// one's lease must run out.
    pub async fn heartbeat(&self, run_id: i64) -> anyhow::Result<()> {
        let now = now_ms();
        sqlx::query("UPDATE attempts SET heartbeat_at = $1 WHERE run_id = $2 AND status = 'running' AND host = $3 AND pid = $4")
            .bind(now)
            .bind(run_id)
            .bind(host_name())
            .bind(i64::from(std::process::id()))
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE runs SET heartbeat_at = $1 WHERE id = $2").bind(now).bind(run_id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_attempt_device(&self, attempt_id: i64, device: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE attempts SET device = $1 WHERE id = $2").bind(device).bind(attempt_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records a successful attempt's artifacts, metrics and `inputs` (the
    /// upstream attempts whose outputs it read) and marks it done, atomically.
    pub async fn commit_done(
        &self,
        attempt_id: i64,
        instance_id: i64,
        artifacts: &[(String, PutObject)],
        metrics: &[MetricPoint],
        inputs: &[i64],
    ) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut tx = self.begin_write().await?;
        for upstream in inputs {
            sqlx::query("INSERT INTO attempt_inputs (attempt_id, upstream_attempt_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(attempt_id)
                .bind(upstream)
                .execute(&mut *tx)
                .await?;
        }
        // Objects are upserted in hash order, so two commits sharing objects
        // lock their rows in the same order and cannot deadlock (PostgreSQL).
        let mut by_hash: Vec<&(String, PutObject)> = artifacts.iter().collect();
        by_hash.sort_by(|a, b| a.1.hash.cmp(&b.1.hash));
        for (name, object) in by_hash {
            upsert_artifact(&mut tx, instance_id, attempt_id, name, object).await?;
        }
        insert_metrics(self.sql, &mut tx, instance_id, attempt_id, metrics).await?;
        sqlx::query("UPDATE attempts SET status = 'done', ended_at = $1, error = NULL WHERE id = $2")
            .bind(now_text())
            .bind(attempt_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await.context("committing stage outputs")?;
        Ok(())
    }

    /// Records (or replaces) artifact `name` of a running attempt: a file the
    /// stage keeps updating, such as a training checkpoint.
    pub async fn record_artifact(&self, instance_id: i64, attempt_id: i64, name: &str, object: &PutObject) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut tx = self.begin_write().await?;
        upsert_artifact(&mut tx, instance_id, attempt_id, name, object).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends metric rows for an attempt in batched multi-row inserts, in one transaction.
    pub async fn insert_metrics(&self, instance_id: i64, attempt_id: i64, metrics: &[MetricPoint]) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut tx = self.begin_write().await?;
        insert_metrics(self.sql, &mut tx, instance_id, attempt_id, metrics).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn end_attempt(&self, attempt_id: i64, end: AttemptEnd, error: &str, metrics: &[MetricPoint]) -> anyhow::Result<()> {
        let mut tx = self.begin_write().await?;
        let instance_id: i64 =
            sqlx::query_scalar("SELECT instance_id FROM attempts WHERE id = $1").bind(attempt_id).fetch_one(&mut *tx).await?;
        insert_metrics(self.sql, &mut tx, instance_id, attempt_id, metrics).await?;
        sqlx::query("UPDATE attempts SET status = $1, ended_at = $2, error = $3 WHERE id = $4")
            .bind(end.as_str())
            .bind(now_text())
            .bind(error)
            .bind(attempt_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that an instance was not run because an upstream instance failed.
    pub async fn record_skipped(&self, run_id: i64, instance_id: i64, reason: &str) -> anyhow::Result<()> {
        let now = now_text();
        sqlx::query("INSERT INTO attempts (run_id, instance_id, status, started_at, ended_at, heartbeat_at, host, pid, error) VALUES ($1, $2, 'skipped', $3, $4, $5, $6, $7, $8)")
            .bind(run_id)
            .bind(instance_id)
            .bind(&now)
            .bind(&now)
            .bind(now_ms())
            .bind(host_name())
            .bind(i64::from(std::process::id()))
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A done attempt whose artifacts are missing or corrupt no longer counts as done.
    pub async fn invalidate(&self, attempt_id: i64, reason: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE attempts SET status = 'invalidated', error = $1 WHERE id = $2 AND status = 'done'")
            .bind(reason)
            .bind(attempt_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a re-verified object's new stat so the next check is a cheap stat again.
    pub async fn refresh_object_stat(&self, hash: &str, stat: ObjectStat) -> anyhow::Result<()> {
        sqlx::query("UPDATE objects SET bytes = $1, mtime_ns = $2 WHERE hash = $3")
            .bind(stat.bytes as i64)
            .bind(stat.mtime_ns)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets objects whose files `gc` deleted.
    pub async fn forget_objects(&self, hashes: &[String]) -> anyhow::Result<()> {
        let mut tx = self.begin_write().await?;
        for hash in hashes {
            sqlx::query("DELETE FROM objects WHERE hash = $1 AND NOT EXISTS (SELECT 1 FROM artifacts WHERE hash = $1)")
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The instance id of every node of a plan, in node order (one query: keys in
/// and pairs out as JSON, see `Store::done_attempts`).
async fn instance_ids(sql: &Dialect, conn: &mut sqlx::AnyConnection, plan: &Plan) -> anyhow::Result<Vec<i64>> {
    let keys: Vec<&str> = plan.nodes.iter().map(|n| n.key.as_str()).collect();
    let json: Option<String> = sqlx::query_scalar(sql.instance_ids).bind(serde_json::to_string(&keys)?).fetch_one(&mut *conn).await?;
    let by_key: HashMap<String, i64> = serde_json::from_str::<Vec<(String, i64)>>(json.as_deref().unwrap_or("[]"))?.into_iter().collect();
    keys.iter().map(|k| by_key.get(*k).copied().with_context(|| format!("instance {k} is not registered"))).collect()
}

/// An object row and the artifact row naming it; a second artifact of the
/// same name in the same attempt replaces the first (a newer checkpoint, or
/// the final output recorded under the live checkpoint's name).
async fn upsert_artifact(
    tx: &mut sqlx::Transaction<'_, Any>,
    instance_id: i64,
    attempt_id: i64,
    name: &str,
    object: &PutObject,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO objects (hash, bytes, mtime_ns) VALUES ($1, $2, $3)
         ON CONFLICT (hash) DO UPDATE SET bytes = excluded.bytes, mtime_ns = excluded.mtime_ns",
    )
    .bind(&object.hash)
    .bind(object.stat.bytes as i64)
    .bind(object.stat.mtime_ns)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO artifacts (instance_id, attempt_id, name, hash, bytes, path) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (attempt_id, name) DO UPDATE SET hash = excluded.hash, bytes = excluded.bytes, path = excluded.path",
    )
    .bind(instance_id)
    .bind(attempt_id)
    .bind(name)
    .bind(&object.hash)
    .bind(object.stat.bytes as i64)
    .bind(&object.rel_path)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_metrics(
    sql: &Dialect,
    tx: &mut sqlx::Transaction<'_, Any>,
    instance_id: i64,
    attempt_id: i64,
    metrics: &[MetricPoint],
) -> anyhow::Result<()> {
    // Rows travel as one JSON array per chunk and the engine unpacks them:
    // binding five values per row through the driver is several times slower.
    for chunk in metrics.chunks(METRIC_ROWS_PER_INSERT) {
        let rows: Vec<(&str, Option<i64>, f64)> = chunk.iter().map(|m| (m.name.as_str(), m.step, m.value)).collect();
        sqlx::query(sql.insert_metrics).bind(instance_id).bind(attempt_id).bind(serde_json::to_string(&rows)?).execute(&mut **tx).await?;
    }
    Ok(())
}

/// Placeholders for a multi-row VALUES of `rows` rows of `width` values:
/// `($1, $2), ($3, $4)` on PostgreSQL, `(?, ?), (?, ?)` on SQLite (prefix
/// `?`). SQLite keeps numbered and named parameters in a list that sqlx
/// searches once per bound value, which is quadratic in a statement with
/// thousands of them (10 s instead of 0.2 s to register 100,000 instances);
/// anonymous `?` are bound by position.
fn values_list(prefix: char, rows: usize, width: usize) -> String {
    let mut out = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            if c > 0 {
                out.push_str(", ");
            }
            out.push(prefix);
            if prefix != '?' {
                out.push_str(&(r * width + c + 1).to_string());
            }
        }
        out.push(')');
    }
    out
}

/// Marks a running attempt whose process is gone as lost, with the reason.
/// The account this process runs as, from the password database (cron jobs
/// and containers often have no `$USER`).
fn account_name() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; the name
    // is copied out at once, before any other call could overwrite it.
    unsafe {
        let entry = libc::getpwuid(libc::getuid());
        if entry.is_null() || (*entry).pw_name.is_null() {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr((*entry).pw_name).to_string_lossy().into_owned()
    }
}

/// Marks a running attempt lost, ended at its last heartbeat.
async fn mark_lost(tx: &mut sqlx::Transaction<'static, Any>, attempt_id: i64, why: String, heartbeat_ms: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE attempts SET status = 'lost', ended_at = $1, error = $2 WHERE id = $3 AND status = 'running'")
        .bind(super::heartbeat_text(heartbeat_ms))
        .bind(why)
        .bind(attempt_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether a claim or run is dead: its process gone on this host, or its lease run out.
pub(super) fn is_stale(this_host: &str, cutoff_ms: i64, host: &str, pid: i64, heartbeat_ms: i64) -> bool {
    (host == this_host && !pid_alive(pid)) || heartbeat_ms < cutoff_ms
}

fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).stderr(std::process::Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_lists_are_numbered_in_row_order() {
        assert_eq!(super::values_list('$', 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::values_list('?', 2, 1), "(?), (?)");
    }
}
