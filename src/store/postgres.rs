//! The PostgreSQL backend (`--db postgres://...` or `ABLATE_DB`): one server
//! for every node of a cluster, built for many writers at once.
//!
//! Claims lock the instance's row (`SELECT ... FOR UPDATE`) inside their
//! transaction, and the same partial unique index as on SQLite allows one
//! running attempt per instance. Registering a plan takes a transaction-scoped
//! advisory lock, so two submitters inserting overlapping instances in
//! different orders cannot deadlock.

use anyhow::Context as _;
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Connection as _, Executor as _, Row as _};

use super::backend::Dialect;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub(super) const DIALECT: Dialect = Dialect {
    name: "PostgreSQL",
    begin_write: "BEGIN",
    // The key is arbitrary: "ablate" plus the plan registration's number.
    serialize_writers: Some("SELECT 1 FROM pg_advisory_xact_lock(6443339090310590465)"),
    lock_instance: Some("SELECT id FROM stage_instances WHERE id = $1 FOR UPDATE"),
    insert_metrics: "INSERT INTO metrics (instance_id, attempt_id, name, step, value)
         SELECT $1, $2, j ->> 0, (j ->> 1)::bigint, (j ->> 2)::double precision
         FROM jsonb_array_elements($3::jsonb) WITH ORDINALITY AS t(j, n) ORDER BY n",
    instance_ids: "SELECT json_agg(json_build_array(i.key, i.id))::text
         FROM jsonb_array_elements_text($1::jsonb) AS k(key) JOIN stage_instances i ON i.key = k.key",
    done_attempts: "SELECT json_agg(json_build_array(k.n - 1, i.id, a.id, ar.name, ar.hash, ar.bytes, o.bytes, o.mtime_ns))::text
         FROM jsonb_array_elements_text($1::jsonb) WITH ORDINALITY AS k(key, n)
         JOIN stage_instances i ON i.key = k.key
         JOIN attempts a ON a.id = (SELECT MAX(id) FROM attempts WHERE instance_id = i.id AND status = 'done')
         LEFT JOIN artifacts ar ON ar.attempt_id = a.id
         LEFT JOIN objects o ON o.hash = ar.hash",
    superseded_inputs: "SELECT json_agg(json_build_array(k.n - 1, ua.instance_id, ua.id))::text
         FROM jsonb_array_elements_text($1::jsonb) WITH ORDINALITY AS k(key, n)
         JOIN stage_instances i ON i.key = k.key
         JOIN attempts a ON a.id = (SELECT MAX(id) FROM attempts WHERE instance_id = i.id AND status = 'done')
         JOIN attempt_inputs ai ON ai.attempt_id = a.id
         JOIN attempts ua ON ua.id = ai.upstream_attempt_id
         WHERE ua.id <> COALESCE((SELECT MAX(id) FROM attempts WHERE instance_id = ua.instance_id AND status = 'done'), ua.id)",
    metric_insertion_order: "m.id",
    param_prefix: '$',
    user_query_as_json: Some("SELECT row_to_json(q)::text FROM ({query}) AS q"),
};

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A pool on the server. Read-only pools make every transaction read-only,
/// which is what lets arbitrary SQL (`ablate sql`, dashboards) run on them.
pub(super) async fn connect(url: &str, read_only: bool) -> anyhow::Result<AnyPool> {
    super::install_drivers();
    let options: AnyConnectOptions =
        url.parse().map_err(|e: sqlx::Error| super::BadDatabaseUrl { db: redacted(url), why: e.to_string() })?;
    let setup = if read_only { "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY" } else { "SET client_min_messages = warning" };
    // One plain connection first: a wrong host, port or password fails at
    // once with the server's reason, where the pool would retry for its
    // whole acquire timeout; and a server that never answers, after a while.
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect_with(&options))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {}: no answer within {} s", redacted(url), CONNECT_TIMEOUT.as_secs()))?
        // The error's text once (as context it would be printed twice).
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", redacted(url)))?;
    probe.close().await?;
    AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(setup).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to {}", redacted(url)))
}

/// Whether the server's database holds an ablate store yet.
pub(super) async fn has_schema(pool: &AnyPool) -> anyhow::Result<bool> {
    let row = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'stage_instances'",
    )
    .fetch_one(pool)
    .await?;
    Ok(row.get::<i64, _>(0) > 0)
}

/// A URL fit for messages and logs: the password replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return "(not a URL)".to_owned() };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@').and_then(|at| authority[..at].find(':').map(|colon| (colon, at))) {
        Some((colon, at)) => format!("{}://{}:***{}", &url[..scheme_end], &authority[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Runs one arbitrary read-only query (`ablate sql`, a dashboard panel); the
/// server cancels it once it has run for `limit` (`statement_timeout`, for
/// this transaction only), whether or not anyone still waits for it.
pub(super) async fn limited_query(
    conn: &mut sqlx::AnyConnection,
    sql: &str,
    binds: &[Option<String>],
    limit: Option<std::time::Duration>,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    if let Some(limit) = limit {
        tx.execute(format!("SET LOCAL statement_timeout = {}", limit.as_millis().max(1)).as_str()).await?;
    }
    let mut query = sqlx::query(sql);
    for value in binds {
        query = query.bind(value.clone());
    }
    let rows = query.fetch_all(&mut *tx).await;
    let ended = tx.rollback().await;
    let rows = rows?;
    ended?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redacted("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(super::redacted("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redacted("postgres://h/db@x"), "postgres://h/db@x");
        assert_eq!(super::redacted("nonsense"), "(not a URL)");
    }
}
