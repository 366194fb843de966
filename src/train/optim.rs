//! AdamW as PyTorch computes it (`torch.optim.AdamW`, not burn's defaults):
//! explicit β = (β₁, β₂), ε added to √v̂, decoupled weight decay `p ← p −
//! lr·λ·p` applied to matrices only — never to biases, LayerNorm gains and
//! shifts, or the logit scale and bias (OpenCLIP's rule: parameters with
//! fewer than two dimensions) — and optional clipping of the global gradient
//! norm. Moments are kept by parameter path, so checkpoints name them.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::model::fused;
use crate::model::named::{HostTensor, to_host};
use ablate_kernels::AdamWStep;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// CLIP's: β = (0.9, 0.98), ε = 1e-6, λ = 0.2.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.2 }
    }
}

/// First and second moments of one parameter, flattened.
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

pub struct AdamW<B: AutodiffBackend> {
    config: AdamWConfig,
    /// Updates applied so far (the bias corrections' `t`).
    pub steps: u64,
    moments: HashMap<String, Moments<B::InnerBackend>>,
}

/// A parameter's value bounds after each step, by path (the logit scale's [0, ln 100]).
pub type Clamp<'a> = &'a dyn Fn(&str) -> Option<(f64, f64)>;

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, steps: 0, moments: HashMap::new() }
    }

    /// The global L2 norm of every parameter's gradient.
    pub fn grad_norm<M: AutodiffModule<B>>(model: &M, grads: &B::Gradients) -> f64 {
        struct Norm<'a, B: AutodiffBackend> {
            grads: &'a B::Gradients,
            total: Option<Tensor<B::InnerBackend, 1>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = param.val().grad(self.grads) {
                    let sq = g.powi_scalar(2).sum();
                    self.total = Some(match self.total.take() {
                        Some(t) => t + sq,
                        None => sq,
                    });
                }
            }
        }
        let mut norm = Norm::<B> { grads, total: None };
        model.visit(&mut norm);
        norm.total.map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt())
    }

    /// One update with learning rate `lr`; gradients are scaled by `grad_scale`
    /// first (the clipping factor, 1 without clipping).
    pub fn step<M: AutodiffModule<B>>(&mut self, model: M, grads: &B::Gradients, lr: f64, grad_scale: f64, clamp: Clamp<'_>) -> M {
        self.steps += 1;
        let mut mapper = Update { optim: self, grads, lr, grad_scale, clamp, path: Vec::new() };
        model.map(&mut mapper)
    }

    /// The moments by parameter path (for checkpoints): `(m, v)`.
    pub fn export(&self) -> Vec<(String, HostTensor, HostTensor)> {
        let mut out: Vec<_> = self.moments.iter().map(|(p, mo)| (p.clone(), to_host(mo.m.clone()), to_host(mo.v.clone()))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores the moments and the step count saved by [`AdamW::export`].
    pub fn import(&mut self, steps: u64, moments: Vec<(String, HostTensor, HostTensor)>, device: &B::Device) {
        self.steps = steps;
        let dev = |h: HostTensor| Tensor::from_data(TensorData::new(h.values, h.shape), device);
        self.moments = moments.into_iter().map(|(p, m, v)| (p, Moments { m: dev(m), v: dev(v) })).collect();
    }
}

struct Update<'a, B: AutodiffBackend> {
    optim: &'a mut AdamW<B>,
    grads: &'a B::Gradients,
    lr: f64,
    grad_scale: f64,
    clamp: Clamp<'a>,
    path: Vec<String>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = tensor.grad(self.grads) else { return Param::from_mapped_value(id, tensor, mapper) };
        let path = self.path.join(".");
        let c = self.optim.config;
        let shape = tensor.dims();
        let n = shape.iter().product::<usize>();
        let mut p: Tensor<B::InnerBackend, 1> = tensor.inner().reshape([n]);
        let mut g = grad.reshape([n]);
        let moments = self.optim.moments.remove(&path).unwrap_or_else(|| Moments { m: g.zeros_like(), v: g.zeros_like() });
        let decays = D >= 2 && c.weight_decay != 0.0;
        let t = self.optim.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        let (m, v);
        if fused::kernels_apply::<B::InnerBackend>() {
            // The same formula in one pass (CPU); scalars rounded as burn's ops round them.
            let step = AdamWStep {
                grad_scale: self.grad_scale as f32,
                decay: if decays { (1.0 - self.lr * c.weight_decay) as f32 } else { 1.0 },
                beta1: c.beta1 as f32,
                one_minus_beta1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                sqrt_bias2: bias2.sqrt() as f32,
                eps: c.eps as f32,
                step_size: (self.lr / bias1) as f32,
            };
            (p, m, v) = fused::adamw(p, g, moments.m, moments.v, &step);
        } else {
            if self.grad_scale != 1.0 {
                g = g * self.grad_scale;
            }
            if decays {
                p = p * (1.0 - self.lr * c.weight_decay);
            }
            m = moments.m * c.beta1 + g.clone() * (1.0 - c.beta1);
            v = moments.v * c.beta2 + g.powi_scalar(2) * (1.0 - c.beta2);
            let denom = v.clone().sqrt() / bias2.sqrt() + c.eps;
            p = p - m.clone() / denom * (self.lr / bias1);
        }
        if let Some((lo, hi)) = (self.clamp)(&path) {
            p = p.clamp(lo, hi);
        }
        self.optim.moments.insert(path, Moments { m, v });
        let updated = Tensor::<B, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}
