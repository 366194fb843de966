//! A set of square RGB images, `u8` `[side, side, 3]` each (row-major HWC):
//! what `caption_ingest` writes and training and evaluation cut into
//! patches. It lives below both, so the training loop reads images without
//! knowing the stage kind that made them.
//!
//! On disk, images are shards of [`SHARD_IMAGES`] images each
//! (`images/00000.safetensors`, …: one tensor `images`, u8 `[k, S, S, 3]`)
//! plus an index, `images.json` ([`ShardIndex`]). Readers fetch the images a
//! batch needs with positioned reads, so memory does not grow with the
//! dataset (the page cache keeps hot shards). A single `images.safetensors`,
//! as ingest instances made before shards wrote, reads the same way.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use crate::tensor_file::{TensorFile, TensorShape, TensorWriter};

/// Images per shard: a few MB at 32 px, ~150 MB at 224 px.
pub const SHARD_IMAGES: usize = 1024;

/// `images.json`: the shards, in order, as artifact names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardIndex {
    pub n: usize,
    pub side: usize,
    pub shard_images: usize,
    pub shards: Vec<String>,
}

impl ShardIndex {
    /// An `images.json`; errors name the file.
    pub fn read(path: &Path) -> anyhow::Result<ShardIndex> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is not an image shard index", path.display()))
    }
}

/// Where one shard's pixels are.
#[derive(Debug, Clone)]
struct Shard {
    path: PathBuf,
    /// Byte offset of the first pixel (after the safetensors header).
    data_start: u64,
    n: usize,
}

enum Storage {
    Memory(Vec<u8>),
    Files { shards: Vec<Shard>, shard_images: usize },
}

pub struct ImageSet {
    pub n: usize,
    pub side: usize,
    storage: Storage,
}

impl ImageSet {
    /// Images held in memory (generated data: benchmarks and tests).
    pub fn in_memory(n: usize, side: usize, pixels: Vec<u8>) -> ImageSet {
        assert_eq!(pixels.len(), n * side * side * 3, "pixels of {n} images of {side}²");
        ImageSet { n, side, storage: Storage::Memory(pixels) }
    }

    /// One safetensors file holding all images (the layout before shards).
    pub fn open_single(path: &Path) -> anyhow::Result<ImageSet> {
        let (shard, side) = open_shard(path)?;
        let n = shard.n;
        Ok(ImageSet { n, side, storage: Storage::Files { shards: vec![shard], shard_images: n.max(1) } })
    }

    /// The shards an index lists; `resolve` turns a shard's artifact name
    /// into its path.
    pub fn open_sharded(index: &Path, resolve: impl Fn(&str) -> anyhow::Result<PathBuf>) -> anyhow::Result<ImageSet> {
        let idx = ShardIndex::read(index)?;
        let mut shards = Vec::with_capacity(idx.shards.len());
        for (s, name) in idx.shards.iter().enumerate() {
            let (shard, side) = open_shard(&resolve(name)?)?;
            let want = idx.shard_images.min(idx.n.saturating_sub(s * idx.shard_images));
            if side != idx.side || shard.n != want {
                bail!("{name}: {} images of {side}² where {} lists {want} of {}²", shard.n, index.display(), idx.side);
            }
            shards.push(shard);
        }
        if shards.iter().map(|s| s.n).sum::<usize>() != idx.n {
            bail!("{}: the shards hold {} images, the index says {}", index.display(), shards.iter().map(|s| s.n).sum::<usize>(), idx.n);
        }
        Ok(ImageSet { n: idx.n, side: idx.side, storage: Storage::Files { shards, shard_images: idx.shard_images.max(1) } })
    }

    pub fn image_bytes(&self) -> usize {
        self.side * self.side * 3
    }

    /// The pixels of `indices`, concatenated in that order.
    pub fn fetch(&self, indices: &[usize]) -> anyhow::Result<Vec<u8>> {
        let size = self.image_bytes();
        let mut out = vec![0u8; indices.len() * size];
        if let Some(&i) = indices.iter().find(|&&i| i >= self.n) {
            bail!("image {i} of a set of {}", self.n);
        }
        match &self.storage {
            Storage::Memory(pixels) => {
                for (o, &i) in out.chunks_exact_mut(size).zip(indices) {
                    o.copy_from_slice(&pixels[i * size..(i + 1) * size]);
                }
            }
            Storage::Files { shards, shard_images } => {
                // Each shard opened once per fetch, whatever the order.
                let mut order: Vec<usize> = (0..indices.len()).collect();
                order.sort_by_key(|&k| indices[k]);
                let mut open: Option<(usize, std::fs::File)> = None;
                for k in order {
                    let (s, within) = (indices[k] / shard_images, indices[k] % shard_images);
                    let shard = &shards[s];
                    if open.as_ref().is_none_or(|(o, _)| *o != s) {
                        let file = std::fs::File::open(&shard.path).with_context(|| format!("opening {}", shard.path.display()))?;
                        open = Some((s, file));
                    }
                    let (_, file) = open.as_ref().expect("opened above");
                    let at = shard.data_start + (within * size) as u64;
                    file.read_exact_at(&mut out[k * size..(k + 1) * size], at)
                        .with_context(|| format!("reading image {within} of {}", shard.path.display()))?;
                }
            }
        }
        Ok(out)
    }
}

/// A safetensors file's `images` tensor: where its data starts, and its shape.
fn open_shard(path: &Path) -> anyhow::Result<(Shard, usize)> {
    let file = TensorFile::open(path)?;
    let (dtype, shape, data_start) = file.locate("images")?;
    if dtype != Dtype::U8 || shape.len() != 4 || shape[1] != shape[2] || shape[3] != 3 {
        bail!("{}: `images` must be u8 [N, S, S, 3], found {dtype:?} {shape:?}", path.display());
    }
    Ok((Shard { path: path.to_owned(), data_start, n: shape[0] }, shape[1]))
}

/// Writes images as shards into `dir` as they arrive, holding one shard.
pub struct ShardWriter {
    dir: PathBuf,
    side: usize,
    pending: Vec<u8>,
    shards: Vec<String>,
    n: usize,
}

impl ShardWriter {
    pub fn new(dir: &Path, side: usize) -> ShardWriter {
        ShardWriter { dir: dir.to_owned(), side, pending: Vec::new(), shards: Vec::new(), n: 0 }
    }

    pub fn push(&mut self, pixels: &[u8]) -> anyhow::Result<()> {
        if pixels.len() != self.side * self.side * 3 {
            bail!("internal error: an image of {} bytes among images of {}²×3", pixels.len(), self.side);
        }
        self.pending.extend_from_slice(pixels);
        self.n += 1;
        if self.n.is_multiple_of(SHARD_IMAGES) {
            self.flush()?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let name = format!("images/{:05}.safetensors", self.shards.len());
        let path = self.dir.join(&name);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir)).with_context(|| format!("creating {}", self.dir.display()))?;
        let k = self.pending.len() / (self.side * self.side * 3);
        let shape = TensorShape { name: "images".into(), dtype: Dtype::U8, shape: vec![k, self.side, self.side, 3] };
        let mut out = TensorWriter::create(&path, &[shape], Default::default())?;
        out.append(&self.pending)?;
        out.finish()?;
        self.pending.clear();
        self.shards.push(name);
        Ok(())
    }

    /// Writes the last shard; returns the index (the caller writes it).
    pub fn finish(mut self) -> anyhow::Result<ShardIndex> {
        self.flush()?;
        Ok(ShardIndex { n: self.n, side: self.side, shard_images: SHARD_IMAGES, shards: self.shards })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_read_back_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let side = 2;
        let n = SHARD_IMAGES * 2 + 5;
        let pixel = |i: usize| (0..side * side * 3).map(move |b| ((i * 31 + b) % 251) as u8);
        let mut w = ShardWriter::new(dir.path(), side);
        for i in 0..n {
            w.push(&pixel(i).collect::<Vec<_>>()).unwrap();
        }
        let index = w.finish().unwrap();
        assert_eq!(index.shards, ["images/00000.safetensors", "images/00001.safetensors", "images/00002.safetensors"]);
        let index_path = dir.path().join("images.json");
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        let set = ImageSet::open_sharded(&index_path, |name| Ok(dir.path().join(name))).unwrap();
        assert_eq!((set.n, set.side), (n, side));
        let picks = [n - 1, 3, SHARD_IMAGES, 3, SHARD_IMAGES - 1];
        let got = set.fetch(&picks).unwrap();
        let want: Vec<u8> = picks.iter().flat_map(|&i| pixel(i)).collect();
        assert_eq!(got, want);
        assert!(set.fetch(&[n]).is_err());

        // A shard that lost images is an error naming it.
        std::fs::write(dir.path().join("images/00002.safetensors"), b"junk").unwrap();
        let err = ImageSet::open_sharded(&index_path, |name| Ok(dir.path().join(name))).err().unwrap();
        assert!(format!("{err:#}").contains("00002.safetensors"), "{err:#}");
    }

    #[test]
    fn a_single_file_of_the_layout_before_shards_reads_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..3 * 2 * 2 * 3).map(|b| b as u8).collect();
        let path = dir.path().join("images.safetensors");
        let tensor = crate::tensor_file::RawTensor { dtype: Dtype::U8, shape: vec![3, 2, 2, 3], bytes: pixels.clone() };
        crate::tensor_file::write(&path, &[("images".to_owned(), tensor)], Default::default()).unwrap();
        let set = ImageSet::open_single(&path).unwrap();
        assert_eq!((set.n, set.side), (3, 2));
        assert_eq!(set.fetch(&[2, 0]).unwrap(), [&pixels[24..36], &pixels[..12]].concat());
    }
}
