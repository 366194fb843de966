//! Attempts: claiming an instance, recording what a running attempt makes,
//! and ending it (done, failed, interrupted, skipped, invalidated, lost).

use anyhow::Context as _;
use sqlx::{Any, Row as _};

use super::backend::Dialect;
use super::objects::PutObject;
use super::runs::{is_stale, lease_ms};
use super::status::{AttemptEnd, AttemptStatus};
use super::{Store, host_name, now_ms, now_text};
use crate::stages::MetricPoint;

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

/// Metric rows per INSERT statement.
const METRIC_ROWS_PER_INSERT: usize = 100_000;

impl Store {
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
            .bind(AttemptStatus::from(end).as_str())
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

/// Marks a running attempt lost, ended at its last heartbeat.
pub(super) async fn mark_lost(
    tx: &mut sqlx::Transaction<'static, Any>,
    attempt_id: i64,
    why: String,
    heartbeat_ms: i64,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE attempts SET status = 'lost', ended_at = $1, error = $2 WHERE id = $3 AND status = 'running'")
        .bind(super::heartbeat_text(heartbeat_ms))
        .bind(why)
        .bind(attempt_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
