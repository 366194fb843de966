//! Reading a `caption_ingest` instance's artifacts: the contract described in
//! this module's parent, from the consumer's side (text embedding, training,
//! evaluation).

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

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
        let records: Vec<IngestRecord> = read_jsonl(upstream.artifact("records.jsonl")?)?;
        for (i, r) in records.iter().enumerate() {
            if r.index != i {
                bail!("records.jsonl: line {} has index {} (expected {i})", i + 1, r.index);
            }
        }
        let negatives: Vec<IngestNegative> = read_jsonl(upstream.artifact("negatives.jsonl")?)?;
        if let Some(n) = negatives.iter().find(|n| n.index >= records.len()) {
            bail!("negatives.jsonl: image index {} is out of range ({} images)", n.index, records.len());
        }
        let path = upstream.artifact("classes.json")?;
        let classes = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{} is not a classes file", path.display()))?;
        Ok(IngestText { records, negatives, classes })
    }
}

/// The image tensor: `[n, side, side, 3]` u8, row-major HWC RGB.
pub struct IngestImages {
    pub n: usize,
    pub side: usize,
    pub pixels: Vec<u8>,
}

impl IngestImages {
    pub fn read(upstream: &UpstreamOutputs) -> anyhow::Result<IngestImages> {
        let path = upstream.artifact("images.safetensors")?;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not safetensors", path.display()))?;
        let view = tensors.tensor("images").with_context(|| format!("{} has no tensor `images`", path.display()))?;
        let shape = view.shape();
        if view.dtype() != safetensors::Dtype::U8 || shape.len() != 4 || shape[1] != shape[2] || shape[3] != 3 {
            bail!("{}: `images` must be u8 [N, S, S, 3], found {:?} {:?}", path.display(), view.dtype(), shape);
        }
        Ok(IngestImages { n: shape[0], side: shape[1], pixels: view.data().to_vec() })
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.side * self.side * 3;
        &self.pixels[i * size..(i + 1) * size]
    }
}

/// Reads a JSON-lines file; errors name the file and line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {} is not UTF-8", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{}: line {}", path.display(), i + 1))?);
    }
    Ok(out)
}
