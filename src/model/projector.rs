//! LIFT's projection head from the ViT width into the text embedding space:
//! Linear(width → D) → GELU → Linear(D → D), or a single Linear with
//! `projector_layers = 1`.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use crate::precision::Precision;

#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Option<Linear<B>>,
}

impl<B: Backend> Projector<B> {
    pub fn new(width: usize, dim: usize, layers: usize, device: &B::Device) -> Self {
        Projector { fc1: LinearConfig::new(width, dim).init(device), fc2: (layers > 1).then(|| LinearConfig::new(dim, dim).init(device)) }
    }

    /// The head's output in f32 (the loss's input) whatever the precision.
    pub fn forward(&self, x: Tensor<B, 2>, precision: Precision) -> Tensor<B, 2> {
        let h = precision.linear(&self.fc1, x);
        precision.widen(match &self.fc2 {
            Some(fc2) => precision.linear(fc2, gelu(h)),
            None => h,
        })
    }
}
