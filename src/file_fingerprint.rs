//! Fingerprints of the files a stage reads by path (model weights, caption
//! manifests): a stage key must change when such a file does, though the
//! pipeline text naming it does not.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

/// Feeds a file's name and then its bytes to `hasher`.
pub fn hash_file(hasher: &mut Sha256, path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    hasher.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
    // Large reads: weights run to gigabytes.
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, file), hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(())
}

/// What a fingerprint was computed from: a description of the input and the
/// path, size and modification time of each of its files.
type Signature = (String, Vec<(PathBuf, u64, Option<SystemTime>)>);

/// Fingerprints remembered for this process while their files keep their
/// sizes and modification times: a grid with many instances over one model
/// or one manifest hashes it once per `plan` or `run`, not once per instance.
pub struct Remembered(Mutex<Vec<(Signature, String)>>);

impl Default for Remembered {
    fn default() -> Self {
        Self::new()
    }
}

impl Remembered {
    pub const fn new() -> Self {
        Remembered(Mutex::new(Vec::new()))
    }

    /// The fingerprint of `what` over `files`: remembered, or `compute`d.
    pub fn get(&self, what: String, files: &[PathBuf], compute: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<String> {
        let stats = files
            .iter()
            .map(|p| {
                let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
                Ok((p.clone(), meta.len(), meta.modified().ok()))
            })
            .collect::<anyhow::Result<_>>()?;
        let signature = (what, stats);
        if let Some((_, hash)) = self.0.lock().expect("not poisoned").iter().find(|(s, _)| *s == signature) {
            return Ok(hash.clone());
        }
        let hash = compute()?;
        self.0.lock().expect("not poisoned").push((signature, hash.clone()));
        Ok(hash)
    }
}
