//! ablate's AdamW against `torch.optim.AdamW` (β = (0.9, 0.98), ε = 1e-6,
//! decoupled weight decay on matrices only) with `clip_grad_norm_` and a
//! changing learning rate: six steps of a small problem must land where
//! PyTorch does (fixture: scripts/make-optim-references.py, float64; here f32).

use ablate::train::optim::{AdamW, AdamWConfig};
use burn::module::Param;
use burn::prelude::*;
use serde_json::Value;

type B = burn::backend::Autodiff<ablate::device::Cpu>;

#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    w: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
    t: Param<Tensor<B, 1>>,
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

fn flat(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array().map_or_else(|| vec![r.as_f64().unwrap() as f32], |r| r.iter().map(|x| x.as_f64().unwrap() as f32).collect())
        })
        .collect()
}

fn matrix(v: &Value, device: &burn::backend::flex::FlexDevice) -> Tensor<B, 2> {
    let r = rows(v);
    let (n, m) = (r.len(), r[0].len());
    Tensor::from_data(TensorData::new(r.concat(), [n, m]), device)
}

fn vector(v: &Value, device: &burn::backend::flex::FlexDevice) -> Tensor<B, 1> {
    let f = flat(v);
    let n = f.len();
    Tensor::from_data(TensorData::new(f, [n]), device)
}

#[track_caller]
fn assert_close(ours: Tensor<B, 2>, theirs: Vec<f32>, what: &str) {
    let ours: Vec<f32> = ours.into_data().convert::<f32>().into_vec().unwrap();
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{what}: ablate {ours:?}\npytorch {theirs:?}");
    }
}

/// Six steps of the fixture's problem: the final `w`, `b`, `t`.
fn train_fixture(fixture: &Value) -> [Tensor<B, 2>; 3] {
    let device = Default::default();
    let mut model = Tiny::<B> {
        w: Param::from_tensor(matrix(&fixture["init"]["w"], &device)),
        b: Param::from_tensor(vector(&fixture["init"]["b"], &device)),
        t: Param::from_tensor(vector(&fixture["init"]["t"], &device)),
    };
    let (x, y) = (matrix(&fixture["x"], &device), matrix(&fixture["y"], &device));
    let clip = fixture["clip"].as_f64().unwrap();
    let mut optim = AdamW::<B>::new(AdamWConfig::default());
    for (lr, norm) in fixture["lrs"].as_array().unwrap().iter().zip(fixture["grad_norms"].as_array().unwrap()) {
        let pred = (x.clone().matmul(model.w.val()) + model.b.val().unsqueeze::<2>()) * model.t.val().exp().unsqueeze::<2>();
        let loss = (pred - y.clone()).powi_scalar(2).sum();
        let grads = loss.backward();
        let grad_norm = AdamW::grad_norm(&model, &grads);
        let expected = norm.as_f64().unwrap();
        assert!((grad_norm - expected).abs() <= 1e-4 * expected, "gradient norm {grad_norm} vs {expected}");
        let scale = (clip / (grad_norm + 1e-6)).min(1.0);
        model = optim.step(model, &grads, lr.as_f64().unwrap(), scale, &|_| None);
    }
    [model.w.val(), model.b.val().unsqueeze::<2>(), model.t.val().unsqueeze::<2>()]
}

/// One test, not two: it switches the fused kernels off for the process.
#[test]
fn adamw_with_clipping_matches_pytorch_fused_and_decomposed() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/optim/adamw.json")).unwrap();
    let fused = train_fixture(&fixture);
    ablate::model::fused::set_enabled(false);
    let decomposed = train_fixture(&fixture);
    ablate::model::fused::set_enabled(true);
    for (run, [w, b, t]) in [("fused", fused.clone()), ("decomposed", decomposed.clone())] {
        assert_close(w, flat(&fixture["final"]["w"]), &format!("{run}: w (decayed)"));
        assert_close(b, flat(&fixture["final"]["b"]), &format!("{run}: b (not decayed)"));
        assert_close(t, flat(&fixture["final"]["t"]), &format!("{run}: t (not decayed)"));
    }
    // The one-pass update rounds as the element-wise ops do: same bits, so a
    // checkpoint written by one resumes identically under the other.
    let bits = |ts: [Tensor<B, 2>; 3]| {
        ts.map(|t| t.into_data().convert::<f32>().into_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>())
    };
    assert_eq!(bits(fused), bits(decomposed), "fused and decomposed AdamW differ in the last bits");
}
