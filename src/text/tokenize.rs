//! Tokenization with a per-family special-token policy and explicit truncation.
//!
//! Two policies cover our encoders:
//! - **Post-processor** (BERT): the tokenizer's own post-processor adds its
//!   special tokens (`[CLS] … [SEP]`); the content is cut so that the whole
//!   sequence fits `max_tokens`.
//! - **Append EOS** (decoder LLMs): whatever the tokenizer adds by itself (a BOS
//!   for Llama-3 style tokenizer.json files, or the GGUF's `add_bos_token`), then
//!   the content, then `<eos>`, whose final hidden state is the `eos` embedding.
//!   The content is cut so that `<eos>` always survives truncation.
//!
//! Padding and truncation settings stored inside tokenizer.json files (MiniLM's
//! pads and truncates to 128) are switched off: batching pads in the model code
//! and truncation is done here, so that it is counted and reported.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use serde_json::json;
use tokenizers::{Tokenizer, TruncationDirection};

use super::gguf::GgufFile;

/// The smallest: one token of text beside the (at most two) special tokens
/// the supported encoders add, so that no valid setting fails at run time.
pub const MIN_MAX_TOKENS: usize = 3;

/// The token ids of one text and whether they were cut to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

#[derive(Debug, Clone)]
enum Policy {
    PostProcessor,
    AppendEos { eos: u32, bos: Option<u32> },
}

pub struct TextTokenizer {
    inner: Tokenizer,
    policy: Policy,
}

impl TextTokenizer {
    /// A BERT-style tokenizer.json (special tokens from its post-processor).
    pub fn bert(path: &Path) -> anyhow::Result<Self> {
        Ok(TextTokenizer { inner: load_json(path)?, policy: Policy::PostProcessor })
    }

    /// A decoder's tokenizer.json: its own specials, then `<eos>` appended.
    pub fn decoder(path: &Path, eos: u32) -> anyhow::Result<Self> {
        Ok(TextTokenizer { inner: load_json(path)?, policy: Policy::AppendEos { eos, bos: None } })
    }

    /// The byte-level BPE tokenizer described by a GGUF file's metadata
    /// (`tokenizer.ggml.*`), as llama.cpp builds it.
    pub fn from_gguf(gguf: &GgufFile) -> anyhow::Result<Self> {
        let path = gguf.path.display();
        let model = gguf.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            bail!("{path}: tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2', is)");
        }
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let merges = gguf.strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match gguf.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let pre = gguf.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        // llama.cpp's pre-tokenizers: 'smollm' (and several others) isolate every
        // digit before the GPT-2 split; the GPT-2 regex is what ByteLevel applies.
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match pre {
            "smollm" | "starcoder" | "refact" | "codeshell" => {
                json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
            }
            "default" | "gpt-2" | "gpt2" => byte_level,
            other => bail!("{path}: pre-tokenizer '{other}' is not supported (smollm, starcoder, gpt-2 and default are)"),
        };
        let vocab: BTreeMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        // Control (3) and user-defined (4) tokens are matched whole in the input, as in the
        // tokenizer.json the GGUF was converted from.
        let added: Vec<serde_json::Value> = types
            .iter()
            .enumerate()
            .filter(|(i, t)| (**t == 3 || **t == 4) && *i < tokens.len())
            .map(|(i, t)| {
                json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": *t == 4, "special": *t == 3})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        let inner: Tokenizer = spec.to_string().parse().map_err(|e| anyhow!("{path}: cannot build the BPE tokenizer: {e}"))?;
        let eos = gguf.u64("tokenizer.ggml.eos_token_id")? as u32;
        let add_bos = gguf.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let bos = if add_bos { Some(gguf.u64("tokenizer.ggml.bos_token_id")? as u32) } else { None };
        Ok(TextTokenizer { inner, policy: Policy::AppendEos { eos, bos } })
    }

    /// Tokenizes each text, cutting the content so the result has at most `max_tokens` ids.
    pub fn encode(&self, texts: &[&str], max_tokens: usize) -> anyhow::Result<Vec<Tokens>> {
        // The encoder's own limit is checked where it is known (`TextEncoder::embed`).
        check_max_tokens(max_tokens, usize::MAX).map_err(|e| anyhow!("max_tokens = {e}"))?;
        let (add_specials, reserved) = match &self.policy {
            Policy::PostProcessor => {
                (true, self.inner.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false)))
            }
            Policy::AppendEos { bos, .. } => (
                true,
                1 + bos.is_some() as usize
                    + self.inner.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false)),
            ),
        };
        if reserved >= max_tokens {
            bail!("max_tokens = {max_tokens} leaves no room for text next to the {reserved} special tokens this encoder adds");
        }
        let budget = max_tokens - reserved;
        let encodings = self.inner.encode_batch(texts.to_vec(), false).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        encodings
            .into_iter()
            .map(|mut enc| {
                let truncated = enc.len() > budget;
                if truncated {
                    enc.truncate(budget, 0, TruncationDirection::Right);
                }
                let enc = self.inner.post_process(enc, None, add_specials).map_err(|e| anyhow!("tokenization failed: {e}"))?;
                let mut ids = Vec::with_capacity(max_tokens);
                if let Policy::AppendEos { bos: Some(bos), .. } = self.policy {
                    ids.push(bos);
                }
                ids.extend_from_slice(enc.get_ids());
                if let Policy::AppendEos { eos, .. } = self.policy {
                    ids.push(eos);
                }
                Ok(Tokens { ids, truncated })
            })
            .collect()
    }

    /// The underlying tokenizer as tokenizer.json text (e.g. to ship a
    /// GGUF model's tokenizer with a safetensors export of it).
    pub fn to_json(&self) -> anyhow::Result<String> {
        self.inner.to_string(false).map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Whether `max_tokens` is in range for an encoder made for `limit` tokens
/// ([`super::EncoderSpec::token_limit`]); the error is a sentence fragment.
pub fn check_max_tokens(max_tokens: usize, limit: usize) -> Result<(), String> {
    if max_tokens > limit {
        return Err(format!("{max_tokens} exceeds the encoder's own limit of {limit} tokens (leave it out to use the limit)"));
    }
    if max_tokens < MIN_MAX_TOKENS {
        return Err(format!("{max_tokens} is below {MIN_MAX_TOKENS} (room for one token of text beside the special tokens)"));
    }
    Ok(())
}

fn load_json(path: &Path) -> anyhow::Result<Tokenizer> {
    if !path.is_file() {
        bail!("{}: tokenizer file not found", path.display());
    }
    let mut tok = Tokenizer::from_file(path).map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| anyhow!("{e}")).with_context(|| format!("{}", path.display()))?;
    Ok(tok)
}
