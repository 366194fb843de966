//! Training checkpoints: one safetensors file holding the model (burn layout,
//! `model.<path>`), the AdamW moments (`adam.m.<path>`, `adam.v.<path>`) and,
//! as JSON metadata, the step, the optimizer's step count, the data-order
//! cursor, the run's fingerprint and the per-step history so far. The RNG
//! needs no state of its own: every draw is keyed by (seed, step), see
//! `crate::rng`. Written through a temporary file and a rename, so a kill at
//! any moment leaves the previous checkpoint or the new one, never half.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::model::named::HostTensor;
use crate::tensor_file::{self, RawTensor, TensorFile};

/// One step's record: what the store's curves and `curve.csv` show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub logit_scale: Option<f64>,
    pub grad_norm: f64,
    /// Wall-clock throughput: in the store's metrics, never in a file, so a
    /// rerun writes the same bytes and what read them stands (0 for a step
    /// read back from a checkpoint).
    #[serde(skip, default)]
    pub images_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Steps completed; training continues at this step.
    pub step: usize,
    pub optimizer_steps: u64,
    /// Where the next batch comes from (derived from `step`, kept for readers).
    pub epoch: usize,
    pub position_in_epoch: usize,
    /// Hash of the training configuration; a checkpoint of another
    /// configuration is never resumed.
    pub fingerprint: String,
    pub history: Vec<StepRecord>,
}

pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub model: HashMap<String, HostTensor>,
    pub moments: Vec<(String, HostTensor, HostTensor)>,
}

pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    model: &[(String, HostTensor)],
    moments: &[(String, HostTensor, HostTensor)],
) -> anyhow::Result<()> {
    let raw = |h: &HostTensor| RawTensor::f32(h.shape.clone(), &h.values);
    let mut tensors: Vec<(String, RawTensor)> = model.iter().map(|(p, h)| (format!("model.{p}"), raw(h))).collect();
    for (p, m, v) in moments {
        tensors.push((format!("adam.m.{p}"), raw(m)));
        tensors.push((format!("adam.v.{p}"), raw(v)));
    }
    let metadata = HashMap::from([("ablate_checkpoint".to_owned(), serde_json::to_string(meta)?)]);
    tensor_file::write(path, &tensors, metadata)
}

/// The checkpoint at `path`, if there is one.
pub fn load(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    if !path.exists() {
        return Ok(None);
    }
    let file = TensorFile::open(path)?;
    let meta = file.metadata();
    let meta: CheckpointMeta = serde_json::from_str(meta.get("ablate_checkpoint").map_or("", String::as_str))
        .with_context(|| format!("{} is not an ablate training checkpoint", path.display()))?;
    let mut model = HashMap::new();
    let mut m = HashMap::new();
    let mut v = HashMap::new();
    for name in file.names() {
        let (shape, values) = file.f32(&name)?;
        let host = HostTensor { shape, values };
        if let Some(p) = name.strip_prefix("model.") {
            model.insert(p.to_owned(), host);
        } else if let Some(p) = name.strip_prefix("adam.m.") {
            m.insert(p.to_owned(), host);
        } else if let Some(p) = name.strip_prefix("adam.v.") {
            v.insert(p.to_owned(), host);
        }
    }
    let mut moments = Vec::new();
    for (p, mm) in m {
        let Some(vv) = v.remove(&p) else { bail!("{}: `adam.m.{p}` has no `adam.v.{p}`", path.display()) };
        moments.push((p, mm, vv));
    }
    moments.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(Checkpoint { meta, model, moments }))
}
