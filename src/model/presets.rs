//! Named model sizes (`model = "vit-micro"`, `text_model = "text-micro"`).

use serde::{Deserialize, Serialize};

/// A ViT's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VitPreset {
    pub name: String,
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    /// `avg` over patch tokens (LIFT) or the `cls` token.
    pub pooling: String,
}

impl VitPreset {
    pub const NAMES: &'static [&'static str] = &["vit-micro", "vit-tiny", "vit-small", "vit-b16"];

    /// `vit-micro` trains the default study on two CPU cores in minutes;
    /// `vit-tiny`/`vit-small` are DeiT's sizes at 224 px; `vit-b16` is ViT-B/16.
    pub fn named(name: &str, pooling: &str) -> Option<VitPreset> {
        let (image_size, patch_size, width, depth, heads) = match name {
            "vit-micro" => (32, 4, 64, 3, 4),
            "vit-tiny" => (224, 16, 192, 12, 3),
            "vit-small" => (224, 16, 384, 12, 6),
            "vit-b16" => (224, 16, 768, 12, 12),
            _ => return None,
        };
        Some(VitPreset { name: name.to_owned(), image_size, patch_size, width, depth, heads, mlp_ratio: 4, pooling: pooling.to_owned() })
    }

    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    pub fn patch_dim(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    /// Forward FLOPs of one image (multiply-adds × 2): the dense layers and
    /// the two attention matmuls; what the throughput benchmarks divide by.
    pub fn forward_flops(&self) -> f64 {
        let t = (self.patches() + usize::from(self.pooling == "cls")) as f64;
        let w = self.width as f64;
        let per_block = 2.0 * t * w * w * (4.0 + 2.0 * self.mlp_ratio as f64) + 2.0 * 2.0 * t * t * w;
        2.0 * self.patches() as f64 * self.patch_dim() as f64 * w + self.depth as f64 * per_block
    }
}

/// The CLIP text tower's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextPreset {
    pub name: String,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    /// Longest token sequence (with `<sos>`/`<eos>`); longer captions are cut.
    pub context: usize,
}

impl TextPreset {
    pub const NAMES: &'static [&'static str] = &["text-micro", "text-tiny", "text-base"];

    /// `text-base` is CLIP's (width 512, 12 layers, 8 heads, 77 tokens).
    pub fn named(name: &str) -> Option<TextPreset> {
        let (width, depth, heads, context) = match name {
            "text-micro" => (64, 3, 4, 64),
            "text-tiny" => (256, 6, 4, 77),
            "text-base" => (512, 12, 8, 77),
            _ => return None,
        };
        Some(TextPreset { name: name.to_owned(), width, depth, heads, context })
    }
}
