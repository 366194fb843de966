//! Training throughput on synthetic data (random images at the preset's
//! resolution, random frozen caption embeddings): what `cargo bench --bench
//! training`, `ablate bench-train` and `scripts/gpu-check` measure. The
//! real loop (`super::run`) does the work, so the numbers include batch
//! assembly, the optimizer and the per-step synchronisation.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::checkpoint::StepRecord;
use super::data::Pairs;
use super::{FrozenText, Observer, StepPhases, TextSide, TrainInputs, TrainSpec};
use crate::images::ImageSet;
use crate::loss::Loss;
use crate::model::{ClipConfig, VitPreset};
use crate::precision::Precision;
use crate::rng::Rng;
use crate::tensor_file::F32Rows;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub model: String,
    pub loss: Loss,
    pub batch: usize,
    pub precision: Precision,
    /// Measured steps (after the warm-up steps).
    pub steps: usize,
    pub images_per_s: f64,
    /// Seconds from the start of the measurement (model built, weights
    /// initialised, data made) to the end of the first step: on a GPU,
    /// mostly kernel compilation and autotuning unless the kernel cache
    /// holds them (`ablate warmup`).
    pub first_step_s: f64,
    /// Forward + backward FLOPs of the image tower per second (3 × forward).
    pub gflops: f64,
    /// Mean time per phase over the measured steps, with the device waited
    /// for after each phase (asked for by `phases`; the wait costs a GPU
    /// some overlap, so throughput is best measured without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases_ms: Option<StepPhases>,
}

impl BenchResult {
    /// What was measured: "vit-b16 infonce batch 256 bf16".
    pub fn what(&self) -> String {
        format!("{} {} batch {} {}", self.model, self.loss.name(), self.batch, self.precision.name())
    }
}

struct Timer {
    began: Instant,
    first: Option<Instant>,
    warmup: usize,
    started: Option<Instant>,
    last: Option<Instant>,
    /// Summed phase times of the measured steps, when asked for.
    phases: Option<(StepPhases, usize)>,
}

impl Observer for Timer {
    fn on_step(&mut self, record: &StepRecord, _: usize) {
        self.first.get_or_insert_with(Instant::now);
        if record.step + 1 == self.warmup {
            self.started = Some(Instant::now());
        }
        self.last = Some(Instant::now());
    }
    fn timed_phases(&self) -> bool {
        self.phases.is_some()
    }
    fn on_phases(&mut self, p: &StepPhases) {
        // Reported just before `on_step` for the same step.
        if let Some((sum, n)) = &mut self.phases
            && self.started.is_some()
        {
            sum.data += p.data;
            sum.forward += p.forward;
            sum.backward += p.backward;
            sum.grad_norm += p.grad_norm;
            sum.optimizer += p.optimizer;
            *n += 1;
        }
    }
    fn cancelled(&self) -> bool {
        false
    }
}

/// What `bench-train` measures: `model` trained with `loss` at `batch` and
/// `precision` for `warmup + steps` steps; with `phases`, each phase of a
/// step timed too.
#[derive(Debug, Clone, Copy)]
pub struct BenchSpec<'a> {
    pub model: &'a str,
    pub loss: Loss,
    pub batch: usize,
    pub precision: Precision,
    pub warmup: usize,
    pub steps: usize,
    pub phases: bool,
}

/// Runs `bench` on `device`, on random images held in memory.
pub fn run<B: AutodiffBackend>(bench: &BenchSpec<'_>, device: &B::Device) -> anyhow::Result<BenchResult> {
    let side = preset(bench.model)?.image_size;
    run_on::<B>(bench, random_images(bench.batch * 2, side), device)
}

/// `n` random images of `side`² (the benchmark's data, seeded).
pub fn random_images(n: usize, side: usize) -> ImageSet {
    let mut rng = Rng::keyed(0, &[Rng::key_of("bench-images")]);
    ImageSet::in_memory(n, side, (0..n * side * side * 3).map(|_| (rng.next_u64() & 0xff) as u8).collect())
}

fn preset(model: &str) -> anyhow::Result<VitPreset> {
    VitPreset::named(model, "avg").ok_or_else(|| anyhow::anyhow!("unknown model preset {model}"))
}

/// Runs `bench` on `device` over `images` (each its own caption, random
/// embeddings): in memory or read from shards.
pub fn run_on<B: AutodiffBackend>(bench: &BenchSpec<'_>, images: ImageSet, device: &B::Device) -> anyhow::Result<BenchResult> {
    let BenchSpec { model, loss, batch, precision, warmup, steps, phases } = *bench;
    let began = Instant::now();
    let vit = preset(model)?;
    let (n, dim) = (images.n, 384);
    let mut rng = Rng::keyed(0, &[Rng::key_of("bench")]);
    let text: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
    let inputs = TrainInputs {
        images,
        pairs: Pairs { images: (0..n).collect(), captions: (0..n).map(|i| vec![i]).collect() },
        text: TextSide::Frozen(FrozenText::new(F32Rows::in_memory(dim, text))),
    };
    let flops = 3.0 * vit.forward_flops();
    let spec = TrainSpec {
        model: ClipConfig {
            vit,
            projector_layers: 2,
            embed_dim: dim,
            text: None,
            vocab_size: 0,
            logit_scale: loss.learnable().log_scale,
            logit_bias: loss.learnable().bias,
        },
        loss,
        batch_size: batch,
        steps: warmup + steps,
        lr: 1e-4,
        warmup_steps: 0,
        weight_decay: 0.2,
        grad_clip: None,
        seed: 0,
        checkpoint_every: 0,
        augment: Default::default(),
        precision,
    };
    let dir = tempfile_dir()?;
    let mut timer = Timer { began, first: None, warmup: warmup.max(1), started: None, last: None, phases: phases.then(Default::default) };
    super::run::<B>(&spec, &inputs, device, &dir.join("checkpoint.safetensors"), &mut timer)?;
    let _ = std::fs::remove_dir_all(&dir);
    let measured = warmup + steps - warmup.max(1);
    let seconds = match (timer.started, timer.last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => anyhow::bail!("no steps measured"),
    };
    let images_per_s = (measured * batch) as f64 / seconds;
    Ok(BenchResult {
        model: model.to_owned(),
        loss,
        batch,
        precision,
        steps: measured,
        images_per_s,
        first_step_s: timer.first.map_or(f64::NAN, |t| (t - timer.began).as_secs_f64()),
        gflops: images_per_s * flops / 1e9,
        phases_ms: timer.phases.filter(|&(_, n)| n > 0).map(|(sum, n)| {
            let n = n as f64;
            StepPhases {
                data: sum.data / n,
                forward: sum.forward / n,
                backward: sum.backward / n,
                grad_norm: sum.grad_norm / n,
                optimizer: sum.optimizer / n,
            }
        }),
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ablate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
