//! The `caption_ingest` stage through the binary.

mod common;

use std::collections::BTreeSet;

use common::*;

#[test]
fn builtin_shapes_ingest_records_artifacts_and_metrics() {
    let ws = Ws::new();
    let file = ws.write(
        "ingest.toml",
        r#"
[pipeline]
name = "ingest"

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
images = 64
resolution = 16
"#,
    );
    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&file);
    let key = key_of(&plan, "data");
    assert!(keys_in(&summary, "executed").contains(&key));

    let show = ws.show(&key);
    let artifacts = show["artifacts"].as_array().unwrap();
    let names: BTreeSet<&str> = artifacts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for name in ["images.safetensors", "records.jsonl", "negatives.jsonl", "classes.json"] {
        assert!(names.contains(name), "missing artifact {name}: {names:?}");
    }
    let metric = |name: &str| {
        show["metrics"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no metric {name}: {show}"))
            ["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(metric("ingest.images"), 64.0);
    assert_eq!(metric("ingest.train") + metric("ingest.test"), 64.0);
    assert!(metric("ingest.negatives") > 0.0);

    // The artifacts are what they claim: 64 records, a U8 tensor of 64×16×16×3.
    let path = |name: &str| {
        let a = artifacts.iter().find(|a| a["name"] == name).unwrap();
        let p = ws.store().join(a["path"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), a["bytes"].as_u64().unwrap(), "{name}: recorded size");
        p
    };
    let records = std::fs::read_to_string(path("records.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 64);
    let first: serde_json::Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    assert!(!first["short"].as_array().unwrap().is_empty() && !first["long"].as_array().unwrap().is_empty(), "{first}");
    let tensor = std::fs::read(path("images.safetensors")).unwrap();
    assert!(tensor.len() >= 64 * 16 * 16 * 3, "{} bytes", tensor.len());
    let header_len = u64::from_le_bytes(tensor[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&tensor[8..8 + header_len]).unwrap();
    assert_eq!(header["images"]["dtype"], "U8", "{header}");
    assert_eq!(header["images"]["shape"], serde_json::json!([64, 16, 16, 3]), "{header}");
    let classes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path("classes.json")).unwrap()).unwrap();
    assert!(!classes["classes"].as_array().unwrap().is_empty());

    // Deterministic: a second workspace produces byte-identical artifacts (same hashes).
    let other = Ws::new();
    let file2 = other.write("ingest.toml", &std::fs::read_to_string(&file).unwrap());
    let (code, _, out) = other.run_json(&file2, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let hashes = |s: &serde_json::Value| -> BTreeSet<String> {
        s["artifacts"].as_array().unwrap().iter().map(|a| a["hash"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(hashes(&show), hashes(&other.show(&key)));
}
