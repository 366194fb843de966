//! Reading a `caption_ingest` instance's artifacts: the contract described in
//! this module's parent, from the consumer's side (text embedding, training,
//! evaluation).

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::images::ImageSet;
use crate::stages::UpstreamOutputs;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    Train,
    Test,
}

/// One image's captions and label (`records.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct IngestRecord {
    pub index: usize,
    pub split: SplitName,
    pub short: Vec<String>,
    pub long: Vec<String>,
    pub label: Option<usize>,
    pub source: String,
}

impl IngestRecord {
    /// The captions of one length: `"short"` or `"long"`.
    pub fn captions(&self, length: &str) -> &[String] {
        if length == "long" { &self.long } else { &self.short }
    }
}

/// A positive/negative caption pair of one image (`negatives.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct IngestNegative {
    pub index: usize,
    pub subset: String,
    pub positive: String,
    pub negative: String,
}

/// Zero-shot classes and prompt templates (`classes.json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IngestClasses {
    pub classes: Vec<String>,
    pub templates: Vec<String>,
}

impl IngestClasses {
    /// Every (class, template) prompt, class-major: row `c * templates + t`.
    pub fn prompts(&self) -> Vec<String> {
        self.classes.iter().flat_map(|c| self.templates.iter().map(move |t| t.replace("{}", c))).collect()
    }
}

/// The text side of an ingest instance.
#[derive(Debug, Clone)]
pub struct IngestText {
    pub records: Vec<IngestRecord>,
    pub negatives: Vec<IngestNegative>,
    pub classes: IngestClasses,
}

impl IngestText {
    pub fn read(upstream: &UpstreamOutputs) -> anyhow::Result<IngestText> {
        let (mut records, mut negatives) = (Vec::new(), Vec::new());
        let classes = stream_text(upstream, true, |line| {
            match line {
                IngestLine::Record(r) => records.push(r),
                IngestLine::Negative(_, n) => negatives.push(n),
            }
            Ok(())
        })?;
        Ok(IngestText { records, negatives, classes })
    }

    /// Records and classes without the negatives (training never scores them,
    /// and they outnumber the images), each record holding the captions of
    /// one length only (`"short"` or `"long"`): what a training or an
    /// evaluation reads, without the other length's text for every image.
    pub fn read_records(upstream: &UpstreamOutputs, length: &str) -> anyhow::Result<IngestText> {
        let mut records = Vec::new();
        let classes = stream_text(upstream, false, |line| {
            if let IngestLine::Record(mut r) = line {
                let other = if length == "long" { &mut r.short } else { &mut r.long };
                *other = Vec::new();
                records.push(r);
            }
            Ok(())
        })?;
        Ok(IngestText { records, negatives: Vec::new(), classes })
    }
}

/// One line of the ingest text, as [`stream_text`] hands it on.
pub enum IngestLine {
    Record(IngestRecord),
    /// A hard negative with its line (0-based) in `negatives.jsonl`.
    Negative(usize, IngestNegative),
}

/// The ingest text one line at a time, for consumers that must not hold
/// every record (`text_embed` over millions of captions): every record in
/// index order, then every negative (if asked for); returns the classes.
pub fn stream_text(
    upstream: &UpstreamOutputs,
    with_negatives: bool,
    mut each: impl FnMut(IngestLine) -> anyhow::Result<()>,
) -> anyhow::Result<IngestClasses> {
    let mut n_records = 0;
    for_each_jsonl(upstream.artifact("records.jsonl")?, |line, r: IngestRecord| {
        if r.index != n_records {
            bail!("records.jsonl: line {line} has index {} (expected {n_records})", r.index);
        }
        n_records += 1;
        each(IngestLine::Record(r))
    })?;
    if with_negatives {
        let mut row = 0;
        for_each_jsonl(upstream.artifact("negatives.jsonl")?, |_, n: IngestNegative| {
            if n.index >= n_records {
                bail!("negatives.jsonl: image index {} is out of range ({n_records} images)", n.index);
            }
            row += 1;
            each(IngestLine::Negative(row - 1, n))
        })?;
    }
    let path = upstream.artifact("classes.json")?;
    serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{} is not a classes file", path.display()))
}

/// The images: shards behind `images.json`, or the one `images.safetensors`
/// of instances made before shards.
pub fn read_images(upstream: &UpstreamOutputs) -> anyhow::Result<ImageSet> {
    match upstream.artifacts.get("images.json") {
        Some(index) => ImageSet::open_sharded(index, |name| upstream.artifact(name).map(Path::to_owned)),
        None => ImageSet::open_single(upstream.artifact("images.safetensors")?),
    }
}

/// Reads a JSON-lines file; errors name the file and line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_jsonl(path, |_, item| {
        out.push(item);
        Ok(())
    })?;
    Ok(out)
}

/// Calls `each` with every item of a JSON-lines file and its line number
/// (1-based), one line in memory at a time; errors name the file and line.
pub fn for_each_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut each: impl FnMut(usize, T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {} is not UTF-8", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        each(i + 1, serde_json::from_str(&line).with_context(|| format!("{}: line {}", path.display(), i + 1))?)?;
    }
    Ok(())
}
