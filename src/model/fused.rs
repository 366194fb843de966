//! The fused CPU kernels (crate `ablate-kernels`) inside burn.
//!
//! On the Flex backend a [`Block`] runs as one operation: forward through
//! `ablate_kernels::forward`, and under `Autodiff<Flex>` one graph node whose
//! backward is `ablate_kernels::backward` over the activations it saved. The
//! towers' final LayerNorms run the same way ([`layer_norm`]). On every other
//! backend (CUDA above all) they stay burn's decomposed ops, which a GPU
//! fuses and schedules well on its own.
//!
//! The choice is made by comparing the backend's `TypeId`, not by a trait
//! bound, so the model code stays generic over `B: Backend` and no bound
//! spreads through every function that holds a model.

use super::transformer::{Block, LAYER_NORM_EPS};
use ablate_kernels as kernels;
use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorMetadata, TensorPrimitive};
use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused block off (or back on) for this process: benchmarks
/// measure what it buys, tests compare it with the decomposed block.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

const PARAMS: usize = kernels::PARAMETERS;

/// `block.forward(x)` through the fused kernels, or `Err(x)` back where this
/// backend has none (or the block lacks a bias, which the kernels assume).
pub(super) fn forward<B: Backend>(
    block: &Block<B>,
    x: Tensor<B, 2>,
    batch: usize,
    tokens: usize,
    causal: bool,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let Some(graph) = Graph::of::<B>() else { return Err(x) };
    let Some(params) = parameters(block) else { return Err(x) };
    let [_, width] = x.dims();
    let shape = kernels::BlockShape {
        sequences: batch,
        tokens,
        width,
        heads: block.attn.heads,
        hidden: block.mlp.fc.weight.dims()[1],
        causal,
        eps: LAYER_NORM_EPS as f32,
    };
    if !shape.supported() {
        return Err(x);
    }
    let x = x.into_primitive().tensor();
    let y: B::FloatTensorPrimitive = match graph {
        Graph::None => cast(flex_forward(&shape, cast(x), params.map(cast))),
        Graph::Autodiff => cast(autodiff_forward(shape, cast(x), params.map(cast))),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// Whether `B` is Flex (`None`: no graph to record) or `Autodiff<Flex>`;
/// `None` for other backends, or while the kernels are turned off.
enum Graph {
    None,
    Autodiff,
}

impl Graph {
    fn of<B: Backend>() -> Option<Graph> {
        if !ENABLED.load(Ordering::Relaxed) {
            None
        } else if TypeId::of::<B>() == TypeId::of::<Flex>() {
            Some(Graph::None)
        } else if TypeId::of::<B>() == TypeId::of::<Autodiff<Flex>>() {
            Some(Graph::Autodiff)
        } else {
            None
        }
    }
}

/// The block's parameters in `kernels::Block::into_array` order.
fn parameters<B: Backend>(b: &Block<B>) -> Option<[B::FloatTensorPrimitive; PARAMS]> {
    fn t<B: Backend, const D: usize>(p: &burn::module::Param<Tensor<B, D>>) -> B::FloatTensorPrimitive {
        p.val().into_primitive().tensor()
    }
    let linear = |l: &burn::nn::Linear<B>| Some((t(&l.weight), t(l.bias.as_ref()?)));
    let norm = |n: &burn::nn::LayerNorm<B>| Some((t(&n.gamma), t(n.beta.as_ref()?)));
    let (g1, b1) = norm(&b.ln_1)?;
    let ((qw, qb), (kw, kb), (vw, vb), (ow, ob)) = (linear(&b.attn.q)?, linear(&b.attn.k)?, linear(&b.attn.v)?, linear(&b.attn.out)?);
    let (g2, b2) = norm(&b.ln_2)?;
    let ((fw, fb), (pw, pb)) = (linear(&b.mlp.fc)?, linear(&b.mlp.proj)?);
    Some([g1, b1, qw, qb, kw, kb, vw, vb, ow, ob, g2, b2, fw, fb, pw, pb])
}

/// Whether `B` is Flex (no autodiff graph) with the kernels on: then
/// [`adamw`] applies (the optimizer works on the inner, graph-free backend),
/// and the frozen encoders' forward passes run through `ablate_kernels`.
pub fn kernels_apply<B: Backend>() -> bool {
    matches!(Graph::of::<B>(), Some(Graph::None))
}

/// One AdamW update through `ablate_kernels::adamw`, in place where the
/// tensors own their buffers: `(p, m, v)` after the step. Only for a `B`
/// that [`kernels_apply`] to.
pub fn adamw<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    step: &kernels::AdamWStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    assert!(kernels_apply::<B>(), "fused AdamW on a backend other than Flex");
    let flex = |t: Tensor<B, 1>| -> FlexTensor { whole(cast(t.into_primitive().tensor())) };
    let (mut p, g, mut m, mut v) = (flex(p), flex(g), flex(m), flex(v));
    kernels::adamw(p.storage_mut::<f32>(), &values(&g), m.storage_mut::<f32>(), v.storage_mut::<f32>(), step);
    let back = |t: FlexTensor| Tensor::from_primitive(TensorPrimitive::Float(cast(t)));
    (back(p), back(m), back(v))
}

/// `t` if its buffer holds exactly its elements in order, else a copy that
/// does (so `storage_mut` is the tensor, not a larger buffer it views).
fn whole(t: FlexTensor) -> FlexTensor {
    let exact = t.layout().contiguous_offsets().is_some_and(|(start, end)| start == 0 && end * 4 == t.bytes().len());
    if exact { t } else { t.to_contiguous() }
}

/// A value of a type the caller has proven equal by `TypeId`.
fn cast<T: 'static, U: 'static>(value: T) -> U {
    *(Box::new(value) as Box<dyn Any>).downcast::<U>().expect("types compared equal by TypeId")
}

fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("a contiguous f32 tensor").to_vec()),
    }
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn with_weights<R>(params: &[FlexTensor; PARAMS], f: impl FnOnce(&kernels::BlockWeights) -> R) -> R {
    let values: Vec<Cow<[f32]>> = params.iter().map(values).collect();
    let slices: [&[f32]; PARAMS] = std::array::from_fn(|i| &*values[i]);
    f(&kernels::Block::from_array(slices))
}

fn flex_forward(shape: &kernels::BlockShape, x: FlexTensor, params: [FlexTensor; PARAMS]) -> FlexTensor {
    let out_shape = x.shape();
    let (y, _) = with_weights(&params, |w| kernels::forward(shape, w, &values(&x)));
    tensor(y, out_shape)
}

/// What the block's graph node keeps for its backward pass.
#[derive(Debug)]
struct Saved {
    shape: kernels::BlockShape,
    params: [FlexTensor; PARAMS],
    activations: kernels::BlockActivations,
}

#[derive(Debug)]
struct FusedBlockBackward;

impl Backward<Flex, { PARAMS + 1 }> for FusedBlockBackward {
    type State = Arc<Saved>;

    fn backward(self, ops: Ops<Self::State, { PARAMS + 1 }>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let saved = &ops.state;
        let g = with_weights(&saved.params, |w| kernels::backward(&saved.shape, w, &saved.activations, &values(&dy)));
        let [parent_x, parent_params @ ..] = &ops.parents;
        if let Some(node) = parent_x {
            grads.register::<Flex>(node.id, tensor(g.x, dy.shape()));
        }
        for ((node, grad), param) in parent_params.iter().zip(g.params.into_array()).zip(&saved.params) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(grad, param.shape()));
            }
        }
    }
}

fn autodiff_forward(
    shape: kernels::BlockShape,
    x: FloatTensor<Autodiff<Flex>>,
    params: [FloatTensor<Autodiff<Flex>>; PARAMS],
) -> FloatTensor<Autodiff<Flex>> {
    let nodes: [_; PARAMS + 1] = std::array::from_fn(|i| if i == 0 { x.node.clone() } else { params[i - 1].node.clone() });
    let weights = params.map(|p| p.primitive);
    let out_shape = x.primitive.shape();
    let (y, activations) = with_weights(&weights, |w| kernels::forward(&shape, w, &values(&x.primitive)));
    let y = tensor(y, out_shape);
    match FusedBlockBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(Arc::new(Saved { shape, params: weights, activations }), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// `ln.forward(x)` for `[rows, width]` `x`, through the fused kernel on Flex
/// (one graph node under autodiff, instead of burn's nine or so).
pub fn layer_norm<B: Backend>(ln: &burn::nn::LayerNorm<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let (Some(graph), Some(beta)) = (Graph::of::<B>(), &ln.beta) else { return ln.forward(x) };
    let (gamma, beta) = (ln.gamma.val().into_primitive().tensor(), beta.val().into_primitive().tensor());
    let x = x.into_primitive().tensor();
    let y: B::FloatTensorPrimitive = match graph {
        Graph::None => {
            let x: FlexTensor = cast(x);
            let (gamma, beta): (FlexTensor, FlexTensor) = (cast(gamma), cast(beta));
            let (y, _) = kernels::layer_norm(&values(&x), &values(&gamma), &values(&beta), LAYER_NORM_EPS as f32);
            cast(tensor(y, x.shape()))
        }
        Graph::Autodiff => cast(autodiff_layer_norm(cast(x), cast(gamma), cast(beta))),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

#[derive(Debug)]
struct SavedNorm {
    gamma: FlexTensor,
    activations: kernels::LayerNormActivations,
}

#[derive(Debug)]
struct FusedLayerNormBackward;

impl Backward<Flex, 3> for FusedLayerNormBackward {
    type State = Arc<SavedNorm>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let saved = &ops.state;
        let (dx, dgamma, dbeta) = kernels::layer_norm_backward(&saved.activations, &values(&saved.gamma), &values(&dy));
        let shapes = [dy.shape(), saved.gamma.shape(), saved.gamma.shape()];
        for ((node, grad), shape) in ops.parents.iter().zip([dx, dgamma, dbeta]).zip(shapes) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(grad, shape));
            }
        }
    }
}

fn autodiff_layer_norm(
    x: FloatTensor<Autodiff<Flex>>,
    gamma: FloatTensor<Autodiff<Flex>>,
    beta: FloatTensor<Autodiff<Flex>>,
) -> FloatTensor<Autodiff<Flex>> {
    let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    let (y, activations) =
        kernels::layer_norm(&values(&x.primitive), &values(&gamma.primitive), &values(&beta.primitive), LAYER_NORM_EPS as f32);
    let y = tensor(y, x.primitive.shape());
    match FusedLayerNormBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(Arc::new(SavedNorm { gamma: gamma.primitive, activations }), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}
