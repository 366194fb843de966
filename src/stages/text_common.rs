//! What the stage kinds that run a frozen text encoder share: their encoder
//! parameters, the derived key inputs (the weights' SHA-256, the pooling the
//! family defaults to), and embedding a list of texts once per distinct text
//! with progress and Ctrl-C handling.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use serde_json::Value;

use super::{ParamDefault, ParamError, ParamSpec, ParamType, Params, StageContext};
use crate::device::DeviceRequest;
use crate::text::{EmbedOptions, EmbeddedText, EncoderSpec, LoadedEncoder, Pooling, check_max_tokens};

pub const ENCODER: ParamSpec = ParamSpec::new(
    "encoder",
    ParamType::Str,
    ParamDefault::Str("minilm"),
    "a Hugging Face model directory, a .gguf file, or a built-in name: minilm, smollm2",
);
pub const POOLING: ParamSpec = ParamSpec::new(
    "pooling",
    ParamType::OneOf(Pooling::NAMES),
    ParamDefault::Absent,
    "how token states are pooled (default: mean for BERT encoders, eos for decoder LLMs)",
);
pub const MAX_TOKENS: ParamSpec = ParamSpec::new(
    "max_tokens",
    ParamType::Int,
    ParamDefault::Absent,
    "longer texts are truncated (and counted); default and largest: the encoder's own limit (max_seq_length, else max_position_embeddings; a GGUF's context length)",
);
pub const BATCH_SIZE: ParamSpec = ParamSpec::new("batch_size", ParamType::Int, ParamDefault::Int(64), "texts per forward pass");
pub const DEVICE: ParamSpec = ParamSpec::new("device", ParamType::Str, ParamDefault::Str("auto"), "auto | cpu | cuda:N");
pub const NORMALIZE: ParamSpec = ParamSpec::new("normalize", ParamType::Bool, ParamDefault::Bool(true), "L2-normalise the embeddings");

/// Checks the shared parameters (`max_tokens`'s upper bound, the encoder's
/// own limit, is checked in [`derive`]).
pub fn check(params: &Params) -> Result<(), ParamError> {
    if params.get("max_tokens").is_some() {
        check_max_tokens(given_max_tokens(params), usize::MAX).map_err(|e| ParamError::new("max_tokens", e))?;
    }
    if params.int("batch_size") < 1 {
        return Err(ParamError::new("batch_size", "must be at least 1"));
    }
    DeviceRequest::parse(params.str("device")).map_err(|e| ParamError::new("device", e))?;
    Ok(())
}

/// The encoder's weight fingerprint (so the cache follows the model files),
/// and, when not given, the pooling its family defaults to and its own token
/// limit as `max_tokens` (a given `max_tokens` must not exceed that limit).
pub fn derive(params: &Params) -> Result<Vec<(String, Value)>, ParamError> {
    let encoder_error = |e: anyhow::Error| ParamError::new("encoder", format!("{e:#}"));
    let spec = EncoderSpec::resolve(params.str("encoder")).map_err(encoder_error)?;
    let mut derived = vec![("encoder_sha256".to_owned(), Value::from(spec.fingerprint_cached().map_err(encoder_error)?))];
    let limit = spec.token_limit().map_err(encoder_error)?;
    match params.get("max_tokens") {
        Some(_) => check_max_tokens(given_max_tokens(params), limit).map_err(|e| ParamError::new("max_tokens", e))?,
        None => derived.push(("max_tokens".to_owned(), Value::from(limit))),
    }
    if params.get("pooling").is_none() {
        let family = spec.family().map_err(encoder_error)?;
        derived.push(("pooling".to_owned(), Value::from(family.default_pooling().name())));
    }
    Ok(derived)
}

/// The `max_tokens` the file gives (a negative value reads as 0, out of range).
fn given_max_tokens(params: &Params) -> usize {
    usize::try_from(params.int("max_tokens")).unwrap_or(0)
}

/// An encoder loaded for a stage, with its options.
pub struct StageEncoder {
    pub encoder: LoadedEncoder,
    pub options: EmbedOptions,
}

/// What embedding a list of texts came to.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmbedStats {
    pub texts: usize,
    pub unique: usize,
    pub truncated: usize,
    pub empty: usize,
    pub texts_per_s: f64,
}

impl EmbedStats {
    /// Records the statistics as metrics under `prefix`.
    pub fn record(&self, ctx: &mut StageContext, prefix: &str) {
        ctx.metric(&format!("{prefix}.texts"), self.texts as f64);
        ctx.metric(&format!("{prefix}.unique_texts"), self.unique as f64);
        ctx.metric(&format!("{prefix}.truncated"), self.truncated as f64);
        ctx.metric(&format!("{prefix}.empty"), self.empty as f64);
        ctx.metric(&format!("{prefix}.texts_per_s"), self.texts_per_s);
    }
}

impl StageEncoder {
    pub fn load(params: &Params) -> anyhow::Result<StageEncoder> {
        let spec = EncoderSpec::resolve(params.str("encoder"))?;
        let device = DeviceRequest::parse(params.str("device")).map_err(anyhow::Error::msg)?;
        let pooling: Pooling = params.str("pooling").parse()?;
        let options = EmbedOptions {
            pooling,
            max_tokens: params.int("max_tokens") as usize,
            batch_size: params.int("batch_size") as usize,
            normalize: params.get("normalize").and_then(Value::as_bool).unwrap_or(true),
            precision: params.precision(),
        };
        Ok(StageEncoder { encoder: LoadedEncoder::load(&spec, device.resolve()?)?, options })
    }

    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    /// Embeds `texts`, each distinct text once, with a progress bar in texts
    /// per second; returns one embedding per input text, in order.
    pub fn embed(&self, ctx: &StageContext, texts: &[&str]) -> anyhow::Result<(Vec<Vec<f32>>, EmbedStats)> {
        let mut distinct = DistinctTexts::default();
        let ids: Vec<u32> = texts.iter().map(|t| distinct.id(t)).collect();
        let mut rows = Vec::with_capacity(texts.len());
        let stats = self.embed_into(ctx, &distinct.in_order(), &ids, |row| {
            rows.push(row.to_vec());
            Ok(())
        })?;
        Ok((rows, stats))
    }

    /// Embeds the `distinct` texts and hands `sink` the row of each id in
    /// `rows`, in order. Memory does not grow with the number of rows: the
    /// distinct texts are embedded in chunks into a scratch file in the
    /// instance's state directory, which also lets an interrupted attempt
    /// resume after its last complete chunk.
    pub fn embed_into(
        &self,
        ctx: &StageContext,
        distinct: &[&str],
        rows: &[u32],
        mut sink: impl FnMut(&[f32]) -> anyhow::Result<()>,
    ) -> anyhow::Result<EmbedStats> {
        ctx.ran_on(&self.encoder.device_name());
        let unique = distinct;
        let mut done = ScratchRows::open(ctx.state_dir()?, self.dim())?;
        let resumed = done.rows;
        ctx.progress().set_length(unique.len() as u64);
        let start = Instant::now();
        while done.rows < unique.len() {
            let first = done.rows;
            let chunk = &unique[first..unique.len().min(first + CHUNK_TEXTS)];
            let embedded = self.encoder.embed_with_progress(chunk, &self.options, |n| {
                ctx.check_cancelled()?;
                ctx.progress().set_position((first + n) as u64);
                let rate = (first + n - resumed) as f64 / start.elapsed().as_secs_f64().max(1e-9);
                ctx.progress().set_message(format!("{rate:.0} texts/s"));
                Ok(())
            })?;
            done.append(&embedded)?;
        }
        let stats = EmbedStats {
            texts: rows.len(),
            unique: unique.len(),
            truncated: done.truncated,
            empty: unique.iter().filter(|t| t.trim().is_empty()).count(),
            texts_per_s: (unique.len() - resumed) as f64 / start.elapsed().as_secs_f64().max(1e-9),
        };
        let mut row = vec![0f32; self.dim()];
        for &r in rows {
            done.read(r as usize, &mut row)?;
            sink(&row)?;
        }
        done.remove()?;
        Ok(stats)
    }
}

/// Distinct texts, each with an id in first-seen order: a text list of
/// millions of rows is held as its distinct strings plus one id per row.
#[derive(Default)]
pub struct DistinctTexts {
    ids: HashMap<Box<str>, u32>,
}

impl DistinctTexts {
    pub fn id(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = u32::try_from(self.ids.len()).expect("fewer than 2^32 distinct texts");
        self.ids.insert(text.into(), id);
        id
    }

    /// The texts, indexed by id.
    pub fn in_order(&self) -> Vec<&str> {
        let mut texts = vec![""; self.ids.len()];
        for (text, &id) in &self.ids {
            texts[id as usize] = text;
        }
        texts
    }
}

/// Distinct texts embedded per chunk: the unit of resumption, and what is
/// held in memory at once (tokens and rows).
const CHUNK_TEXTS: usize = 4096;

/// The embeddings of the distinct texts so far, one f32 row each, in a
/// scratch file of the instance's state directory (`embedded.f32`), with
/// `embedded.jsonl` logging each complete chunk as `{"rows", "truncated"}`.
/// Rows past the last logged chunk are cut off when resuming.
struct ScratchRows {
    file: std::fs::File,
    log: std::fs::File,
    dir: PathBuf,
    dim: usize,
    rows: usize,
    truncated: usize,
}

#[derive(Serialize, Deserialize)]
struct ChunkLine {
    rows: usize,
    truncated: usize,
}

impl ScratchRows {
    fn open(dir: &Path, dim: usize) -> anyhow::Result<ScratchRows> {
        let (data, log) = (dir.join("embedded.f32"), dir.join("embedded.jsonl"));
        let (mut rows, mut truncated, mut logged) = (0, 0, 0);
        if let Ok(text) = std::fs::read_to_string(&log) {
            // A torn last line (killed mid-write) is dropped with its chunk.
            for line in text.split_inclusive('\n').take_while(|l| l.ends_with('\n')) {
                let Ok(chunk) = serde_json::from_str::<ChunkLine>(line) else { break };
                (rows, truncated, logged) = (rows + chunk.rows, truncated + chunk.truncated, logged + line.len());
            }
        }
        let open = |p: &Path| {
            std::fs::OpenOptions::new().create(true).read(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))
        };
        let file = open(&data)?;
        if file.metadata()?.len() < (rows * dim * 4) as u64 {
            (rows, truncated, logged) = (0, 0, 0);
        }
        file.set_len((rows * dim * 4) as u64).with_context(|| format!("truncating {}", data.display()))?;
        let log_file = open(&log)?;
        log_file.set_len(logged as u64).with_context(|| format!("truncating {}", log.display()))?;
        Ok(ScratchRows { file, log: log_file, dir: dir.to_owned(), dim, rows, truncated })
    }

    fn append(&mut self, chunk: &[EmbeddedText]) -> anyhow::Result<()> {
        let mut bytes = Vec::with_capacity(chunk.len() * self.dim * 4);
        for e in chunk {
            anyhow::ensure!(e.embedding.len() == self.dim, "embedding of width {} (expected {})", e.embedding.len(), self.dim);
            bytes.extend(e.embedding.iter().flat_map(|v| v.to_le_bytes()));
        }
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        let line = ChunkLine { rows: chunk.len(), truncated: chunk.iter().filter(|e| e.truncated).count() };
        writeln!(self.log, "{}", serde_json::to_string(&line)?)?;
        self.rows += line.rows;
        self.truncated += line.truncated;
        Ok(())
    }

    fn read(&self, row: usize, out: &mut [f32]) -> anyhow::Result<()> {
        let mut bytes = vec![0u8; self.dim * 4];
        self.file.read_exact_at(&mut bytes, (row * self.dim * 4) as u64)?;
        for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    fn remove(self) -> anyhow::Result<()> {
        for name in ["embedded.f32", "embedded.jsonl"] {
            let path = self.dir.join(name);
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(values: &[f32], truncated: bool) -> Vec<EmbeddedText> {
        values.iter().map(|&v| EmbeddedText { tokens: vec![], embedding: vec![v, -v], truncated }).collect()
    }

    #[test]
    fn scratch_rows_resume_after_the_last_complete_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = ScratchRows::open(dir.path(), 2).unwrap();
        rows.append(&chunk(&[1.0, 2.0], true)).unwrap();
        rows.append(&chunk(&[3.0], false)).unwrap();
        drop(rows);
        // A killed attempt: half a row written and a torn log line.
        let mut data = std::fs::OpenOptions::new().append(true).open(dir.path().join("embedded.f32")).unwrap();
        data.write_all(&[0; 6]).unwrap();
        let mut log = std::fs::OpenOptions::new().append(true).open(dir.path().join("embedded.jsonl")).unwrap();
        log.write_all(b"{\"rows\": 4").unwrap();

        let mut rows = ScratchRows::open(dir.path(), 2).unwrap();
        assert_eq!((rows.rows, rows.truncated), (3, 2));
        rows.append(&chunk(&[4.0], false)).unwrap();
        let mut out = [0f32; 2];
        for (row, want) in [(0, 1.0), (2, 3.0), (3, 4.0)] {
            rows.read(row, &mut out).unwrap();
            assert_eq!(out, [want, -want]);
        }
        drop(rows);
        let rows = ScratchRows::open(dir.path(), 2).unwrap();
        assert_eq!((rows.rows, rows.truncated), (4, 2), "the chunk after the torn line is kept");
        rows.remove().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn scratch_rows_start_over_when_the_data_is_shorter_than_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = ScratchRows::open(dir.path(), 2).unwrap();
        rows.append(&chunk(&[1.0, 2.0], false)).unwrap();
        drop(rows);
        std::fs::OpenOptions::new().write(true).open(dir.path().join("embedded.f32")).unwrap().set_len(8).unwrap();
        let rows = ScratchRows::open(dir.path(), 2).unwrap();
        assert_eq!(rows.rows, 0);
        assert_eq!(std::fs::metadata(dir.path().join("embedded.jsonl")).unwrap().len(), 0);
    }
}
