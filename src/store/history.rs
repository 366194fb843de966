//! Reads behind result history, comparisons, plots and the web dashboard
//! (issue 6). Everything here works on a read-only store.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Row as _;

use super::Store;
use super::status::{AttemptStatus, NodeStatus};
use crate::filter;

/// One finished stage instance as it appears in one (pipeline, stage, axes)
/// binding, with its final metrics: the row `ablate history` lists.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub pipeline: String,
    pub stage: String,
    pub key: String,
    pub kind: String,
    pub axes: Map<String, Value>,
    pub params: Map<String, Value>,
    pub metrics: BTreeMap<String, f64>,
    pub done_at: Option<String>,
    /// The run whose attempt produced the outputs.
    pub run_id: i64,
    /// When the binding was last planned; later rows of one (pipeline, stage,
    /// axes) supersede earlier ones (the parameters changed in between).
    #[serde(skip)]
    pub seen_at: String,
}

impl filter::Row for HistoryRow {
    fn axes(&self) -> &Map<String, Value> {
        &self.axes
    }
    fn params(&self) -> &Map<String, Value> {
        &self.params
    }
    fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }
    fn pipeline(&self) -> &str {
        &self.pipeline
    }
    fn stage(&self) -> &str {
        &self.stage
    }
    fn kind(&self) -> &str {
        &self.kind
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn done_at(&self) -> Option<&str> {
        self.done_at.as_deref()
    }
    fn run(&self) -> i64 {
        self.run_id
    }
}

/// One node of a run's DAG: an instance with where it appears and its state in that run.
#[derive(Debug, Clone, Serialize)]
pub struct GraphNode {
    pub key: String,
    pub kind: String,
    /// `pipeline/stage` names the instance is bound to in the run's pipeline.
    pub stages: Vec<String>,
    pub axes: Map<String, Value>,
    /// The latest attempt of this run (`running`, `done`, `failed`, ...), else
    /// `cached` when an earlier run finished it, else `pending`.
    pub status: NodeStatus,
}

/// A run's stage instances and the lineage edges between them (indices into `nodes`).
#[derive(Debug, Clone, Serialize)]
pub struct RunGraph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<(usize, usize)>,
}

/// A stored pipeline file (the latest version of a name).
#[derive(Debug, Clone)]
pub struct PipelineSource {
    pub name: String,
    pub path: String,
    pub text: String,
}

fn json_object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The attempt whose curves an instance shows (key bound as `$1`): its done
/// attempt, else the one running now, whose curve grows as training
/// flushes it (a live curve); never a failed or lost one.
const SHOWN_ATTEMPT: &str = "SELECT COALESCE(
    (SELECT d.attempt_id FROM v_done d JOIN stage_instances i ON i.id = d.instance_id WHERE i.key = $1),
    (SELECT a.id FROM attempts a JOIN stage_instances i ON i.id = a.instance_id
     WHERE i.key = $1 AND a.status = 'running' ORDER BY a.id DESC LIMIT 1))";

impl Store {
    /// Every finished instance in every binding (optionally of one pipeline),
    /// oldest first, with its final metrics.
    pub async fn history(&self, pipeline: Option<&str>) -> anyhow::Result<Vec<HistoryRow>> {
        let rows = sqlx::query(
            "SELECT b.pipeline_name, b.stage, b.axes, i.key, i.kind, i.params, d.done_at, a.run_id, b.seen_at
             FROM instance_bindings b
             JOIN stage_instances i ON i.id = b.instance_id
             JOIN v_done d ON d.instance_id = i.id
             JOIN attempts a ON a.id = d.attempt_id
             WHERE ($1 IS NULL OR b.pipeline_name = $1)
             ORDER BY d.done_at, b.seen_at, b.pipeline_name, b.stage, b.axes",
        )
        .bind(pipeline)
        .fetch_all(&self.pool)
        .await?;
        let metrics = self.final_metrics().await?;
        Ok(rows
            .iter()
            .map(|r| {
                let key: String = r.get(3);
                HistoryRow {
                    pipeline: r.get(0),
                    stage: r.get(1),
                    axes: json_object(r.get::<&str, _>(2)),
                    metrics: metrics.get(&key).cloned().unwrap_or_default(),
                    key,
                    kind: r.get(4),
                    params: json_object(r.get::<&str, _>(5)),
                    done_at: r.get(6),
                    run_id: r.get(7),
                    seen_at: r.get(8),
                }
            })
            .collect())
    }

    /// Final metric values of every done instance, by key. A value stored
    /// as NULL (NaN or an infinity: a diverged training, say) comes back as
    /// NaN, not left out: that a metric went bad is a result too.
    pub async fn final_metrics(&self) -> anyhow::Result<HashMap<String, BTreeMap<String, f64>>> {
        let rows = sqlx::query("SELECT key, name, value FROM v_metrics").fetch_all(&self.pool).await?;
        let mut out: HashMap<String, BTreeMap<String, f64>> = HashMap::new();
        for r in rows {
            let value = r.get::<Option<f64>, _>(2).unwrap_or(f64::NAN);
            out.entry(r.get(0)).or_default().insert(r.get(1), value);
        }
        Ok(out)
    }

    /// The stepped values `(step, value)` of one metric of an instance's
    /// [shown attempt](SHOWN_ATTEMPT) (non-finite values, stored as NULL, are left out).
    pub async fn metric_curve(&self, key: &str, metric: &str) -> anyhow::Result<Vec<(i64, f64)>> {
        let sql = format!(
            "SELECT m.step, m.value FROM metrics m WHERE m.attempt_id = ({SHOWN_ATTEMPT})
             AND m.name = $2 AND m.step IS NOT NULL AND m.value IS NOT NULL ORDER BY m.step, {}",
            self.sql.metric_insertion_order
        );
        let rows = sqlx::query(&sql).bind(key).bind(metric).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Names of the metrics an instance's [shown attempt](SHOWN_ATTEMPT) recorded with steps.
    pub async fn stepped_metrics(&self, key: &str) -> anyhow::Result<Vec<String>> {
        let sql =
            format!("SELECT DISTINCT m.name FROM metrics m WHERE m.attempt_id = ({SHOWN_ATTEMPT}) AND m.step IS NOT NULL ORDER BY m.name");
        Ok(sqlx::query_scalar(&sql).bind(key).fetch_all(&self.pool).await?)
    }

    /// The instances of a run with their state in it and the edges between them.
    /// A `run` of a pipeline shows the pipeline's whole DAG (cached work too);
    /// an `exec` run shows what it attempted.
    pub async fn run_graph(&self, run_id: i64) -> anyhow::Result<RunGraph> {
        let rows = sqlx::query(
            "WITH r AS (SELECT id, pipeline_id FROM runs WHERE id = $1),
                  ids AS (SELECT b.instance_id AS id FROM instance_bindings b JOIN r ON b.pipeline_id = r.pipeline_id
                          UNION SELECT a.instance_id FROM attempts a WHERE a.run_id = $1)
             SELECT i.id, i.key, i.kind,
                    (SELECT a.status FROM attempts a WHERE a.instance_id = i.id AND a.run_id = $1 ORDER BY a.id DESC LIMIT 1),
                    CASE WHEN EXISTS (SELECT 1 FROM v_done d WHERE d.instance_id = i.id) THEN 1 ELSE 0 END
             FROM stage_instances i JOIN ids ON ids.id = i.id ORDER BY i.id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let mut index: HashMap<i64, usize> = HashMap::new();
        let mut nodes = Vec::with_capacity(rows.len());
        for r in &rows {
            let status = match r.get::<Option<&str>, _>(3) {
                Some(word) => NodeStatus::Attempt(AttemptStatus::from_stored(word)?),
                None if r.get::<i64, _>(4) != 0 => NodeStatus::Cached,
                None => NodeStatus::Pending,
            };
            index.insert(r.get(0), nodes.len());
            nodes.push(GraphNode { key: r.get(1), kind: r.get(2), stages: Vec::new(), axes: Map::new(), status });
        }
        let bindings = sqlx::query(
            "SELECT b.instance_id, b.pipeline_name, b.stage, b.axes FROM instance_bindings b
             WHERE b.pipeline_name = (SELECT p.name FROM runs r JOIN pipelines p ON p.id = r.pipeline_id WHERE r.id = $1)
                OR (NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = $1 AND r.pipeline_id IS NOT NULL)
                    AND b.instance_id IN (SELECT instance_id FROM attempts WHERE run_id = $1))
             ORDER BY b.seen_at",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        for b in bindings {
            if let Some(&n) = index.get(&b.get::<i64, _>(0)) {
                let node = &mut nodes[n];
                let label = format!("{}/{}", b.get::<String, _>(1), b.get::<String, _>(2));
                if !node.stages.contains(&label) {
                    node.stages.push(label);
                }
                node.axes = json_object(b.get::<&str, _>(3));
            }
        }
        let edges = sqlx::query("SELECT upstream_id, downstream_id FROM edges").fetch_all(&self.pool).await?;
        let edges = edges.iter().filter_map(|e| Some((*index.get(&e.get::<i64, _>(0))?, *index.get(&e.get::<i64, _>(1))?))).collect();
        Ok(RunGraph { nodes, edges })
    }

    /// The stored source of a pipeline's version last run (else of the
    /// newest text planned), by name.
    pub async fn pipeline_source(&self, name: &str) -> anyhow::Result<Option<PipelineSource>> {
        // The version last run, else the last new text planned.
        let row = sqlx::query(
            "SELECT p.name, p.path, p.source FROM pipelines p WHERE p.name = $1
             ORDER BY COALESCE((SELECT MAX(r.id) FROM runs r WHERE r.pipeline_id = p.id), 0) DESC, p.id DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .context("reading pipelines")?;
        Ok(row.map(|r| PipelineSource { name: r.get(0), path: r.get(1), text: r.get(2) }))
    }

    /// Names of the pipelines that have bindings, with their number of finished instances.
    pub async fn pipeline_names(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT b.pipeline_name, COUNT(d.instance_id) FROM instance_bindings b LEFT JOIN v_done d ON d.instance_id = b.instance_id
             GROUP BY b.pipeline_name ORDER BY b.pipeline_name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Runs of one pipeline, newest first.
    pub async fn runs_of_pipeline(&self, name: &str) -> anyhow::Result<Vec<super::RunRecord>> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM v_runs WHERE pipeline = $1 ORDER BY id DESC").bind(name).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.run_by_id(id).await?);
        }
        Ok(out)
    }
}
