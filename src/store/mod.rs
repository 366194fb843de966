//! The store: the workspace's database and object directory.
//!
//! Only this module speaks SQL. Everything ablate knows about past work (runs,
//! instances, lineage edges, attempts, artifacts, metrics, Slurm jobs) is
//! here, so any question about history is a query, and several `ablate`
//! processes, on one machine or many, can share one store.
//!
//! Two backends sit behind one [`Store`]: the workspace's SQLite file (the
//! embedded default: WAL, a busy timeout, claims in `BEGIN IMMEDIATE`
//! transactions) and a PostgreSQL server (`--db postgres://...`, for studies
//! whose jobs run on many nodes: claims lock the instance row). Both are
//! reached through sqlx's `Any` driver, so every query method is written once;
//! the statements whose text must differ (bulk JSON inserts and lookups,
//! locking, insertion order) are fields of a [`Dialect`], one per backend, in
//! `sqlite.rs` and `postgres.rs`. Schemas live in `migrations/sqlite/` and
//! `migrations/postgres/`, with the same tables, columns and views.

mod attempts;
mod backend;
mod history;
pub mod objects;
mod plans;
mod postgres;
mod read;
mod runs;
mod slurm_jobs;
mod sqlite;
mod status;
mod user_sql;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sqlx::{Any, AnyPool};

pub use attempts::*;
pub use backend::Backend;
use backend::Dialect;
pub use history::*;
pub use objects::{ObjectStat, ObjectStore, PutObject, Verified};
pub use read::*;
pub use runs::*;
pub use slurm_jobs::*;
pub use status::{AttemptEnd, AttemptStatus, Executor, NodeStatus, RunEnd, RunStatus};
pub use user_sql::*;

/// Where a workspace keeps things; see ARCHITECTURE.md.
///
/// Artifacts, scratch and per-instance state are always files under `root`
/// (on a cluster: a shared file system). The database is `root/ablate.db`
/// unless `db` names a PostgreSQL server.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    /// A `postgres://` URL; `None` for the workspace's SQLite file.
    pub db: Option<String>,
}

impl Workspace {
    /// The root is made absolute: artifact paths handed to stages (and to the
    /// processes `command` starts) must not depend on the current directory.
    pub fn new(root: impl Into<PathBuf>) -> Workspace {
        let root = root.into();
        Workspace { root: std::path::absolute(&root).unwrap_or(root), db: None }
    }
    /// The same workspace with its database on a PostgreSQL server. The URL
    /// is checked here, so a typo is reported before anything runs.
    pub fn with_db(mut self, url: Option<String>) -> anyhow::Result<Workspace> {
        if let Some(url) = &url {
            Backend::of_url(url)?;
        }
        self.db = url;
        Ok(self)
    }
    pub fn backend(&self) -> Backend {
        match &self.db {
            Some(_) => Backend::Postgres,
            None => Backend::Sqlite,
        }
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("ablate.db")
    }
    /// Written when a PostgreSQL store writes into this workspace: its
    /// objects may then be referenced by a store that the SQLite file knows
    /// nothing of (one redacted URL a line, for messages).
    pub fn servers_path(&self) -> PathBuf {
        self.root.join("postgres-stores")
    }
    /// The PostgreSQL stores (redacted URLs) that have written into this workspace.
    pub fn servers_used(&self) -> Vec<String> {
        std::fs::read_to_string(self.servers_path()).map(|t| t.lines().map(str::to_owned).collect()).unwrap_or_default()
    }
    /// Whether this workspace's objects belong to this store alone, so that
    /// an object it no longer references is referenced by nobody.
    pub fn objects_unshared(&self) -> bool {
        match &self.db {
            None => self.servers_used().is_empty(),
            Some(_) => !self.db_path().exists() && self.servers_used() == [self.db_display()],
        }
    }
    /// Whether a store may already exist: the SQLite file is there, or the
    /// database is a server (which only connecting can tell).
    pub fn store_may_exist(&self) -> bool {
        self.db.is_some() || self.db_path().exists()
    }
    /// Where the database is, for messages (a server URL without its password).
    pub fn db_display(&self) -> String {
        match &self.db {
            Some(url) => postgres::redacted(url),
            None => self.db_path().display().to_string(),
        }
    }
    /// Per-attempt scratch space (outputs are written here, then moved into objects/).
    pub fn attempt_dir(&self, attempt_id: i64) -> PathBuf {
        self.root.join("tmp").join(attempt_id.to_string())
    }
    /// Per-instance state that survives attempts (training checkpoints).
    pub fn state_dir(&self, key: &str) -> PathBuf {
        self.root.join("state").join(key)
    }
    /// Empties an instance's state directory (its checkpoints): a forced
    /// rerun computes afresh instead of resuming from the last run's state.
    pub fn clear_state(&self, key: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.state_dir(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    /// Batch scripts and logs of Slurm jobs.
    pub fn slurm_dir(&self) -> PathBuf {
        self.root.join("slurm")
    }
    pub fn objects(&self) -> ObjectStore {
        ObjectStore::new(&self.root)
    }
}

/// The workspace's database cannot be used as a store: damaged, not a
/// database, or another program's (exit code 2: the workspace or
/// `--db` given is wrong; nothing was written to it).
#[derive(Debug, thiserror::Error)]
#[error("{db} is not an ablate store: {why}")]
pub struct NotAStore {
    pub db: String,
    pub why: String,
}

/// `--db` is not a database URL that can be used (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{db}: not a valid database URL ({why})")]
pub struct BadDatabaseUrl {
    pub db: String,
    pub why: String,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sql: &'static Dialect,
    workspace: Workspace,
    read_only: bool,
}

impl Store {
    pub(super) fn check_writable(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.read_only, "the store was opened read-only");
        Ok(())
    }

    /// A transaction that will write (see `Dialect::begin_write`).
    pub(super) async fn begin_write(&self) -> anyhow::Result<sqlx::Transaction<'static, Any>> {
        Ok(self.pool.begin_with(self.sql.begin_write).await?)
    }

    /// Opens (creating and migrating if needed) the workspace's store for writing.
    pub async fn open(workspace: &Workspace) -> anyhow::Result<Store> {
        std::fs::create_dir_all(&workspace.root).with_context(|| format!("creating workspace {}", workspace.root.display()))?;
        let backend = workspace.backend();
        let pool = match &workspace.db {
            None => sqlite::connect(&workspace.db_path(), false).await?.0,
            Some(url) => postgres::connect(url, false).await?,
        };
        // Two processes opening a fresh SQLite workspace at once must not both
        // migrate (sqlx takes an advisory lock on PostgreSQL by itself).
        let lock = match backend {
            Backend::Sqlite => Some(FileLock::exclusive(&workspace.root.join("migrate.lock"))?),
            Backend::Postgres => None,
        };
        backend.migrator().run(&pool).await.with_context(|| format!("applying store migrations to {}", workspace.db_display()))?;
        drop(lock);
        if backend == Backend::Postgres && !workspace.servers_used().contains(&workspace.db_display()) {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(workspace.servers_path())?;
            writeln!(file, "{}", workspace.db_display())?;
        }
        Ok(Store { pool, sql: backend.dialect(), workspace: workspace.clone(), read_only: false })
    }

    /// Opens an existing store read-only; `None` when the workspace has none yet.
    pub async fn open_read_only(workspace: &Workspace) -> anyhow::Result<Option<Store>> {
        let backend = workspace.backend();
        let pool = match &workspace.db {
            None => {
                let path = workspace.db_path();
                if !path.exists() {
                    return Ok(None);
                }
                match sqlite::connect(&path, true).await? {
                    (pool, sqlite::Contents::Ablate) => pool,
                    (pool, sqlite::Contents::Empty) => {
                        pool.close().await;
                        return Ok(None);
                    }
                }
            }
            Some(url) => {
                let pool = postgres::connect(url, true).await?;
                if !postgres::has_schema(&pool).await? {
                    return Ok(None);
                }
                pool
            }
        };
        Ok(Some(Store { pool, sql: backend.dialect(), workspace: workspace.clone(), read_only: true }))
    }

    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    pub fn backend(&self) -> Backend {
        self.workspace.backend()
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// Registers the SQLite and PostgreSQL drivers with sqlx's `Any` (once per process).
fn install_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// An advisory `flock` held until dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn exclusive(path: &Path) -> anyhow::Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
        }
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; unlocking cannot fail in a way we could act on.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Now, as stored: RFC 3339 UTC text with milliseconds.
pub fn now_text() -> String {
    time_text(chrono::Utc::now())
}

/// A time as the store writes it (UTC, milliseconds).
fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A heartbeat (milliseconds since the epoch) as the store writes times: a
/// process found dead ended, as far as anyone knows, at its last beat.
pub fn heartbeat_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(now_text, time_text)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// This host's name, as recorded on runs and attempts.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether a process with this id exists on this host.
pub fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
