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
    for name in ["images.json", "images/00000.safetensors", "records.jsonl", "negatives.jsonl", "classes.json"] {
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
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path("images.json")).unwrap()).unwrap();
    assert_eq!(index["shards"], serde_json::json!(["images/00000.safetensors"]), "{index}");
    assert_eq!((index["n"].as_u64(), index["side"].as_u64()), (Some(64), Some(16)));
    let tensor = std::fs::read(path("images/00000.safetensors")).unwrap();
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

/// A file source's key follows its files: an edited manifest reruns the
/// ingest, the original files again are the original work, and an image of
/// another size counts as a change.
#[test]
fn a_file_source_is_keyed_by_its_files() {
    let ws = Ws::new();
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/sources");
    let manifest: Vec<&str> = include_str!("../pipelines/data/sources/manifest.jsonl").lines().take(4).collect();
    let image = |line: &str| serde_json::from_str::<serde_json::Value>(line).unwrap()["image"].as_str().unwrap().to_owned();
    std::fs::create_dir_all(ws.root().join("a/images")).unwrap();
    for line in &manifest {
        std::fs::copy(sources.join(image(line)), ws.root().join("a").join(image(line))).unwrap();
    }
    let original = manifest.join("\n");
    std::fs::write(ws.root().join("a/m.jsonl"), &original).unwrap();
    let file = ws.write(
        "p.toml",
        "[pipeline]\nname = \"p\"\n[stages.data]\nkind = \"caption_ingest\"\nsource = \"jsonl:a/m.jsonl\"\nresolution = 16\n",
    );
    let key = || key_of(&ws.plan(&file), "data");
    let first = key();
    ws.run(&["run", file.to_str().unwrap()]).ok();
    assert_eq!(rows(&ws.plan(&file), "data")[0]["status"], "cached");

    // An edited caption (saved by an editor that starts UTF-8 files with a byte-order mark).
    std::fs::write(ws.root().join("a/m.jsonl"), format!("\u{feff}{}", original.replacen("a red square", "a crimson square", 1))).unwrap();
    let plan = ws.plan(&file);
    assert_eq!((plan[0]["status"].as_str(), plan[0]["reason"].as_str()), (Some("run"), Some("parameter changed (source_sha256)")));
    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!((code, keys_in(&summary, "executed").len()), (Some(0), 1), "{}", out.describe());
    let show = ws.show(&key());
    let records = show["artifacts"].as_array().unwrap().iter().find(|x| x["name"] == "records.jsonl").unwrap().clone();
    let text = std::fs::read_to_string(ws.store().join(records["path"].as_str().unwrap())).unwrap();
    assert!(text.contains("a crimson square"), "the rerun read the edited manifest: {text}");

    // The original files again: the original work, still done.
    std::fs::write(ws.root().join("a/m.jsonl"), &original).unwrap();
    assert_eq!(key(), first);
    assert_eq!(rows(&ws.plan(&file), "data")[0]["status"], "cached");

    // An image of another size behind the same name.
    let (target, other) = (image(manifest[0]), image(manifest[2]));
    assert_ne!(std::fs::metadata(sources.join(&target)).unwrap().len(), std::fs::metadata(sources.join(&other)).unwrap().len());
    std::fs::copy(sources.join(&other), ws.root().join("a").join(&target)).unwrap();
    assert_ne!(key(), first);

    // A missing manifest is a located error when planning.
    std::fs::remove_file(ws.root().join("a/m.jsonl")).unwrap();
    let out = ws.run(&["plan", file.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("stages.data.source: cannot read a/m.jsonl"), "{}", out.describe());
}

/// A webdataset source through the binary: shards listed by a brace range,
/// keyed by each shard's name, size and time (not its contents), and a
/// downstream `captions = "long"` refused without `long_field`.
#[test]
fn webdataset_shards_are_keyed_cheaply_and_long_captions_need_long_field() {
    let ws = Ws::new();
    for shard in 0..2 {
        let mut tar = tar::Builder::new(std::fs::File::create(ws.root().join(format!("s-{shard:03}.tar"))).unwrap());
        for i in 0..3 {
            let mut png = std::io::Cursor::new(Vec::new());
            image::RgbImage::from_pixel(8, 8, image::Rgb([40 * i, 0, 9])).write_to(&mut png, image::ImageFormat::Png).unwrap();
            let text = format!("sample {i} of shard {shard}");
            let json = format!(r#"{{"long": "The long caption of sample {i} of shard {shard}."}}"#);
            for (ext, bytes) in [("png", png.into_inner()), ("txt", text.into_bytes()), ("json", json.into_bytes())] {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append_data(&mut header, format!("{shard}{i:04}.{ext}"), bytes.as_slice()).unwrap();
            }
        }
        tar.finish().unwrap();
    }
    let pipeline = |long_field: &str, captions: &str| {
        format!(
            "[pipeline]\nname = \"wds\"\n[stages.data]\nkind = \"caption_ingest\"\nsource = \"webdataset:s-{{000..001}}.tar\"\nresolution = 8\n{long_field}\n\
             [stages.train]\nkind = \"train\"\nneeds = [\"data\"]\ntext = \"scratch\"\ncaptions = \"{captions}\"\nsteps = 1\nbatch_size = 2\n"
        )
    };
    let file = ws.write("wds.toml", &pipeline("", "long"));
    let out = ws.run(&["plan", file.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("wds.toml:") && out.stderr.contains("stages.train.captions"), "{}", out.describe());
    assert!(out.stderr.contains("without `long_field`"), "{}", out.describe());

    let file = ws.write("wds.toml", &pipeline("long_field = \"long\"", "long"));
    let key = || key_of(&ws.plan(&file), "data");
    let first = key();
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let show = ws.show(&first);
    let records = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == "records.jsonl").unwrap().clone();
    let text = std::fs::read_to_string(ws.store().join(records["path"].as_str().unwrap())).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert!(text.contains("The long caption of sample 2 of shard 1."), "{text}");
    let metric = |name: &str| show["metrics"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["value"].as_f64().unwrap();
    assert_eq!(metric("ingest.images"), 6.0);

    // A shard written again (a new modification time) re-keys; an unchanged one does not.
    assert_eq!(key(), first);
    let shard = std::fs::File::options().write(true).open(ws.root().join("s-001.tar")).unwrap();
    shard.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    assert_ne!(key(), first);

    // A shard the pattern lists but the disk lacks is a located error when planning.
    std::fs::remove_file(ws.root().join("s-000.tar")).unwrap();
    let out = ws.run(&["plan", file.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("stages.data.source: shard s-000.tar does not exist"), "{}", out.describe());
}
