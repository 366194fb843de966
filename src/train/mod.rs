//! Training (OpenCLIP's `training/`): the image tower and head against cached
//! text embeddings (LIFT) or jointly with a scratch text tower (CLIP).
//!
//! `run` is the loop: batches from [`data`], the loss from `crate::loss`,
//! [`optim::AdamW`] with the [`schedule`] and global-norm clipping, a
//! checkpoint every `checkpoint_every` steps and on interruption
//! ([`checkpoint`]). Everything random is keyed by (seed, step), so a run
//! resumed from a checkpoint computes exactly what an uninterrupted run
//! would: on the CPU the final weights are bit-identical.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod optim;
pub mod schedule;
pub mod vocab;
pub mod whiten;

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use sha2::{Digest, Sha256};

use crate::images::ImageSet;
use crate::loss::{Learned, Loss};
use crate::model::named::{self, HostTensor, Layout};
use crate::model::{ClipConfig, ClipModel};
use crate::precision::Precision;
use crate::tensor_file::F32Rows;
use checkpoint::{CheckpointMeta, StepRecord};
use data::Pairs;
use optim::{AdamW, AdamWConfig};

/// A run's settings, resolved from the stage parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSpec {
    pub model: ClipConfig,
    pub loss: Loss,
    pub batch_size: usize,
    pub steps: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    pub checkpoint_every: usize,
    /// Left out of the fingerprint at its default, so that checkpoints
    /// written before it existed still resume.
    #[serde(skip_serializing_if = "data::Augment::is_default")]
    pub augment: data::Augment,
    /// The forward pass's precision; left out at f32, as `augment` is.
    #[serde(skip_serializing_if = "Precision::is_default")]
    pub precision: Precision,
}

/// A frozen encoder's caption rows, whitened when the training asks for it.
pub struct FrozenText {
    pub rows: F32Rows,
    pub whitening: Option<whiten::Whitening>,
}

impl FrozenText {
    pub fn new(rows: F32Rows) -> FrozenText {
        FrozenText { rows, whitening: None }
    }

    /// `rows` of the table, as the loss sees them, concatenated.
    pub fn gather(&self, rows: &[usize]) -> anyhow::Result<Vec<f32>> {
        let mut values = self.rows.gather(rows)?;
        if let Some(w) = &self.whitening {
            w.apply(&mut values);
        }
        Ok(values)
    }
}

impl TrainSpec {
    /// What a checkpoint must match to be resumed.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(serde_json::to_vec(self).expect("serialisable")))
    }
}

/// The text side of the training pairs.
pub enum TextSide {
    /// LIFT: one cached embedding per caption row, read a batch at a time.
    Frozen(FrozenText),
    /// CLIP: token ids per caption row, for the scratch tower.
    Scratch(Vec<Vec<u32>>),
}

pub struct TrainInputs {
    pub images: ImageSet,
    pub pairs: Pairs,
    pub text: TextSide,
}

/// What the loop reports to (and asks of) whoever runs it.
pub trait Observer: Send {
    fn on_step(&mut self, record: &StepRecord, total: usize);
    /// Whether to wait for the device after each phase of a step, so that
    /// [`Observer::on_phases`] gets each phase's own time. A GPU runs work
    /// asynchronously: without the wait, a phase's time is that of queueing
    /// it, and whichever phase next reads a value pays for everything queued.
    fn timed_phases(&self) -> bool {
        false
    }
    /// Where one step's time went.
    fn on_phases(&mut self, _phases: &StepPhases) {}
    /// A checkpoint of the state after `step` steps was just written to `path`.
    fn on_checkpoint(&mut self, _step: usize, _path: &Path) -> anyhow::Result<()> {
        Ok(())
    }
    fn cancelled(&self) -> bool;
}

/// How a run ended without finishing.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("interrupted at step {0}; the checkpoint keeps it")]
    Interrupted(usize),
    /// `step` counts from 0; the message counts from 1, as the store, the
    /// curve and the progress bar do.
    #[error("the {what} became {value} at step {}{}", .step + 1, last_finite(.last))]
    NonFinite { what: &'static str, step: usize, value: f64, last: Option<StepRecord> },
}

fn last_finite(last: &Option<StepRecord>) -> String {
    match last {
        Some(r) => format!(" (last finite step {}: loss {}, gradient norm {}, lr {})", r.step + 1, r.loss, r.grad_norm, r.lr),
        None => " (the first step)".to_owned(),
    }
}

/// A finished run: exported weights (PyTorch layout) and the curve.
pub struct Trained {
    pub image: Vec<(String, HostTensor)>,
    pub text: Vec<(String, HostTensor)>,
    pub history: Vec<StepRecord>,
    pub resumed_from: Option<usize>,
}

/// One step's wall time by phase, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StepPhases {
    /// Batch assembly on the host (crops, caption choice).
    pub data: f64,
    /// Upload, both towers' forward passes and the loss (read back).
    pub forward: f64,
    pub backward: f64,
    /// The global gradient norm (read back).
    pub grad_norm: f64,
    /// AdamW over every parameter.
    pub optimizer: f64,
}

pub fn run<B: AutodiffBackend>(
    spec: &TrainSpec,
    inputs: &TrainInputs,
    device: &B::Device,
    checkpoint_path: &Path,
    observer: &mut dyn Observer,
) -> anyhow::Result<Trained> {
    // The loop runs on a worker of a rayon pool of its own, which the CPU
    // kernels split their work over: each parallel op then hands part of its
    // work to the other workers, instead of this thread waking them and
    // sleeping until they are done (two context switches per op, ≈ 10 % of a
    // CPU step). Its own pool, not the global one: a worker waiting inside a
    // join may pick up any queued job, and if that were another stage's whole
    // training loop, the two would deadlock on burn's autodiff graph lock.
    let pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("ablate-train-{i}")).build()?;
    pool.install(|| train::<B>(spec, inputs, device, checkpoint_path, observer))
}

fn train<B: AutodiffBackend>(
    spec: &TrainSpec,
    inputs: &TrainInputs,
    device: &B::Device,
    checkpoint_path: &Path,
    observer: &mut dyn Observer,
) -> anyhow::Result<Trained> {
    let fingerprint = spec.fingerprint();
    let model = spec.model.init::<B>(device);
    let mut model = named::initialize(model, spec.seed, |p| p.starts_with("logit_"))?;
    let mut optim = AdamW::<B>::new(AdamWConfig { weight_decay: spec.weight_decay, ..Default::default() });
    let mut history: Vec<StepRecord> = Vec::new();
    let mut start = 0;
    let mut resumed_from = None;
    if let Some(ck) = checkpoint::load(checkpoint_path)? {
        if ck.meta.fingerprint != fingerprint {
            bail!("{} belongs to another training configuration; delete it to start over", checkpoint_path.display());
        }
        model = named::load(model, Layout::Burn, ck.model)?;
        optim.import(ck.meta.optimizer_steps, ck.moments, device);
        history = ck.meta.history;
        history.truncate(ck.meta.step);
        start = ck.meta.step;
        resumed_from = Some(start);
        // The steps before the checkpoint belong to the curve too (the
        // interrupted attempt's metrics were never committed).
        for record in &history {
            observer.on_step(record, spec.steps);
        }
    }
    let timed = observer.timed_phases();
    let log_scale_range = spec.loss.learnable().log_scale_range;
    let clamp = move |path: &str| log_scale_range.filter(|_| path == "logit_scale");
    let vit = &spec.model.vit;
    let (batch, patches, patch_dim) = (spec.batch_size, vit.patches(), vit.patch_dim());
    let save = |model: &ClipModel<B>, optim: &AdamW<B>, step: usize, history: &[StepRecord]| -> anyhow::Result<()> {
        let per_epoch = inputs.pairs.steps_per_epoch(batch);
        let meta = CheckpointMeta {
            step,
            optimizer_steps: optim.steps,
            epoch: step / per_epoch,
            position_in_epoch: step % per_epoch,
            fingerprint: fingerprint.clone(),
            history: history.to_vec(),
        };
        checkpoint::save(checkpoint_path, &meta, &named::collect(model, Layout::Burn), &optim.export())
    };

    for step in start..spec.steps {
        if observer.cancelled() {
            save(&model, &optim, step, &history)?;
            observer.on_checkpoint(step, checkpoint_path)?;
            return Err(Stopped::Interrupted(step).into());
        }
        let began = Instant::now();
        let mut plan = inputs.pairs.batch(spec.seed, step, batch);
        let pixels = data::train_patches(&inputs.images, &mut plan, &spec.augment, vit.image_size, vit.patch_size)?;
        let t_data = began.elapsed();
        let images = Tensor::<B, 2>::from_data(TensorData::new(pixels, [batch * patches, patch_dim]), device);
        let image_emb = model.encode_images(images, batch, spec.precision);
        let text_emb = match &inputs.text {
            TextSide::Frozen(frozen) => {
                let values = frozen.gather(&plan.captions)?;
                Tensor::<B, 2>::from_data(TensorData::new(values, [batch, frozen.rows.dim()]), device)
            }
            TextSide::Scratch(tokens) => {
                let tower = model.text.as_ref().expect("scratch runs have a text tower");
                let (ids, eos) = pad_tokens(plan.captions.iter().map(|&r| tokens[r].as_slice()));
                tower.forward(Tensor::from_data(ids, device), &eos, spec.precision)
            }
        };
        let learned = Learned { log_scale: model.logit_scale.as_ref().map(|p| p.val()), bias: model.logit_bias.as_ref().map(|p| p.val()) };
        let loss = spec.loss.compute(image_emb, text_emb, learned);
        let value: f64 = loss.clone().into_scalar().elem();
        let t_forward = began.elapsed();
        let grads = loss.backward();
        if timed {
            B::sync(device)?;
        }
        let t_backward = began.elapsed();
        let grad_norm = AdamW::grad_norm(&model, &grads);
        let t_norm = began.elapsed();
        if !value.is_finite() || !grad_norm.is_finite() {
            let what = if value.is_finite() { "gradient norm" } else { "loss" };
            let value = if value.is_finite() { grad_norm } else { value };
            return Err(Stopped::NonFinite { what, step, value, last: history.last().cloned() }.into());
        }
        // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        let grad_scale = spec.grad_clip.map_or(1.0, |max| (max / (grad_norm + 1e-6)).min(1.0));
        let lr = schedule::lr_at(step, spec.steps, spec.warmup_steps, spec.lr);
        model = optim.step(model, &grads, lr, grad_scale, &clamp);
        let logit_scale = model.logit_scale.as_ref().map(|p| p.val().into_scalar().elem::<f64>().exp());
        if timed {
            B::sync(device)?;
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let phases = StepPhases {
            data: ms(t_data),
            forward: ms(t_forward - t_data),
            backward: ms(t_backward - t_forward),
            grad_norm: ms(t_norm - t_backward),
            optimizer: ms(began.elapsed() - t_norm),
        };
        tracing::debug!(step, ?phases, "step phases");
        observer.on_phases(&phases);
        let record =
            StepRecord { step, loss: value, lr, logit_scale, grad_norm, images_per_s: batch as f64 / began.elapsed().as_secs_f64() };
        observer.on_step(&record, spec.steps);
        history.push(record);
        let done = step + 1;
        if spec.checkpoint_every > 0 && done % spec.checkpoint_every == 0 && done < spec.steps {
            save(&model, &optim, done, &history)?;
            observer.on_checkpoint(done, checkpoint_path)?;
        }
    }
    save(&model, &optim, spec.steps, &history)?;
    let (text, image) = named::collect(&model, Layout::PyTorch).into_iter().partition(|(p, _)| p.starts_with("text."));
    Ok(Trained { image, text, history, resumed_from })
}

/// Token rows padded to the longest, and each row's last (pooling) position.
pub fn pad_tokens<'a>(rows: impl Iterator<Item = &'a [u32]>) -> (TensorData, Vec<usize>) {
    let rows: Vec<&[u32]> = rows.collect();
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![vocab::PAD as i64; rows.len() * len];
    for (b, r) in rows.iter().enumerate() {
        for (j, &t) in r.iter().enumerate() {
            ids[b * len + j] = i64::from(t);
        }
    }
    let eos = rows.iter().map(|r| r.len().saturating_sub(1)).collect();
    (TensorData::new(ids, [rows.len(), len]), eos)
}
