//! A set of square RGB images as one `u8` tensor `[n, side, side, 3]`
//! (row-major HWC): the `images` tensor `caption_ingest` writes, which
//! training and evaluation cut into patches. It lives below both, so the
//! training loop reads images without knowing the stage kind that made them.

use std::path::Path;

use anyhow::{Context as _, bail};

pub struct ImageSet {
    pub n: usize,
    pub side: usize,
    pub pixels: Vec<u8>,
}

impl ImageSet {
    /// Reads the tensor `images` of a safetensors file.
    pub fn read(path: &Path) -> anyhow::Result<ImageSet> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not safetensors", path.display()))?;
        let view = tensors.tensor("images").with_context(|| format!("{} has no tensor `images`", path.display()))?;
        let shape = view.shape();
        if view.dtype() != safetensors::Dtype::U8 || shape.len() != 4 || shape[1] != shape[2] || shape[3] != 3 {
            bail!("{}: `images` must be u8 [N, S, S, 3], found {:?} {:?}", path.display(), view.dtype(), shape);
        }
        Ok(ImageSet { n: shape[0], side: shape[1], pixels: view.data().to_vec() })
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.side * self.side * 3;
        &self.pixels[i * size..(i + 1) * size]
    }
}
