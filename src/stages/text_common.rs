//! What the stage kinds that run a frozen text encoder share: their encoder
//! parameters, the derived key inputs (the weights' SHA-256, the pooling the
//! family defaults to), and embedding a list of texts once per distinct text
//! with progress and Ctrl-C handling.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use super::{ParamDefault, ParamError, ParamSpec, ParamType, Params, StageContext};
use crate::text::device::{DeviceRequest, LoadedEncoder};
use crate::text::{EmbedOptions, EncoderSpec, Pooling, check_max_tokens};

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
    "mean | cls | eos (default: mean for BERT encoders, eos for decoder LLMs)",
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
        };
        Ok(StageEncoder { encoder: LoadedEncoder::load(&spec, device.resolve()?)?, options })
    }

    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    /// Embeds `texts`, each distinct text once, with a progress bar in texts
    /// per second; returns one embedding per input text, in order.
    pub fn embed(&self, ctx: &StageContext, texts: &[&str]) -> anyhow::Result<(Vec<Vec<f32>>, EmbedStats)> {
        ctx.ran_on(&self.encoder.device_name());
        let mut slot: HashMap<&str, usize> = HashMap::new();
        let mut unique: Vec<&str> = Vec::new();
        let rows: Vec<usize> = texts
            .iter()
            .map(|&t| {
                *slot.entry(t).or_insert_with(|| {
                    unique.push(t);
                    unique.len() - 1
                })
            })
            .collect();
        ctx.progress().set_length(unique.len() as u64);
        let start = Instant::now();
        let embedded = self.encoder.embed_with_progress(&unique, &self.options, |done| {
            ctx.check_cancelled()?;
            ctx.progress().set_position(done as u64);
            ctx.progress().set_message(format!("{:.0} texts/s", done as f64 / start.elapsed().as_secs_f64().max(1e-9)));
            Ok(())
        })?;
        let stats = EmbedStats {
            texts: texts.len(),
            unique: unique.len(),
            truncated: embedded.iter().filter(|e| e.truncated).count(),
            empty: unique.iter().filter(|t| t.trim().is_empty()).count(),
            texts_per_s: unique.len() as f64 / start.elapsed().as_secs_f64().max(1e-9),
        };
        Ok((rows.into_iter().map(|r| embedded[r].embedding.clone()).collect(), stats))
    }
}
