//! What a file source's stage key must follow (`source_sha256`): the bytes of
//! the files captions and labels come from (manifest, COCO captions JSON,
//! SugarCrepe JSON, Fashion-MNIST IDX files), and the name and size of every
//! image they reference. Without it the key holds only the `source` text, so
//! an edited manifest, or the same relative path in another directory, would
//! be reported cached with the old data.
//!
//! Images enter by size, not content: hashing a COCO-sized image folder on
//! every `plan` would cost seconds, and a re-encoded image almost always
//! changes size. An image replaced by one of exactly the same size needs
//! `run --force` on the ingest stage.
//!
//! Webdataset shards enter by path, size and modification time instead
//! (`webdataset::fingerprint`): tar sizes move in 512-byte blocks, so an
//! edited caption often keeps the size, and reading the shards is out of the
//! question at terabyte scale.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::Source;
use super::dataset::resolve;
use super::{fashion, jsonl, sugarcrepe, webdataset};
use crate::file_fingerprint::{Remembered, hash_file};

struct Hasher(Sha256);

impl Hasher {
    /// An image as written in the source, and its size (a missing one as
    /// such: the ingest fails or skips it, by `on_error`).
    fn image(&mut self, name: &str, path: &Path) {
        self.0.update(name.as_bytes());
        self.0.update([0]);
        let size = std::fs::metadata(path).map_or(u64::MAX, |m| m.len());
        self.0.update(size.to_le_bytes());
    }
}

/// The fingerprint of a file source; `None` for the built-in one.
pub(super) fn of(source: &Source, image_root: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Source::WebDataset(pattern) = source {
        let shards = webdataset::shards(pattern).map_err(anyhow::Error::msg)?;
        return webdataset::fingerprint(&shards).map(Some);
    }
    let text_files = text_files(source)?;
    if text_files.is_empty() {
        return Ok(None);
    }
    static REMEMBERED: Remembered = Remembered::new();
    let hash = REMEMBERED.get(format!("{source:?} {image_root:?}"), &text_files, || {
        let mut h = Hasher(Sha256::new());
        for path in &text_files {
            hash_file(&mut h.0, path)?;
        }
        for (name, path) in images(source, image_root)? {
            h.image(&name, &path);
        }
        Ok(hex::encode(h.0.finalize()))
    })?;
    Ok(Some(hash))
}

/// The files captions and labels are read from.
fn text_files(source: &Source) -> anyhow::Result<Vec<PathBuf>> {
    Ok(match source {
        Source::Shapes | Source::WebDataset(_) => Vec::new(),
        Source::Jsonl(path) | Source::Coco(path) => vec![path.clone()],
        Source::FashionMnist(dir) => fashion::files(dir)?,
        Source::SugarCrepe(dir) => sugarcrepe::subset_files(dir)?.into_iter().map(|(_, p)| p).collect(),
    })
}

/// Every image the source references, as written and resolved; lines or
/// entries the ingest would reject are left to it.
fn images(source: &Source, image_root: Option<&Path>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let root = image_root.unwrap_or(Path::new(""));
    let named = |names: Vec<String>, base: &Path| {
        names
            .into_iter()
            .map(|n| {
                let path = resolve(base, &n);
                (n, path)
            })
            .collect()
    };
    Ok(match source {
        Source::Shapes | Source::FashionMnist(_) | Source::WebDataset(_) => Vec::new(),
        Source::Jsonl(path) => {
            #[derive(Deserialize)]
            struct Line {
                image: String,
            }
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read manifest {}", path.display()))?;
            let names = text.lines().filter_map(|l| serde_json::from_str::<Line>(l.trim_start_matches('\u{feff}')).ok()).map(|l| l.image);
            named(names.collect(), jsonl::image_base(path, image_root))
        }
        Source::Coco(path) => {
            #[derive(Deserialize)]
            struct Images {
                images: Vec<Image>,
            }
            #[derive(Deserialize)]
            struct Image {
                file_name: String,
            }
            let file = std::fs::File::open(path).with_context(|| format!("cannot open COCO captions file {}", path.display()))?;
            let names = match serde_json::from_reader::<_, Images>(std::io::BufReader::new(file)) {
                Ok(coco) => coco.images.into_iter().map(|i| i.file_name).collect(),
                Err(_) => Vec::new(), // the ingest says what is wrong with it
            };
            named(names, root)
        }
        Source::SugarCrepe(dir) => {
            let mut names: Vec<String> = Vec::new();
            for subset in sugarcrepe::SUBSETS {
                for entry in sugarcrepe::read_subset(dir, subset).unwrap_or_default().unwrap_or_default() {
                    names.push(entry.filename);
                }
            }
            names.sort_unstable();
            names.dedup();
            named(names, root)
        }
    })
}
