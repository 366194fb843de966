//! The in-memory dataset every source builds, the split, and the artifact writers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::rng::Rng;
use crate::images::ShardWriter;
use crate::stages::StageContext;

const NEGATIVES: &str = "negatives.jsonl";

/// Stream id for the train/test shuffle (see [`Rng::for_item`]).
const STREAM_SPLIT: u64 = 2;

/// Resolved, validated parameters.
#[derive(Debug, Clone)]
pub(super) struct Options {
    pub images: usize,
    pub resolution: u32,
    pub max_objects: usize,
    pub seed: u64,
    pub test_fraction: f64,
    pub image_root: Option<PathBuf>,
    pub skip_errors: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Split {
    Train,
    Test,
}

#[derive(Debug, Clone)]
pub(super) struct Record {
    pub short: Vec<String>,
    pub long: Vec<String>,
    pub label: Option<usize>,
    pub source: String,
    /// Set by sources with an official split; the others get the seeded split.
    pub split: Option<Split>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Negative {
    pub index: usize,
    pub subset: String,
    pub positive: String,
    pub negative: String,
}

/// Everything a source produced, before the split and the writing; the
/// images go to their shards as they arrive.
pub(super) struct Dataset {
    /// `records.len()` images of `resolution`² × 3 bytes each.
    pub images: ShardWriter,
    pub records: Vec<Record>,
    /// `negatives.jsonl`, written as negatives arrive (they outnumber images).
    negatives: BufWriter<File>,
    n_negatives: usize,
    pub classes: Vec<String>,
    pub templates: Vec<String>,
    pub skipped: u64,
    /// Extra metrics a source wants to report (name, value).
    pub extra_metrics: Vec<(&'static str, f64)>,
}

impl Dataset {
    /// An empty dataset whose image shards go to the stage's output folder.
    pub(super) fn new(ctx: &StageContext, opts: &Options, classes: &[&str], templates: &[&str]) -> anyhow::Result<Dataset> {
        let negatives = ctx.out_dir()?.join(NEGATIVES);
        Ok(Dataset {
            images: ShardWriter::new(ctx.out_dir()?, opts.resolution as usize),
            records: Vec::new(),
            negatives: BufWriter::new(File::create(&negatives).with_context(|| format!("creating {}", negatives.display()))?),
            n_negatives: 0,
            classes: classes.iter().map(|s| s.to_string()).collect(),
            templates: templates.iter().map(|s| s.to_string()).collect(),
            skipped: 0,
            extra_metrics: Vec::new(),
        })
    }

    /// Appends one image; returns its index.
    pub(super) fn push(&mut self, pixels: &[u8], record: Record) -> anyhow::Result<usize> {
        self.images.push(pixels)?;
        self.records.push(record);
        Ok(self.records.len() - 1)
    }

    /// Appends a hard negative of an image already pushed (so the file stays
    /// ordered by image index).
    pub(super) fn add_negative(&mut self, negative: Negative) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.negatives, &negative)?;
        self.negatives.write_all(b"\n").context("writing negatives.jsonl")?;
        self.n_negatives += 1;
        Ok(())
    }

    /// A bad item: an error under `on_error = "fail"`, counted and dropped under "skip".
    pub(super) fn problem(&mut self, opts: &Options, err: anyhow::Error) -> anyhow::Result<()> {
        if !opts.skip_errors {
            return Err(err);
        }
        tracing::warn!(target: "ablate::caption_ingest", "skipped: {err:#}");
        self.skipped += 1;
        Ok(())
    }
}

/// `image` resolved against `base` unless absolute.
pub(super) fn resolve(base: &Path, image: &str) -> PathBuf {
    let p = Path::new(image);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// The seeded split: shuffle the indices with the seed and put the first
/// round(N × test_fraction) of the permutation in the test split.
pub(super) fn seeded_split(n: usize, test_fraction: f64, seed: u64) -> Vec<Split> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::for_item(seed, STREAM_SPLIT, 0).shuffle(&mut order);
    let n_test = ((n as f64 * test_fraction).round() as usize).min(n);
    let mut split = vec![Split::Train; n];
    for &i in &order[..n_test] {
        split[i] = Split::Test;
    }
    split
}

#[derive(Serialize)]
struct RecordLine<'a> {
    index: usize,
    split: Split,
    short: &'a [String],
    long: &'a [String],
    label: Option<usize>,
    source: &'a str,
}

#[derive(Serialize)]
struct ClassesFile<'a> {
    classes: &'a [String],
    templates: &'a [String],
}

/// Writes the four artifacts and the metrics.
pub(super) fn write(ctx: &mut StageContext, data: Dataset, opts: &Options, source: &str) -> anyhow::Result<()> {
    let n = data.records.len();
    if n == 0 {
        bail!("source {source:?} produced no images ({} skipped)", data.skipped);
    }
    if data.images.len() != n {
        bail!("internal error: {} images for {n} records", data.images.len());
    }
    let split: Vec<Split> = if data.records.iter().all(|r| r.split.is_some()) {
        data.records.iter().map(|r| r.split.unwrap_or(Split::Train)).collect()
    } else {
        seeded_split(n, opts.test_fraction, opts.seed)
    };

    // The shards are written already (atomically, each through `tensor_file`); register them and the index.
    let index = data.images.finish()?;
    for shard in &index.shards {
        ctx.output(shard)?;
    }
    let path = ctx.output("images.json")?;
    std::fs::write(&path, serde_json::to_string_pretty(&index)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    ctx.check_cancelled()?;

    let path = ctx.output("records.jsonl")?;
    write_lines(
        &path,
        data.records.iter().enumerate().map(|(index, r)| RecordLine {
            index,
            split: split[index],
            short: &r.short,
            long: &r.long,
            label: r.label,
            source: &r.source,
        }),
    )?;
    ctx.output(NEGATIVES)?;
    data.negatives.into_inner().map_err(|e| e.into_error()).context("writing negatives.jsonl")?.sync_all()?;
    let path = ctx.output("classes.json")?;
    let text = serde_json::to_string_pretty(&ClassesFile { classes: &data.classes, templates: &data.templates })?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;

    let n_test = split.iter().filter(|s| **s == Split::Test).count();
    ctx.metric("ingest.images", n as f64);
    ctx.metric("ingest.train", (n - n_test) as f64);
    ctx.metric("ingest.test", n_test as f64);
    ctx.metric("ingest.negatives", data.n_negatives as f64);
    ctx.metric("ingest.skipped", data.skipped as f64);
    for (name, value) in data.extra_metrics {
        ctx.metric(name, value);
    }
    Ok(())
}

fn write_lines<T: Serialize>(path: &Path, items: impl Iterator<Item = T>) -> anyhow::Result<()> {
    let write = || -> anyhow::Result<()> {
        let mut out = BufWriter::new(File::create(path)?);
        for item in items {
            serde_json::to_writer(&mut out, &item)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_and_determinism() {
        for (n, f, expect) in [(2000, 0.2, 400), (10, 0.7, 7), (1, 0.2, 0), (7, 0.0, 0), (5, 0.5, 3)] {
            let s = seeded_split(n, f, 1);
            assert_eq!(s.iter().filter(|x| **x == Split::Test).count(), expect, "n={n} f={f}");
        }
        assert_eq!(seeded_split(100, 0.3, 4), seeded_split(100, 0.3, 4));
        assert_ne!(seeded_split(100, 0.3, 4), seeded_split(100, 0.3, 5));
    }
}
