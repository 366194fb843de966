//! Frozen pretrained text encoders (LIFT embeds every caption once with one).
//!
//! Two families, both run on burn (Flex on the CPU, CUDA with the `cuda` feature):
//! - BERT encoders from a Hugging Face directory ([`bert`]); default all-MiniLM-L6-v2.
//! - Llama-family decoders ([`llama`]) from a GGUF file or a Hugging Face
//!   directory, pooled at an appended `<eos>`; default SmolLM2-135M-Instruct (GGUF Q4_1).
//!
//! An encoder is named by an [`EncoderSpec`]: a model directory, a `.gguf`
//! file, or a built-in name (`minilm`, `smollm2`) that resolves inside the
//! models directory filled by `scripts/fetch-models` (`$ABLATE_MODELS`, else
//! `./models`).

pub mod bert;
pub mod gguf;
pub mod llama;
mod loaded_encoder;
pub mod pooling;
pub mod tokenize;
pub mod weights;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use burn::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::device::Cpu;
use crate::file_fingerprint::{Remembered, hash_file};
use crate::precision::Precision;

pub use loaded_encoder::LoadedEncoder;
pub use pooling::Pooling;
pub use tokenize::{Tokens, check_max_tokens};

use bert::{BertConfig, BertModel};
use gguf::GgufFile;
use llama::{LlamaConfig, LlamaModel, LlamaSource};
use tokenize::TextTokenizer;
use weights::SafetensorFiles;

/// Built-in encoder names and where they live inside the models directory.
pub const BUILTINS: &[(&str, &str)] = &[("minilm", "all-MiniLM-L6-v2"), ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")];

/// The models directory: `$ABLATE_MODELS`, else `models` under the current directory.
pub fn models_dir() -> PathBuf {
    std::env::var_os("ABLATE_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"))
}

/// A resolved encoder location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderSpec {
    /// A Hugging Face directory: config.json, model.safetensors, tokenizer.json.
    HfDir(PathBuf),
    /// A GGUF file carrying weights and tokenizer.
    Gguf(PathBuf),
}

impl EncoderSpec {
    /// Resolves a built-in name, a model directory or a `.gguf` file.
    pub fn resolve(spec: &str) -> anyhow::Result<Self> {
        let path = match BUILTINS.iter().find(|(name, _)| *name == spec) {
            Some((name, rel)) => {
                let path = models_dir().join(rel);
                if !path.exists() {
                    bail!(
                        "built-in encoder '{name}' expects {}, which is missing: run scripts/fetch-models (or set ABLATE_MODELS)",
                        path.display()
                    );
                }
                path
            }
            None => PathBuf::from(spec),
        };
        if path.is_dir() {
            Ok(EncoderSpec::HfDir(path))
        } else if path.is_file() {
            let mut magic = [0u8; 4];
            let is_gguf = std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF";
            if !is_gguf {
                bail!("{}: not a GGUF file (an encoder is a model directory, a .gguf file, or one of: minilm, smollm2)", path.display());
            }
            Ok(EncoderSpec::Gguf(path))
        } else {
            bail!("encoder '{spec}' is neither a model directory, a GGUF file, nor a built-in name (minilm, smollm2)")
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            EncoderSpec::HfDir(p) | EncoderSpec::Gguf(p) => p,
        }
    }

    /// The architecture family, read from config.json (or implied by GGUF)
    /// without loading weights: planning needs it to pick the default pooling.
    pub fn family(&self) -> anyhow::Result<Family> {
        match self {
            EncoderSpec::Gguf(_) => Ok(Family::Llama),
            EncoderSpec::HfDir(dir) => {
                let path = dir.join("config.json");
                let text = std::fs::read_to_string(&path).with_context(|| format!("{}: missing config.json", dir.display()))?;
                let config: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
                match config["model_type"].as_str().unwrap_or("") {
                    "bert" => Ok(Family::Bert),
                    "llama" | "qwen2" | "mistral" => Ok(Family::Llama),
                    other => {
                        bail!("{}: unsupported architecture: model_type '{other}'; supported: bert, llama, qwen2, mistral", path.display())
                    }
                }
            }
        }
    }

    /// The longest token sequence the encoder was made for, `max_tokens`'s
    /// default and upper bound: a sentence-transformers directory's
    /// `sentence_bert_config.json` `max_seq_length` (what sentence-transformers
    /// truncates at), else config.json's `max_position_embeddings`; a GGUF
    /// decoder's `{arch}.context_length`.
    pub fn token_limit(&self) -> anyhow::Result<usize> {
        static REMEMBERED: Remembered = Remembered::new();
        let files = match self {
            EncoderSpec::Gguf(p) => vec![p.clone()],
            EncoderSpec::HfDir(dir) => {
                ["sentence_bert_config.json", "config.json"].iter().map(|f| dir.join(f)).filter(|p| p.is_file()).collect()
            }
        };
        let limit = REMEMBERED.get("token_limit".into(), &files, || self.read_token_limit().map(|n| n.to_string()))?;
        Ok(limit.parse().expect("remembered as a number"))
    }

    fn read_token_limit(&self) -> anyhow::Result<usize> {
        let read_json = |path: &Path| -> anyhow::Result<serde_json::Value> {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
        };
        let positive = |value: Option<u64>, what: String| match value {
            Some(n) if n > 0 => Ok(n as usize),
            _ => Err(anyhow!("{what} is missing or not a positive integer")),
        };
        match self {
            EncoderSpec::Gguf(path) => {
                let file = GgufFile::open(path)?;
                Ok(LlamaConfig::from_gguf(&file, file.str("general.architecture")?)?.max_positions)
            }
            EncoderSpec::HfDir(dir) => {
                let sbert = dir.join("sentence_bert_config.json");
                if sbert.is_file() {
                    return positive(read_json(&sbert)?["max_seq_length"].as_u64(), format!("{}: max_seq_length", sbert.display()));
                }
                let config = dir.join("config.json");
                positive(read_json(&config)?["max_position_embeddings"].as_u64(), format!("{}: max_position_embeddings", config.display()))
            }
        }
    }

    /// The files whose bytes determine the encoder's output (weights, tokenizer, config).
    pub fn weight_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        match self {
            EncoderSpec::Gguf(p) => Ok(vec![p.clone()]),
            EncoderSpec::HfDir(dir) => {
                let mut files = Vec::new();
                for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
                    let path = entry?.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.ends_with(".safetensors") || name == "config.json" || name == "tokenizer.json" {
                        files.push(path);
                    }
                }
                files.sort();
                Ok(files)
            }
        }
    }

    /// [`Self::fingerprint`], remembered for this process while the files
    /// are unchanged (see [`Remembered`]).
    pub fn fingerprint_cached(&self) -> anyhow::Result<String> {
        static REMEMBERED: Remembered = Remembered::new();
        REMEMBERED.get(String::new(), &self.weight_files()?, || self.fingerprint())
    }

    /// SHA-256 over the weight files' names and contents: a cache key that
    /// changes whenever a model file does.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        let mut hasher = Sha256::new();
        for path in self.weight_files()? {
            hash_file(&mut hasher, &path)?;
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Which architecture an encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Llama,
}

impl Family {
    /// The pooling the family was trained for: mean for BERT sentence encoders, eos for decoders.
    pub fn default_pooling(self) -> Pooling {
        match self {
            Family::Bert => Pooling::Mean,
            Family::Llama => Pooling::Eos,
        }
    }
}

enum Model<B: Backend> {
    Bert(BertModel<B>),
    Llama(LlamaModel<B>),
}

/// One text's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EmbeddedText {
    pub tokens: Vec<u32>,
    pub embedding: Vec<f32>,
    /// The text was longer than `max_tokens` and was cut.
    pub truncated: bool,
}

/// How to embed a batch of texts.
#[derive(Debug, Clone, Copy)]
pub struct EmbedOptions {
    pub pooling: Pooling,
    pub max_tokens: usize,
    pub batch_size: usize,
    pub normalize: bool,
    pub precision: Precision,
}

/// A loaded frozen encoder: tokenizer plus model on one device.
pub struct TextEncoder<B: Backend> {
    spec: EncoderSpec,
    family: Family,
    dim: usize,
    /// [`EncoderSpec::token_limit`]: the largest `max_tokens`.
    token_limit: usize,
    tokenizer: TextTokenizer,
    model: Model<B>,
}

/// Tokens per batch row the batching aims at: a batch of long texts holds
/// fewer rows, so activation memory stays near that of `batch_size` rows of
/// this many tokens however long the texts are.
const TOKENS_PER_ROW: usize = 256;

impl<B: Backend> TextEncoder<B> {
    pub fn load(spec: &EncoderSpec, device: &B::Device) -> anyhow::Result<Self> {
        match spec {
            EncoderSpec::Gguf(path) => Self::load_gguf(spec, path, device),
            EncoderSpec::HfDir(dir) => Self::load_hf(spec, dir, device),
        }
    }

    fn load_gguf(spec: &EncoderSpec, path: &Path, device: &B::Device) -> anyhow::Result<Self> {
        let file = GgufFile::open(path)?;
        let arch = file.str("general.architecture")?.to_owned();
        let permuted_qk = match arch.as_str() {
            "llama" | "mistral" => true,
            "qwen2" => false,
            other => bail!("{}: GGUF architecture '{other}' is not supported (llama, mistral, qwen2 are)", path.display()),
        };
        let config = LlamaConfig::from_gguf(&file, &arch)?;
        let tokenizer = TextTokenizer::from_gguf(&file)?;
        let dim = config.hidden_size;
        // The GGUF's context length is its token limit ([`EncoderSpec::token_limit`]).
        let token_limit = config.max_positions;
        let model = LlamaModel::load(config, &LlamaSource::Gguf { file: &file, permuted_qk }, device)?;
        Self::assemble(spec, dim, token_limit, tokenizer, Model::Llama(model))
    }

    /// The encoder around a loaded model; the family follows the model.
    fn assemble(spec: &EncoderSpec, dim: usize, token_limit: usize, tokenizer: TextTokenizer, model: Model<B>) -> anyhow::Result<Self> {
        let family = match model {
            Model::Bert(_) => Family::Bert,
            Model::Llama(_) => Family::Llama,
        };
        Ok(TextEncoder { spec: spec.clone(), family, dim, token_limit, tokenizer, model })
    }

    fn load_hf(spec: &EncoderSpec, dir: &Path, device: &B::Device) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("{}: missing config.json", dir.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
        let model_type = config["model_type"].as_str().unwrap_or("");
        let tokenizer_path = dir.join("tokenizer.json");
        match model_type {
            "bert" => {
                let cfg: BertConfig = serde_json::from_value(config.clone())
                    .with_context(|| format!("{}: not a complete BERT config", config_path.display()))?;
                let tokenizer = TextTokenizer::bert(&tokenizer_path)?;
                let dim = cfg.hidden_size;
                let model = BertModel::load(dir, cfg, device)?;
                Self::assemble(spec, dim, spec.token_limit()?, tokenizer, Model::Bert(model))
            }
            "llama" | "qwen2" | "mistral" => {
                let cfg = LlamaConfig::from_hf(&config, &config_path)?;
                let eos = eos_token_id(&config, dir)?;
                let tokenizer = TextTokenizer::decoder(&tokenizer_path, eos)?;
                let st = SafetensorFiles::open(dir)?;
                let dim = cfg.hidden_size;
                let model = LlamaModel::load(cfg, &LlamaSource::Safetensors(&st), device)?;
                Self::assemble(spec, dim, spec.token_limit()?, tokenizer, Model::Llama(model))
            }
            other => {
                let archs = config["architectures"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "));
                bail!(
                    "{}: unsupported architecture: model_type '{other}' (architectures: {}); supported: bert, llama, qwen2, mistral",
                    config_path.display(),
                    archs.unwrap_or_else(|| "none listed".into())
                )
            }
        }
    }

    pub fn spec(&self) -> &EncoderSpec {
        &self.spec
    }
    pub fn family(&self) -> Family {
        self.family
    }
    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The pooling the model was trained for: mean for BERT sentence encoders, eos for decoders.
    pub fn default_pooling(&self) -> Pooling {
        self.family.default_pooling()
    }

    pub fn tokenize(&self, texts: &[&str], max_tokens: usize) -> anyhow::Result<Vec<Tokens>> {
        self.tokenizer.encode(texts, max_tokens)
    }

    /// One forward pass over a batch of token sequences; returns pooled
    /// (unnormalised) embeddings in input order.
    pub fn embed_tokens(&self, batch: &[&[u32]], pooling: Pooling, precision: Precision) -> anyhow::Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let lengths: Vec<usize> = batch.iter().map(|t| t.len()).collect();
        if lengths.contains(&0) {
            bail!("cannot embed an empty token sequence");
        }
        let vocab = match &self.model {
            Model::Bert(m) => m.config.vocab_size,
            Model::Llama(m) => m.config.vocab_size,
        };
        for &t in batch.iter().flat_map(|t| t.iter()) {
            if t as usize >= vocab {
                bail!("token id {t} is outside the vocabulary of {vocab}");
            }
        }
        let hidden = match &self.model {
            Model::Bert(m) => m.forward(batch, precision)?,
            Model::Llama(m) => m.forward(batch, precision)?,
        };
        let pooled = pooling.apply(hidden, &lengths);
        let flat: Vec<f32> = pooled.into_data().to_vec().map_err(|e| anyhow!("cannot read embeddings back from the device: {e:?}"))?;
        Ok(flat.chunks_exact(self.dim).map(<[f32]>::to_vec).collect())
    }

    /// Tokenizes and embeds `texts`, in batches of similar length (less
    /// padding); results come back in input order.
    pub fn embed(&self, texts: &[&str], opts: &EmbedOptions) -> anyhow::Result<Vec<EmbeddedText>> {
        self.embed_with_progress(texts, opts, |_| Ok(()))
    }

    /// As [`Self::embed`], calling `progress(done)` after every batch; an error
    /// from it (an interrupted run, say) stops the work.
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        opts: &EmbedOptions,
        mut progress: impl FnMut(usize) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<EmbeddedText>> {
        if opts.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        check_max_tokens(opts.max_tokens, self.token_limit).map_err(|e| anyhow!("max_tokens = {e}"))?;
        let tokens = self.tokenize(texts, opts.max_tokens)?;
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].ids.len());
        let mut embeddings: Vec<Vec<f32>> = vec![Vec::new(); tokens.len()];
        let mut done = 0;
        let lengths: Vec<usize> = order.iter().map(|&i| tokens[i].ids.len()).collect();
        for range in token_budget_batches(&lengths, opts.batch_size) {
            let chunk = &order[range];
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| tokens[i].ids.as_slice()).collect();
            for (&i, mut e) in chunk.iter().zip(self.embed_tokens(&batch, opts.pooling, opts.precision)?) {
                if opts.normalize {
                    pooling::l2_normalize(&mut e);
                }
                embeddings[i] = e;
            }
            done += chunk.len();
            progress(done)?;
        }
        Ok(tokens
            .into_iter()
            .zip(embeddings)
            .map(|(t, embedding)| EmbeddedText { tokens: t.ids, embedding, truncated: t.truncated })
            .collect())
    }
}

/// Consecutive ranges of `sorted_lengths` (ascending) as batches of at most
/// `batch_size` rows and at most `batch_size * TOKENS_PER_ROW` padded tokens
/// (at least one row each).
fn token_budget_batches(sorted_lengths: &[usize], batch_size: usize) -> Vec<std::ops::Range<usize>> {
    let budget = batch_size * TOKENS_PER_ROW;
    let mut batches = Vec::new();
    let mut start = 0;
    while start < sorted_lengths.len() {
        let mut end = start + 1;
        // Sorted ascending: the last row is the longest, so it sets the padding.
        while end < sorted_lengths.len() && end - start < batch_size && (end + 1 - start) * sorted_lengths[end] <= budget {
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

/// The decoder's end-of-sequence id from config.json (an id or a list of ids),
/// else from tokenizer_config.json's `eos_token` looked up in tokenizer.json.
fn eos_token_id(config: &serde_json::Value, dir: &Path) -> anyhow::Result<u32> {
    let from_config = match &config["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::Array(a) => a.first().and_then(|v| v.as_u64()),
        _ => None,
    };
    if let Some(id) = from_config {
        return Ok(id as u32);
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc: serde_json::Value = std::fs::read_to_string(&tc_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| anyhow!("{}: no eos_token_id in config.json and no readable tokenizer_config.json", dir.display()))?;
    let eos = match &tc["eos_token"] {
        serde_json::Value::String(s) => s.clone(),
        v => v["content"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("{}: no eos_token", tc_path.display()))?,
    };
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
    tok.token_to_id(&eos).ok_or_else(|| anyhow!("{}: eos token '{eos}' is not in the vocabulary", dir.display()))
}

/// Token rows right-padded with 0 to `seq`, `[rows, seq]`.
fn padded_ids<B: Backend>(batch: &[&[u32]], seq: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let mut ids = vec![0i32; batch.len() * seq];
    for (b, tokens) in batch.iter().enumerate() {
        for (j, &t) in tokens.iter().enumerate() {
            ids[b * seq + j] = t as i32;
        }
    }
    Tensor::from_data(TensorData::new(ids, [batch.len(), seq]), device)
}

/// Packed rows `[Σ lengths, dim]` as a right-padded `[rows, seq, dim]`
/// tensor, zero past each length (what pooling reads).
fn padded_rows<B: Backend>(packed: &[f32], lengths: &[usize], seq: usize, dim: usize, device: &B::Device) -> Tensor<B, 3> {
    let mut padded = vec![0f32; lengths.len() * seq * dim];
    let mut rows = packed.chunks_exact(dim);
    for (b, &len) in lengths.iter().enumerate() {
        for j in 0..len {
            padded[(b * seq + j) * dim..][..dim].copy_from_slice(rows.next().expect("a row per token"));
        }
    }
    Tensor::from_data(TensorData::new(padded, [lengths.len(), seq, dim]), device)
}

/// Embeds `texts` on the CPU with the encoder `spec` (L2-normalised): the
/// library entry point behind `ablate embed`.
pub fn embed(spec: &str, pooling: Pooling, max_tokens: usize, texts: &[String]) -> anyhow::Result<Vec<EmbeddedText>> {
    let spec = EncoderSpec::resolve(spec)?;
    let encoder = TextEncoder::<Cpu>::load(&spec, &Default::default())?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    encoder.embed(&texts, &EmbedOptions { pooling, max_tokens, batch_size: 64, normalize: true, precision: Precision::F32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_rows_and_padded_tokens_within_budget() {
        // Short texts: rows are the limit.
        assert_eq!(token_budget_batches(&[5; 10], 4), [0..4, 4..8, 8..10]);
        // Long texts: 2 rows of 512 fill the 4 × 256 token budget; a longer one stands alone.
        assert_eq!(token_budget_batches(&[10, 512, 512, 512, 2048], 4), [0..2, 2..4, 4..5]);
        assert!(token_budget_batches(&[], 8).is_empty());
    }
}
