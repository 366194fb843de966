//! Fused CPU kernels for the pre-norm transformer block that both of ablate's
//! towers use, forward and backward, on plain `f32` slices.
//!
//! Why this crate exists: run as separate burn operations, one block's
//! training step is ~35 small element-wise, reduction and layout ops plus
//! per-head batched matmuls, and on a CPU those (not the matmuls) take most of
//! the time (docs/BENCHMARKS.md). Here a block is a handful of large matmuls
//! (the `gemm` crate, the one burn's Flex backend uses) with everything between
//! them done in one pass each: LayerNorm with its statistics, bias + exact GELU,
//! attention per image without head permutes. The backward pass is written out
//! by hand against the saved activations.
//!
//! The optimizer's update is here too ([`adamw`]): one pass per parameter
//! instead of a dozen element-wise tensor ops; and, forward only, the
//! post-norm layer of the frozen BERT sentence encoders ([`post_norm_layer`]),
//! over packed sequences of different lengths.
//!
//! It knows nothing of burn: `ablate::model::fused` adapts it to burn's
//! autodiff graph, and tests there compare it with the decomposed burn block.
//! A separate crate so that the dev profile compiles it optimised, like the
//! other dependencies (the test suite trains models).

#[macro_use]
mod simd;
mod adamw;
mod attention;
mod block;
mod buffers;
mod encoder;
mod layer_norm;
mod math;
mod matmul;
mod reduce;

pub use adamw::{AdamWStep, adamw};
pub use block::{Block, BlockActivations, BlockGrads, BlockShape, BlockWeights, Linear, Norm, PARAMETERS, backward, forward};
pub use encoder::{DecoderLayer, PostNormLayer, decoder_layer, layer_norm_rows, post_norm_layer, rms_norm_rows};
pub use layer_norm::{LayerNormActivations, layer_norm, layer_norm_backward};
pub use matmul::matmul_row_major;
