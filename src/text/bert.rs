//! BERT-family encoders (all-MiniLM-L6-v2, BGE-small, E5-small, ...) from a
//! Hugging Face directory: post-LayerNorm transformer, learned absolute
//! positions, exact (erf) GELU, bidirectional attention with a key padding mask.
//!
//! The weights are kept on the host. On the CPU backend in f32 a batch runs
//! through `ablate_kernels::post_norm_layer` over the packed sequences (no
//! padding computed); elsewhere — a GPU, bf16, or the kernels turned off —
//! through burn's ops on tensors made from the host weights on first use,
//! which stay the reference the kernels are tested against.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow, bail};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use serde::Deserialize;

use crate::precision::Precision;

use super::weights::{Linear, SafetensorFiles, expect_shape, tensor1, tensor2, transpose};
use ablate_kernels::{Norm, PostNormLayer};

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

/// The model's weights on the host: dense weights `[in, out]`, q, k and v as
/// one `[hidden, 3·hidden]` projection.
struct HostWeights {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_norm: Norm<Vec<f32>>,
    layers: Vec<PostNormLayer<Vec<f32>>>,
}

struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    fn new(n: &Norm<Vec<f32>>, eps: f64, device: &B::Device) -> Self {
        LayerNorm { gamma: tensor1(n.gamma.clone(), device), beta: tensor1(n.beta.clone(), device), eps }
    }

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
    qkv: Linear<B>,
    attn_out: Linear<B>,
    attn_norm: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    out_norm: LayerNorm<B>,
}

/// The weights as burn tensors, for burn's ops.
struct BurnWeights<B: Backend> {
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type0: Tensor<B, 1>,
    emb_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
}

pub struct BertModel<B: Backend> {
    pub config: BertConfig,
    host: HostWeights,
    burn: OnceLock<BurnWeights<B>>,
    device: B::Device,
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
        let norm = |name: &str| -> anyhow::Result<Norm<Vec<f32>>> {
            // Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
            let weight = if st.contains(&format!("{prefix}{name}.weight")) { "weight" } else { "gamma" };
            let bias = if weight == "weight" { "bias" } else { "beta" };
            Ok(Norm { gamma: get(&format!("{name}.{weight}"), &[d])?, beta: get(&format!("{name}.{bias}"), &[d])? })
        };
        let word = get("embeddings.word_embeddings.weight", &[config.vocab_size, d])?;
        let position = get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, d])?;
        let types = get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, d])?;
        // Single-segment input: token type 0 everywhere.
        let token_type0 = types[..d].to_vec();
        let emb_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let w = |n: &str, shape: &[usize]| get(&format!("{p}.{n}"), shape);
            // PyTorch's `[out, in]` as `[in, out]`.
            let dense = |n: &str, out: usize, inp: usize| -> anyhow::Result<ablate_kernels::Linear<Vec<f32>>> {
                Ok(ablate_kernels::Linear {
                    weight: transpose(out, inp, &w(&format!("{n}.weight"), &[out, inp])?),
                    bias: w(&format!("{n}.bias"), &[out])?,
                })
            };
            let [q, k, v] = ["query", "key", "value"].map(|n| dense(&format!("attention.self.{n}"), d, d));
            let (q, k, v) = (q?, k?, v?);
            let qkv = ablate_kernels::Linear {
                weight: (0..d).flat_map(|r| [&q, &k, &v].map(|l| &l.weight[r * d..(r + 1) * d]).concat()).collect(),
                bias: [q.bias, k.bias, v.bias].concat(),
            };
            layers.push(PostNormLayer {
                qkv,
                out: dense("attention.output.dense", d, d)?,
                ln_1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                fc: dense("intermediate.dense", ff, d)?,
                proj: dense("output.dense", d, ff)?,
                ln_2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let host = HostWeights { word, position, token_type0, emb_norm, layers };
        Ok(BertModel { config, host, burn: OnceLock::new(), device: device.clone() })
    }

    /// Final hidden states `[batch, seq, hidden]` (zero past each text's
    /// length) of the token sequences `batch`, `seq` the longest.
    /// Under bf16 the dense layers and attention run in bf16, the residual
    /// stream and the LayerNorms in f32 (`crate::precision`).
    pub fn forward(&self, batch: &[&[u32]], p: Precision) -> anyhow::Result<Tensor<B, 3>> {
        let seq = batch.iter().map(|t| t.len()).max().unwrap_or(0);
        if seq > self.config.max_position_embeddings {
            return Err(anyhow!("sequence of {seq} tokens exceeds the model's {} positions", self.config.max_position_embeddings));
        }
        let on_kernels = p == Precision::F32 && crate::model::fused::kernels_apply::<B>();
        if on_kernels { Ok(self.forward_packed(batch, seq)) } else { Ok(self.forward_burn(batch, seq, p)) }
    }

    /// Through the CPU kernels: the sequences packed, no padding computed.
    fn forward_packed(&self, batch: &[&[u32]], seq: usize) -> Tensor<B, 3> {
        let (h, d) = (&self.host, self.config.hidden_size);
        let eps = self.config.layer_norm_eps as f32;
        let lengths: Vec<usize> = batch.iter().map(|t| t.len()).collect();
        let mut x = Vec::with_capacity(lengths.iter().sum::<usize>() * d);
        for tokens in batch {
            for (j, &t) in tokens.iter().enumerate() {
                let (word, pos) = (&h.word[t as usize * d..][..d], &h.position[j * d..][..d]);
                x.extend(word.iter().zip(pos).zip(&h.token_type0).map(|((w, p), t)| w + p + t));
            }
        }
        let emb_norm = Norm { gamma: h.emb_norm.gamma.as_slice(), beta: h.emb_norm.beta.as_slice() };
        let mut x = ablate_kernels::layer_norm_rows(&x, &emb_norm, eps);
        for layer in &h.layers {
            x = ablate_kernels::post_norm_layer(&x, &lengths, self.config.num_attention_heads, eps, layer);
        }
        super::padded_rows::<B>(&x, &lengths, seq, d, &self.device)
    }

    fn burn_weights(&self) -> &BurnWeights<B> {
        self.burn.get_or_init(|| {
            let (h, c, device) = (&self.host, &self.config, &self.device);
            let d = c.hidden_size;
            let dense = |l| Linear::from_host(l, device);
            let norm = |n: &Norm<Vec<f32>>| LayerNorm::new(n, c.layer_norm_eps, device);
            BurnWeights {
                word: tensor2(h.word.clone(), [c.vocab_size, d], device),
                position: tensor2(h.position.clone(), [c.max_position_embeddings, d], device),
                token_type0: tensor1(h.token_type0.clone(), device),
                emb_norm: norm(&h.emb_norm),
                layers: h
                    .layers
                    .iter()
                    .map(|l| Layer {
                        qkv: dense(&l.qkv),
                        attn_out: dense(&l.out),
                        attn_norm: norm(&l.ln_1),
                        intermediate: dense(&l.fc),
                        output: dense(&l.proj),
                        out_norm: norm(&l.ln_2),
                    })
                    .collect(),
            }
        })
    }

    /// Through burn's ops, right-padded with a key padding mask.
    fn forward_burn(&self, batch: &[&[u32]], seq: usize, p: Precision) -> Tensor<B, 3> {
        let w = self.burn_weights();
        let device = &self.device;
        let (rows, d, heads) = (batch.len(), self.config.hidden_size, self.config.num_attention_heads);
        let hd = d / heads;
        let ids = super::padded_ids::<B>(batch, seq, device);
        // Activations stay `[batch * seq, hidden]` so that every dense layer is one
        // large matmul (a 3-D input would become `batch` small ones).
        let words = w.word.clone().select(0, ids.reshape([rows * seq])).reshape([rows, seq, d]);
        let pos = w.position.clone().narrow(0, 0, seq).unsqueeze::<3>();
        let emb = (words + pos + w.token_type0.clone().unsqueeze::<3>()).reshape([rows * seq, d]);
        let mut x = w.emb_norm.forward(emb);

        // Key padding mask, true = masked, broadcast over heads and query positions.
        let mask: Vec<bool> = batch.iter().flat_map(|t| (0..seq).map(move |j| j >= t.len())).collect();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [rows, seq]), device)
            .reshape([rows, 1, 1, seq])
            .expand([rows, heads, seq, seq]);

        for layer in &w.layers {
            let qkv = layer.qkv.forward(x.clone(), p);
            let split = |part: usize| qkv.clone().narrow(1, part * d, d).reshape([rows, seq, heads, hd]).swap_dims(1, 2);
            let ctx = p.attention(split(0), split(1), split(2), Some(mask.clone()), false);
            let ctx = ctx.swap_dims(1, 2).reshape([rows * seq, d]);
            x = layer.attn_norm.forward(p.widen(layer.attn_out.forward(ctx, p)) + x);
            let h = layer.output.forward(gelu(layer.intermediate.forward(x.clone(), p)), p);
            x = layer.out_norm.forward(p.widen(h) + x);
        }
        x.reshape([rows, seq, d])
    }
}
