//! The SQLite backend: the workspace's own `ablate.db`.
//!
//! Safe for any number of processes on one machine (WAL, a 60 s busy
//! timeout, write transactions that take the lock up front). Not safe on a
//! network file system, whose locks SQLite cannot trust: studies whose jobs
//! run on several nodes use the PostgreSQL backend.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AnyPool, ConnectOptions as _, Connection as _, Executor as _};

use super::backend::Dialect;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub(super) const DIALECT: Dialect = Dialect {
    name: "SQLite",
    begin_write: "BEGIN IMMEDIATE",
    serialize_writers: None,
    lock_instance: None,
    insert_metrics: "INSERT INTO metrics (instance_id, attempt_id, name, step, value)
         SELECT $1, $2, j.value ->> 0, j.value ->> 1, j.value ->> 2 FROM json_each($3) j",
    instance_ids: "SELECT json_group_array(json_array(i.key, i.id)) FROM json_each($1) k JOIN stage_instances i ON i.key = k.value",
    done_attempts: "SELECT json_group_array(json_array(k.key, i.id, a.id, ar.name, ar.hash, ar.bytes, o.bytes, o.mtime_ns))
         FROM json_each($1) k
         JOIN stage_instances i ON i.key = k.value
         JOIN attempts a ON a.id = (SELECT MAX(id) FROM attempts WHERE instance_id = i.id AND status = 'done')
         LEFT JOIN artifacts ar ON ar.attempt_id = a.id
         LEFT JOIN objects o ON o.hash = ar.hash",
    superseded_inputs: "SELECT json_group_array(json_array(k.key, ua.instance_id, ua.id))
         FROM json_each($1) k
         JOIN stage_instances i ON i.key = k.value
         JOIN attempts a ON a.id = (SELECT MAX(id) FROM attempts WHERE instance_id = i.id AND status = 'done')
         JOIN attempt_inputs ai ON ai.attempt_id = a.id
         JOIN attempts ua ON ua.id = ai.upstream_attempt_id
         WHERE ua.id <> COALESCE((SELECT MAX(id) FROM attempts WHERE instance_id = ua.instance_id AND status = 'done'), ua.id)",
    metric_insertion_order: "m.rowid",
    param_prefix: '?',
    user_query_as_json: None,
};

/// Set on every read-only connection: query_only as well, since arbitrary SQL
/// (`ablate sql`, dashboards) runs on them.
const READ_ONLY_PRAGMAS: &str =
    "PRAGMA busy_timeout = 60000; PRAGMA cache_size = -65536; PRAGMA mmap_size = 268435456; PRAGMA query_only = ON;";

/// A pool on the workspace's database file, and what the file holds; a file
/// that is not a SQLite database, or holds tables that are not ablate's, is
/// a [`super::NotAStore`] error. Pragmas are set on every new connection,
/// since the `Any` driver only carries what a URL can say.
pub(super) async fn connect(path: &Path, read_only: bool) -> anyhow::Result<(AnyPool, Contents)> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?;
    let options = if read_only { options.read_only(true) } else { options.create_if_missing(true) };
    let url = options.to_url_lossy();
    // A 64 MiB page cache and memory-mapped reads: checking a large plan
    // touches every instance's rows, and SQLite's 2 MiB default turns that
    // into a read syscall per page.
    let pragmas = if read_only {
        READ_ONLY_PRAGMAS
    } else {
        "PRAGMA busy_timeout = 60000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -65536; PRAGMA mmap_size = 268435456;"
    };
    super::install_drivers();
    let connect = AnyConnectOptions::from_url(&url)?;
    // One connection first: a damaged or foreign file is reported at once
    // (the pool would retry it until its 30 s acquire timeout).
    // Only reads until the file is known to be ours (the pragmas below write
    // its header).
    let mut probe = connect.connect().await.map_err(|e| unreadable(path, &e))?;
    probe.execute("PRAGMA busy_timeout = 60000;").await.map_err(|e| unreadable(path, &e))?;
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(&mut probe)
        .await
        .map_err(|e| unreadable(path, &e))?;
    sqlx::Connection::close(probe).await.ok();
    let contents = if tables.is_empty() {
        Contents::Empty
    } else if tables.iter().any(|t| t == "stage_instances") {
        Contents::Ablate
    } else {
        let why = format!("it holds other tables ({})", tables.join(", "));
        return Err(super::NotAStore { db: path.display().to_string(), why }.into());
    };
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(pragmas).await?;
                Ok(())
            })
        })
        .connect_with(connect)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((pool, contents))
}

/// What a database file holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Contents {
    /// No tables: a new file (or one an earlier open created and never migrated).
    Empty,
    Ablate,
}

fn unreadable(path: &Path, e: &sqlx::Error) -> anyhow::Error {
    super::NotAStore { db: path.display().to_string(), why: format!("SQLite cannot read it: {e}") }.into()
}

/// Runs one arbitrary read-only query (`ablate sql`, a dashboard panel) on a
/// connection of its own, which SQLite interrupts once the query has run for
/// `limit` or the caller has stopped waiting for it (a browser that left).
/// A pool connection cannot do this: the `Any` driver hides the handle that
/// takes a progress handler, and dropping the future alone would leave
/// SQLite's worker stepping through the query to its end.
pub(super) async fn interruptible_query(
    path: &Path,
    sql: &str,
    binds: &[Option<String>],
    limit: Option<Duration>,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    /// Asks the progress handler to stop when the query's future is dropped.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let mut conn: SqliteConnection = SqliteConnectOptions::new().filename(path).read_only(true).connect().await?;
    conn.execute(READ_ONLY_PRAGMAS).await?;
    let deadline = limit.map(|l| Instant::now() + l);
    let stopped = stop.0.clone();
    // Called every 10,000 virtual-machine instructions (well under a
    // millisecond); returning false interrupts the statement.
    conn.lock_handle()
        .await?
        .set_progress_handler(10_000, move || !stopped.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d));
    let mut query = sqlx::query::<sqlx::Sqlite>(sql);
    for value in binds {
        query = query.bind(value.clone());
    }
    let rows = query.fetch_all(&mut conn).await;
    conn.close().await.ok();
    rows?.iter().map(AnyRow::try_from).collect()
}
