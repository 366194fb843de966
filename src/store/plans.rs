//! Plans: a pipeline file's text, and its instances, bindings and edges.

use std::collections::HashMap;

use anyhow::Context as _;

use super::backend::Dialect;
use super::{Store, now_text};
use crate::pipeline::Plan;

impl Store {
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
                    .bind(serde_json::to_string(&*n.params)?)
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
}

/// The instance id of every node of a plan, in node order (one query: keys in
/// and pairs out as JSON, see `Store::done_attempts`).
async fn instance_ids(sql: &Dialect, conn: &mut sqlx::AnyConnection, plan: &Plan) -> anyhow::Result<Vec<i64>> {
    let keys: Vec<&str> = plan.nodes.iter().map(|n| n.key.as_str()).collect();
    let json: Option<String> = sqlx::query_scalar(sql.instance_ids).bind(serde_json::to_string(&keys)?).fetch_one(&mut *conn).await?;
    let by_key: HashMap<String, i64> = serde_json::from_str::<Vec<(String, i64)>>(json.as_deref().unwrap_or("[]"))?.into_iter().collect();
    keys.iter().map(|k| by_key.get(*k).copied().with_context(|| format!("instance {k} is not registered"))).collect()
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

#[cfg(test)]
mod tests {
    #[test]
    fn values_lists_are_numbered_in_row_order() {
        assert_eq!(super::values_list('$', 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::values_list('?', 2, 1), "(?), (?)");
    }
}
