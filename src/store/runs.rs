//! Runs: starting, heartbeating and ending them, and recovering the claims
//! and runs of processes that died.

use sqlx::Row as _;

use super::attempts::mark_lost;
use super::status::{Executor, RunEnd, RunStatus};
use super::{Store, host_name, now_ms, now_text, pid_alive};

/// How long a running attempt on another host may go without a heartbeat
/// before it is presumed dead (on this host, process liveness decides at once).
pub fn lease_ms() -> i64 {
    std::env::var("ABLATE_LEASE_SECS").ok().and_then(|s| s.parse::<i64>().ok()).map_or(60_000, |s| s * 1000)
}

/// Heartbeat period: well inside the lease.
pub const HEARTBEAT_MS: u64 = 5_000;

/// A run as `ablate cancel` needs it.
#[derive(Debug, Clone)]
pub struct RunProcess {
    pub executor: Executor,
    /// The host and process that started it.
    pub host: String,
    pub pid: i64,
    pub status: RunStatus,
}

impl Store {
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
    pub async fn set_run_executor(&self, run_id: i64, executor: Executor) -> anyhow::Result<()> {
        self.check_writable()?;
        sqlx::query("UPDATE runs SET executor = $1 WHERE id = $2").bind(executor.as_str()).bind(run_id).execute(&self.pool).await?;
        Ok(())
    }

    /// What runs a run, on which host and process, and where it stands.
    pub async fn run_process(&self, run_id: i64) -> anyhow::Result<Option<RunProcess>> {
        let row = sqlx::query("SELECT executor, host, pid, status FROM runs WHERE id = $1").bind(run_id).fetch_optional(&self.pool).await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(RunProcess {
            executor: Executor::from_stored(r.get(0))?,
            host: r.get(1),
            pid: r.get(2),
            status: RunStatus::from_stored(r.get(3))?,
        }))
    }

    pub async fn finish_run(&self, run_id: i64, end: RunEnd) -> anyhow::Result<()> {
        let status = RunStatus::from(end).as_str();
        sqlx::query("UPDATE runs SET status = $1, ended_at = $2 WHERE id = $3")
            .bind(status)
            .bind(now_text())
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
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
}

/// Whether a claim or run is dead: its process gone on this host, or its lease run out.
pub(super) fn is_stale(this_host: &str, cutoff_ms: i64, host: &str, pid: i64, heartbeat_ms: i64) -> bool {
    (host == this_host && !pid_alive(pid)) || heartbeat_ms < cutoff_ms
}

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

/// The commit the working directory is at, if it is a git checkout.
fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).stderr(std::process::Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
