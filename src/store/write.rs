//! Writes: registering plans, claiming and finishing attempts, recording outputs.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::{QueryBuilder, Row, Sqlite};

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
    fn check_writable(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.read_only, "the store was opened read-only");
        Ok(())
    }

    /// Records a pipeline file's text (once per distinct text) and returns its id.
    pub async fn register_pipeline(&self, name: &str, path: &str, source: &str) -> anyhow::Result<i64> {
        self.check_writable()?;
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(source.as_bytes()));
        sqlx::query("INSERT OR IGNORE INTO pipelines (name, source_hash, path, source, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(name)
            .bind(&hash)
            .bind(path)
            .bind(source)
            .bind(now_text())
            .execute(&self.pool)
            .await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM pipelines WHERE name = ? AND source_hash = ?")
            .bind(name)
            .bind(&hash)
            .fetch_one(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn start_run(&self, pipeline_id: Option<i64>, command: &str, argv: &[String]) -> anyhow::Result<i64> {
        self.check_writable()?;
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        let id = sqlx::query(
            "INSERT INTO runs (pipeline_id, command, argv, host, pid, user, git_revision, ablate_version, started_at, heartbeat_at, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
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
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    pub async fn finish_run(&self, run_id: i64, status: RunStatus) -> anyhow::Result<()> {
        let status = match status {
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        };
        sqlx::query("UPDATE runs SET status = ?, ended_at = ? WHERE id = ?")
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
        instance_ids(&mut conn, plan).await
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
            sqlx::query_scalar("SELECT plan_hash FROM pipelines WHERE id = ?").bind(pipeline_id).fetch_one(&self.pool).await?;
        if recorded.as_deref() == Some(plan_hash.as_str()) {
            return Ok(());
        }
        let now = now_text();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in plan.nodes.chunks(1000) {
            let mut q = QueryBuilder::<Sqlite>::new("INSERT OR IGNORE INTO stage_instances (key, kind, kind_version, params, created_at) ");
            q.push_values(chunk, |mut b, node| {
                b.push_bind(node.key.as_str())
                    .push_bind(node.kind.name())
                    .push_bind(i64::from(node.kind.version()))
                    .push_bind(serde_json::Value::Object(node.params.0.clone()).to_string())
                    .push_bind(&now);
            });
            q.build().execute(&mut *tx).await?;
        }
        let ids = instance_ids(&mut tx, plan).await?;
        let bindings: Vec<(i64, &str, String)> =
            plan.bindings.iter().map(|b| (ids[b.node], plan.stage_name(b), Plan::axes_json(b).to_string())).collect();
        for chunk in bindings.chunks(1000) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR REPLACE INTO instance_bindings (pipeline_name, stage, axes, instance_id, pipeline_id, seen_at) ",
            );
            q.push_values(chunk, |mut b, (id, stage, axes)| {
                b.push_bind(&plan.spec.name).push_bind(*stage).push_bind(axes).push_bind(*id).push_bind(pipeline_id).push_bind(&now);
            });
            q.build().execute(&mut *tx).await?;
        }
        let edges: Vec<(i64, i64, &str)> = plan
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.upstream.iter().zip(&n.upstream_stages).map(move |(&u, s)| (u, i, s.as_str())))
            .map(|(u, d, s)| (ids[u], ids[d], s))
            .collect();
        for chunk in edges.chunks(1000) {
            let mut q = QueryBuilder::<Sqlite>::new("INSERT OR IGNORE INTO edges (upstream_id, downstream_id, stage) ");
            q.push_values(chunk, |mut b, (u, d, s)| {
                b.push_bind(*u).push_bind(*d).push_bind(*s);
            });
            q.build().execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE pipelines SET plan_hash = ? WHERE id = ?").bind(&plan_hash).bind(pipeline_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks attempts and runs whose process is gone (or whose lease ran out) as lost.
    pub async fn recover_stale(&self) -> anyhow::Result<usize> {
        self.check_writable()?;
        let host = host_name();
        let cutoff = now_ms() - lease_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut recovered = 0;
        for table in ["attempts", "runs"] {
            let rows = sqlx::query(&format!("SELECT id, host, pid, heartbeat_at FROM {table} WHERE status = 'running'"))
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                let (id, h, pid, beat): (i64, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
                if is_stale(&host, cutoff, &h, pid, beat) {
                    if table == "attempts" {
                        mark_lost(&mut tx, id, &h, pid).await?;
                    } else {
                        sqlx::query("UPDATE runs SET status = 'lost', ended_at = ? WHERE id = ? AND status = 'running'")
                            .bind(now_text())
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    recovered += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(recovered)
    }

    /// Claims an instance for this run, unless it is live elsewhere or (without
    /// `even_if_done`, which `--force` uses) already done.
    pub async fn claim(&self, instance_id: i64, run_id: i64, even_if_done: bool) -> anyhow::Result<Claim> {
        self.check_writable()?;
        let host = host_name();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query("SELECT id, status, run_id, host, pid, heartbeat_at FROM attempts WHERE instance_id = ? AND status IN ('running', 'done') ORDER BY id DESC")
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
            if is_stale(&host, now_ms() - lease_ms(), &h, pid, beat) {
                mark_lost(&mut tx, id, &h, pid).await?;
            } else {
                tx.commit().await?;
                return Ok(Claim::RunningElsewhere { run_id: other_run, host: h, pid });
            }
        }
        let attempt_id = sqlx::query(
            "INSERT INTO attempts (run_id, instance_id, status, started_at, heartbeat_at, host, pid) VALUES (?, ?, 'running', ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(instance_id)
        .bind(now_text())
        .bind(now_ms())
        .bind(&host)
        .bind(i64::from(std::process::id()))
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        tx.commit().await?;
        Ok(Claim::Claimed { attempt_id })
    }

    /// Keeps this run's claims alive.
    pub async fn heartbeat(&self, run_id: i64) -> anyhow::Result<()> {
        let now = now_ms();
        sqlx::query("UPDATE attempts SET heartbeat_at = ? WHERE run_id = ? AND status = 'running'")
            .bind(now)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE runs SET heartbeat_at = ? WHERE id = ?").bind(now).bind(run_id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_attempt_device(&self, attempt_id: i64, device: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE attempts SET device = ? WHERE id = ?").bind(device).bind(attempt_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records a successful attempt's artifacts and metrics and marks it done, atomically.
    pub async fn commit_done(
        &self,
        attempt_id: i64,
        instance_id: i64,
        artifacts: &[(String, PutObject)],
        metrics: &[MetricPoint],
    ) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (name, object) in artifacts {
            sqlx::query("INSERT OR REPLACE INTO objects (hash, bytes, mtime_ns) VALUES (?, ?, ?)")
                .bind(&object.hash)
                .bind(object.stat.bytes as i64)
                .bind(object.stat.mtime_ns)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO artifacts (instance_id, attempt_id, name, hash, bytes, path) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(instance_id)
                .bind(attempt_id)
                .bind(name)
                .bind(&object.hash)
                .bind(object.stat.bytes as i64)
                .bind(&object.rel_path)
                .execute(&mut *tx)
                .await?;
        }
        insert_metrics(&mut tx, instance_id, attempt_id, metrics).await?;
        sqlx::query("UPDATE attempts SET status = 'done', ended_at = ?, error = NULL WHERE id = ?")
            .bind(now_text())
            .bind(attempt_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await.context("committing stage outputs")?;
        Ok(())
    }

    /// Appends metric rows for an attempt in batched multi-row inserts, in one transaction.
    pub async fn insert_metrics(&self, instance_id: i64, attempt_id: i64, metrics: &[MetricPoint]) -> anyhow::Result<()> {
        self.check_writable()?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        insert_metrics(&mut tx, instance_id, attempt_id, metrics).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn end_attempt(&self, attempt_id: i64, end: AttemptEnd, error: &str, metrics: &[MetricPoint]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let instance_id: i64 =
            sqlx::query_scalar("SELECT instance_id FROM attempts WHERE id = ?").bind(attempt_id).fetch_one(&mut *tx).await?;
        insert_metrics(&mut tx, instance_id, attempt_id, metrics).await?;
        sqlx::query("UPDATE attempts SET status = ?, ended_at = ?, error = ? WHERE id = ?")
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
        sqlx::query("INSERT INTO attempts (run_id, instance_id, status, started_at, ended_at, heartbeat_at, host, pid, error) VALUES (?, ?, 'skipped', ?, ?, ?, ?, ?, ?)")
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
        sqlx::query("UPDATE attempts SET status = 'invalidated', error = ? WHERE id = ? AND status = 'done'")
            .bind(reason)
            .bind(attempt_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a re-verified object's new stat so the next check is a cheap stat again.
    pub async fn refresh_object_stat(&self, hash: &str, stat: ObjectStat) -> anyhow::Result<()> {
        sqlx::query("UPDATE objects SET bytes = ?, mtime_ns = ? WHERE hash = ?")
            .bind(stat.bytes as i64)
            .bind(stat.mtime_ns)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets objects whose files `gc` deleted.
    pub async fn forget_objects(&self, hashes: &[String]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for hash in hashes {
            sqlx::query("DELETE FROM objects WHERE hash = ? AND NOT EXISTS (SELECT 1 FROM artifacts WHERE hash = ?)")
                .bind(hash)
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
async fn instance_ids(conn: &mut sqlx::SqliteConnection, plan: &Plan) -> anyhow::Result<Vec<i64>> {
    let keys: Vec<&str> = plan.nodes.iter().map(|n| n.key.as_str()).collect();
    let json: Option<String> = sqlx::query_scalar(
        "SELECT json_group_array(json_array(i.key, i.id)) FROM json_each(?) k JOIN stage_instances i ON i.key = k.value",
    )
    .bind(serde_json::to_string(&keys)?)
    .fetch_one(&mut *conn)
    .await?;
    let by_key: HashMap<String, i64> = serde_json::from_str::<Vec<(String, i64)>>(json.as_deref().unwrap_or("[]"))?.into_iter().collect();
    keys.iter().map(|k| by_key.get(*k).copied().with_context(|| format!("instance {k} is not registered"))).collect()
}

async fn insert_metrics(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    instance_id: i64,
    attempt_id: i64,
    metrics: &[MetricPoint],
) -> anyhow::Result<()> {
    // Rows travel as one JSON array per chunk and SQLite unpacks them in C:
    // binding five values per row through the driver is several times slower.
    for chunk in metrics.chunks(METRIC_ROWS_PER_INSERT) {
        let rows: Vec<(&str, Option<i64>, f64)> = chunk.iter().map(|m| (m.name.as_str(), m.step, m.value)).collect();
        sqlx::query(
            "INSERT INTO metrics (instance_id, attempt_id, name, step, value)
             SELECT ?, ?, j.value ->> 0, j.value ->> 1, j.value ->> 2 FROM json_each(?) j",
        )
        .bind(instance_id)
        .bind(attempt_id)
        .bind(serde_json::to_string(&rows)?)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Marks a running attempt whose process is gone as lost.
async fn mark_lost(tx: &mut sqlx::Transaction<'_, Sqlite>, attempt_id: i64, host: &str, pid: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE attempts SET status = 'lost', ended_at = ?, error = ? WHERE id = ? AND status = 'running'")
        .bind(now_text())
        .bind(format!("process {pid} on {host} stopped without finishing"))
        .bind(attempt_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn is_stale(this_host: &str, cutoff_ms: i64, host: &str, pid: i64, heartbeat_ms: i64) -> bool {
    (host == this_host && !pid_alive(pid)) || heartbeat_ms < cutoff_ms
}

fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).stderr(std::process::Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
