//! ablate's ViT + projection head against an independent implementation:
//! weights of a small PyTorch model (scripts/make-model-references.py) loaded
//! through the export names must give PyTorch's embeddings. This checks the
//! architecture (pre-norm blocks, attention scaling, exact GELU, LayerNorm ε,
//! mean pooling), the patch layout (a conv kernel's channel-major order) and
//! the PyTorch-layout loading path the `evaluate` kind uses.

use std::collections::HashMap;

use ablate::model::named::{HostTensor, Layout, load};
use ablate::model::{ClipConfig, ClipModel};
use ablate::stages::caption_ingest::artifacts::IngestImages;
use ablate::tensor_file::TensorFile;
use ablate::text::Cpu;
use burn::prelude::*;

#[test]
fn burn_model_reproduces_pytorch_embeddings() {
    let file =
        TensorFile::open(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/model/vit.safetensors"))).unwrap();
    let config: ClipConfig = serde_json::from_str(&file.metadata()["config"]).unwrap();
    let mut weights = HashMap::new();
    for name in file.names() {
        if !name.starts_with("input.") && !name.starts_with("expected.") {
            let (shape, values) = file.f32(&name).unwrap();
            weights.insert(name, HostTensor { shape, values });
        }
    }
    let device = Default::default();
    let model: ClipModel<Cpu> = load(config.init::<Cpu>(&device), Layout::PyTorch, weights).unwrap();

    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/model/vit.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let images = st.tensor("input.images").unwrap();
    let (n, side) = (images.shape()[0], images.shape()[1]);
    let images = IngestImages { n, side, pixels: images.data().to_vec() };
    let vit = &config.vit;
    let pixels = ablate::train::data::eval_patches(&images, &(0..n).collect::<Vec<_>>(), vit.image_size, vit.patch_size);
    let x = Tensor::<Cpu, 2>::from_data(TensorData::new(pixels, [n * vit.patches(), vit.patch_dim()]), &device);
    let ours: Vec<f32> = model.encode_images(x, n).into_data().convert::<f32>().into_vec().unwrap();
    let (shape, expected) = file.f32("expected.embeddings").unwrap();
    assert_eq!(shape, vec![n, config.embed_dim]);
    let max_diff = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = expected.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(max_diff <= 1e-4 * scale.max(1.0), "max abs difference {max_diff} (values up to {scale})");
}
