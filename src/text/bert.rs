//! BERT-family encoders (all-MiniLM-L6-v2, BGE-small, E5-small, ...) from a
//! Hugging Face directory: post-LayerNorm transformer, learned absolute
//! positions, exact (erf) GELU, bidirectional attention with a key padding mask.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use serde::Deserialize;

use crate::precision::Precision;

use super::weights::{Linear, SafetensorFiles, expect_shape, tensor1, tensor2};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_pos")]
    pub position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_pos() -> String {
    "absolute".into()
}

struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Over the last dimension of `[tokens, hidden]`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(1);
        let normed = centered / (var + self.eps).sqrt();
        normed * self.gamma.clone().unsqueeze::<2>() + self.beta.clone().unsqueeze::<2>()
    }
}

struct Layer<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    attn_out: Linear<B>,
    attn_norm: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    out_norm: LayerNorm<B>,
}

pub struct BertModel<B: Backend> {
    pub config: BertConfig,
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type0: Tensor<B, 1>,
    emb_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> BertModel<B> {
    /// Loads the weights from `model.safetensors`, with or without the `bert.`
    /// prefix that `BertFor*` checkpoints carry.
    pub fn load(dir: &Path, config: BertConfig, device: &B::Device) -> anyhow::Result<Self> {
        if config.hidden_act != "gelu" {
            bail!("{}: hidden_act '{}' is not supported (only the exact 'gelu')", dir.display(), config.hidden_act);
        }
        if config.position_embedding_type != "absolute" {
            bail!("{}: position_embedding_type '{}' is not supported (only 'absolute')", dir.display(), config.position_embedding_type);
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            bail!(
                "{}: hidden_size {} is not divisible by num_attention_heads {}",
                dir.display(),
                config.hidden_size,
                config.num_attention_heads
            );
        }
        let st = SafetensorFiles::open(dir)?;
        let prefix = if st.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        let get = |name: &str, want: &[usize]| -> anyhow::Result<Vec<f32>> {
            let full = format!("{prefix}{name}");
            let (shape, data) = st.get(&full)?;
            expect_shape(&full, &shape, want).with_context(|| format!("{}", dir.display()))?;
            Ok(data)
        };
        let norm = |name: &str| -> anyhow::Result<LayerNorm<B>> {
            // Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
            let weight = if st.contains(&format!("{prefix}{name}.weight")) { "weight" } else { "gamma" };
            let bias = if weight == "weight" { "bias" } else { "beta" };
            Ok(LayerNorm {
                gamma: tensor1(get(&format!("{name}.{weight}"), &[d])?, device),
                beta: tensor1(get(&format!("{name}.{bias}"), &[d])?, device),
                eps: config.layer_norm_eps,
            })
        };
        let word = tensor2(get("embeddings.word_embeddings.weight", &[config.vocab_size, d])?, [config.vocab_size, d], device);
        let position = tensor2(
            get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, d])?,
            [config.max_position_embeddings, d],
            device,
        );
        let types = get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, d])?;
        // Single-segment input: token type 0 everywhere.
        let token_type0 = tensor1(types[..d].to_vec(), device);
        let emb_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let w = |n: &str, shape: &[usize]| get(&format!("{p}.{n}"), shape);
            let dense = |n: &str, out: usize, inp: usize| -> anyhow::Result<Linear<B>> {
                Ok(Linear::from_torch(out, inp, &w(&format!("{n}.weight"), &[out, inp])?, Some(w(&format!("{n}.bias"), &[out])?), device))
            };
            layers.push(Layer {
                query: dense("attention.self.query", d, d)?,
                key: dense("attention.self.key", d, d)?,
                value: dense("attention.self.value", d, d)?,
                attn_out: dense("attention.output.dense", d, d)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: dense("intermediate.dense", ff, d)?,
                output: dense("output.dense", d, ff)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(BertModel { config, word, position, token_type0, emb_norm, layers })
    }

    /// Final hidden states `[batch, seq, hidden]` for right-padded `ids`
    /// (`lengths[b]` real tokens in row `b`).
    /// Under bf16 the dense layers and attention run in bf16, the residual
    /// stream and the LayerNorms in f32 (`crate::precision`).
    pub fn forward(&self, ids: Tensor<B, 2, Int>, lengths: &[usize], p: Precision) -> anyhow::Result<Tensor<B, 3>> {
        let [batch, seq] = ids.dims();
        if seq > self.config.max_position_embeddings {
            return Err(anyhow!("sequence of {seq} tokens exceeds the model's {} positions", self.config.max_position_embeddings));
        }
        let device = ids.device();
        let (d, heads) = (self.config.hidden_size, self.config.num_attention_heads);
        let hd = d / heads;
        // Activations stay `[batch * seq, hidden]` so that every dense layer is one
        // large matmul (a 3-D input would become `batch` small ones).
        let words = self.word.clone().select(0, ids.reshape([batch * seq])).reshape([batch, seq, d]);
        let pos = self.position.clone().narrow(0, 0, seq).unsqueeze::<3>();
        let emb = (words + pos + self.token_type0.clone().unsqueeze::<3>()).reshape([batch * seq, d]);
        let mut x = self.emb_norm.forward(emb);

        // Key padding mask, true = masked, broadcast over heads and query positions.
        let mask: Vec<bool> = lengths.iter().flat_map(|&len| (0..seq).map(move |j| j >= len)).collect();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [batch, seq]), &device)
            .reshape([batch, 1, 1, seq])
            .expand([batch, heads, seq, seq]);

        for layer in &self.layers {
            let split = |l: &Linear<B>| l.forward(x.clone(), p).reshape([batch, seq, heads, hd]).swap_dims(1, 2);
            let ctx = p.attention(split(&layer.query), split(&layer.key), split(&layer.value), Some(mask.clone()), false);
            let ctx = ctx.swap_dims(1, 2).reshape([batch * seq, d]);
            x = layer.attn_norm.forward(p.widen(layer.attn_out.forward(ctx, p)) + x);
            let h = layer.output.forward(gelu(layer.intermediate.forward(x.clone(), p)), p);
            x = layer.out_norm.forward(p.widen(h) + x);
        }
        Ok(x.reshape([batch, seq, d]))
    }
}
