//! `fashion-mnist:DIR`: the IDX files of Fashion-MNIST, plain or gzip-compressed.
//!
//! Debian's `dataset-fashion-mnist` ships them gzip-compressed under
//! /usr/share/datasets/fashion-mnist (`train-images-idx3-ubyte.gz`, ...); they
//! are decompressed while reading, so the read-only system copy works as is.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::dataset::{Dataset, Negative, Options, Record, Split};
use super::imageio;
use super::rng::Rng;
use super::shapes;
use crate::stages::StageContext;

/// The standard class names, lower-cased for captions; index = IDX label.
pub(super) const CLASSES: [&str; 10] =
    ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

pub(super) const TEMPLATES: &[&str] =
    &["a photo of a {}.", "a grayscale photo of a {}.", "a product photo of a {}.", "a low-resolution photo of a {}."];

const STREAM_NEGATIVES: u64 = 3;

/// An IDX file opened past its header.
struct Idx {
    path: PathBuf,
    reader: Box<dyn Read>,
    count: usize,
    /// Bytes per item (rows × cols for images, 1 for labels).
    item: usize,
    dims: Vec<usize>,
}

impl Idx {
    fn open(path: PathBuf, ndim: u8) -> anyhow::Result<Idx> {
        let file = BufReader::new(File::open(&path).with_context(|| format!("cannot open {}", path.display()))?);
        let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(BufReader::new(flate2::read::GzDecoder::new(file)))
        } else {
            Box::new(file)
        };
        let mut magic = [0u8; 4];
        reader.read_exact(&mut magic).with_context(|| format!("{}: truncated IDX header", path.display()))?;
        if magic != [0, 0, 0x08, ndim] {
            bail!(
                "{}: not an IDX file of unsigned bytes with {ndim} dimension(s) (magic {magic:02x?}){}",
                path.display(),
                if magic[..2] == [0x1f, 0x8b] { "; it is gzip-compressed but not named .gz" } else { "" }
            );
        }
        let mut dims = Vec::new();
        for _ in 0..ndim {
            let mut d = [0u8; 4];
            reader.read_exact(&mut d).with_context(|| format!("{}: truncated IDX header", path.display()))?;
            dims.push(u32::from_be_bytes(d) as usize);
        }
        let item = dims[1..].iter().product();
        Ok(Idx { path, reader, count: dims[0], item, dims })
    }

    fn read(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0u8; n * self.item];
        self.reader
            .read_exact(&mut buf)
            .with_context(|| format!("{}: file is shorter than its header says ({} items)", self.path.display(), self.count))?;
        Ok(buf)
    }
}

/// Finds `{set}-{kind}-idxN-ubyte` (or the `{set}-{kind}.idxN-ubyte` spelling).
fn find(dir: &Path, set: &str, kind: &str, n: u8) -> anyhow::Result<PathBuf> {
    let names = [format!("{set}-{kind}-idx{n}-ubyte"), format!("{set}-{kind}.idx{n}-ubyte")];
    for name in &names {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    for name in &names {
        let gz = dir.join(format!("{name}.gz"));
        if gz.is_file() {
            return Ok(gz);
        }
    }
    bail!("fashion-mnist: {} not found", dir.join(&names[0]).display())
}

/// The four IDX files the source reads (images and labels of both sets).
pub(super) fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for set in ["train", "t10k"] {
        files.push(find(dir, set, "images", 3)?);
        files.push(find(dir, set, "labels", 1)?);
    }
    Ok(files)
}

/// Reads up to `opts.images` images: train files → train split, t10k → test
/// split, the cap shared between them in proportion to the official sizes.
pub(super) fn ingest(ctx: &StageContext, opts: &Options, dir: &Path) -> anyhow::Result<Dataset> {
    let mut sets = Vec::new();
    for (set, split) in [("train", Split::Train), ("t10k", Split::Test)] {
        let images = Idx::open(find(dir, set, "images", 3)?, 3)?;
        let labels = Idx::open(find(dir, set, "labels", 1)?, 1)?;
        if images.count != labels.count {
            bail!("{} has {} images but {} has {} labels", images.path.display(), images.count, labels.path.display(), labels.count);
        }
        if images.dims[1] == 0 || images.dims[2] == 0 {
            bail!("{}: empty images ({:?})", images.path.display(), images.dims);
        }
        sets.push((images, labels, split));
    }
    let (n_train_all, n_test_all) = (sets[0].0.count, sets[1].0.count);
    let total = opts.images.min(n_train_all + n_test_all);
    let mut n_test = ((total as f64 * n_test_all as f64 / (n_train_all + n_test_all).max(1) as f64).round() as usize).min(n_test_all);
    let n_train = (total - n_test).min(n_train_all);
    n_test = (total - n_train).min(n_test_all);

    let res = opts.resolution;
    let mut data = Dataset::new(ctx, opts, &CLASSES, TEMPLATES)?;
    ctx.progress().set_length(total as u64);
    for ((mut images, mut labels, split), take) in sets.into_iter().zip([n_train, n_test]) {
        let (rows, cols) = (images.dims[1] as u32, images.dims[2] as u32);
        let file_name = images.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let label_bytes = labels.read(take)?;
        // Read in chunks so a large cap does not hold the raw file in memory twice.
        let mut done = 0;
        while done < take {
            ctx.check_cancelled()?;
            let chunk = (take - done).min(1024);
            let raw = images.read(chunk)?;
            for (k, gray) in raw.chunks_exact(images.item).enumerate() {
                let i = done + k;
                let label = label_bytes[i] as usize;
                let Some(name) = CLASSES.get(label) else {
                    bail!("{}: label {label} of item {i} is not a Fashion-MNIST class (0..=9)", labels.path.display());
                };
                let pixels = imageio::gray_to_rgb(gray, cols, rows, res);
                let short = format!("a photo of {} {name}.", shapes::article(name));
                let long = format!(
                    "A small grayscale product photograph of a single {name}, shown on its own and centered on a \
                     plain black background, in the style of an online clothing catalog."
                );
                let record = Record {
                    short: vec![short.clone()],
                    long: vec![long],
                    label: Some(label),
                    source: format!("{file_name}#{i}"),
                    split: Some(split),
                };
                let at = data.push(&pixels, record)?;
                let mut rng = Rng::for_item(opts.seed, STREAM_NEGATIVES, at as u64);
                let other = (label + 1 + rng.below(CLASSES.len() - 1)) % CLASSES.len();
                data.add_negative(Negative {
                    index: at,
                    subset: "replace_obj".into(),
                    positive: short,
                    negative: format!("a photo of {} {}.", shapes::article(CLASSES[other]), CLASSES[other]),
                })?;
            }
            done += chunk;
            ctx.progress().set_position(data.records.len() as u64);
        }
    }
    Ok(data)
}
