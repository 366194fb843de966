//! The three losses, value and gradients, against PyTorch float64 references
//! (tests/fixtures/loss/losses.json, made by scripts/make-loss-references.py):
//! relative error at most 1e-5 in f32.

use ablate::loss::{Learned, Loss};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use serde_json::Value;

type B = Autodiff<Flex>;

fn matrix(v: &Value) -> (Vec<f32>, [usize; 2]) {
    let rows = v.as_array().unwrap();
    let data: Vec<f32> = rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect();
    let shape = [rows.len(), data.len() / rows.len()];
    (data, shape)
}

fn flat(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect()
}

/// Largest error relative to the reference's largest magnitude.
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let err = got.iter().zip(want).fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs())) / scale;
    assert!(err <= 1e-5, "{what}: relative error {err:e} (got {got:?}, want {want:?})");
}

fn scalar(t: Tensor<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, 1>) -> f32 {
    t.into_data().to_vec::<f32>().unwrap()[0]
}

#[test]
fn losses_and_gradients_match_pytorch() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loss/losses.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let device = Default::default();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for name in Loss::NAMES {
        assert!(cases.iter().any(|c| c["loss"] == *name), "no PyTorch reference for the registered loss {name}");
    }
    for case in cases {
        let name = case["loss"].as_str().unwrap();
        let loss = Loss::from_name(name).unwrap();
        let (xs, shape) = matrix(&case["x"]);
        let (ys, _) = matrix(&case["y"]);
        let x = Tensor::<B, 2>::from_data(TensorData::new(xs, shape), &device).require_grad();
        let y = Tensor::<B, 2>::from_data(TensorData::new(ys, shape), &device).require_grad();
        let t = Tensor::<B, 1>::from_data(TensorData::new(vec![case["t"].as_f64().unwrap() as f32], [1]), &device).require_grad();
        let b = Tensor::<B, 1>::from_data(TensorData::new(vec![case["b"].as_f64().unwrap() as f32], [1]), &device).require_grad();
        let learnable = loss.learnable();
        if let Some(init) = learnable.log_scale {
            assert!((init - case["t"].as_f64().unwrap()).abs() < 1e-12, "{name}: initial logit scale");
        }
        let learned = Learned { log_scale: learnable.log_scale.map(|_| t.clone()), bias: learnable.bias.map(|_| b.clone()) };
        let value = loss.compute(x.clone(), y.clone(), learned);
        let what = format!("{name} {shape:?}");
        let got = value.clone().into_data().to_vec::<f32>().unwrap();
        assert_close(&format!("{what} value"), &got, &[case["value"].as_f64().unwrap()]);
        let grads = value.backward();
        assert_close(&format!("{what} d/dx"), &x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(), &flat(&case["grad_x"]));
        assert_close(&format!("{what} d/dy"), &y.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(), &flat(&case["grad_y"]));
        if let Some(want) = case.get("grad_t") {
            assert_close(&format!("{what} d/dt"), &[scalar(t.grad(&grads).unwrap())], &[want.as_f64().unwrap()]);
        }
        if let Some(want) = case.get("grad_b") {
            assert_close(&format!("{what} d/db"), &[scalar(b.grad(&grads).unwrap())], &[want.as_f64().unwrap()]);
        }
    }
}
