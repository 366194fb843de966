//! Reads: what is done, what was planned before, and history for the CLI.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::objects::ObjectStat;
use super::status::{AttemptStatus, Executor, RunStatus};

/// One artifact of a done attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactRecord {
    pub name: String,
    pub hash: String,
    pub bytes: i64,
    pub path: String,
    #[serde(skip)]
    pub recorded: Option<ObjectStat>,
}

/// The attempt an instance's cached outputs come from.
#[derive(Debug, Clone)]
pub struct DoneAttempt {
    pub attempt_id: i64,
    pub instance_id: i64,
    pub artifacts: Vec<ArtifactRecord>,
}

/// An upstream attempt a done attempt read, no longer its instance's latest.
#[derive(Debug, Clone)]
pub struct SupersededInput {
    /// The reader's position in the keys asked about.
    pub position: usize,
    pub upstream_instance_id: i64,
    /// What the reader got: (name, hash) of each artifact.
    pub outputs: Vec<(String, String)>,
}

impl DoneAttempt {
    /// Its artifacts as (name, hash): what a reader of its outputs got,
    /// whatever order the store listed them in.
    pub fn outputs(&self) -> std::collections::BTreeSet<(&str, &str)> {
        self.artifacts.iter().map(|a| (a.name.as_str(), a.hash.as_str())).collect()
    }
}

/// An instance as stored.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRecord {
    #[serde(skip)]
    pub id: i64,
    pub key: String,
    pub kind: String,
    pub kind_version: i64,
    pub params: Value,
    pub created_at: String,
}

/// Where an instance appeared before, for explaining why it must rerun.
#[derive(Debug, Clone)]
pub struct PreviousBinding {
    pub key: String,
    pub kind: String,
    pub kind_version: i64,
    /// The parameters as stored (JSON text): parsed only where a reason
    /// needs them, not for each of a large plan's bindings.
    pub params: String,
    /// Some attempt ran it (rather than a `plan` that only saw it, or a run
    /// that skipped it below a failure).
    pub ran: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BindingRecord {
    pub pipeline: String,
    pub stage: String,
    pub axes: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub id: i64,
    pub run_id: i64,
    pub key: String,
    pub kind: String,
    pub status: AttemptStatus,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub host: String,
    pub pid: i64,
    pub device: String,
    pub error: Option<String>,
    /// The Slurm job it ran in (`JOB` or `ARRAYJOB_TASK`), if any.
    pub slurm_job: Option<String>,
    /// How that job ended (Slurm state and exit code).
    pub exit_state: Option<String>,
    pub log_path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub pipeline: Option<String>,
    pub command: String,
    pub status: RunStatus,
    pub host: String,
    pub user: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_s: Option<f64>,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricRecord {
    pub name: String,
    pub step: Option<i64>,
    /// `None` for a value that was NaN or infinite.
    pub value: Option<f64>,
}

fn instance(row: &AnyRow) -> InstanceRecord {
    InstanceRecord {
        id: row.get("id"),
        key: row.get("key"),
        kind: row.get("kind"),
        kind_version: row.get("kind_version"),
        params: serde_json::from_str(row.get::<&str, _>("params")).unwrap_or(Value::Null),
        created_at: row.get("created_at"),
    }
}

const ATTEMPT_COLUMNS: &str = "a.id, a.run_id, i.key, i.kind, a.status, a.started_at, a.ended_at, a.host, a.pid, a.device, a.error, \
                               a.slurm_job_id, a.slurm_array_task, a.exit_state, a.log_path";

fn attempt(row: &AnyRow) -> anyhow::Result<AttemptRecord> {
    Ok(AttemptRecord {
        id: row.get(0),
        run_id: row.get(1),
        key: row.get(2),
        kind: row.get(3),
        status: AttemptStatus::from_stored(row.get(4))?,
        started_at: row.get(5),
        ended_at: row.get(6),
        host: row.get(7),
        pid: row.get(8),
        device: row.get(9),
        error: row.get(10),
        slurm_job: row.get::<Option<String>, _>(11).map(|job| match row.get::<Option<i64>, _>(12) {
            Some(task) => format!("{job}_{task}"),
            None => job,
        }),
        exit_state: row.get(13),
        log_path: row.get(14),
    })
}

impl Store {
    /// The latest done attempt, with its artifacts, of each of the given keys
    /// (`None` where there is none), in the order of `keys`.
    ///
    /// The keys go in, and the rows come back, as one JSON value each way:
    /// the engine builds the array itself, which keeps checking a 100,000-instance
    /// plan far from per-row driver overhead. Rows name their key by its
    /// position in `keys`.
    pub async fn done_attempts(&self, keys: &[&str]) -> anyhow::Result<Vec<Option<DoneAttempt>>> {
        type Row = (usize, i64, i64, Option<String>, Option<String>, Option<i64>, Option<i64>, Option<i64>);
        let json: Option<String> =
            sqlx::query_scalar(self.sql.done_attempts).bind(serde_json::to_string(keys)?).fetch_one(&self.pool).await?;
        let rows: Vec<Row> = serde_json::from_str(json.as_deref().unwrap_or("[]"))?;
        let mut out: Vec<Option<DoneAttempt>> = vec![None; keys.len()];
        for (position, instance_id, attempt_id, name, hash, bytes, object_bytes, mtime_ns) in rows {
            let done = out[position].get_or_insert_with(|| DoneAttempt { attempt_id, instance_id, artifacts: Vec::new() });
            if let (Some(name), Some(hash)) = (name, hash) {
                let recorded = object_bytes.zip(mtime_ns).map(|(b, m)| ObjectStat { bytes: b as u64, mtime_ns: m });
                let path = super::ObjectStore::rel_path(&hash);
                done.artifacts.push(ArtifactRecord { name, hash, bytes: bytes.unwrap_or(0), path, recorded });
            }
        }
        for done in out.iter_mut().flatten() {
            done.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(out)
    }

    /// For the latest done attempt of each of `keys`, the upstream attempts
    /// it read that have since been superseded (their instance ran again).
    /// Empty on a store from before attempts recorded what they read, when
    /// it is opened read-only.
    pub async fn superseded_inputs(&self, keys: &[&str]) -> anyhow::Result<Vec<SupersededInput>> {
        let json: Option<String> =
            match sqlx::query_scalar(self.sql.superseded_inputs).bind(serde_json::to_string(keys)?).fetch_one(&self.pool).await {
                Ok(json) => json,
                Err(e) if self.read_only && e.to_string().contains("attempt_inputs") => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
        let rows: Vec<(usize, i64, i64)> = serde_json::from_str(json.as_deref().unwrap_or("[]"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (position, instance_id, attempt_id) in rows {
            let outputs = sqlx::query("SELECT name, hash FROM artifacts WHERE attempt_id = $1")
                .bind(attempt_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            out.push(SupersededInput { position, upstream_instance_id: instance_id, outputs });
        }
        Ok(out)
    }

    /// Keys of the instances whose attempt in `run_id` was lost and that no
    /// attempt runs now: what the run's dead process may have left running.
    pub async fn lost_instances_of_run(&self, run_id: i64) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT i.key FROM attempts a JOIN stage_instances i ON i.id = a.instance_id
             WHERE a.run_id = $1 AND a.status = 'lost'
               AND NOT EXISTS (SELECT 1 FROM attempts r WHERE r.instance_id = i.id AND r.status = 'running')
             ORDER BY i.key",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Earlier instances of each (stage, axes) cell of a pipeline, most
    /// recent first, by stage and then by the axes' JSON text. Only cells
    /// with at least `min_rows` bindings are loaded: once a plan is recorded,
    /// a cell with one binding holds just the current instance, so planning a
    /// large grid that never changed reads nothing here.
    pub async fn previous_bindings(
        &self,
        pipeline: &str,
        min_rows: i64,
    ) -> anyhow::Result<HashMap<String, HashMap<String, Vec<PreviousBinding>>>> {
        // CROSS JOIN keeps SQLite looping over the cells found: joined
        // plainly, it read every binding's instance row (the whole
        // 100,000-instance table) and only then matched them to no cell.
        let rows = sqlx::query(
            "WITH cells AS (SELECT stage, axes FROM instance_bindings WHERE pipeline_name = $1
                            GROUP BY stage, axes HAVING COUNT(*) >= $2)
             SELECT b.stage, b.axes, i.key, i.kind_version, i.params, i.kind,
                    CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.instance_id = i.id AND a.status <> 'skipped') THEN 1 ELSE 0 END
             FROM cells c
             CROSS JOIN instance_bindings b
             JOIN stage_instances i ON i.id = b.instance_id
             WHERE b.pipeline_name = $1 AND b.stage = c.stage AND b.axes = c.axes
             ORDER BY b.seen_at DESC, i.id DESC",
        )
        .bind(pipeline)
        .bind(min_rows)
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, HashMap<String, Vec<PreviousBinding>>> = HashMap::new();
        for row in rows {
            out.entry(row.get(0)).or_default().entry(row.get(1)).or_default().push(PreviousBinding {
                key: row.get(2),
                kind: row.get(5),
                kind_version: row.get(3),
                params: row.get(4),
                ran: row.get::<i64, _>(6) != 0,
            });
        }
        Ok(out)
    }

    /// Instances whose key starts with `prefix`.
    pub async fn instances_by_prefix(&self, prefix: &str) -> anyhow::Result<Vec<InstanceRecord>> {
        let rows = sqlx::query(
            "SELECT id, key, kind, kind_version, params, created_at FROM stage_instances WHERE key >= $1 AND key < $2 ORDER BY key LIMIT 10",
        )
        .bind(prefix)
        .bind(format!("{prefix}\u{10ffff}"))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(instance).collect())
    }

    pub async fn instance_by_id(&self, id: i64) -> anyhow::Result<InstanceRecord> {
        let row = sqlx::query("SELECT id, key, kind, kind_version, params, created_at FROM stage_instances WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(instance(&row))
    }

    /// Upstream instances with the `needs` name each was seen under.
    pub async fn upstream_of(&self, instance_id: i64) -> anyhow::Result<Vec<(InstanceRecord, String)>> {
        let rows = sqlx::query(
            "SELECT i.id, i.key, i.kind, i.kind_version, i.params, i.created_at, e.stage FROM edges e JOIN stage_instances i ON i.id = e.upstream_id
             WHERE e.downstream_id = $1 ORDER BY e.stage",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (instance(r), r.get::<String, _>("stage"))).collect())
    }

    pub async fn downstream_of(&self, instance_id: i64) -> anyhow::Result<Vec<InstanceRecord>> {
        let rows = sqlx::query(
            "SELECT i.id, i.key, i.kind, i.kind_version, i.params, i.created_at FROM edges e JOIN stage_instances i ON i.id = e.downstream_id
             WHERE e.upstream_id = $1 ORDER BY i.key",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(instance).collect())
    }

    pub async fn bindings_of(&self, instance_id: i64) -> anyhow::Result<Vec<BindingRecord>> {
        let rows = sqlx::query(
            "SELECT pipeline_name, stage, axes FROM instance_bindings WHERE instance_id = $1 ORDER BY pipeline_name, stage, axes",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| BindingRecord {
                pipeline: r.get(0),
                stage: r.get(1),
                axes: serde_json::from_str(r.get::<&str, _>(2)).unwrap_or(Value::Null),
            })
            .collect())
    }

    /// The latest done attempt of one instance, if any.
    pub async fn done_attempt_of(&self, instance_id: i64) -> anyhow::Result<Option<DoneAttempt>> {
        let Some(attempt_id) = sqlx::query_scalar::<_, i64>("SELECT attempt_id FROM v_done WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query("SELECT a.name, a.hash, a.bytes, a.path, o.bytes, o.mtime_ns FROM artifacts a LEFT JOIN objects o ON o.hash = a.hash WHERE a.attempt_id = $1 ORDER BY a.name")
            .bind(attempt_id)
            .fetch_all(&self.pool)
            .await?;
        let artifacts = rows
            .iter()
            .map(|r| ArtifactRecord {
                name: r.get(0),
                hash: r.get(1),
                bytes: r.get(2),
                path: r.get(3),
                recorded: match (r.get::<Option<i64>, _>(4), r.get::<Option<i64>, _>(5)) {
                    (Some(b), Some(m)) => Some(ObjectStat { bytes: b as u64, mtime_ns: m }),
                    _ => None,
                },
            })
            .collect();
        Ok(Some(DoneAttempt { attempt_id, instance_id, artifacts }))
    }

    pub async fn attempts_of_instance(&self, instance_id: i64) -> anyhow::Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts a JOIN stage_instances i ON i.id = a.instance_id WHERE a.instance_id = $1 ORDER BY a.id"
        ))
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt).collect()
    }

    pub async fn attempts_of_run(&self, run_id: i64) -> anyhow::Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts a JOIN stage_instances i ON i.id = a.instance_id WHERE a.run_id = $1 ORDER BY a.id"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt).collect()
    }

    /// The status of an instance's latest attempt (for waiting on another process's claim).
    pub async fn latest_attempt_status(&self, instance_id: i64) -> anyhow::Result<Option<AttemptStatus>> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM attempts WHERE instance_id = $1 ORDER BY id DESC LIMIT 1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?;
        status.as_deref().map(AttemptStatus::from_stored).transpose()
    }

    /// The latest attempt status of every instance that has one, by key.
    pub async fn latest_attempt_statuses(&self) -> anyhow::Result<HashMap<String, AttemptStatus>> {
        let rows = sqlx::query(
            "SELECT i.key, a.status, r.host, r.pid, r.heartbeat_at, r.executor FROM attempts a
             JOIN stage_instances i ON i.id = a.instance_id JOIN runs r ON r.id = a.run_id
             WHERE a.id IN (SELECT MAX(id) FROM attempts GROUP BY instance_id)",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let status = AttemptStatus::from_stored(r.get(1))?;
                let lost = status == AttemptStatus::Running && local_run_gone(&r.get::<String, _>(2), r.get(3), r.get(4), r.get(5))?;
                Ok((r.get(0), if lost { AttemptStatus::Lost } else { status }))
            })
            .collect()
    }

    pub async fn metrics_of_attempt(&self, attempt_id: i64) -> anyhow::Result<Vec<MetricRecord>> {
        let rows = sqlx::query("SELECT name, step, value FROM metrics WHERE attempt_id = $1 ORDER BY name, step NULLS FIRST")
            .bind(attempt_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| MetricRecord { name: r.get(0), step: r.get(1), value: r.get(2) }).collect())
    }

    pub async fn runs(&self, limit: i64) -> anyhow::Result<Vec<RunRecord>> {
        let rows = sqlx::query(&format!("{RUN_SELECT} ORDER BY v.id DESC LIMIT $1")).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(run).collect()
    }

    pub async fn run_by_id(&self, id: i64) -> anyhow::Result<Option<RunRecord>> {
        let row = sqlx::query(&format!("{RUN_SELECT} WHERE v.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(run).transpose()
    }

    /// Instances that produced an artifact with this hash (or hash prefix).
    pub async fn producers_of_hash(&self, prefix: &str) -> anyhow::Result<Vec<(InstanceRecord, String, String)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT i.id, i.key, i.kind, i.kind_version, i.params, i.created_at, a.name, a.hash FROM artifacts a JOIN stage_instances i ON i.id = a.instance_id
             WHERE a.hash >= $1 AND a.hash < $2 ORDER BY a.hash LIMIT 20",
        )
        .bind(prefix)
        .bind(format!("{prefix}\u{10ffff}"))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (instance(r), r.get::<String, _>("name"), r.get::<String, _>("hash"))).collect())
    }

    /// Every object hash some artifact row refers to.
    pub async fn referenced_hashes(&self) -> anyhow::Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT DISTINCT hash FROM artifacts").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().collect())
    }

    /// Whether any artifact row (of any attempt) names this object.
    pub async fn hash_referenced(&self, hash: &str) -> anyhow::Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM artifacts WHERE hash = $1 LIMIT 1").bind(hash).fetch_optional(&self.pool).await?;
        Ok(found.is_some())
    }

    /// When the oldest attempt still marked running started, if any.
    pub async fn oldest_running_start(&self) -> anyhow::Result<Option<std::time::SystemTime>> {
        let started: Option<String> =
            sqlx::query_scalar("SELECT MIN(started_at) FROM attempts WHERE status = 'running'").fetch_one(&self.pool).await?;
        started
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(&s)
                    .map(std::time::SystemTime::from)
                    .map_err(|e| anyhow::anyhow!("an attempt's start time {s:?} is not RFC 3339: {e}"))
            })
            .transpose()
    }

    /// Attempts still marked running (for `gc` to spare their scratch space).
    pub async fn running_attempt_ids(&self) -> anyhow::Result<HashSet<i64>> {
        let rows: Vec<i64> = sqlx::query_scalar("SELECT id FROM attempts WHERE status = 'running'").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().collect())
    }
}

/// The columns [`run`] reads, of `v_runs v` and `runs r`.
const RUN_SELECT: &str = "SELECT v.id, v.pipeline, v.command, v.status, v.host, v.\"user\", v.started_at, v.ended_at, v.duration_s, v.done, v.failed, v.skipped, r.pid, r.heartbeat_at, r.executor FROM v_runs v JOIN runs r ON r.id = v.id";

/// Whether a run still recorded `running` is a local one whose process is
/// gone. Only the next writer records it lost, so read-only commands check.
fn local_run_gone(host: &str, pid: i64, heartbeat_ms: i64, executor: &str) -> anyhow::Result<bool> {
    Ok(Executor::from_stored(executor)? == Executor::Local
        && super::runs::is_stale(&super::host_name(), super::now_ms() - super::runs::lease_ms(), host, pid, heartbeat_ms))
}

fn run(row: &AnyRow) -> anyhow::Result<RunRecord> {
    let mut run = RunRecord {
        id: row.get(0),
        pipeline: row.get(1),
        command: row.get(2),
        status: RunStatus::from_stored(row.get(3))?,
        host: row.get(4),
        user: row.get(5),
        started_at: row.get(6),
        ended_at: row.get(7),
        duration_s: row.get(8),
        done: row.get(9),
        failed: row.get(10),
        skipped: row.get(11),
    };
    let (pid, beat, executor): (i64, i64, String) = (row.get(12), row.get(13), row.get(14));
    if run.status == RunStatus::Running && local_run_gone(&run.host, pid, beat, &executor)? {
        run.status = RunStatus::Lost;
        run.ended_at = Some(super::heartbeat_text(beat));
        let started = chrono::DateTime::parse_from_rfc3339(&run.started_at).map(|t| t.timestamp_millis()).ok();
        run.duration_s = started.map(|s| (beat - s).max(0) as f64 / 1000.0);
    }
    Ok(run)
}
