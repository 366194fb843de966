//! README's "Reading artifacts from Python" snippet, run as written on a real
//! study: it must read an ingest's image shards and a text_embed cache with
//! numpy + safetensors and agree with what ablate wrote.
//!
//! Needs the models (scripts/fetch-models) and a Python with numpy and
//! safetensors (`$ABLATE_TEST_PYTHON`, else `python3`); without either it
//! skips with a message, except in CI, where `.ci/run` provides both.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const STUDY: &str = r#"
[pipeline]
name = "python-snippet"

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
images = 1100
resolution = 8

[stages.text]
kind = "text_embed"
needs = ["data"]
encoder = "minilm"
device = "cpu"
"#;

/// The README's fenced block after the `snippet: read-instance` marker.
fn snippet() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let after = readme.split("<!-- snippet: read-instance").nth(1).expect("README has the read-instance snippet");
    let code = after.split("```python\n").nth(1).expect("a python block follows the marker");
    code.split("\n```").next().unwrap().to_owned()
}

/// A Python that imports numpy and safetensors, or `None` (after saying why) outside CI.
fn python() -> Option<String> {
    let python = std::env::var("ABLATE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = Command::new(&python).args(["-c", "import numpy, safetensors"]).status().is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(std::env::var("CI").is_err(), "{python} cannot import numpy and safetensors in CI: .ci/run must install them");
    eprintln!("SKIPPED: {python} cannot import numpy and safetensors (pip install numpy safetensors, or set ABLATE_TEST_PYTHON)");
    None
}

fn artifact(ws: &Ws, show: &Value, name: &str) -> std::path::PathBuf {
    let a = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("no artifact {name}"));
    ws.store().join(a["path"].as_str().unwrap())
}

#[test]
fn the_readme_snippet_reads_image_shards_and_caption_embedding_shards() {
    let (Some(_), Some(python)) = (models_dir(), python()) else { return };
    let ws = Ws::new();
    let file = ws.write("study.toml", STUDY);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&file);
    let (data, text) = (key_of(&plan, "data"), key_of(&plan, "text"));

    let script = ws.write("read_instance.py", &snippet());
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let run = Command::new(&python)
        .current_dir(ws.root())
        .env("PATH", path)
        .arg(&script)
        .arg(ws.store())
        .args([&data, &text])
        .output()
        .expect("running python");
    assert!(run.status.success(), "snippet failed:\n{}", String::from_utf8_lossy(&run.stderr));
    let got: Value = serde_json::from_slice(&run.stdout).expect("the snippet prints one JSON object");

    // What ablate wrote, read here without the snippet's libraries.
    let ingest = ws.show(&data);
    let mut pixel_sum = 0u64;
    let index: Value = serde_json::from_slice(&std::fs::read(artifact(&ws, &ingest, "images.json")).unwrap()).unwrap();
    let shards = index["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "1,100 images make two shards");
    for shard in shards {
        let bytes = std::fs::read(artifact(&ws, &ingest, shard.as_str().unwrap())).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        pixel_sum += tensors.tensor("images").unwrap().data().iter().map(|&b| u64::from(b)).sum::<u64>();
    }
    let records = std::fs::read_to_string(artifact(&ws, &ingest, "records.jsonl")).unwrap();
    let first: Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    let embed = ws.show(&text);
    let metric =
        |name: &str| embed["metrics"].as_array().unwrap().iter().find(|m| m["name"] == name).and_then(|m| m["value"].as_f64()).unwrap();

    assert_eq!(got["images"], serde_json::json!([1100, 8, 8, 3]));
    assert_eq!(got["pixel_sum"].as_u64(), Some(pixel_sum));
    assert_eq!(got["dim"].as_f64(), Some(metric("embed.dim")));
    assert_eq!(got["rows"].as_f64(), Some(metric("embed.captions")));
    assert_eq!(got["first_image"], 0);
    assert_eq!(got["first_caption"], first["short"][0]);
    assert!((got["first_norm"].as_f64().unwrap() - 1.0).abs() < 1e-5, "MiniLM rows are L2-normalised: {got}");
    assert_eq!(got["same_rows"], true, "the sample index's rows are the shards' rows: {got}");
    let shards: Value = serde_json::from_slice(&std::fs::read(artifact(&ws, &embed, "captions.json")).unwrap()).unwrap();
    assert_eq!(shards["shards"].as_array().map(Vec::len), Some(2), "caption shards follow the two image shards");
}
