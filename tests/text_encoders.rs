//! The text encoders against independent references (tests/fixtures/text,
//! made by scripts/make-text-references.py with sentence-transformers and
//! transformers), on the real models fetched by scripts/fetch-models.
//!
//! Tests that need the models skip, saying so, only when the models directory
//! is absent; a present directory with a missing or broken file fails.

mod common;

use common::models_dir;
use std::path::{Path, PathBuf};

use ablate::device::Cpu;
use ablate::precision::Precision;
use ablate::text::{EmbedOptions, EncoderSpec, Pooling, TextEncoder};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "embedding widths differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn load(path: PathBuf) -> TextEncoder<Cpu> {
    let spec = EncoderSpec::resolve(path.to_str().unwrap()).unwrap();
    TextEncoder::load(&spec, &Default::default()).unwrap()
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(models) = models_dir() else { return };
    let encoder = load(models.join("all-MiniLM-L6-v2"));
    assert_eq!(encoder.dim(), 384);
    assert_eq!(encoder.default_pooling(), Pooling::Mean);
    let reference = fixture("minilm.json");
    let items = reference["items"].as_array().unwrap();
    let mut checked = 0;
    let (mut worst, mut max_diff) = (f64::INFINITY, 0f32);
    // Untruncated lengths: the 256-token run only cuts the one very long text.
    let full_len = |text: &str| encoder.tokenize(&[text], 256).unwrap()[0].ids.len();
    for max_tokens in [256usize, 16] {
        let group: Vec<&Value> = items.iter().filter(|it| it["max_tokens"].as_u64() == Some(max_tokens as u64)).collect();
        assert!(group.len() >= 20, "fixture has {} texts for max_tokens {max_tokens}", group.len());
        let texts: Vec<&str> = group.iter().map(|it| it["text"].as_str().unwrap()).collect();
        // Batches of 5 mix lengths, so padding and masking are exercised.
        let opts = EmbedOptions { pooling: Pooling::Mean, max_tokens, batch_size: 5, normalize: true, precision: Precision::F32 };
        let got = encoder.embed(&texts, &opts).unwrap();
        for (it, out) in group.iter().zip(&got) {
            let text = it["text"].as_str().unwrap();
            let want_ids = ids(&it["tokens"]);
            assert_eq!(out.tokens, want_ids, "token ids differ for {text:?}");
            let expect_truncated = if max_tokens == 256 { text.len() > 500 } else { full_len(text) > 16 };
            assert_eq!(out.truncated, expect_truncated, "truncation flag for {text:?} at {max_tokens}");
            let want = floats(&it["embedding"]);
            let cos = cosine(&out.embedding, &want);
            worst = worst.min(cos);
            max_diff = out.embedding.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(max_diff, f32::max);
            assert!(cos >= 0.9999, "cosine {cos} < 0.9999 for {text:?} (max_tokens {max_tokens})");
            let norm: f32 = out.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "not L2-normalised: {norm}");
            checked += 1;
        }
    }
    eprintln!("minilm: {checked} embeddings vs sentence-transformers: worst cosine {worst:.9}, max |diff| {max_diff:.2e}");
}

#[test]
fn smollm2_matches_transformers_gguf() {
    let Some(models) = models_dir() else { return };
    let encoder = load(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(encoder.dim(), 576);
    assert_eq!(encoder.default_pooling(), Pooling::Eos);
    let reference = fixture("smollm2.json");
    let items = reference["items"].as_array().unwrap();
    assert!(items.len() >= 5);
    let texts: Vec<&str> = items.iter().map(|it| it["text"].as_str().unwrap()).collect();
    for (pooling, key) in [(Pooling::Eos, "eos"), (Pooling::Mean, "mean")] {
        // One padded batch: every prompt against a reference computed alone.
        let opts = EmbedOptions { pooling, max_tokens: 64, batch_size: 64, normalize: false, precision: Precision::F32 };
        let got = encoder.embed(&texts, &opts).unwrap();
        let (mut worst, mut max_rel) = (f64::INFINITY, 0f32);
        for (it, out) in items.iter().zip(&got) {
            let text = it["text"].as_str().unwrap();
            assert_eq!(out.tokens, ids(&it["tokens"]), "token ids differ for {text:?}");
            assert_eq!(*out.tokens.last().unwrap(), 2, "<eos> is appended");
            let want = floats(&it[key]);
            let cos = cosine(&out.embedding, &want);
            worst = worst.min(cos);
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            max_rel = out.embedding.iter().zip(&want).map(|(a, b)| (a - b).abs() / scale).fold(max_rel, f32::max);
            assert!(cos >= 0.999, "{key}: cosine {cos} < 0.999 for {text:?}");
        }
        eprintln!("smollm2 {key}: {} prompts vs transformers: worst cosine {worst:.9}, max |diff| / max |ref| {max_rel:.2e}", items.len());
    }
}

/// 100–1,000-token texts at MiniLM's own limit (sentence-transformers' default
/// `max_seq_length`, 256): the longer ones are cut exactly where it cuts them.
#[test]
fn minilm_matches_sentence_transformers_on_long_texts() {
    let Some(models) = models_dir() else { return };
    let path = models.join("all-MiniLM-L6-v2");
    let limit = EncoderSpec::resolve(path.to_str().unwrap()).unwrap().token_limit().unwrap();
    assert_eq!(limit, 256, "max_seq_length of sentence_bert_config.json");
    let encoder = load(path);
    let items = long_items(&fixture("minilm.json"), 100, 1000);
    let texts: Vec<&str> = items.iter().map(|it| it["text"].as_str().unwrap()).collect();
    let opts = EmbedOptions { pooling: Pooling::Mean, max_tokens: limit, batch_size: 2, normalize: true, precision: Precision::F32 };
    let got = encoder.embed(&texts, &opts).unwrap();
    let mut worst = f64::INFINITY;
    for (it, out) in items.iter().zip(&got) {
        let full = it["full_tokens"].as_u64().unwrap() as usize;
        assert_eq!(out.tokens, ids(&it["tokens"]), "token ids differ for the {full}-token text");
        assert_eq!(out.truncated, full > limit, "truncation flag of the {full}-token text");
        let cos = cosine(&out.embedding, &floats(&it["embedding"]));
        worst = worst.min(cos);
        assert!(cos >= 0.9999, "cosine {cos} < 0.9999 for the {full}-token text");
    }
    eprintln!("minilm long texts: {} vs sentence-transformers, worst cosine {worst:.9}", items.len());
}

/// 100–2,255-token texts through SmolLM2 untruncated: `<eos>` pooling against
/// transformers, so decoders read far past the old 77/256-token caps.
#[test]
fn smollm2_matches_transformers_on_long_texts() {
    let Some(models) = models_dir() else { return };
    let encoder = load(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let items = long_items(&fixture("smollm2.json"), 100, 2048);
    let texts: Vec<&str> = items.iter().map(|it| it["text"].as_str().unwrap()).collect();
    // Default options: max_tokens is the GGUF's context length.
    let opts = EmbedOptions { pooling: Pooling::Eos, max_tokens: 8192, batch_size: 4, normalize: false, precision: Precision::F32 };
    let got = encoder.embed(&texts, &opts).unwrap();
    let mut worst = f64::INFINITY;
    for (it, out) in items.iter().zip(&got) {
        let n = out.tokens.len();
        assert_eq!(out.tokens, ids(&it["tokens"]), "token ids differ for the {n}-token text");
        assert!(!out.truncated);
        let cos = cosine(&out.embedding, &floats(&it["eos"]));
        worst = worst.min(cos);
        assert!(cos >= 0.999, "eos: cosine {cos} < 0.999 for the {n}-token text");
    }
    eprintln!("smollm2 long texts: {} vs transformers (eos), worst cosine {worst:.9}", items.len());
}

/// The fixture's long texts, checked to span `shortest..=longest` tokens.
fn long_items(reference: &Value, shortest: usize, longest: usize) -> Vec<Value> {
    let items = reference["long_items"].as_array().expect("fixture has long_items: rerun scripts/make-text-references.py").clone();
    let len =
        |it: &Value| it.get("full_tokens").and_then(Value::as_u64).map_or_else(|| it["tokens"].as_array().unwrap().len(), |n| n as usize);
    assert!(items.len() >= 5, "{} long texts", items.len());
    assert!(items.iter().map(len).min().unwrap() >= shortest, "a long text is shorter than {shortest} tokens");
    assert!(items.iter().map(len).max().unwrap() >= longest, "no long text reaches {longest} tokens");
    items
}

#[test]
fn truncation_keeps_eos_for_decoders() {
    let Some(models) = models_dir() else { return };
    let encoder = load(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let long = "word ".repeat(100);
    let tokens = encoder.tokenize(&[long.as_str(), "short"], 8).unwrap();
    assert_eq!(tokens[0].ids.len(), 8);
    assert!(tokens[0].truncated);
    assert_eq!(*tokens[0].ids.last().unwrap(), 2);
    assert!(!tokens[1].truncated);
    assert!(encoder.tokenize(&["x"], 1).is_err(), "max_tokens 1 leaves no room");
    let over = EmbedOptions { pooling: Pooling::Eos, max_tokens: 8193, batch_size: 1, normalize: true, precision: Precision::F32 };
    let err = encoder.embed(&["x"], &over).unwrap_err().to_string();
    assert!(err.contains("exceeds the encoder's own limit of 8192 tokens"), "{err}");
}

#[test]
fn builtin_names_resolve_to_the_models_dir() {
    let Some(models) = models_dir() else { return };
    if std::env::var_os("ABLATE_MODELS").is_none() {
        // Built-in names resolve against ./models, and cargo runs tests in the package root.
        assert_eq!(EncoderSpec::resolve("minilm").unwrap(), EncoderSpec::HfDir(PathBuf::from("models/all-MiniLM-L6-v2")));
        assert_eq!(EncoderSpec::resolve("smollm2").unwrap(), EncoderSpec::Gguf(PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf")));
    }
    let spec = EncoderSpec::resolve(models.join("all-MiniLM-L6-v2").to_str().unwrap()).unwrap();
    let files: Vec<String> = spec.weight_files().unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(files, ["config.json", "model.safetensors", "tokenizer.json"]);
    assert_eq!(spec.fingerprint().unwrap().len(), 64);
}

#[test]
fn library_embed_entry_point() {
    let Some(models) = models_dir() else { return };
    let spec = models.join("all-MiniLM-L6-v2");
    let texts = vec!["a red cube".to_string(), "a blue sphere".to_string()];
    let out = ablate::text::embed(spec.to_str().unwrap(), Pooling::Cls, 32, &texts).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].tokens.first(), Some(&101));
    // cls pooling differs from the mean pooling of the same text.
    let mean = ablate::text::embed(spec.to_str().unwrap(), Pooling::Mean, 32, &texts).unwrap();
    assert!(cosine(&out[0].embedding, &mean[0].embedding) < 0.99);
    assert!(ablate::text::embed("no-such-encoder", Pooling::Mean, 32, &texts).is_err());
}

/// `precision = "bf16"` on both encoders: each text's embedding is within
/// bf16 rounding of the f32 one (cosine ≥ 0.99), but not the f32 one (the
/// forward pass really ran in bf16), and the tokens are the same.
#[test]
fn bf16_embeddings_stay_close_to_f32() {
    let Some(models) = models_dir() else { return };
    let texts = [
        "a red square to the left of a blue circle",
        "Two dogs play in the snow next to a wooden fence while a child watches from the porch.",
        "an empty kitchen",
    ];
    for (path, pooling) in
        [(models.join("all-MiniLM-L6-v2"), Pooling::Mean), (models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), Pooling::Eos)]
    {
        let encoder = load(path.clone());
        let options = |precision| EmbedOptions { pooling, max_tokens: 64, batch_size: 3, normalize: true, precision };
        let full = encoder.embed(&texts, &options(Precision::F32)).unwrap();
        let half = encoder.embed(&texts, &options(Precision::Bf16)).unwrap();
        for (f, h) in full.iter().zip(&half) {
            assert_eq!(f.tokens, h.tokens);
            let c = cosine(&f.embedding, &h.embedding);
            assert!(c >= 0.99, "{}: cosine {c} between the bf16 and f32 embeddings", path.display());
            assert!(c < 1.0 - 1e-9, "{}: bf16 gave the f32 embedding", path.display());
        }
    }
}

/// Both encoders through the CPU kernels (packed sequences, no padding
/// computed) against burn's ops (padded; BERT with a key padding mask) on
/// texts of very different lengths in one batch: the same embeddings to f32
/// rounding.
#[test]
fn kernels_match_burn_ops() {
    let Some(models) = models_dir() else { return };
    let long = "a small red square sits to the left of a large blue circle, ".repeat(12);
    let texts = ["a dog", long.as_str(), "two cats sleep on a sofa near the window", "x"];
    for (path, pooling) in
        [(models.join("all-MiniLM-L6-v2"), Pooling::Mean), (models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), Pooling::Eos)]
    {
        let encoder = load(path.clone());
        let options = EmbedOptions { pooling, max_tokens: 256, batch_size: 4, normalize: false, precision: Precision::F32 };
        let kernels = encoder.embed(&texts, &options).unwrap();
        ablate::model::fused::set_enabled(false);
        let burn = encoder.embed(&texts, &options);
        ablate::model::fused::set_enabled(true);
        for (k, b) in kernels.iter().zip(&burn.unwrap()) {
            let worst = k.embedding.iter().zip(&b.embedding).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let scale = b.embedding.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(worst <= 1e-4 * scale.max(1.0), "{}, {} tokens: off by {worst} (values up to {scale})", path.display(), k.tokens.len());
        }
    }
}
