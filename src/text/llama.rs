//! Llama-family decoders (Llama, SmolLM2, Qwen2, Mistral) used as frozen text
//! encoders: RMSNorm, rotary positions, grouped-query causal attention, SwiGLU.
//!
//! Weights come from a GGUF file (dequantized to f32) or a Hugging Face
//! safetensors directory. Internally everything uses Hugging Face conventions
//! (tensor names, `rotate_half` RoPE); the GGUF loader maps llama.cpp's names
//! and undoes the Q/K row permutation that llama.cpp's converter applies for
//! its interleaved RoPE, so both sources produce identical models.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow, bail};
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::gguf::GgufFile;
use super::weights::{Linear, SafetensorFiles, expect_shape, tensor1, tensor2, transpose};
use crate::precision::Precision;
use ablate_kernels::DecoderLayer;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Positions the model was trained for (context length): the RoPE tables' size.
    pub max_positions: usize,
    /// Q/K/V projections carry biases (Qwen2).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    /// From a Hugging Face config.json of `model_type` llama, qwen2 or mistral.
    pub fn from_hf(config: &serde_json::Value, origin: &Path) -> anyhow::Result<Self> {
        let at = origin.display();
        let int = |k: &str| config[k].as_u64().map(|v| v as usize).ok_or_else(|| anyhow!("{at}: '{k}' is missing or not an integer"));
        let act = config["hidden_act"].as_str().unwrap_or("silu");
        if act != "silu" {
            bail!("{at}: hidden_act '{act}' is not supported (only 'silu')");
        }
        if !config["rope_scaling"].is_null() {
            bail!("{at}: rope_scaling is not supported (found {})", config["rope_scaling"]);
        }
        let (hidden_size, num_heads) = (int("hidden_size")?, int("num_attention_heads")?);
        let model_type = config["model_type"].as_str().unwrap_or("");
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads: config["num_key_value_heads"].as_u64().map_or(num_heads, |v| v as usize),
            head_dim: config["head_dim"].as_u64().map_or(hidden_size / num_heads.max(1), |v| v as usize),
            vocab_size: int("vocab_size")?,
            rms_norm_eps: config["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: config["rope_theta"].as_f64().unwrap_or(10_000.0),
            max_positions: int("max_position_embeddings")?,
            qkv_bias: model_type == "qwen2" || config["attention_bias"].as_bool().unwrap_or(false),
        };
        cfg.validate().with_context(|| format!("{at}"))?;
        Ok(cfg)
    }

    /// From GGUF metadata (`{arch}.block_count`, `{arch}.attention.head_count`, ...).
    pub fn from_gguf(gguf: &GgufFile, arch: &str) -> anyhow::Result<Self> {
        let int = |k: &str| gguf.u64(&format!("{arch}.{k}")).map(|v| v as usize);
        let float = |k: &str| gguf.get(&format!("{arch}.{k}")).and_then(|v| v.as_f64());
        if let Some(kind) = gguf.get(&format!("{arch}.rope.scaling.type")).and_then(|v| v.as_str())
            && kind != "none"
        {
            bail!("{}: RoPE scaling '{kind}' is not supported", gguf.path.display());
        }
        let (hidden_size, num_heads) = (int("embedding_length")?, int("attention.head_count")?);
        let head_dim = int("rope.dimension_count").unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = gguf.info("token_embd.weight")?.dims.get(1).copied().unwrap_or(0);
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads,
            num_kv_heads: int("attention.head_count_kv").unwrap_or(num_heads),
            head_dim,
            vocab_size,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            max_positions: int("context_length")?,
            qkv_bias: gguf.tensors.contains_key("blk.0.attn_q.bias"),
        };
        cfg.validate().with_context(|| format!("{}", gguf.path.display()))?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!("attention heads {} are not a multiple of key/value heads {}", self.num_heads, self.num_kv_heads);
        }
        if self.max_positions == 0 {
            bail!("the context length is 0");
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!("head dimension {} must be even for rotary embeddings", self.head_dim);
        }
        Ok(())
    }
}

/// Where the weights come from; every request uses Hugging Face tensor names.
pub enum LlamaSource<'a> {
    Safetensors(&'a SafetensorFiles),
    /// `permuted_qk`: llama.cpp's converter permuted the Q/K rows (llama
    /// architecture; not qwen2, whose RoPE llama.cpp runs in NeoX order).
    Gguf {
        file: &'a GgufFile,
        permuted_qk: bool,
    },
}

impl LlamaSource<'_> {
    fn get(&self, name: &str, want: &[usize], cfg: &LlamaConfig) -> anyhow::Result<Vec<f32>> {
        match self {
            LlamaSource::Safetensors(st) => {
                let (shape, data) = st.get(name)?;
                expect_shape(name, &shape, want)?;
                Ok(data)
            }
            LlamaSource::Gguf { file, permuted_qk } => {
                let gname = gguf_name(name).ok_or_else(|| anyhow!("no GGUF name for tensor '{name}'"))?;
                let info = file.info(&gname)?;
                // ggml dims are reversed relative to PyTorch's.
                let shape: Vec<usize> = info.dims.iter().rev().copied().collect();
                expect_shape(&gname, &shape, want).with_context(|| format!("{}", file.path.display()))?;
                let data = file.dequantize(&gname)?;
                let heads = if name.contains("q_proj") {
                    cfg.num_heads
                } else if name.contains("k_proj") {
                    cfg.num_kv_heads
                } else {
                    return Ok(data);
                };
                Ok(if *permuted_qk { unpermute_rows(&data, heads, cfg.head_dim) } else { data })
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        match self {
            LlamaSource::Safetensors(st) => st.contains(name),
            LlamaSource::Gguf { file, .. } => gguf_name(name).is_some_and(|g| file.tensors.contains_key(&g)),
        }
    }
}

/// Hugging Face tensor name → llama.cpp tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Undoes llama.cpp's Q/K permutation: within each head, GGUF row `2i + j`
/// holds Hugging Face row `j * head_dim/2 + i`. Works for weights (rows of
/// any length) and biases (rows of length 1).
pub fn unpermute_rows(data: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let row = data.len() / (heads * head_dim);
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * row;
                let dst = (h * head_dim + j * half + i) * row;
                out[dst..dst + row].copy_from_slice(&data[src..src + row]);
            }
        }
    }
    out
}

/// The longest sequence the CPU kernels take. Their attention holds a
/// `[heads, T, T]` probability matrix per sequence (38 MB at 1,024 tokens for
/// SmolLM2, 2.4 GB at its 8,192); a batch with a longer text goes through
/// burn's attention, which Flex computes in tiles above 512 × 512 scores, so
/// memory does not grow with T².
const KERNEL_MAX_TOKENS: usize = 1024;

/// One decoder layer's weights on the host (`ablate_kernels::DecoderLayer`,
/// dense weights `[in, out]`, zero biases where the model has none). Two
/// load-time rewrites keep the forward pass in contiguous
/// `[tokens, heads * head_dim]` matrices:
/// - K/V weights are repeated per query head (grouped-query attention without
///   expanding activations);
/// - `q_rot`/`k_rot` hold the projections with RoPE's `rotate_half` folded in
///   (rows permuted and negated per head), so RoPE is `q·cos + q_rot·sin`;
///
/// and q | q_rot | k | k_rot | v are one projection, gate | up another.
type HostLayer = DecoderLayer<Vec<f32>>;

/// A layer as burn tensors, for burn's ops.
struct Block<B: Backend> {
    attn_norm: Tensor<B, 1>,
    qkv: Linear<B>,
    o: Linear<B>,
    ffn_norm: Tensor<B, 1>,
    gate_up: Linear<B>,
    down: Linear<B>,
}

struct BurnWeights<B: Backend> {
    embed: Tensor<B, 2>,
    blocks: Vec<Block<B>>,
    norm: Tensor<B, 1>,
}

/// The model, its weights on the host. On the CPU backend in f32 a batch
/// runs through `ablate_kernels::decoder_layer` over the packed sequences
/// (no padding computed); elsewhere — a GPU, bf16, or the kernels turned
/// off — through burn's ops on tensors made from the host weights on first
/// use, which stay the reference the kernels are tested against.
pub struct LlamaModel<B: Backend> {
    pub config: LlamaConfig,
    embed: Vec<f32>,
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    /// `[positions, head_dim]` tables, Hugging Face layout (the half-frequencies repeated).
    cos: Vec<f32>,
    sin: Vec<f32>,
    burn: OnceLock<BurnWeights<B>>,
    device: B::Device,
}

/// Row-major matrices of `rows` rows side by side: `[rows, Σ cols]`.
fn concat_columns(parts: &[&[f32]], rows: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| {
            parts.iter().flat_map(move |p| {
                let cols = p.len() / rows;
                &p[r * cols..(r + 1) * cols]
            })
        })
        .copied()
        .collect()
}

impl<B: Backend> LlamaModel<B> {
    pub fn load(config: LlamaConfig, src: &LlamaSource, device: &B::Device) -> anyhow::Result<Self> {
        let c = &config;
        let (d, ff, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (qd, kvd) = (c.num_heads * hd, c.num_kv_heads * hd);
        let heads = c.num_heads;
        let get = |name: &str, want: &[usize]| src.get(name, want, c);
        let embed = get("model.embed_tokens.weight", &[c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let w = |n: &str, want: &[usize]| get(&format!("{p}.{n}"), want);
            let bias = |n: &str, len: usize| -> anyhow::Result<Vec<f32>> {
                let name = format!("{p}.self_attn.{n}_proj.bias");
                if c.qkv_bias || src.has(&name) { get(&name, &[len]) } else { Ok(vec![0.0; len]) }
            };
            // Q/K/V as [qd, d] torch-layout weights (K/V repeated per query head), then their rotations.
            let proj = |n: &str, out: usize| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
                let (wt, bs) = (w(&format!("self_attn.{n}_proj.weight"), &[out, d])?, bias(n, out)?);
                let times = qd / out; // 1 for Q, the group size for K/V
                Ok((repeat_heads(&wt, times, hd, d), repeat_heads(&bs, times, hd, 1)))
            };
            let rotated = |(wt, bs): &(Vec<f32>, Vec<f32>)| (rotate_half_rows(wt, heads, hd, d), rotate_half_rows(bs, heads, hd, 1));
            let (q, k, v) = (proj("q", qd)?, proj("k", kvd)?, proj("v", kvd)?);
            let projections = [q.clone(), rotated(&q), k.clone(), rotated(&k), v];
            let columns: Vec<Vec<f32>> = projections.iter().map(|(wt, _)| transpose(qd, d, wt)).collect();
            let qkv = ablate_kernels::Linear {
                weight: concat_columns(&columns.iter().map(Vec::as_slice).collect::<Vec<_>>(), d),
                bias: projections.iter().flat_map(|(_, b)| b.iter().copied()).collect(),
            };
            let dense = |n: &str, out: usize, inp: usize| -> anyhow::Result<Vec<f32>> {
                Ok(transpose(out, inp, &w(&format!("{n}.weight"), &[out, inp])?))
            };
            let (gate, up) = (dense("mlp.gate_proj", ff, d)?, dense("mlp.up_proj", ff, d)?);
            layers.push(DecoderLayer {
                attn_norm: w("input_layernorm.weight", &[d])?,
                qkv,
                out: ablate_kernels::Linear { weight: dense("self_attn.o_proj", d, qd)?, bias: vec![0.0; d] },
                ffn_norm: w("post_attention_layernorm.weight", &[d])?,
                gate_up: ablate_kernels::Linear { weight: concat_columns(&[&gate, &up], d), bias: vec![0.0; 2 * ff] },
                down: ablate_kernels::Linear { weight: dense("mlp.down_proj", d, ff)?, bias: vec![0.0; d] },
            });
        }
        let norm = get("model.norm.weight", &[d])?;
        let (cos, sin) = rope_tables(hd, c.rope_theta, c.max_positions);
        Ok(LlamaModel { config, embed, layers, norm, cos, sin, burn: OnceLock::new(), device: device.clone() })
    }

    /// Hidden states after the final RMSNorm, `[batch, seq, hidden]` (zero
    /// past each text's length), for the token sequences `batch`, `seq` the
    /// longest. Under bf16 the dense layers and attention run in bf16; the
    /// residual stream, RMSNorm and the rotary positions in f32
    /// (`crate::precision`).
    pub fn forward(&self, batch: &[&[u32]], p: Precision) -> anyhow::Result<Tensor<B, 3>> {
        let seq = batch.iter().map(|t| t.len()).max().unwrap_or(0);
        if seq > self.config.max_positions {
            bail!("sequence of {seq} tokens exceeds the model's context length of {}", self.config.max_positions);
        }
        let on_kernels = p == Precision::F32 && crate::model::fused::kernels_apply::<B>() && seq <= KERNEL_MAX_TOKENS;
        Ok(if on_kernels { self.forward_packed(batch, seq) } else { self.forward_burn(batch, seq, p) })
    }

    /// Through the CPU kernels: the sequences packed, no padding computed.
    fn forward_packed(&self, batch: &[&[u32]], seq: usize) -> Tensor<B, 3> {
        let c = &self.config;
        let d = c.hidden_size;
        let eps = c.rms_norm_eps as f32;
        let lengths: Vec<usize> = batch.iter().map(|t| t.len()).collect();
        let mut x: Vec<f32> = batch.iter().flat_map(|t| t.iter()).flat_map(|&t| &self.embed[t as usize * d..][..d]).copied().collect();
        for layer in &self.layers {
            x = ablate_kernels::decoder_layer(&x, &lengths, c.num_heads, c.head_dim, eps, (&self.cos, &self.sin), layer);
        }
        let x = ablate_kernels::rms_norm_rows(&x, &self.norm, eps);
        super::padded_rows::<B>(&x, &lengths, seq, d, &self.device)
    }

    fn burn_weights(&self) -> &BurnWeights<B> {
        self.burn.get_or_init(|| {
            let (c, device) = (&self.config, &self.device);
            let dense = |l| Linear::from_host(l, device);
            BurnWeights {
                embed: tensor2(self.embed.clone(), [c.vocab_size, c.hidden_size], device),
                blocks: self
                    .layers
                    .iter()
                    .map(|l| Block {
                        attn_norm: tensor1(l.attn_norm.clone(), device),
                        qkv: dense(&l.qkv),
                        o: dense(&l.out),
                        ffn_norm: tensor1(l.ffn_norm.clone(), device),
                        gate_up: dense(&l.gate_up),
                        down: dense(&l.down),
                    })
                    .collect(),
                norm: tensor1(self.norm.clone(), device),
            }
        })
    }

    /// Through burn's ops, right-padded. Causal attention alone keeps every
    /// real token from seeing the padding that follows it, so no padding
    /// mask is needed; the padded positions' outputs are never read by
    /// pooling.
    fn forward_burn(&self, batch: &[&[u32]], seq: usize, p: Precision) -> Tensor<B, 3> {
        let w = self.burn_weights();
        let c = &self.config;
        let (rows, d, hd, heads, ff) = (batch.len(), c.hidden_size, c.head_dim, c.num_heads, c.intermediate_size);
        let qd = heads * hd;
        let device = &self.device;
        let ids = super::padded_ids::<B>(batch, seq, device);
        // RoPE tables laid out like the projections: row (b, s), every head gets position s.
        let full = |table: &[f32]| {
            let rows: Vec<f32> =
                (0..rows * seq).flat_map(|r| (0..heads).flat_map(move |_| &table[(r % seq) * hd..(r % seq + 1) * hd])).copied().collect();
            tensor2::<B>(rows, [batch.len() * seq, qd], device)
        };
        let (cos, sin) = (full(&self.cos), full(&self.sin));
        let heads_first = |t: Tensor<B, 2>| t.reshape([rows, seq, heads, hd]).swap_dims(1, 2);
        // Activations stay `[batch * seq, hidden]` so that every dense layer is one
        // large matmul (a 3-D input would become `batch` small ones).
        let mut x = w.embed.clone().select(0, ids.reshape([rows * seq]));
        for b in &w.blocks {
            let h = rms_norm(x.clone(), &b.attn_norm, c.rms_norm_eps);
            let proj = b.qkv.forward(h, p);
            let part = |i: usize| p.widen(proj.clone().narrow(1, i * qd, qd));
            let (q, k) = (part(0) * cos.clone() + part(1) * sin.clone(), part(2) * cos.clone() + part(3) * sin.clone());
            let v = proj.clone().narrow(1, 4 * qd, qd);
            let ctx = p.attention(heads_first(q), heads_first(k), heads_first(v), None, true);
            x = x + p.widen(b.o.forward(ctx.swap_dims(1, 2).reshape([rows * seq, qd]), p));
            let h = rms_norm(x.clone(), &b.ffn_norm, c.rms_norm_eps);
            let gu = b.gate_up.forward(h, p);
            let act = silu(gu.clone().narrow(1, 0, ff)) * gu.narrow(1, ff, ff);
            x = x + p.widen(b.down.forward(act, p));
        }
        rms_norm(x, &w.norm, c.rms_norm_eps).reshape([rows, seq, d])
    }
}

/// Repeats each key/value head's rows `group` times (`[kv * hd, row]` →
/// `[kv * group * hd, row]`): query head `h` reads key/value head `h / group`.
fn repeat_heads(rows: &[f32], group: usize, head_dim: usize, row: usize) -> Vec<f32> {
    rows.chunks_exact(head_dim * row).flat_map(|head| std::iter::repeat_n(head, group).flatten()).copied().collect()
}

/// Rows of a per-head projection rearranged so that it outputs
/// `rotate_half(y) = [-y[half..], y[..half]]` of the original output `y`.
fn rotate_half_rows(rows: &[f32], heads: usize, head_dim: usize, row: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(rows.len());
    for h in 0..heads {
        for j in 0..head_dim {
            let (src, sign) = if j < half { (j + half, -1.0) } else { (j - half, 1.0) };
            let start = (h * head_dim + src) * row;
            out.extend(rows[start..start + row].iter().map(|x| sign * x));
        }
    }
    out
}

/// RMSNorm over the last dimension of `[tokens, hidden]`.
fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let rms = (x.clone().powi_scalar(2).mean_dim(1) + eps).sqrt();
    x / rms * weight.clone().unsqueeze::<2>()
}

/// cos/sin tables in f32 the way Hugging Face computes them
/// (`inv_freq = theta^(-2i/d)`, angles `pos * inv_freq`, halves repeated).
fn rope_tables(head_dim: usize, theta: f64, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32).collect();
    let mut cos = Vec::with_capacity(positions * head_dim);
    let mut sin = Vec::with_capacity(positions * head_dim);
    for p in 0..positions {
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: reshape(heads, 2, hd/2, row).swapaxes(1, 2) — build it and invert.
        let (heads, hd, row) = (3, 4, 2);
        let hf: Vec<f32> = (0..heads * hd * row).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = (h * hd + j * hd / 2 + i) * row;
                    let dst = (h * hd + i * 2 + j) * row;
                    gguf[dst..dst + row].copy_from_slice(&hf[src..src + row]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, heads, hd), hf);
    }

    #[test]
    fn head_rewrites() {
        // 2 heads of dim 4, rows of length 1: rotate_half per head.
        let y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(rotate_half_rows(&y, 2, 4, 1), [-3.0, -4.0, 1.0, 2.0, -7.0, -8.0, 5.0, 6.0]);
        // 2 kv heads of dim 2 (rows of length 2), each repeated for 2 query heads.
        let kv = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0];
        assert_eq!(repeat_heads(&kv, 2, 2, 2), [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]);
    }

    #[test]
    fn gguf_names() {
        assert_eq!(gguf_name("model.layers.12.self_attn.k_proj.bias").as_deref(), Some("blk.12.attn_k.bias"));
        assert_eq!(gguf_name("model.layers.0.mlp.down_proj.weight").as_deref(), Some("blk.0.ffn_down.weight"));
        assert_eq!(gguf_name("model.norm.weight").as_deref(), Some("output_norm.weight"));
        assert_eq!(gguf_name("lm_head.weight"), None);
    }
}
