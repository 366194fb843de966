//! Training batches on the host: which (image, caption) pairs make up step
//! `s`, and the image tensor for them (random resized crop, CLIP's
//! normalisation, cut into patches).
//!
//! Every draw is keyed by (seed, epoch, step, slot) through [`Rng::keyed`], so
//! batch `s` is a pure function of the seed and `s`: the data-order cursor of
//! a checkpoint is its step.

use crate::images::ImageSet;
use crate::rng::Rng;
use rayon::prelude::*;

/// CLIP's (OpenAI's) per-channel image mean and standard deviation.
pub const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

/// The random resized crop's aspect ratio range (OpenCLIP's).
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// How training images are augmented.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Augment {
    /// The smallest area fraction a random resized crop keeps (OpenCLIP's
    /// 0.9); 1 keeps the whole image.
    pub crop_scale: f64,
    /// Mirror each image left–right with probability ½. Off by default: a
    /// caption that says "left of" would then be false for half the batch.
    pub flip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { crop_scale: 0.9, flip: false }
    }
}

impl Augment {
    pub fn is_default(&self) -> bool {
        *self == Augment::default()
    }
}

/// Which training images there are and which caption rows each has.
pub struct Pairs {
    /// Image indices (into the ingest images) of the training split.
    pub images: Vec<usize>,
    /// Per training image, the rows of its captions in the text table.
    pub captions: Vec<Vec<usize>>,
}

/// The pairs of one step: image indices and caption rows.
pub struct BatchPlan {
    pub images: Vec<usize>,
    pub captions: Vec<usize>,
    /// Per slot, the crop's random stream.
    pub crops: Vec<Rng>,
}

impl Pairs {
    /// Whole batches per epoch (the last partial batch is dropped, as CLIP does).
    pub fn steps_per_epoch(&self, batch: usize) -> usize {
        (self.images.len() / batch).max(1)
    }

    /// The pairs of step `step`: epoch `step / steps_per_epoch` shuffles the
    /// images with its own stream; each image picks one of its captions.
    pub fn batch(&self, seed: u64, step: usize, batch: usize) -> BatchPlan {
        let per_epoch = self.steps_per_epoch(batch);
        let (epoch, pos) = (step / per_epoch, step % per_epoch);
        let order = Rng::keyed(seed, &[Rng::key_of("order"), epoch as u64]).permutation(self.images.len());
        let slots: Vec<usize> = (0..batch).map(|i| order[(pos * batch + i) % order.len()]).collect();
        let captions = slots
            .iter()
            .map(|&t| {
                let rows = &self.captions[t];
                rows[Rng::keyed(seed, &[Rng::key_of("caption"), epoch as u64, t as u64]).below(rows.len())]
            })
            .collect();
        let crops = (0..batch).map(|i| Rng::keyed(seed, &[Rng::key_of("crop"), step as u64, i as u64])).collect();
        BatchPlan { images: slots.iter().map(|&t| self.images[t]).collect(), captions, crops }
    }
}

/// A crop rectangle in source pixels: x, y, width, height.
type Rect = (f64, f64, f64, f64);

fn random_crop(rng: &mut Rng, side: usize, min_scale: f64) -> Rect {
    let s = side as f64;
    if min_scale >= 1.0 {
        return (0.0, 0.0, s, s);
    }
    for _ in 0..10 {
        let area = s * s * (min_scale + rng.uniform() * (1.0 - min_scale));
        let log_ratio = CROP_RATIO.0.ln() + rng.uniform() * (CROP_RATIO.1.ln() - CROP_RATIO.0.ln());
        let (w, h) = ((area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt());
        if w <= s && h <= s {
            return (rng.uniform() * (s - w), rng.uniform() * (s - h), w, h);
        }
    }
    (0.0, 0.0, s, s)
}

/// Writes image `pixels` (`side`² HWC u8) cropped to `rect`, resized
/// bilinearly to `size`², mirrored left–right if `flip`, normalised, as
/// `(size/patch)²` patches of `3·patch²` values (channel-major, then rows,
/// then columns: a conv kernel's order), into `out` (`3·size²` values).
fn write_patches(pixels: &[u8], side: usize, rect: Rect, flip: bool, size: usize, patch: usize, out: &mut [f32]) {
    let (x0, y0, w, h) = rect;
    let identity = side == size && w == side as f64 && h == side as f64 && x0 == 0.0 && y0 == 0.0;
    // Where each output row and column samples the source: the two
    // neighbours and the weight of the second (bilinear), computed once per
    // row and column rather than per value.
    let taps = |origin: f64, extent: f64| -> Vec<(usize, usize, f32)> {
        (0..size)
            .map(|o| {
                if identity {
                    return (o, o, 0.0);
                }
                let s = (origin + (o as f64 + 0.5) * extent / size as f64 - 0.5).clamp(0.0, (side - 1) as f64);
                let i = s.floor() as usize;
                (i, (i + 1).min(side - 1), (s - i as f64) as f32)
            })
            .collect()
    };
    let (rows, mut cols) = (taps(y0, h), taps(x0, w));
    if flip {
        cols.reverse();
    }
    let grid = size / patch;
    for (oy, &(y, y1, fy)) in rows.iter().enumerate() {
        let (py, iy) = (oy / patch, oy % patch);
        for (ox, &(x, x1, fx)) in cols.iter().enumerate() {
            let (px, ix) = (ox / patch, ox % patch);
            let base = (py * grid + px) * 3 * patch * patch + iy * patch + ix;
            for c in 0..3 {
                let p = |yy: usize, xx: usize| f32::from(pixels[(yy * side + xx) * 3 + c]);
                let v = if identity {
                    p(y, x)
                } else {
                    (p(y, x) * (1.0 - fx) + p(y, x1) * fx) * (1.0 - fy) + (p(y1, x) * (1.0 - fx) + p(y1, x1) * fx) * fy
                };
                // Patch layout: channel-major, then rows, then columns.
                out[base + c * patch * patch] = (v / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
}

/// Patches `[images × patches, 3·patch²]` (flattened) of training images,
/// each with its random resized crop (and flip, if on).
pub fn train_patches(images: &ImageSet, plan: &mut BatchPlan, augment: &Augment, size: usize, patch: usize) -> anyhow::Result<Vec<f32>> {
    let pixels = images.fetch(&plan.images)?;
    // Images in parallel (each has its own random stream, so the result does
    // not depend on the split); ≈ 3 % of a vit-micro CPU step on one thread.
    let mut out = vec![0f32; plan.images.len() * size * size * 3];
    let sources = pixels.par_chunks(images.image_bytes());
    out.par_chunks_mut(size * size * 3).zip(sources.zip(plan.crops.par_iter_mut())).for_each(|(out, (source, rng))| {
        let rect = random_crop(rng, images.side, augment.crop_scale);
        // Drawn after the crop, and only when on, so that turning flips
        // on leaves every crop as it was.
        let flip = augment.flip && rng.uniform() < 0.5;
        write_patches(source, images.side, rect, flip, size, patch, out)
    });
    Ok(out)
}

/// Patches of whole images, resized (evaluation).
pub fn eval_patches(images: &ImageSet, indices: &[usize], size: usize, patch: usize) -> anyhow::Result<Vec<f32>> {
    let pixels = images.fetch(indices)?;
    let mut out = vec![0f32; indices.len() * size * size * 3];
    let full = (0.0, 0.0, images.side as f64, images.side as f64);
    for (out, source) in out.chunks_exact_mut(size * size * 3).zip(pixels.chunks_exact(images.image_bytes())) {
        write_patches(source, images.side, full, false, size, patch, out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_a_pure_function_of_seed_and_step() {
        let pairs = Pairs { images: (0..10).collect(), captions: (0..10).map(|i| vec![2 * i, 2 * i + 1]).collect() };
        let a = pairs.batch(5, 7, 4);
        let b = pairs.batch(5, 7, 4);
        assert_eq!((a.images, a.captions), (b.images, b.captions));
        // One epoch (2 steps of 4 of 10 images) draws no image twice.
        let mut seen: Vec<usize> = (0..2).flat_map(|s| pairs.batch(5, s, 4).images).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 8);
        assert_ne!(pairs.batch(5, 0, 4).images, pairs.batch(6, 0, 4).images);
    }

    #[test]
    fn crop_scale_one_keeps_the_whole_image_and_flip_mirrors_it() {
        let pixels: Vec<u8> = (0..16u8).flat_map(|i| [i * 10, i * 10 + 1, i * 10 + 2]).collect();
        let images = ImageSet::in_memory(1, 4, pixels.clone());
        let pairs = Pairs { images: vec![0; 8], captions: vec![vec![0]; 8] };
        let whole = eval_patches(&images, &[0; 8], 4, 2).unwrap();
        let keep = Augment { crop_scale: 1.0, flip: false };
        assert_eq!(train_patches(&images, &mut pairs.batch(0, 0, 8), &keep, 4, 2).unwrap(), whole);

        // Flipped images are the mirrored whole image; with 8 draws at ½
        // (fixed seed) some are flipped and some are not.
        let flipped = train_patches(&images, &mut pairs.batch(0, 0, 8), &Augment { flip: true, ..keep }, 4, 2).unwrap();
        let one = |out: &[f32], i: usize| out[i * 48..(i + 1) * 48].to_vec();
        let source = &pixels;
        let mirrored: Vec<u8> = (0..4).flat_map(|y| (0..4).rev().flat_map(move |x| source[(y * 4 + x) * 3..][..3].to_vec())).collect();
        let mirror = eval_patches(&ImageSet::in_memory(1, 4, mirrored), &[0], 4, 2).unwrap();
        let n_flipped = (0..8).filter(|&i| one(&flipped, i) == mirror).count();
        assert!((0..8).all(|i| one(&flipped, i) == mirror || one(&flipped, i) == one(&whole, i)));
        assert!((1..8).contains(&n_flipped), "{n_flipped} of 8 flipped");

        // Turning flips on leaves the crops as they were: the images not
        // flipped are those of the batch without flips.
        let crop = Augment::default();
        let plain = train_patches(&images, &mut pairs.batch(3, 1, 8), &crop, 4, 2).unwrap();
        let both = train_patches(&images, &mut pairs.batch(3, 1, 8), &Augment { flip: true, ..crop }, 4, 2).unwrap();
        assert!((0..8).any(|i| one(&plain, i) == one(&both, i)));
        assert!((0..8).any(|i| one(&plain, i) != one(&both, i)));
    }

    #[test]
    fn patches_are_channel_major_like_a_conv_kernel() {
        // A 4×4 image where pixel (y, x) has value 10y + x in every channel.
        let pixels: Vec<u8> = (0..4).flat_map(|y| (0..4).flat_map(move |x| [10 * y + x; 3])).collect();
        let images = ImageSet::in_memory(1, 4, pixels.clone());
        let out = eval_patches(&images, &[0], 4, 2).unwrap();
        assert_eq!(out.len(), 4 * 12);
        let raw = |v: f32, c: usize| ((v * STD[c] + MEAN[c]) * 255.0).round();
        // Second patch (py 0, px 1), channel 0: pixels (0,2) (0,3) (1,2) (1,3).
        let second: Vec<f32> = out[12..16].iter().map(|&v| raw(v, 0)).collect();
        assert_eq!(second, vec![2.0, 3.0, 12.0, 13.0]);
    }
}
