//! Content-addressed artifact files under `<workspace>/objects/`.
//!
//! Objects are named by the SHA-256 of their bytes and written by renaming a
//! complete, synced file into place, so a reader never sees a partial object
//! and a crash leaves at most an orphaned temp file (which `ablate gc` removes).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Store;

/// What is known of one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    pub bytes: u64,
    pub mtime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutObject {
    pub hash: String,
    pub stat: ObjectStat,
    /// Path relative to the workspace.
    pub rel_path: String,
}

/// Result of checking a stored object against its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Intact; the stat may be newer than the recorded one (then record it).
    Intact(ObjectStat),
    Missing,
    Corrupt,
}

#[derive(Debug, Clone)]
pub struct ObjectStore {
    workspace: PathBuf,
}

impl ObjectStore {
    pub fn new(workspace: &Path) -> ObjectStore {
        ObjectStore { workspace: workspace.to_path_buf() }
    }

    pub fn rel_path(hash: &str) -> String {
        format!("objects/{}/{}", &hash[..2], hash)
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.workspace.join(Self::rel_path(hash))
    }

    pub fn dir(&self) -> PathBuf {
        self.workspace.join("objects")
    }

    /// Moves a finished file into the store (same file system: `tmp/` lives in the workspace).
    pub fn put(&self, file: &Path) -> io::Result<PutObject> {
        let hash = hash_file(file)?;
        File::open(file)?.sync_all()?;
        let target = self.path(&hash);
        let dir = target.parent().expect("object paths have a parent");
        fs::create_dir_all(dir)?;
        let mut perms = fs::metadata(file)?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(file, perms)?;
        fs::rename(file, &target)?;
        File::open(dir)?.sync_all()?;
        let stat = stat(&target)?.expect("just renamed into place");
        Ok(PutObject { rel_path: Self::rel_path(&hash), hash, stat })
    }

    /// The inode an object has now (`None` when it is missing): a later
    /// [`ObjectStore::put`] of the same bytes renames a new file into place.
    pub fn inode(&self, hash: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(hash)) {
            Ok(m) => Ok(Some(m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object `hash` if it is still the file that had inode
    /// `inode`, that is, nobody stored the same bytes again since. The file
    /// is first renamed aside, so a `put` racing with this lands a fresh
    /// object instead of losing it; one that got in before the rename is
    /// seen by its inode and put back. True when it was deleted.
    pub fn remove_if_unchanged(&self, hash: &str, inode: u64) -> io::Result<bool> {
        if self.inode(hash)? != Some(inode) {
            return Ok(false);
        }
        let path = self.path(hash);
        let aside = path.with_file_name(format!(".{hash}.replaced.{}", std::process::id()));
        match fs::rename(&path, &aside) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            other => other?,
        }
        if fs::metadata(&aside)?.ino() == inode {
            fs::remove_file(&aside)?;
            Ok(true)
        } else {
            fs::rename(&aside, &path)?;
            Ok(false)
        }
    }

    /// Checks an object: a matching stat is trusted, anything else is re-hashed.
    pub fn verify(&self, hash: &str, recorded: Option<ObjectStat>) -> io::Result<Verified> {
        let path = self.path(hash);
        let Some(now) = stat(&path)? else { return Ok(Verified::Missing) };
        if Some(now) == recorded {
            return Ok(Verified::Intact(now));
        }
        self.verify_fully(hash)
    }

    /// Re-hashes an object regardless of its stat.
    pub fn verify_fully(&self, hash: &str) -> io::Result<Verified> {
        let path = self.path(hash);
        let Some(now) = stat(&path)? else { return Ok(Verified::Missing) };
        Ok(if hash_file(&path)? == hash { Verified::Intact(now) } else { Verified::Corrupt })
    }

    /// Every object file present, by hash.
    pub fn list(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        let dir = self.dir();
        if !dir.exists() {
            return Ok(out);
        }
        for shard in fs::read_dir(dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                out.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
            }
        }
        Ok(out)
    }
}

pub fn stat(path: &Path) -> io::Result<Option<ObjectStat>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(ObjectStat { bytes: m.len(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec() })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The `objects` rows: each object's stat when last verified.
impl Store {
    /// Records a re-verified object's new stat so the next check is a cheap stat again.
    pub async fn refresh_object_stat(&self, hash: &str, stat: ObjectStat) -> anyhow::Result<()> {
        sqlx::query("UPDATE objects SET bytes = $1, mtime_ns = $2 WHERE hash = $3")
            .bind(stat.bytes as i64)
            .bind(stat.mtime_ns)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets objects whose files `gc` deleted.
    pub async fn forget_objects(&self, hashes: &[String]) -> anyhow::Result<()> {
        let mut tx = self.begin_write().await?;
        for hash in hashes {
            sqlx::query("DELETE FROM objects WHERE hash = $1 AND NOT EXISTS (SELECT 1 FROM artifacts WHERE hash = $1)")
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
