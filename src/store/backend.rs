//! The two database backends and the SQL in which they differ.
//!
//! Every query method of `Store` is written once against sqlx's `Any` driver
//! with `$N` placeholders (which SQLite accepts too) and SQL both engines
//! understand (`ON CONFLICT`, `RETURNING`, quoted `"user"`). What cannot be
//! shared is a field of [`Dialect`]: one value per backend, in `sqlite.rs`
//! and `postgres.rs`, so a reader sees each engine's text in one place.

use sqlx::migrate::Migrator;

/// Which engine holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a `--db` URL names.
    pub fn of_url(url: &str) -> anyhow::Result<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!(
                "unsupported database URL `{}`: give a postgres://USER:PASSWORD@HOST:PORT/DATABASE URL \
                 (without --db the workspace's own SQLite file is used)",
                super::postgres::redacted(url)
            )
        }
    }

    pub fn name(self) -> &'static str {
        self.dialect().name
    }

    pub(super) fn dialect(self) -> &'static Dialect {
        match self {
            Backend::Sqlite => &super::sqlite::DIALECT,
            Backend::Postgres => &super::postgres::DIALECT,
        }
    }

    pub(super) fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &super::sqlite::MIGRATOR,
            Backend::Postgres => &super::postgres::MIGRATOR,
        }
    }
}

/// Statements whose text differs between the engines. Bulk statements take
/// their rows as one JSON array (the engine unpacks it: for numeric rows such
/// as metrics that is far faster than binding every value).
pub(super) struct Dialect {
    pub name: &'static str,
    /// Starts a transaction that writes: SQLite takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a read-then-write cannot deadlock.
    pub begin_write: &'static str,
    /// Run first in transactions that must not interleave with their own kind
    /// (registering plans); SQLite's write lock already does that.
    pub serialize_writers: Option<&'static str>,
    /// Run first in a claim, with the instance id in `$1`: serializes claims
    /// of one instance (the partial unique index on running attempts backs it).
    pub lock_instance: Option<&'static str>,
    /// `[[name, step, value], ...]` in `$3`; instance `$1`, attempt `$2`.
    pub insert_metrics: &'static str,
    /// Keys as a JSON array in `$1` → one JSON text `[[key, id], ...]`.
    pub instance_ids: &'static str,
    /// Keys as a JSON array in `$1` → one JSON text `[[position, instance_id,
    /// attempt_id, artifact, hash, bytes, object_bytes, mtime_ns], ...]` for
    /// the latest done attempt of each key (one row per artifact).
    pub done_attempts: &'static str,
    /// `$1` a JSON array of keys; returns `[[position, upstream instance id,
    /// upstream attempt id], ...]`: for the latest done attempt of each key,
    /// the upstream attempts it read that are no longer their instance's
    /// latest done one (see `attempt_inputs`).
    pub superseded_inputs: &'static str,
    /// An expression ordering metric rows of `metrics m` by insertion.
    pub metric_insertion_order: &'static str,
    /// How generated placeholders are numbered (`?1` or `$1`): `:name`
    /// parameters of user SQL and multi-row VALUES lists.
    pub param_prefix: char,
    /// User SQL (`ablate sql`, dashboards) is run wrapped in this, with
    /// `{query}` replaced, where the `Any` driver cannot decode every column
    /// type the engine may return; each row then comes back as JSON text.
    pub user_query_as_json: Option<&'static str>,
}
