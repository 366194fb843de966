//! `train`: the image tower (ViT + LIFT's projection head) against the cached
//! embeddings of a frozen text encoder (`text = "frozen"`, LIFT), or jointly
//! with a text tower from scratch (`text = "scratch"`, the CLIP baseline).
//! The loop itself is `crate::train`; this kind gathers its inputs, picks the
//! device and writes the outputs:
//!
//! - `image_encoder.safetensors`: the ViT (`visual.*`) and head
//!   (`projector.*`), plus `logit_scale`/`logit_bias` when the loss has them,
//!   in PyTorch's layout: Linear weights `[out, in]`; LayerNorms `weight`,
//!   `bias`; `visual.patch_embed.weight` `[width, 3·p·p]` reshapes to a
//!   `Conv2d(3, width, p, stride=p)` kernel `[width, 3, p, p]`;
//!   `visual.pos_embed` `[tokens, width]`; attention as separate
//!   `attn.{q,k,v,out}` Linears. Inputs are normalised with CLIP's mean/std.
//! - `text_encoder.safetensors` (`text.*`) and `vocab.json` or
//!   `tokenizer.json`: the scratch tower and its tokenizer.
//! - `model.json`: the configuration (presets, dims, loss) to rebuild it.
//! - `curve.csv`: step, loss, lr, logit scale, gradient norm (throughput,
//!   wall-clock, is only in the store: the files a run writes are the same
//!   bytes each time).
//! - `checkpoint.safetensors`: the final training state (model, AdamW
//!   moments, step), to continue training elsewhere.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::caption_ingest::artifacts::{IngestText, SplitName, read_images};
use super::{Interrupted, ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind, UpstreamInstance};
use super::{caption_ingest, text_embed};
use crate::device::{DeviceRequest, OnBackend};
use crate::loss::Loss;
use crate::model::{ClipConfig, TextPreset, VitPreset};
use crate::precision::Precision;
use crate::tensor_file::{self, RawTensor};
use crate::train::checkpoint::StepRecord;
use crate::train::data::Pairs;
use crate::train::vocab::{TextTokenizer, WordVocab};
use crate::train::whiten::{self, Whitening};
use crate::train::{self, FrozenText, Observer, Stopped, TextSide, TrainInputs, TrainSpec};

/// What a training wrote next to its weights (`model.json`): enough to
/// rebuild the model and to know what it was trained on. Written through a
/// JSON value, so every object's keys are sorted, as the file always had them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelDescription {
    pub batch_size: usize,
    /// The caption length trained on (`captions`).
    pub captions: String,
    pub config: ClipConfig,
    pub loss: Loss,
    pub seed: u64,
    pub steps: usize,
    /// `frozen` or `scratch` (`text`).
    pub text: String,
    /// The training's forward precision; absent (f32) in files written before it existed.
    #[serde(default, skip_serializing_if = "Precision::is_default")]
    pub precision: Precision,
    /// The whitening shrinkage of the frozen text side (`text_whiten`); the
    /// map is in `image_encoder.safetensors` ([`Whitening::MEAN`], [`Whitening::MATRIX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_whiten: Option<f64>,
}

impl ModelDescription {
    pub const FILE: &str = "model.json";

    fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(&serde_json::to_value(self)?)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The description a `train` instance wrote.
    pub fn read(trained: &super::UpstreamOutputs) -> anyhow::Result<ModelDescription> {
        let bytes = std::fs::read(trained.artifact(Self::FILE)?)?;
        serde_json::from_slice(&bytes).with_context(|| format!("train stage '{}': {} does not describe a model", trained.stage, Self::FILE))
    }
}

/// The kind's name, as `kind = "..."` writes it.
pub const NAME: &str = "train";

pub struct Train;

/// Steps when neither `steps` nor `epochs` is given: the CPU demo's size.
pub const DEFAULT_STEPS: i64 = 300;
const DEFAULT_TEXT_MODEL: &str = "text-micro";

const PARAMS: &[ParamSpec] = &[
    ParamSpec::new(
        "text",
        ParamType::OneOf(&["frozen", "scratch"]),
        ParamDefault::Required,
        "frozen (LIFT: cached embeddings) or scratch (CLIP: a text tower trained jointly)",
    ),
    ParamSpec::new("model", ParamType::OneOf(VitPreset::NAMES), ParamDefault::Str("vit-micro"), "image tower preset"),
    ParamSpec::new(
        "pooling",
        ParamType::OneOf(&["avg", "cls"]),
        ParamDefault::Str("avg"),
        "ViT pooling: mean of patch tokens (LIFT) or a class token",
    ),
    ParamSpec::new(
        "text_model",
        ParamType::OneOf(TextPreset::NAMES),
        ParamDefault::Str(DEFAULT_TEXT_MODEL),
        "scratch text tower preset (with text = \"frozen\", ignored and not part of the key)",
    ),
    ParamSpec::new("captions", ParamType::OneOf(&["short", "long"]), ParamDefault::Str("short"), "which captions to train on"),
    ParamSpec::new(
        "loss",
        ParamType::OneOf(Loss::NAMES),
        ParamDefault::Str("infonce"),
        "contrastive loss between image and text embeddings",
    ),
    ParamSpec::new("projector_layers", ParamType::Int, ParamDefault::Int(2), "head depth: 2 = Linear-GELU-Linear (LIFT), 1 = Linear"),
    ParamSpec::new("batch_size", ParamType::Int, ParamDefault::Int(64), "pairs per step"),
    ParamSpec::new("steps", ParamType::Int, ParamDefault::Absent, "optimizer steps (default 300 unless `epochs` is given)"),
    ParamSpec::new("epochs", ParamType::Int, ParamDefault::Absent, "passes over the training images, instead of `steps`"),
    ParamSpec::new("lr", ParamType::Float, ParamDefault::Float(5e-4), "peak learning rate"),
    ParamSpec::new("warmup_steps", ParamType::Int, ParamDefault::Int(30), "linear warmup steps before cosine decay"),
    ParamSpec::new(
        "weight_decay",
        ParamType::Float,
        ParamDefault::Float(0.2),
        "AdamW decoupled weight decay (not on gains, biases, logit scale)",
    ),
    ParamSpec::new("grad_clip", ParamType::Float, ParamDefault::Absent, "clip the global gradient norm to this (default: no clipping)"),
    ParamSpec::new("seed", ParamType::Int, ParamDefault::Int(0), "initialisation, data order and augmentation"),
    ParamSpec::new(
        "checkpoint_every",
        ParamType::Int,
        ParamDefault::Int(100),
        "steps between checkpoints (0: only at the end and on Ctrl-C)",
    ),
    ParamSpec::new(
        "crop_scale",
        ParamType::Float,
        ParamDefault::Float(0.9),
        "smallest area fraction a random resized crop keeps (1: the whole image)",
    )
    .unkeyed_at_default(),
    ParamSpec::new(
        "flip",
        ParamType::Bool,
        ParamDefault::Bool(false),
        "mirror images left-right at random (off: captions say left and right)",
    )
    .unkeyed_at_default(),
    ParamSpec::new(
        "text_whiten",
        ParamType::Float,
        ParamDefault::Absent,
        "frozen only: whiten the text embeddings with this shrinkage ε (fit on the training captions, applied in training and \
         evaluation; e.g. 0.01), so a loss sees every direction the captions vary in, not the few an un-tuned LM puts them along",
    ),
    super::params::PRECISION,
    ParamSpec::new("device", ParamType::Str, ParamDefault::Str("auto"), "auto | cpu | cuda:N"),
    ParamSpec::new(
        "tokenizer",
        ParamType::Str,
        ParamDefault::Absent,
        "scratch only: a tokenizer.json (default: word vocabulary of the training captions)",
    ),
];

impl StageKind for Train {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        // 2: the CPU runs blocks through the fused kernels (other summation
        // order, so other low bits than version 1's outputs).
        2
    }
    fn summary(&self) -> &'static str {
        "trains a ViT + projection head against cached text embeddings (LIFT) or with a scratch text tower (CLIP)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn check(&self, params: &Params) -> Result<(), ParamError> {
        let positive = |name: &str, min: i64| -> Result<(), ParamError> {
            match params.opt_int(name) {
                Some(v) if v < min => Err(ParamError::new(name, format!("must be at least {min}, found {v}"))),
                _ => Ok(()),
            }
        };
        positive("batch_size", 2)?;
        positive("steps", 1)?;
        positive("epochs", 1)?;
        positive("warmup_steps", 0)?;
        positive("checkpoint_every", 0)?;
        positive("seed", 0)?;
        if !(1..=2).contains(&params.int("projector_layers")) {
            return Err(ParamError::new("projector_layers", "must be 1 or 2"));
        }
        if params.get("steps").is_some() && params.get("epochs").is_some() {
            return Err(ParamError::new("epochs", "give `steps` or `epochs`, not both"));
        }
        let lr = params.float("lr");
        if !(lr.is_finite() && lr > 0.0) {
            return Err(ParamError::new("lr", format!("must be a positive number, found {lr}")));
        }
        let wd = params.float("weight_decay");
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(ParamError::new("weight_decay", format!("must be zero or positive, found {wd}")));
        }
        if let Some(clip) = params.get("grad_clip").and_then(Value::as_f64)
            && !(clip.is_finite() && clip > 0.0)
        {
            return Err(ParamError::new("grad_clip", format!("must be a positive number, found {clip}")));
        }
        let crop = params.float("crop_scale");
        if !(crop > 0.0 && crop <= 1.0) {
            return Err(ParamError::new("crop_scale", format!("must be in (0, 1], found {crop}")));
        }
        DeviceRequest::parse(params.str("device")).map_err(|e| ParamError::new("device", e))?;
        if let Some(eps) = params.get("text_whiten").and_then(Value::as_f64) {
            if params.str("text") != "frozen" {
                return Err(ParamError::new(
                    "text_whiten",
                    "whitens a frozen encoder's embeddings (text = \"frozen\"); a scratch tower learns its own",
                ));
            }
            if !(eps.is_finite() && eps > 0.0 && eps <= 1.0) {
                return Err(ParamError::new("text_whiten", format!("must be in (0, 1], found {eps}")));
            }
        }
        if let Some(path) = params.opt_str("tokenizer") {
            if params.str("text") != "scratch" {
                return Err(ParamError::new("tokenizer", "only the scratch text tower has a tokenizer (text = \"scratch\")"));
            }
            TextTokenizer::from_file(std::path::Path::new(path)).map_err(|e| ParamError::new("tokenizer", format!("{e:#}")))?;
        }
        Ok(())
    }

    fn derive(&self, params: &Params) -> Result<Vec<(String, Value)>, ParamError> {
        let mut derived = Vec::new();
        if params.get("steps").is_none() && params.get("epochs").is_none() {
            derived.push(("steps".to_owned(), Value::from(DEFAULT_STEPS)));
        }
        // The frozen side has no text tower: its preset must not split the
        // key of otherwise identical work (a grid whose `text` axis varies).
        if params.str("text") == "frozen" && params.str("text_model") != DEFAULT_TEXT_MODEL {
            derived.push(("text_model".to_owned(), Value::from(DEFAULT_TEXT_MODEL)));
        }
        if let Some(path) = params.opt_str("tokenizer") {
            let bytes = std::fs::read(path).map_err(|e| ParamError::new("tokenizer", format!("reading {path}: {e}")))?;
            derived.push(("tokenizer_sha256".to_owned(), Value::from(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)))));
        }
        Ok(derived)
    }

    fn required_upstream(&self, params: &Params) -> Vec<&'static str> {
        let mut kinds = vec![caption_ingest::NAME];
        if params.str("text") == "frozen" {
            kinds.push(text_embed::NAME);
        }
        kinds
    }

    /// A frozen run pairs the ingest's images with the cache's rows by
    /// position: the cache must embed that ingest's captions, of the length
    /// trained on.
    fn check_upstream(&self, params: &Params, upstream: &[UpstreamInstance<'_>]) -> Result<(), ParamError> {
        super::caption_ingest::check_long_captions(params.str("captions"), upstream)?;
        let (Some(ingest), Some(cache)) =
            (UpstreamInstance::of_kind(upstream, caption_ingest::NAME), UpstreamInstance::of_kind(upstream, text_embed::NAME))
        else {
            return Ok(());
        };
        if !cache.upstream.contains(&ingest.node) {
            return Err(ParamError::new(
                "needs",
                format!(
                    "text_embed stage `{}` embeds the captions of another caption_ingest instance than `{}`'s: its rows would be paired with the wrong images",
                    cache.stage, ingest.stage
                ),
            ));
        }
        let (length, cached) = (params.str("captions"), cache.params.opt_str("captions").unwrap_or("short"));
        if length != cached {
            return Err(ParamError::new(
                "captions",
                format!("is \"{length}\" but text_embed stage `{}` embeds the {cached} captions", cache.stage),
            ));
        }
        Ok(())
    }

    fn resources(&self, params: &Params) -> Resources {
        super::device_resources(params)
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let params = ctx.params().clone();
        let ingest = ctx.upstream_of_kind(caption_ingest::NAME)?;
        let length = params.str("captions");
        let text_data = IngestText::read_records(ingest, length)?;
        let images = read_images(ingest)?;
        let frozen = params.str("text") == "frozen";

        // Caption rows: the frozen cache's rows, or every caption of the chosen length.
        let (caption_image, text, embed_dim, tokenizer) = if frozen {
            let cache = ctx.upstream_of_kind(text_embed::NAME).context("text = \"frozen\" trains against a text_embed stage")?;
            let cached_length = cache.params.opt_str("captions").unwrap_or("short");
            if cached_length != length {
                bail!("captions = \"{length}\" but text_embed stage '{}' embedded the {cached_length} captions", cache.stage);
            }
            let (rows, owners) = text_embed::caption_rows(cache)?;
            let dim = rows.dim();
            (owners, TextSide::Frozen(FrozenText::new(rows)), dim, None)
        } else {
            let preset = TextPreset::named(params.str("text_model")).expect("checked preset");
            let tokenizer = match params.opt_str("tokenizer") {
                Some(path) => TextTokenizer::from_file(std::path::Path::new(path))?,
                None => TextTokenizer::Words(WordVocab::build(
                    text_data.records.iter().filter(|r| r.split == SplitName::Train).flat_map(|r| r.captions(length)).map(String::as_str),
                )),
            };
            let mut owners = Vec::new();
            let mut tokens = Vec::new();
            for r in &text_data.records {
                for c in r.captions(length) {
                    owners.push(r.index);
                    tokens.push(tokenizer.encode(c, preset.context)?);
                }
            }
            (owners, TextSide::Scratch(tokens), preset.width, Some(tokenizer))
        };
        let mut per_image: Vec<Vec<usize>> = vec![Vec::new(); text_data.records.len()];
        for (row, &img) in caption_image.iter().enumerate() {
            per_image.get_mut(img).with_context(|| format!("caption row {row} names image {img}, beyond the ingest's images"))?.push(row);
        }
        let train_images: Vec<usize> =
            text_data.records.iter().filter(|r| r.split == SplitName::Train && !per_image[r.index].is_empty()).map(|r| r.index).collect();
        let batch_size = params.int("batch_size") as usize;
        if train_images.len() < batch_size {
            bail!("{} training images with {length} captions, fewer than batch_size = {batch_size}", train_images.len());
        }
        if images.n != text_data.records.len() {
            bail!("the ingest has {} images but {} records", images.n, text_data.records.len());
        }
        let pairs = Pairs { captions: train_images.iter().map(|&i| per_image[i].clone()).collect(), images: train_images };
        let device = DeviceRequest::parse(params.str("device")).map_err(anyhow::Error::msg)?.resolve()?;
        let text_whiten = params.get("text_whiten").and_then(Value::as_f64);
        let mut text = text;
        if let (TextSide::Frozen(frozen), Some(epsilon)) = (&mut text, text_whiten) {
            let of: Vec<usize> = pairs.captions.iter().flatten().copied().collect();
            frozen.whitening = Some(device.run(FitWhitening { rows: &frozen.rows, of: &of, epsilon })?);
        }

        let loss = Loss::from_name(params.str("loss")).expect("the parameter's type is the registry's names");
        let steps = match params.opt_int("epochs") {
            Some(e) => e as usize * pairs.steps_per_epoch(batch_size),
            None => params.int("steps") as usize,
        };
        let config = ClipConfig {
            vit: VitPreset::named(params.str("model"), params.str("pooling")).expect("checked preset"),
            projector_layers: params.int("projector_layers") as usize,
            embed_dim,
            text: (!frozen).then(|| TextPreset::named(params.str("text_model")).expect("checked preset")),
            vocab_size: tokenizer.as_ref().map_or(0, TextTokenizer::vocab_size),
            logit_scale: loss.learnable().log_scale,
            logit_bias: loss.learnable().bias,
        };
        let spec = TrainSpec {
            model: config.clone(),
            loss,
            batch_size,
            steps,
            lr: params.float("lr"),
            warmup_steps: params.int("warmup_steps") as usize,
            weight_decay: params.float("weight_decay"),
            grad_clip: params.get("grad_clip").and_then(Value::as_f64),
            seed: params.int("seed") as u64,
            checkpoint_every: params.int("checkpoint_every") as usize,
            augment: train::data::Augment { crop_scale: params.float("crop_scale"), flip: params.bool("flip") },
            precision: params.precision(),
        };
        let inputs = TrainInputs { images, pairs, text };
        let checkpoint_path = ctx.state_dir()?.join("checkpoint.safetensors");
        ctx.ran_on(&device.name());
        let now = std::time::Instant::now();
        let mut observer = StageObserver { ctx: &mut *ctx, started: now, flushed: now };
        let trained = match device.run(TrainOn { spec: &spec, inputs: &inputs, checkpoint: &checkpoint_path, observer: &mut observer }) {
            Ok(t) => t,
            Err(e) => {
                return match e.downcast_ref::<Stopped>() {
                    Some(Stopped::Interrupted(_)) => Err(Interrupted.into()),
                    _ => Err(e),
                };
            }
        };

        // Outputs.
        let meta = |extra: &[(&str, String)]| {
            let mut m: std::collections::HashMap<String, String> =
                [("format", "ablate-clip".to_owned()), ("config", serde_json::to_string(&config).expect("serialisable"))]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
            m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            m
        };
        let raw = |t: &[(String, crate::model::named::HostTensor)]| -> Vec<(String, RawTensor)> {
            t.iter().map(|(n, h)| (n.clone(), RawTensor::f32(h.shape.clone(), &h.values))).collect()
        };
        let norm = format!("mean {:?} std {:?}", train::data::MEAN, train::data::STD);
        let mut image_tensors = raw(&trained.image);
        // The map the loop trained against, written beside the weights `evaluate` loads.
        if let TextSide::Frozen(FrozenText { whitening: Some(w), .. }) = &inputs.text {
            image_tensors.push((Whitening::MATRIX.to_owned(), RawTensor::f32(vec![w.dim(), w.dim()], &w.matrix)));
            image_tensors.push((Whitening::MEAN.to_owned(), RawTensor::f32(vec![w.dim()], &w.mean)));
        }
        tensor_file::write(&ctx.output("image_encoder.safetensors")?, &image_tensors, meta(&[("normalize", norm)]))?;
        if let Some(tokenizer) = &tokenizer {
            tensor_file::write(&ctx.output("text_encoder.safetensors")?, &raw(&trained.text), meta(&[]))?;
            tokenizer.save(|name| ctx.output(name))?;
        }
        let description = ModelDescription {
            batch_size,
            captions: length.to_owned(),
            config: config.clone(),
            loss,
            seed: spec.seed,
            steps,
            text: params.str("text").to_owned(),
            precision: spec.precision,
            text_whiten,
        };
        description.write(&ctx.output(ModelDescription::FILE)?)?;
        write_curve(&ctx.output("curve.csv")?, &trained.history)?;
        std::fs::copy(&checkpoint_path, ctx.output("checkpoint.safetensors")?).context("copying the final checkpoint")?;

        // Measured in this attempt (not steps resumed from a checkpoint), past the first.
        let measured: Vec<f64> = trained.history.iter().filter(|r| r.images_per_s > 0.0).skip(1).map(|r| r.images_per_s).collect();
        if !measured.is_empty() {
            ctx.metric("train.images_per_s", measured.iter().sum::<f64>() / measured.len() as f64);
        }
        let tail: Vec<f64> = trained.history.iter().rev().take(10).map(|r| r.loss).collect();
        ctx.metric("train.final_loss", tail.iter().sum::<f64>() / tail.len().max(1) as f64);
        ctx.metric("train.steps", steps as f64);
        ctx.metric("train.image_params", trained.image.iter().map(|(_, h)| h.values.len()).sum::<usize>() as f64);
        if let Some(from) = trained.resumed_from {
            ctx.metric("train.resumed_from_step", from as f64);
        }
        Ok(())
    }
}

/// The training loop on the backend of the stage's `device`.
struct TrainOn<'a, 'c> {
    spec: &'a TrainSpec,
    inputs: &'a TrainInputs,
    checkpoint: &'a std::path::Path,
    observer: &'a mut StageObserver<'c>,
}

/// `whiten::fit` on the training's device.
struct FitWhitening<'a> {
    rows: &'a crate::tensor_file::F32Rows,
    of: &'a [usize],
    epsilon: f64,
}

impl OnBackend for FitWhitening<'_> {
    type Output = Whitening;
    fn run<B: burn::tensor::backend::Backend>(self, device: &B::Device) -> anyhow::Result<Whitening> {
        whiten::fit::<B>(self.rows, self.of, self.epsilon, device)
    }
}

impl OnBackend for TrainOn<'_, '_> {
    type Output = train::Trained;
    fn run<B: burn::tensor::backend::Backend>(self, device: &B::Device) -> anyhow::Result<train::Trained> {
        train::run::<burn::backend::Autodiff<B>>(self.spec, self.inputs, device, self.checkpoint, self.observer)
    }
}

/// Progress bar, per-step metrics, checkpoint records and Ctrl-C for the loop.
struct StageObserver<'a> {
    ctx: &'a mut StageContext,
    started: std::time::Instant,
    /// When the curve was last handed to the store.
    flushed: std::time::Instant,
}

/// How often the curve reaches the store while training runs (a live curve
/// in `serve` and `plot curves`; batched, so a step costs no database write).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Observer for StageObserver<'_> {
    fn on_step(&mut self, r: &StepRecord, total: usize) {
        let step = r.step as i64 + 1;
        self.ctx.metric_at("train.loss", step, r.loss);
        self.ctx.metric_at("train.lr", step, r.lr);
        self.ctx.metric_at("train.grad_norm", step, r.grad_norm);
        if r.images_per_s > 0.0 {
            // Not for a step replayed from a checkpoint: its time was not kept.
            self.ctx.metric_at("train.images_per_s", step, r.images_per_s);
        }
        if let Some(s) = r.logit_scale {
            self.ctx.metric_at("train.logit_scale", step, s);
        }
        let progress = self.ctx.progress();
        progress.set_length(total as u64);
        progress.set_position(step as u64);
        let done = step as f64 / total as f64;
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if done > 0.0 { elapsed * (1.0 - done) / done } else { 0.0 };
        progress.set_message(format!("step {step}/{total} · loss {:.4} · {:.0} img/s · eta {:.0}s", r.loss, r.images_per_s, eta));
        if self.flushed.elapsed() >= FLUSH_EVERY {
            self.ctx.flush_metrics();
            self.flushed = std::time::Instant::now();
        }
    }
    fn on_checkpoint(&mut self, _step: usize, path: &std::path::Path) -> anyhow::Result<()> {
        // The curve up to the checkpoint, then the checkpoint itself.
        self.ctx.flush_metrics();
        self.flushed = std::time::Instant::now();
        self.ctx.record_artifact_now("checkpoint.safetensors", path)
    }
    fn cancelled(&self) -> bool {
        self.ctx.cancel_token().is_cancelled()
    }
}

fn write_curve(path: &PathBuf, history: &[StepRecord]) -> anyhow::Result<()> {
    let mut out = String::from("step,loss,lr,logit_scale,grad_norm\n");
    for r in history {
        let scale = r.logit_scale.map(|s| s.to_string()).unwrap_or_default();
        writeln!(out, "{},{},{},{},{}", r.step + 1, r.loss, r.lr, scale, r.grad_norm).expect("string write");
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived(params: Value) -> Vec<(String, Value)> {
        Train.derive(&Params::from(params.as_object().unwrap().clone())).unwrap()
    }

    #[test]
    fn a_frozen_training_keys_no_text_tower_preset() {
        let frozen = derived(serde_json::json!({"text": "frozen", "text_model": "text-tiny", "steps": 10}));
        assert_eq!(frozen, [("text_model".to_owned(), Value::from(DEFAULT_TEXT_MODEL))]);
        assert!(derived(serde_json::json!({"text": "scratch", "text_model": "text-tiny", "steps": 10})).is_empty());
    }
}
