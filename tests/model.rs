//! ablate's ViT + projection head against an independent implementation:
//! weights of a small PyTorch model (scripts/make-model-references.py) loaded
//! through the export names must give PyTorch's embeddings. This checks the
//! architecture (pre-norm blocks, attention scaling, exact GELU, LayerNorm ε,
//! mean pooling), the patch layout (a conv kernel's channel-major order) and
//! the PyTorch-layout loading path the `evaluate` kind uses.

use std::collections::HashMap;

use ablate::device::Cpu;
use ablate::images::ImageSet;
use ablate::model::named::{HostTensor, Layout, load};
use ablate::model::{ClipConfig, ClipModel};
use ablate::precision::Precision;
use ablate::tensor_file::TensorFile;
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
    let images = ImageSet::in_memory(n, side, images.data().to_vec());
    let vit = &config.vit;
    let pixels = ablate::train::data::eval_patches(&images, &(0..n).collect::<Vec<_>>(), vit.image_size, vit.patch_size).unwrap();
    let x = Tensor::<Cpu, 2>::from_data(TensorData::new(pixels, [n * vit.patches(), vit.patch_dim()]), &device);
    let ours: Vec<f32> = model.encode_images(x, n, Precision::F32).into_data().convert::<f32>().into_vec().unwrap();
    let (shape, expected) = file.f32("expected.embeddings").unwrap();
    assert_eq!(shape, vec![n, config.embed_dim]);
    let max_diff = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = expected.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(max_diff <= 1e-4 * scale.max(1.0), "max abs difference {max_diff} (values up to {scale})");
}

/// The fused CPU block (`ablate-kernels`, used on Flex) against the same block
/// as separate burn ops: outputs and the gradients of the input and all 16
/// parameters, for the image tower's bidirectional and the text tower's
/// causal attention.
#[test]
fn fused_block_matches_burn_ops_in_value_and_gradient() {
    use ablate::model::transformer::Block;
    use burn::module::Param;
    use burn::tensor::Distribution;
    type Train = burn::backend::Autodiff<Cpu>;

    fn param_grads(b: &Block<Train>, g: &<Train as burn::tensor::backend::AutodiffBackend>::Gradients) -> Vec<Vec<f32>> {
        let v = |p: &Param<Tensor<Train, 1>>| host(p.grad(g).unwrap().unsqueeze());
        let w = |p: &Param<Tensor<Train, 2>>| host(p.grad(g).unwrap());
        let lin = |l: &burn::nn::Linear<Train>| [w(&l.weight), v(l.bias.as_ref().unwrap())];
        let norm = |n: &burn::nn::LayerNorm<Train>| [v(&n.gamma), v(n.beta.as_ref().unwrap())];
        [norm(&b.ln_1), lin(&b.attn.q), lin(&b.attn.k), lin(&b.attn.v), lin(&b.attn.out), norm(&b.ln_2), lin(&b.mlp.fc), lin(&b.mlp.proj)]
            .into_iter()
            .flatten()
            .collect()
    }
    fn host(t: Tensor<burn::backend::Flex, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }
    fn close(what: &str, ours: &[f32], reference: &[f32]) {
        // The floor covers k's bias, whose gradient is exactly zero (softmax
        // ignores a constant added to every score) and so only rounding noise.
        let scale = reference.iter().fold(1e-2f32, |m, x| m.max(x.abs()));
        let worst = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale, "{what}: off by {worst} (scale {scale})");
    }

    let device = Default::default();
    for causal in [false, true] {
        let (batch, tokens, width) = (3, 7, 16);
        let mut block = Block::<Train>::new(width, 4, 4, &device);
        let random = |n| Param::from_tensor(Tensor::<Train, 1>::random([n], Distribution::Normal(0.5, 0.5), &device));
        block.ln_1.gamma = random(width);
        block.ln_1.beta = Some(random(width));
        block.ln_2.gamma = random(width);
        block.ln_2.beta = Some(random(width));
        let x = Tensor::<Train, 2>::random([batch * tokens, width], Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<Train, 2>::random([batch * tokens, width], Distribution::Normal(0.0, 1.0), &device);

        let run = |fused: bool| {
            let x = x.clone().require_grad();
            let y = if fused {
                block.forward(x.clone(), batch, tokens, causal, Precision::F32)
            } else {
                block.forward_decomposed(x.clone(), batch, tokens, causal, Precision::F32)
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            let mut out = vec![host(y.inner()), host(x.grad(&grads).unwrap())];
            out.extend(param_grads(&block, &grads));
            out
        };
        let (fused, reference) = (run(true), run(false));
        for (i, (a, b)) in fused.iter().zip(&reference).enumerate() {
            close(&format!("causal={causal}, tensor {i} (0: output, 1: input grad, then parameters)"), a, b);
        }
    }
}

/// The fused LayerNorm (the towers' final norm on Flex) against burn's, in
/// value and in the gradients of its input, gain and bias.
#[test]
fn fused_layer_norm_matches_burn_in_value_and_gradient() {
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::Distribution;
    type Train = burn::backend::Autodiff<Cpu>;
    let device = Default::default();
    let mut ln = LayerNormConfig::new(24).with_epsilon(ablate::model::transformer::LAYER_NORM_EPS).init::<Train>(&device);
    ln.gamma = Param::from_tensor(Tensor::random([24], Distribution::Normal(1.0, 0.5), &device));
    ln.beta = Some(Param::from_tensor(Tensor::random([24], Distribution::Normal(0.0, 0.5), &device)));
    let x = Tensor::<Train, 2>::random([10, 24], Distribution::Normal(0.3, 2.0), &device);
    let r = Tensor::<Train, 2>::random([10, 24], Distribution::Normal(0.0, 1.0), &device);
    let run = |fused: bool| {
        let x = x.clone().require_grad();
        let y = if fused { ablate::model::fused::layer_norm(&ln, x.clone()) } else { ln.forward(x.clone()) };
        let g = (y.clone() * r.clone()).sum().backward();
        let host = |t: Tensor<Cpu, 2>| t.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        vec![
            host(y.inner()),
            host(x.grad(&g).unwrap()),
            host(ln.gamma.grad(&g).unwrap().unsqueeze()),
            host(ln.beta.as_ref().unwrap().grad(&g).unwrap().unsqueeze()),
        ]
    };
    for (i, (a, b)) in run(true).iter().zip(&run(false)).enumerate() {
        let worst = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = b.iter().fold(1e-2f32, |m, x| m.max(x.abs()));
        assert!(worst <= 1e-4 * scale, "tensor {i} (output, then gradients of x, gamma, beta): off by {worst}");
    }
}

/// A block under bf16 against the same block in f32: output and gradients
/// agree to bf16's precision but not to f32's (the matmuls did run in
/// bf16), the residual stream stays f32, and the parameters' gradients are
/// f32 (master weights), as under `torch.autocast`.
#[test]
fn bf16_block_matches_f32_to_bf16_precision_with_f32_gradients() {
    use ablate::model::transformer::Block;
    use burn::tensor::{DType, Distribution};
    type Train = burn::backend::Autodiff<Cpu>;
    let device = Default::default();
    for causal in [false, true] {
        let (batch, tokens, width) = (2, 9, 32);
        let block = Block::<Train>::new(width, 4, 4, &device);
        let x = Tensor::<Train, 2>::random([batch * tokens, width], Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<Train, 2>::random([batch * tokens, width], Distribution::Normal(0.0, 1.0), &device);
        let run = |precision: Precision| {
            let x = x.clone().require_grad();
            let y = block.forward(x.clone(), batch, tokens, causal, precision);
            assert_eq!(y.dtype(), DType::F32, "{precision:?}: the residual stream is f32");
            let grads = (y.clone() * r.clone()).sum().backward();
            let weight = block.mlp.fc.weight.grad(&grads).unwrap();
            assert_eq!(weight.dtype(), DType::F32, "{precision:?}: the master weights' gradients are f32");
            let host = |t: Tensor<Cpu, 2>| t.into_data().convert::<f32>().into_vec::<f32>().unwrap();
            [host(y.inner()), host(x.grad(&grads).unwrap()), host(weight)]
        };
        let (full, half) = (run(Precision::F32), run(Precision::Bf16));
        for (i, (a, b)) in half.iter().zip(&full).enumerate() {
            let worst = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = b.iter().fold(1e-2f32, |m, x| m.max(x.abs()));
            assert!(
                worst <= 3e-2 * scale,
                "causal={causal}, tensor {i} (output, input grad, fc weight grad): off by {worst} (scale {scale})"
            );
            assert!(worst > 1e-6 * scale, "causal={causal}, tensor {i}: bf16 gave f32's values to the bit");
        }
    }
}
