//! Decoding and resizing images to the square RGB tensor layout.

use std::path::Path;

use anyhow::Context as _;
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageReader};

/// Decodes an image file (PNG or JPEG, sniffed from the content), centre-crops
/// it to a square and resizes it to `res`×`res` RGB, row-major HWC.
pub(super) fn load_rgb(path: &Path, res: u32) -> anyhow::Result<Vec<u8>> {
    let reader = ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let decoded = reader.decode().with_context(|| format!("cannot decode image {}", path.display()))?;
    Ok(square_rgb(decoded, res))
}

/// Decodes an image held in memory (PNG, JPEG or WebP, sniffed from the
/// content) to `res`×`res` RGB, as [`load_rgb`] does for a file.
pub(super) fn decode_rgb(bytes: &[u8], res: u32) -> anyhow::Result<Vec<u8>> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().context("cannot read image")?;
    Ok(square_rgb(reader.decode().context("cannot decode image")?, res))
}

/// Centre crop to a square, then a triangle (bilinear) filter resize; the
/// filter widens with the scale factor, so large downscales are not aliased.
///
/// Uses the non-generic `DynamicImage` methods on purpose: they are compiled
/// inside the `image` crate (optimised even in dev builds), whereas generic
/// `imageops` calls would be instantiated, unoptimised, in this crate.
pub(super) fn square_rgb(img: DynamicImage, res: u32) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    let side = w.min(h);
    let mut img = if w == h { img } else { img.crop_imm((w - side) / 2, (h - side) / 2, side, side) };
    if side != res {
        img = img.resize_exact(res, res, FilterType::Triangle);
    }
    img.into_rgb8().into_raw()
}

/// A `w`×`h` grayscale image resized (bilinear) to `res`×`res` RGB.
pub(super) fn gray_to_rgb(gray: &[u8], w: u32, h: u32, res: u32) -> Vec<u8> {
    let img = GrayImage::from_raw(w, h, gray.to_vec()).expect("caller passes w*h bytes");
    square_rgb(DynamicImage::ImageLuma8(img), res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_and_resizes() {
        // 40×20 image: left half red, right half blue; the centre crop is 20×20
        // covering columns 10..30, half red half blue.
        let img = image::RgbImage::from_fn(40, 20, |x, _| if x < 20 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let out = square_rgb(DynamicImage::ImageRgb8(img), 8);
        assert_eq!(out.len(), 8 * 8 * 3);
        assert_eq!(&out[0..3], &[255, 0, 0]);
        assert_eq!(&out[(8 - 1) * 3..8 * 3], &[0, 0, 255]);
        let gray = gray_to_rgb(&[7; 28 * 28], 28, 28, 32);
        assert_eq!(gray.len(), 32 * 32 * 3);
        assert!(gray.iter().all(|&p| p == 7));
    }
}
