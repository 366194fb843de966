//! Captions per second for the frozen text encoders on the CPU (burn Flex).
//!
//!     cargo bench --bench text_encoders                 # both encoders
//!     cargo bench --bench text_encoders -- minilm 1024  # one encoder, N captions
//!     scripts/bench-text-vs-pytorch                     # interleaved with the PyTorch anchor
//!
//! Captions are real COCO captions from SugarCrepe (data/sugarcrepe, vendored),
//! embedded at batch 64 with the encoders' default pooling and max_tokens 77.
//! The Python anchor on the same captions is scripts/bench-text-reference.py;
//! results go to docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ablate::device::Cpu;
use ablate::precision::Precision;
use ablate::text::{EmbedOptions, EncoderSpec, TextEncoder};

const BATCH: usize = 64;
const MAX_TOKENS: usize = 77;

fn captions(n: usize) -> anyhow::Result<Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sugarcrepe");
    let mut out = Vec::with_capacity(n);
    for subset in ["replace_obj", "replace_att", "replace_rel", "add_obj", "swap_att"] {
        let path = root.join(format!("{subset}.json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?;
        let obj = json.as_object().ok_or_else(|| anyhow::anyhow!("{}: not an object", path.display()))?;
        let mut keys: Vec<usize> = obj.keys().filter_map(|k| k.parse().ok()).collect();
        keys.sort();
        for k in keys {
            if out.len() == n {
                return Ok(out);
            }
            out.push(obj[&k.to_string()]["caption"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(out)
}

fn bench(name: &str, path: PathBuf, n: usize) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let encoder = TextEncoder::<Cpu>::load(&EncoderSpec::resolve(path.to_str().unwrap_or_default())?, &Default::default())?;
    let load_s = t0.elapsed().as_secs_f64();
    let texts = captions(n)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let opts = EmbedOptions {
        pooling: encoder.default_pooling(),
        max_tokens: MAX_TOKENS,
        batch_size: BATCH,
        normalize: true,
        precision: Precision::F32,
    };
    encoder.embed(&refs[..BATCH.min(refs.len())], &opts)?; // warm-up
    let tokens: usize = encoder.tokenize(&refs, MAX_TOKENS)?.iter().map(|t| t.ids.len()).sum();
    let t = Instant::now();
    let out = encoder.embed(&refs, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(out.len(), refs.len());
    println!(
        "{name:8} {n:5} captions  batch {BATCH}  {:8.1} captions/s  {:9.0} tokens/s  (load {load_s:.1} s, {} threads)",
        n as f64 / secs,
        tokens as f64 / secs,
        threads()
    );
    Ok(())
}

/// The compute threads: `RAYON_NUM_THREADS` (burn Flex and gemm run on
/// rayon's global pool), else one per core.
fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let which = args.first().map(String::as_str);
    let n: Option<usize> = args.get(1).and_then(|s| s.parse().ok());
    let models =
        std::env::var_os("ABLATE_MODELS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    if !models.is_dir() {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch-models", models.display());
        return Ok(());
    }
    if which.is_none_or(|w| w == "minilm") {
        bench("minilm", models.join("all-MiniLM-L6-v2"), n.unwrap_or(1024))?;
    }
    if which.is_none_or(|w| w == "smollm2") {
        bench("smollm2", models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), n.unwrap_or(256))?;
    }
    Ok(())
}
