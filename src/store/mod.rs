//! The store: the workspace's SQLite database and object directory.
//!
//! Only this module speaks SQL. Everything ablate knows about past work (runs,
//! instances, lineage edges, attempts, artifacts, metrics) is here, so any
//! question about history is a query, and several `ablate` processes can share
//! one workspace: WAL, a busy timeout, and claims made in `BEGIN IMMEDIATE`
//! transactions backed by a unique index on running attempts.

mod history;
pub mod objects;
mod read;
mod write;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use history::*;
pub use objects::{ObjectStat, ObjectStore, PutObject, Verified};
pub use read::*;
pub use write::*;

/// Where a workspace keeps things; see ARCHITECTURE.md.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
}

impl Workspace {
    /// The root is made absolute: artifact paths handed to stages (and to the
    /// processes `command` starts) must not depend on the current directory.
    pub fn new(root: impl Into<PathBuf>) -> Workspace {
        let root = root.into();
        Workspace { root: std::path::absolute(&root).unwrap_or(root) }
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("ablate.db")
    }
    /// Per-attempt scratch space (outputs are written here, then moved into objects/).
    pub fn attempt_dir(&self, attempt_id: i64) -> PathBuf {
        self.root.join("tmp").join(attempt_id.to_string())
    }
    /// Per-instance state that survives attempts (training checkpoints).
    pub fn state_dir(&self, key: &str) -> PathBuf {
        self.root.join("state").join(key)
    }
    pub fn objects(&self) -> ObjectStore {
        ObjectStore::new(&self.root)
    }
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    workspace: Workspace,
    read_only: bool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) the workspace's store for writing.
    pub async fn open(workspace: &Workspace) -> anyhow::Result<Store> {
        std::fs::create_dir_all(&workspace.root).with_context(|| format!("creating workspace {}", workspace.root.display()))?;
        let options = connect_options(&workspace.db_path())?.create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", workspace.db_path().display()))?;
        // Two processes opening a fresh workspace at once must not both migrate.
        let lock = FileLock::exclusive(&workspace.root.join("migrate.lock"))?;
        MIGRATOR.run(&pool).await.context("applying store migrations")?;
        drop(lock);
        Ok(Store { pool, workspace: workspace.clone(), read_only: false })
    }

    /// Opens an existing store read-only; `None` when the workspace has none yet.
    pub async fn open_read_only(workspace: &Workspace) -> anyhow::Result<Option<Store>> {
        let path = workspace.db_path();
        if !path.exists() {
            return Ok(None);
        }
        // query_only as well: arbitrary SQL (`ablate sql`, dashboards) runs here.
        let options = connect_options(&path)?.read_only(true).pragma("query_only", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Some(Store { pool, workspace: workspace.clone(), read_only: true }))
    }

    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

fn connect_options(path: &Path) -> anyhow::Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(60))
        .foreign_keys(true)
        // A 64 MiB page cache and memory-mapped reads: checking a large plan
        // touches every instance's rows, and SQLite's 2 MiB default turns that
        // into a read syscall per page.
        .pragma("cache_size", "-65536")
        .pragma("mmap_size", "268435456"))
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
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
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
