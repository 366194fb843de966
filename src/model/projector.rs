//! LIFT's projection head from the ViT width into the text embedding space:
//! Linear(width → D) → GELU → Linear(D → D), or a single Linear with
//! `projector_layers = 1`.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Option<Linear<B>>,
}

impl<B: Backend> Projector<B> {
    pub fn new(width: usize, dim: usize, layers: usize, device: &B::Device) -> Self {
        Projector { fc1: LinearConfig::new(width, dim).init(device), fc2: (layers > 1).then(|| LinearConfig::new(dim, dim).init(device)) }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.fc1.forward(x);
        match &self.fc2 {
            Some(fc2) => fc2.forward(gelu(h)),
            None => h,
        }
    }
}
