//! Loader paths beyond the two default files: Hugging Face layouts with and
//! without the `bert.` prefix, Llama/Qwen2 safetensors directories, and the
//! errors a user sees for a broken model directory.
//!
//! The variant directories are written on the fly from the real models, so the
//! tests that need them skip (saying so) only when the models directory is absent.

mod common;

use common::models_dir;
use std::collections::BTreeMap;
use std::path::Path;

use ablate::device::Cpu;
use ablate::precision::Precision;
use ablate::text::gguf::GgufFile;
use ablate::text::llama::{gguf_name, unpermute_rows};
use ablate::text::tokenize::TextTokenizer;
use ablate::text::weights::SafetensorFiles;
use ablate::text::{EmbedOptions, EncoderSpec, Pooling, TextEncoder};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Value, json};

fn load(dir: &Path) -> anyhow::Result<TextEncoder<Cpu>> {
    TextEncoder::load(&EncoderSpec::resolve(dir.to_str().unwrap())?, &Default::default())
}

fn embed(enc: &TextEncoder<Cpu>, texts: &[&str], pooling: Pooling) -> Vec<Vec<f32>> {
    let opts = EmbedOptions { pooling, max_tokens: 64, batch_size: 8, normalize: false, precision: Precision::F32 };
    enc.embed(texts, &opts).unwrap().into_iter().map(|e| e.embedding).collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Writes f32 tensors as a safetensors file.
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let bytes: BTreeMap<&String, (Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, (shape, data))| (n, (shape.clone(), data.iter().flat_map(|x| x.to_le_bytes()).collect()))).collect();
    let views = bytes.iter().map(|(n, (shape, data))| (n.as_str(), TensorView::new(Dtype::F32, shape.clone(), data).unwrap()));
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn copy_minilm_with(dir: &Path, minilm: &Path, rename: impl Fn(&str) -> Option<String>) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(minilm.join(f), dir.join(f)).unwrap();
    }
    let st = SafetensorFiles::open(minilm).unwrap();
    let raw = std::fs::read(minilm.join("model.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&raw).unwrap().names().into_iter().map(str::to_owned).collect();
    let tensors = names
        .iter()
        .filter(|n| n.as_str() != "embeddings.position_ids") // I64; not a weight
        .filter_map(|n| rename(n).map(|new| (new, st.get(n).unwrap())))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors);
}

const TEXTS: &[&str] = &["A photo of a dog.", "a red cube to the left of a blue sphere", ""];

#[test]
fn bert_prefix_is_optional() {
    let Some(models) = models_dir() else { return };
    let minilm = models.join("all-MiniLM-L6-v2");
    let tmp = tempfile::tempdir().unwrap();
    let prefixed = tmp.path().join("prefixed");
    copy_minilm_with(&prefixed, &minilm, |n| Some(format!("bert.{n}")));
    let plain = embed(&load(&minilm).unwrap(), TEXTS, Pooling::Mean);
    let with_prefix = embed(&load(&prefixed).unwrap(), TEXTS, Pooling::Mean);
    assert_eq!(plain, with_prefix);
}

#[test]
fn bert_missing_tensor_is_named() {
    let Some(models) = models_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broken");
    copy_minilm_with(&dir, &models.join("all-MiniLM-L6-v2"), |n| (n != "encoder.layer.3.output.dense.weight").then(|| n.to_owned()));
    let err = format!("{:#}", load(&dir).err().expect("a missing tensor must fail"));
    assert!(err.contains("encoder.layer.3.output.dense.weight"), "{err}");
}

#[test]
fn missing_files_and_unsupported_architectures_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = format!("{:#}", load(dir).err().unwrap());
    assert!(err.contains("config.json"), "{err}");

    std::fs::write(dir.join("config.json"), json!({"model_type": "t5", "architectures": ["T5EncoderModel"]}).to_string()).unwrap();
    let err = format!("{:#}", load(dir).err().unwrap());
    assert!(err.contains("unsupported architecture") && err.contains("t5") && err.contains("T5EncoderModel"), "{err}");

    let bert = json!({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "intermediate_size": 16, "max_position_embeddings": 16, "vocab_size": 10});
    std::fs::write(dir.join("config.json"), bert.to_string()).unwrap();
    let err = format!("{:#}", load(dir).err().unwrap());
    assert!(err.contains("tokenizer.json"), "{err}");

    let err = format!("{:#}", EncoderSpec::resolve(dir.join("nope.gguf").to_str().unwrap()).err().unwrap());
    assert!(err.contains("neither a model directory"), "{err}");
    std::fs::write(dir.join("fake.gguf"), b"not gguf").unwrap();
    let err = format!("{:#}", EncoderSpec::resolve(dir.join("fake.gguf").to_str().unwrap()).err().unwrap());
    assert!(err.contains("not a GGUF file"), "{err}");
}

/// Exports the SmolLM2 GGUF as a Hugging Face Llama directory (f32 safetensors,
/// Q/K rows un-permuted, tokenizer.json from the GGUF vocabulary).
fn export_smollm2(gguf_path: &Path, dir: &Path, model_type: &str, extra: impl Fn(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) {
    let file = GgufFile::open(gguf_path).unwrap();
    let int = |k: &str| file.u64(&format!("llama.{k}")).unwrap();
    let (heads, kv, d) = (int("attention.head_count") as usize, int("attention.head_count_kv") as usize, int("embedding_length") as usize);
    let hd = d / heads;
    let mut tensors = BTreeMap::new();
    let layers = int("block_count") as usize;
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    for i in 0..layers {
        for m in
            ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
        {
            names.push(format!("model.layers.{i}.{m}.weight"));
        }
        for m in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("model.layers.{i}.mlp.{m}.weight"));
        }
    }
    for name in names {
        let g = gguf_name(&name).unwrap();
        let shape: Vec<usize> = file.info(&g).unwrap().dims.iter().rev().copied().collect();
        let mut data = file.dequantize(&g).unwrap();
        if name.contains("q_proj") {
            data = unpermute_rows(&data, heads, hd);
        } else if name.contains("k_proj") {
            data = unpermute_rows(&data, kv, hd);
        }
        tensors.insert(name, (shape, data));
    }
    extra(&mut tensors);
    std::fs::create_dir_all(dir).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    let config = json!({
        "model_type": model_type, "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
        "hidden_size": d, "intermediate_size": int("feed_forward_length"), "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": tensors["model.embed_tokens.weight"].0[0],
        "rms_norm_eps": file.get("llama.attention.layer_norm_rms_epsilon").unwrap().as_f64().unwrap(),
        "rope_theta": file.get("llama.rope.freq_base").unwrap().as_f64().unwrap(),
        "max_position_embeddings": int("context_length"), "rope_scaling": null, "eos_token_id": 2, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TextTokenizer::from_gguf(&file).unwrap().to_json().unwrap()).unwrap();
}

#[test]
fn llama_and_qwen2_safetensors_directories() {
    let Some(models) = models_dir() else { return };
    let gguf = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let from_gguf = load(&gguf).unwrap();
    let want = embed(&from_gguf, TEXTS, Pooling::Eos);
    drop(from_gguf);

    let tmp = tempfile::tempdir().unwrap();
    // Llama layout: the same weights through the safetensors loader give the same states.
    let llama_dir = tmp.path().join("llama");
    export_smollm2(&gguf, &llama_dir, "llama", |_| {});
    let llama = load(&llama_dir).unwrap();
    let tokens = llama.tokenize(TEXTS, 64).unwrap();
    assert_eq!(tokens[0].ids, [49, 8003, 282, 253, 2767, 30, 2], "tokenizer.json round trip keeps the ids");
    let got = embed(&llama, TEXTS, Pooling::Eos);
    drop(llama);
    assert!(max_abs_diff(&got, &want) < 1e-3, "safetensors vs GGUF: {}", max_abs_diff(&got, &want));
    std::fs::remove_dir_all(&llama_dir).unwrap();

    // Qwen2 layout: q/k/v biases are loaded and used. Zero biases change nothing;
    // a bias on V shifts every attention output by the same vector, so the states move.
    let add_bias = |value: f32| {
        move |t: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>| {
            let layers: Vec<String> = t.keys().filter(|k| k.ends_with("self_attn.q_proj.weight")).cloned().collect();
            for q in layers {
                for proj in ["q", "k", "v"] {
                    let w = q.replace("q_proj", &format!("{proj}_proj"));
                    let out = t[&w].0[0];
                    let fill = if proj == "v" { value } else { 0.0 };
                    t.insert(w.replace(".weight", ".bias"), (vec![out], vec![fill; out]));
                }
            }
        }
    };
    let qwen_dir = tmp.path().join("qwen2");
    export_smollm2(&gguf, &qwen_dir, "qwen2", add_bias(0.0));
    let zero = embed(&load(&qwen_dir).unwrap(), TEXTS, Pooling::Eos);
    assert!(max_abs_diff(&zero, &want) < 1e-3, "qwen2 with zero biases: {}", max_abs_diff(&zero, &want));
    std::fs::remove_dir_all(&qwen_dir).unwrap();
    export_smollm2(&gguf, &qwen_dir, "qwen2", add_bias(0.5));
    let shifted = embed(&load(&qwen_dir).unwrap(), TEXTS, Pooling::Eos);
    assert!(max_abs_diff(&shifted, &want) > 1e-2, "a V bias must change the output");

    // A qwen2 directory without its biases names the first missing one.
    std::fs::remove_dir_all(&qwen_dir).unwrap();
    export_smollm2(&gguf, &qwen_dir, "qwen2", |_| {});
    let err = format!("{:#}", load(&qwen_dir).err().unwrap());
    assert!(err.contains("model.layers.0.self_attn.q_proj.bias"), "{err}");
}

#[test]
fn unsupported_decoder_settings_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let config = json!({"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "vocab_size": 10, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}});
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let err = format!("{:#}", load(tmp.path()).err().unwrap());
    assert!(err.contains("rope_scaling"), "{err}");
    let mut config: Value = config;
    config["rope_scaling"] = Value::Null;
    config["hidden_act"] = json!("gelu");
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let err = format!("{:#}", load(tmp.path()).err().unwrap());
    assert!(err.contains("hidden_act"), "{err}");
}
