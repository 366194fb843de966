//! Slurm jobs: what was submitted for which instance, who follows it, and how
//! each job ended. The executor (`exec::slurm`) decides; this records.

use serde::Serialize;
use sqlx::Row as _;

use super::attempts::SlurmTask;
use super::{Store, now_ms, now_text};

/// A submitted job (or array task) as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJobRow {
    pub id: i64,
    pub run_id: i64,
    pub follower_id: i64,
    pub instance_id: i64,
    pub task: SlurmTask,
    pub log_path: String,
    pub state: String,
    pub cancelled: bool,
}

/// A job of a run, for `ablate show RUN`.
#[derive(Debug, Clone, Serialize)]
pub struct SlurmJobRecord {
    pub job: String,
    pub key: String,
    pub kind: String,
    pub state: String,
    pub reason: Option<String>,
    pub node: Option<String>,
    pub exit_code: Option<String>,
    pub log_path: String,
    pub open: bool,
}

/// How a job ended, as the executor read it from Slurm.
#[derive(Debug, Clone)]
pub struct SlurmJobEnd {
    /// Slurm's final state (`COMPLETED`, `FAILED`, `TIMEOUT`, ...), or `GONE`
    /// when Slurm no longer knows the job.
    pub state: String,
    pub reason: Option<String>,
    pub node: Option<String>,
    pub exit_code: Option<String>,
    /// The job ended without ever starting (cancelled while pending, or an
    /// upstream job failed so its dependency can never be satisfied).
    pub never_started: bool,
    /// The failure message to record if the instance is not done.
    pub message: String,
}

/// What closing a job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobClosed {
    /// The instance is done (by this job or another).
    Done,
    /// The job's attempt is recorded failed, with this error.
    Failed(String),
    /// The job never started and left no attempt.
    NeverStarted,
    /// Another process closed the job first; read the instance's state again.
    AlreadyClosed,
}

const JOB_COLUMNS: &str = "id, run_id, follower_id, instance_id, job_id, array_task, log_path, state, cancelled";

fn job_row(row: &sqlx::any::AnyRow) -> SlurmJobRow {
    SlurmJobRow {
        id: row.get(0),
        run_id: row.get(1),
        follower_id: row.get(2),
        instance_id: row.get(3),
        task: SlurmTask { job_id: row.get(4), array_task: row.get(5) },
        log_path: row.get(6),
        state: row.get(7),
        cancelled: row.get::<i64, _>(8) != 0,
    }
}

impl Store {
    /// Records the jobs one `sbatch` created: `(instance_id, array task, log path)` each.
    pub async fn record_submission(&self, run_id: i64, job_id: &str, tasks: &[(i64, Option<i64>, String)]) -> anyhow::Result<()> {
        self.check_writable()?;
        let now = now_text();
        let mut tx = self.begin_write().await?;
        for (instance_id, task, log_path) in tasks {
            sqlx::query(
                "INSERT INTO slurm_jobs (run_id, follower_id, instance_id, job_id, array_task, log_path, submitted_at, state)
                 VALUES ($1, $1, $2, $3, $4, $5, $6, 'PENDING')",
            )
            .bind(run_id)
            .bind(instance_id)
            .bind(job_id)
            .bind(*task)
            .bind(log_path)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Jobs not yet closed for any of these instances.
    pub async fn open_slurm_jobs(&self, instance_ids: &[i64]) -> anyhow::Result<Vec<SlurmJobRow>> {
        let wanted: std::collections::HashSet<i64> = instance_ids.iter().copied().collect();
        let rows =
            sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM slurm_jobs WHERE ended_at IS NULL ORDER BY id")).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(job_row).filter(|j| wanted.contains(&j.instance_id)).collect())
    }

    /// Jobs not yet closed that a run submitted or follows.
    pub async fn open_slurm_jobs_of_run(&self, run_id: i64) -> anyhow::Result<Vec<SlurmJobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM slurm_jobs WHERE ended_at IS NULL AND (run_id = $1 OR follower_id = $1) ORDER BY id"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(job_row).collect())
    }

    /// A rerun takes over following jobs an earlier run submitted.
    pub async fn adopt_slurm_jobs(&self, job_row_ids: &[i64], follower_id: i64) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut tx = self.begin_write().await?;
        for id in job_row_ids {
            sqlx::query("UPDATE slurm_jobs SET follower_id = $1 WHERE id = $2").bind(follower_id).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The state Slurm last reported for a live job (what `ablate show` prints while it waits).
    pub async fn note_slurm_state(&self, job_row_id: i64, state: &str, reason: Option<&str>, node: Option<&str>) -> anyhow::Result<()> {
        sqlx::query("UPDATE slurm_jobs SET state = $1, reason = $2, node = $3 WHERE id = $4 AND ended_at IS NULL")
            .bind(state)
            .bind(reason)
            .bind(node)
            .bind(job_row_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notes that ablate asked Slurm to cancel these jobs (so their end is a
    /// cancellation, not a failure to retry).
    pub async fn mark_slurm_cancelled(&self, job_row_ids: &[i64]) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut tx = self.begin_write().await?;
        for id in job_row_ids {
            sqlx::query("UPDATE slurm_jobs SET cancelled = 1 WHERE id = $1").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records how a job ended, once: closes its row and settles its attempt.
    /// An attempt the job left running, interrupted or lost (killed by a
    /// signal, its node gone) becomes failed with `end.message`; a job that
    /// died before `ablate exec` claimed anything gets a failed attempt of
    /// its own, so every job that ran shows up in `ablate show`.
    pub async fn close_slurm_job(&self, job: &SlurmJobRow, end: &SlurmJobEnd) -> anyhow::Result<JobClosed> {
        self.check_writable()?;
        let now = now_text();
        let mut tx = self.begin_write().await?;
        let closed = sqlx::query(
            "UPDATE slurm_jobs SET state = $1, reason = $2, node = COALESCE($3, node), exit_code = $4, ended_at = $5 WHERE id = $6 AND ended_at IS NULL",
        )
        .bind(&end.state)
        .bind(&end.reason)
        .bind(&end.node)
        .bind(&end.exit_code)
        .bind(&now)
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
        if closed.rows_affected() == 0 {
            tx.commit().await?;
            return Ok(JobClosed::AlreadyClosed);
        }
        let exit_state = match &end.exit_code {
            Some(code) => format!("{} {code}", end.state),
            None => end.state.clone(),
        };
        let attempt = sqlx::query(
            "SELECT id, status, error FROM attempts WHERE instance_id = $1 AND slurm_job_id = $2 AND COALESCE(slurm_array_task, -1) = COALESCE($3, -1)
             ORDER BY id DESC LIMIT 1",
        )
        .bind(job.instance_id)
        .bind(&job.task.job_id)
        .bind(job.task.array_task)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(a) = &attempt {
            sqlx::query("UPDATE attempts SET exit_state = $1 WHERE id = $2")
                .bind(&exit_state)
                .bind(a.get::<i64, _>(0))
                .execute(&mut *tx)
                .await?;
        }
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE instance_id = $1 AND status = 'done'")
            .bind(job.instance_id)
            .fetch_one(&mut *tx)
            .await?;
        let outcome = if done > 0 {
            JobClosed::Done
        } else if let Some(a) = attempt {
            let (id, status, error): (i64, String, Option<String>) = (a.get(0), a.get(1), a.get(2));
            // The stage's own error says more than the job's state; keep it.
            let error = match (status.as_str(), error) {
                ("failed", Some(e)) => format!("{e} ({})", end.message),
                _ => end.message.clone(),
            };
            sqlx::query(
                "UPDATE attempts SET status = 'failed', ended_at = COALESCE(ended_at, $1), error = $2
                 WHERE id = $3 AND status IN ('running', 'interrupted', 'lost', 'failed')",
            )
            .bind(&now)
            .bind(&error)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            JobClosed::Failed(error)
        } else if end.never_started {
            JobClosed::NeverStarted
        } else {
            sqlx::query(
                "INSERT INTO attempts (run_id, instance_id, status, started_at, ended_at, heartbeat_at, host, pid, error,
                                       slurm_job_id, slurm_array_task, exit_state, log_path)
                 VALUES ($1, $2, 'failed', $3, $3, $4, $5, 0, $6, $7, $8, $9, $10)",
            )
            .bind(job.follower_id)
            .bind(job.instance_id)
            .bind(&now)
            .bind(now_ms())
            .bind(end.node.clone().unwrap_or_else(|| "-".into()))
            .bind(&end.message)
            .bind(&job.task.job_id)
            .bind(job.task.array_task)
            .bind(&exit_state)
            .bind(&job.log_path)
            .execute(&mut *tx)
            .await?;
            JobClosed::Failed(end.message.clone())
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Every job a run submitted or follows, for `ablate show RUN`.
    pub async fn slurm_jobs_of_run(&self, run_id: i64) -> anyhow::Result<Vec<SlurmJobRecord>> {
        let rows = sqlx::query(
            "SELECT j.job_id, j.array_task, i.key, i.kind, j.state, j.reason, j.node, j.exit_code, j.log_path,
                    CASE WHEN j.ended_at IS NULL THEN 1 ELSE 0 END
             FROM slurm_jobs j JOIN stage_instances i ON i.id = j.instance_id
             WHERE j.run_id = $1 OR j.follower_id = $1 ORDER BY j.id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| SlurmJobRecord {
                job: SlurmTask { job_id: r.get(0), array_task: r.get(1) }.to_string(),
                key: r.get(2),
                kind: r.get(3),
                state: r.get(4),
                reason: r.get(5),
                node: r.get(6),
                exit_code: r.get(7),
                log_path: r.get(8),
                open: r.get::<i64, _>(9) != 0,
            })
            .collect())
    }

    /// Ends Slurm runs (other than `except`) that no longer have an open job
    /// and are still marked running: a run a rerun adopted, or one followed
    /// by nobody since it was detached. Failed if any of its attempts failed.
    pub async fn finish_settled_slurm_runs(&self, except: i64) -> anyhow::Result<()> {
        self.check_writable()?;
        sqlx::query(
            "UPDATE runs SET ended_at = $1,
                    status = CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = runs.id AND a.status = 'failed') THEN 'failed' ELSE 'done' END
             WHERE executor = 'slurm' AND status = 'running' AND id <> $2
               AND NOT EXISTS (SELECT 1 FROM slurm_jobs j WHERE j.ended_at IS NULL AND (j.run_id = runs.id OR j.follower_id = runs.id))",
        )
        .bind(now_text())
        .bind(except)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
