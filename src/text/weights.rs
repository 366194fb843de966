//! Weight sources: safetensors files (one or sharded) and their conversion to
//! burn tensors.
//!
//! Every model loader asks for tensors by name and gets f32 data back, so the
//! architecture code never cares whether the file held F32, F16 or BF16 (or a
//! GGUF quantization, see [`super::gguf`]). A missing tensor is an error that
//! names both the tensor and the file it was looked for in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::precision::Precision;

/// The safetensors weights of a Hugging Face model directory.
pub struct SafetensorFiles {
    dir: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorFiles {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let single = dir.join("model.safetensors");
        let index_file = dir.join("model.safetensors.index.json");
        let paths = if single.is_file() {
            vec![single]
        } else if index_file.is_file() {
            let text = std::fs::read_to_string(&index_file).with_context(|| format!("cannot read {}", index_file.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", index_file.display()))?;
            let map = json["weight_map"].as_object().ok_or_else(|| anyhow!("{} has no weight_map", index_file.display()))?;
            let mut shards: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|s| dir.join(s)).collect();
            shards.sort();
            shards.dedup();
            shards
        } else {
            bail!("{}: no model.safetensors (nor model.safetensors.index.json) in the model directory", dir.display());
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
            for name in st.names() {
                index.insert(name.to_owned(), files.len());
            }
            files.push((path, bytes));
        }
        Ok(SafetensorFiles { dir: dir.to_owned(), files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// The tensor `name` as f32 with its shape.
    pub fn get(&self, name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
        let &i =
            self.index.get(name).ok_or_else(|| anyhow!("{}: tensor '{name}' not found in the model's safetensors", self.dir.display()))?;
        let (path, bytes) = &self.files[i];
        let st = SafeTensors::deserialize(bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        let view = st.tensor(name).with_context(|| format!("{}: tensor '{name}'", path.display()))?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| super::gguf::half_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
            other => bail!("{}: tensor '{name}' has dtype {other:?}; only F32, F16 and BF16 weights are supported", path.display()),
        };
        Ok((view.shape().to_vec(), values))
    }
}

/// Row-major `[rows, cols]` → `[cols, rows]`, done once at load time so that
/// every forward pass multiplies by a contiguous `[in, out]` matrix.
pub fn transpose(rows: usize, cols: usize, data: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Checks that a loaded tensor has the shape the config promises.
pub fn expect_shape(name: &str, shape: &[usize], want: &[usize]) -> anyhow::Result<()> {
    if shape != want {
        bail!("tensor '{name}' has shape {shape:?}, but the model config implies {want:?}");
    }
    Ok(())
}

pub fn tensor1<B: Backend>(data: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), device)
}

pub fn tensor2<B: Backend>(data: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// A dense layer `y = x W + b` with `W` stored `[in, out]` (burn's convention).
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    pub weight: Tensor<B, 2>,
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// From a PyTorch-layout `[out, in]` weight (and optional `[out]` bias).
    pub fn from_torch(out: usize, inp: usize, weight: &[f32], bias: Option<Vec<f32>>, device: &B::Device) -> Self {
        Linear { weight: tensor2(transpose(out, inp, weight), [inp, out], device), bias: bias.map(|b| tensor1(b, device)) }
    }

    /// From host weights `[in, out]` (the CPU kernels' layout).
    pub fn from_host(l: &ablate_kernels::Linear<Vec<f32>>, device: &B::Device) -> Self {
        let (inp, out) = (l.weight.len() / l.bias.len(), l.bias.len());
        Linear { weight: tensor2(l.weight.clone(), [inp, out], device), bias: Some(tensor1(l.bias.clone(), device)) }
    }

    /// In bf16 (output bf16) under [`Precision::Bf16`].
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, precision: Precision) -> Tensor<B, D> {
        precision.dense(x, self.weight.clone(), self.bias.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_correct() {
        // [[1,2,3],[4,5,6]] -> [[1,4],[2,5],[3,6]]
        assert_eq!(transpose(2, 3, &[1., 2., 3., 4., 5., 6.]), [1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn missing_safetensors_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = SafetensorFiles::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }
}
