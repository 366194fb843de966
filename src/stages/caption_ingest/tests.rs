//! End-to-end tests of the kind through a `StageContext`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{CaptionIngest, PARAMS, sugarcrepe::SUBSETS};
use crate::stages::{CancelToken, NoProgress, Params, StageContext, StageKind, StageOutputs};

/// Parameters as the pipeline compiler would resolve them: given values plus defaults.
fn params(given: Value) -> Params {
    let mut map = given.as_object().cloned().unwrap_or_default();
    for spec in PARAMS {
        if let (false, Some(v)) = (map.contains_key(spec.name), spec.default_value()) {
            map.insert(spec.name.to_owned(), v);
        }
    }
    Params::from(map)
}

fn run(dir: &Path, given: Value) -> anyhow::Result<StageOutputs> {
    let mut ctx =
        StageContext::new(params(given), vec![], dir.join("out"), dir.join("state"), CancelToken::default(), Arc::new(NoProgress));
    CaptionIngest.run(&mut ctx)?;
    ctx.finish()
}

fn metrics(out: &StageOutputs) -> BTreeMap<String, f64> {
    out.metrics.iter().map(|m| (m.name.clone(), m.value)).collect()
}

fn lines(out: &StageOutputs, name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(&out.artifacts[name]).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// (shape, bytes) of all images: the shards `images.json` lists, each one
/// safetensors file with a single u8 tensor `images`, concatenated.
fn tensor(out: &StageOutputs) -> (Vec<usize>, Vec<u8>) {
    let index: crate::images::ShardIndex = serde_json::from_slice(&std::fs::read(&out.artifacts["images.json"]).unwrap()).unwrap();
    let (mut n, mut shape, mut data) = (0, Vec::new(), Vec::new());
    for name in &index.shards {
        let bytes = std::fs::read(&out.artifacts[name]).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.names(), vec!["images"]);
        let t = st.tensor("images").unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::U8);
        n += t.shape()[0];
        shape = t.shape().to_vec();
        data.extend_from_slice(t.data());
    }
    shape[0] = n;
    assert_eq!((n, shape[1]), (index.n, index.side));
    (shape, data)
}

fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn err_text(r: anyhow::Result<StageOutputs>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn check_rejects_bad_parameters() {
    let check = |given: Value| CaptionIngest.check(&params(given)).err().map(|e| (e.param, e.message));
    assert!(check(json!({"source": "builtin:shapes"})).is_none());
    assert!(check(json!({"source": "jsonl:/nonexistent/m.jsonl"})).is_none(), "no file checks at compile time");
    let (param, msg) = check(json!({"source": "hf:foo"})).unwrap();
    assert_eq!(param, "source");
    assert!(msg.contains("builtin:shapes") && msg.contains("sugarcrepe:DIR"), "{msg}");
    assert_eq!(check(json!({"source": "builtin:cubes"})).unwrap().0, "source");
    assert_eq!(check(json!({"source": "coco:"})).unwrap().0, "source");
    assert_eq!(check(json!({"source": "coco:/x/captions.json"})).unwrap().0, "image_root");
    assert_eq!(check(json!({"source": "sugarcrepe:/x"})).unwrap().0, "image_root");
    assert!(check(json!({"source": "sugarcrepe:/x", "image_root": "/y"})).is_none());
    assert_eq!(check(json!({"source": "builtin:shapes", "images": 0})).unwrap().0, "images");
    assert_eq!(check(json!({"source": "builtin:shapes", "resolution": 4})).unwrap().0, "resolution");
    assert_eq!(check(json!({"source": "builtin:shapes", "resolution": 2048})).unwrap().0, "resolution");
    assert_eq!(check(json!({"source": "builtin:shapes", "max_objects": 4})).unwrap().0, "max_objects");
    assert_eq!(check(json!({"source": "builtin:shapes", "test_fraction": 1.0})).unwrap().0, "test_fraction");
    assert_eq!(check(json!({"source": "builtin:shapes", "test_fraction": -0.1})).unwrap().0, "test_fraction");
}

#[test]
fn shapes_end_to_end_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let given = json!({"source": "builtin:shapes", "images": 300, "resolution": 16, "seed": 7});
    let a = run(&tmp.path().join("a"), given.clone()).unwrap();
    let b = run(&tmp.path().join("b"), given).unwrap();
    let c = run(&tmp.path().join("c"), json!({"source": "builtin:shapes", "images": 300, "resolution": 16, "seed": 8})).unwrap();
    let names = ["classes.json", "images.json", "images/00000.safetensors", "negatives.jsonl", "records.jsonl"];
    assert_eq!(a.artifacts.keys().cloned().collect::<Vec<_>>(), {
        let mut n = names.map(String::from).to_vec();
        n.sort();
        n
    });
    for name in names {
        let read = |o: &StageOutputs| std::fs::read(&o.artifacts[name]).unwrap();
        assert_eq!(read(&a), read(&b), "{name} differs for the same seed");
        if name != "classes.json" && name != "images.json" {
            assert_ne!(read(&a), read(&c), "{name} identical for different seeds");
        }
    }

    let (shape, data) = tensor(&a);
    assert_eq!(shape, vec![300, 16, 16, 3]);
    assert_eq!(data.len(), 300 * 16 * 16 * 3);

    let records = lines(&a, "records.jsonl");
    assert_eq!(records.len(), 300);
    let classes: Value = serde_json::from_str(&std::fs::read_to_string(&a.artifacts["classes.json"]).unwrap()).unwrap();
    let n_classes = classes["classes"].as_array().unwrap().len();
    assert!(n_classes >= 5);
    assert!(classes["templates"].as_array().unwrap().iter().all(|t| t.as_str().unwrap().contains("{}")));
    let mut n_test = 0;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i);
        assert!((r["label"].as_u64().unwrap() as usize) < n_classes);
        assert_eq!(r["short"].as_array().unwrap().len(), 1);
        assert_eq!(r["long"].as_array().unwrap().len(), 1);
        n_test += (r["split"] == "test") as usize;
        assert!(r["split"] == "test" || r["split"] == "train");
    }
    assert_eq!(n_test, 60);

    let negatives = lines(&a, "negatives.jsonl");
    for n in &negatives {
        assert!((n["index"].as_u64().unwrap() as usize) < 300);
        assert!(SUBSETS.contains(&n["subset"].as_str().unwrap()));
        assert_ne!(n["positive"], n["negative"]);
    }
    let m = metrics(&a);
    assert_eq!(m["ingest.images"], 300.0);
    assert_eq!(m["ingest.test"], 60.0);
    assert_eq!(m["ingest.train"], 240.0);
    assert_eq!(m["ingest.negatives"], negatives.len() as f64);
    assert_eq!(m["ingest.skipped"], 0.0);
}

#[test]
fn cancellation_stops_the_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let cancel = CancelToken::default();
    cancel.cancel();
    let mut ctx = StageContext::new(
        params(json!({"source": "builtin:shapes"})),
        vec![],
        tmp.path().join("out"),
        tmp.path().join("state"),
        cancel,
        Arc::new(NoProgress),
    );
    let err = CaptionIngest.run(&mut ctx).unwrap_err();
    assert!(err.is::<crate::stages::Interrupted>());
}

/// A manifest with three good lines (two labelled) and the given extra lines.
fn jsonl_fixture(dir: &Path, extra: &[&str]) -> PathBuf {
    write_png(&dir.join("img/a.png"), 20, 10, [255, 0, 0]);
    write_png(&dir.join("img/b.png"), 8, 8, [0, 255, 0]);
    write_png(&dir.join("img/c.png"), 64, 64, [0, 0, 255]);
    let mut text = [
        r#"{"image": "img/a.png", "captions": ["a red thing"], "label": "red"}"#,
        "",
        r#"{"image": "img/b.png", "captions": ["green", "a green square"], "long_captions": ["A long green description."]}"#,
        r#"{"image": "img/c.png", "captions": ["blue"], "label": "blue", "extra": 1}"#,
    ]
    .join("\n");
    for line in extra {
        text.push('\n');
        text.push_str(line);
    }
    let path = dir.join("manifest.jsonl");
    std::fs::write(&path, text + "\n").unwrap();
    path
}

#[test]
fn jsonl_source() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = jsonl_fixture(tmp.path(), &[]);
    let out = run(tmp.path(), json!({"source": format!("jsonl:{}", manifest.display()), "resolution": 8})).unwrap();
    let (shape, data) = tensor(&out);
    assert_eq!(shape, vec![3, 8, 8, 3]);
    assert_eq!(&data[0..3], &[255, 0, 0]);
    assert_eq!(&data[8 * 8 * 3..8 * 8 * 3 + 3], &[0, 255, 0]);
    let records = lines(&out, "records.jsonl");
    assert_eq!(records[0]["label"], 0);
    assert_eq!(records[1]["label"], Value::Null);
    assert_eq!(records[2]["label"], 1);
    assert_eq!(records[1]["short"], json!(["green", "a green square"]));
    assert_eq!(records[1]["long"], json!(["A long green description."]));
    assert_eq!(records[0]["long"], json!(["a red thing"]));
    assert_eq!(records[2]["source"], "img/c.png");
    let classes: Value = serde_json::from_str(&std::fs::read_to_string(&out.artifacts["classes.json"]).unwrap()).unwrap();
    assert_eq!(classes["classes"], json!(["red", "blue"]));
    assert_eq!(std::fs::read_to_string(&out.artifacts["negatives.jsonl"]).unwrap(), "");

    // `images` caps the count, first in file order.
    let capped = run(&tmp.path().join("cap"), json!({"source": format!("jsonl:{}", manifest.display()), "images": 2})).unwrap();
    assert_eq!(tensor(&capped).0, vec![2, 32, 32, 3]);
}

#[test]
fn jsonl_errors_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = jsonl_fixture(tmp.path(), &[r#"{"image": "img/a.png", "captions": ["x"]"#]);
    let err = err_text(run(tmp.path(), json!({"source": format!("jsonl:{}", manifest.display())})));
    assert!(err.contains("manifest.jsonl line 5"), "{err}");
    // Bad JSON is an error even under skip.
    let err = err_text(run(tmp.path(), json!({"source": format!("jsonl:{}", manifest.display()), "on_error": "skip"})));
    assert!(err.contains("line 5"), "{err}");

    let manifest =
        jsonl_fixture(tmp.path(), &[r#"{"image": "img/missing.png", "captions": ["x"]}"#, r#"{"image": "img/a.png", "captions": [" "]}"#]);
    let err = err_text(run(&tmp.path().join("r1"), json!({"source": format!("jsonl:{}", manifest.display())})));
    assert!(err.contains("missing.png") && err.contains("line 5"), "{err}");
    let out = run(&tmp.path().join("r2"), json!({"source": format!("jsonl:{}", manifest.display()), "on_error": "skip"})).unwrap();
    assert_eq!(metrics(&out)["ingest.skipped"], 2.0);
    assert_eq!(metrics(&out)["ingest.images"], 3.0);

    // image_root overrides the manifest's directory.
    let other = tmp.path().join("elsewhere");
    write_png(&other.join("img/a.png"), 8, 8, [1, 2, 3]);
    let manifest = tmp.path().join("only_a.jsonl");
    std::fs::write(&manifest, r#"{"image": "img/a.png", "captions": ["x"]}"#).unwrap();
    let out = run(
        &tmp.path().join("r3"),
        json!({"source": format!("jsonl:{}", manifest.display()), "image_root": other.display().to_string(), "resolution": 8}),
    )
    .unwrap();
    assert_eq!(&tensor(&out).1[0..3], &[1, 2, 3]);
}

#[test]
fn coco_source() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("val");
    write_png(&root.join("1.png"), 40, 30, [10, 20, 30]);
    write_png(&root.join("2.png"), 30, 40, [40, 50, 60]);
    let coco = json!({
        "info": {},
        "images": [{"id": 2, "file_name": "2.png", "width": 30}, {"id": 1, "file_name": "1.png"}, {"id": 3, "file_name": "3.png"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "first caption of one"},
            {"id": 11, "image_id": 2, "caption": "only caption of two"},
            {"id": 12, "image_id": 1, "caption": "second caption of one "},
            {"id": 13, "image_id": 3, "caption": "three"}
        ]
    });
    let path = tmp.path().join("captions.json");
    std::fs::write(&path, coco.to_string()).unwrap();
    let source = format!("coco:{}", path.display());
    let root_s = root.display().to_string();

    let err = err_text(run(&tmp.path().join("r1"), json!({"source": source, "image_root": root_s})));
    assert!(err.contains("3.png"), "{err}");

    let out = run(&tmp.path().join("r2"), json!({"source": source, "image_root": root_s, "on_error": "skip", "resolution": 8})).unwrap();
    let records = lines(&out, "records.jsonl");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["source"], "2.png");
    assert_eq!(records[1]["short"], json!(["first caption of one", "second caption of one"]));
    assert_eq!(records[1]["long"], records[1]["short"]);
    assert_eq!(records[1]["label"], Value::Null);
    let (shape, data) = tensor(&out);
    assert_eq!(shape, vec![2, 8, 8, 3]);
    assert_eq!(&data[0..3], &[40, 50, 60]);
    assert_eq!(metrics(&out)["ingest.skipped"], 1.0);
    let classes: Value = serde_json::from_str(&std::fs::read_to_string(&out.artifacts["classes.json"]).unwrap()).unwrap();
    assert_eq!(classes["classes"], json!([]));

    // An empty caption names the annotation id.
    let mut bad = coco.clone();
    bad["annotations"][1]["caption"] = json!("  ");
    std::fs::write(&path, bad.to_string()).unwrap();
    let err = err_text(run(&tmp.path().join("r3"), json!({"source": source, "image_root": root_s})));
    assert!(err.contains("annotation 11") && err.contains("captions.json"), "{err}");
}

#[test]
fn sugarcrepe_on_the_real_files() {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sugarcrepe");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("val2017");
    // The first filenames in processing order: add_att keys "0" and "1", and one from swap_obj.
    let read =
        |subset: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(real.join(format!("{subset}.json"))).unwrap()).unwrap() };
    let add_att = read("add_att");
    let swap_obj = read("swap_obj");
    let mut made = vec![
        add_att["0"]["filename"].as_str().unwrap().to_owned(),
        add_att["1"]["filename"].as_str().unwrap().to_owned(),
        swap_obj["0"]["filename"].as_str().unwrap().to_owned(),
    ];
    let mut seen = std::collections::HashSet::new();
    made.retain(|m| seen.insert(m.clone()));
    for (k, name) in made.iter().enumerate() {
        // PNG content under the .jpg name: decoding sniffs the format.
        write_png(&root.join(name), 64, 48, [k as u8 * 50, 100, 200]);
    }
    let source = format!("sugarcrepe:{}", real.display());
    let root_s = root.display().to_string();
    let err = err_text(run(&tmp.path().join("r1"), json!({"source": source, "image_root": root_s, "images": 10})));
    assert!(err.contains(".jpg"), "{err}");

    let out = run(&tmp.path().join("r2"), json!({"source": source, "image_root": root_s, "on_error": "skip", "resolution": 16})).unwrap();
    let records = lines(&out, "records.jsonl");
    assert_eq!(records.len(), made.len());
    assert_eq!(records[0]["source"], made[0].as_str());
    let negatives = lines(&out, "negatives.jsonl");
    for n in &negatives {
        let i = n["index"].as_u64().unwrap() as usize;
        assert!(i < records.len());
        assert!(records[i]["short"].as_array().unwrap().contains(&n["positive"]));
        assert!(SUBSETS.contains(&n["subset"].as_str().unwrap()));
    }
    assert!(negatives.iter().any(|n| n["subset"] == "add_att" && n["index"] == 0));
    assert!(negatives.iter().any(|n| n["subset"] == "swap_obj"));
    let m = metrics(&out);
    assert_eq!(m["ingest.missing_subsets"], 0.0);
    assert!(m["ingest.skipped"] > 1000.0, "{m:?}");
    assert_eq!(tensor(&out).0, vec![made.len(), 16, 16, 3]);

    // Missing subset files are skipped with a count.
    let partial = tmp.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(real.join("add_att.json"), partial.join("add_att.json")).unwrap();
    let out = run(
        &tmp.path().join("r3"),
        json!({"source": format!("sugarcrepe:{}", partial.display()), "image_root": root_s, "on_error": "skip", "images": 2}),
    )
    .unwrap();
    let m = metrics(&out);
    assert_eq!(m["ingest.missing_subsets"], 6.0);
    assert_eq!(m["ingest.images"], 2.0);
    assert!(lines(&out, "negatives.jsonl").iter().all(|n| n["subset"] == "add_att"));
}

/// Writes a tiny Fashion-MNIST-shaped IDX set: `n` 28×28 images per file.
fn write_idx(dir: &Path, set: &str, n: usize, first_label: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for i in 0..n {
        images.extend(std::iter::repeat_n((i * 20) as u8, 28 * 28));
        labels.push((first_label + i as u8) % 10);
    }
    std::fs::write(dir.join(format!("{set}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{set}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn fashion_mnist_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fm");
    write_idx(&dir, "train", 6, 0);
    write_idx(&dir, "t10k", 2, 9);
    let source = format!("fashion-mnist:{}", dir.display());
    let out = run(&tmp.path().join("r1"), json!({"source": source, "resolution": 8, "test_fraction": 0.9})).unwrap();
    let records = lines(&out, "records.jsonl");
    assert_eq!(records.len(), 8);
    let splits: Vec<&str> = records.iter().map(|r| r["split"].as_str().unwrap()).collect();
    assert_eq!(splits, ["train", "train", "train", "train", "train", "train", "test", "test"], "official split");
    assert_eq!(records[6]["label"], 9);
    assert_eq!(records[7]["label"], 0);
    assert_eq!(records[6]["short"], json!(["a photo of an ankle boot."]));
    assert_eq!(records[1]["source"], "train-images-idx3-ubyte#1");
    let (shape, data) = tensor(&out);
    assert_eq!(shape, vec![8, 8, 8, 3]);
    assert!(data[8 * 8 * 3..2 * 8 * 8 * 3].iter().all(|&p| p == 20), "gray 20 → RGB 20");
    let negatives = lines(&out, "negatives.jsonl");
    assert_eq!(negatives.len(), 8);
    for n in &negatives {
        assert_eq!(n["subset"], "replace_obj");
        assert_ne!(n["positive"], n["negative"]);
    }
    let classes: Value = serde_json::from_str(&std::fs::read_to_string(&out.artifacts["classes.json"]).unwrap()).unwrap();
    assert_eq!(classes["classes"].as_array().unwrap().len(), 10);
    let m = metrics(&out);
    assert_eq!((m["ingest.train"], m["ingest.test"]), (6.0, 2.0));

    // The cap is shared between the splits in proportion.
    let out = run(&tmp.path().join("r2"), json!({"source": source, "images": 4})).unwrap();
    let m = metrics(&out);
    assert_eq!((m["ingest.train"], m["ingest.test"]), (3.0, 1.0));

    // Gzip-compressed files (as Debian ships them) read the same as plain ones.
    let gz = tmp.path().join("gz");
    write_idx(&gz, "train", 6, 0);
    write_idx(&gz, "t10k", 2, 9);
    for entry in std::fs::read_dir(&gz).unwrap() {
        let path = entry.unwrap().path();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &std::fs::read(&path).unwrap()).unwrap();
        std::fs::write(format!("{}.gz", path.display()), encoder.finish().unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
    let params = json!({"source": format!("fashion-mnist:{}", gz.display()), "resolution": 8});
    let from_gz = run(&tmp.path().join("r3"), params).unwrap();
    let plain = run(&tmp.path().join("r3b"), json!({"source": source, "resolution": 8})).unwrap();
    assert_eq!(tensor(&from_gz), tensor(&plain));
    // A truncated archive is an error naming the file.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::write(bad.join(name), [0x1f, 0x8b, 8, 0]).unwrap();
    }
    let err = err_text(run(&tmp.path().join("r5"), json!({"source": format!("fashion-mnist:{}", bad.display())})));
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
    let err = err_text(run(&tmp.path().join("r4"), json!({"source": "fashion-mnist:/nonexistent/fm"})));
    assert!(err.contains("/nonexistent/fm/train-images-idx3-ubyte"), "{err}");
}

/// A tar shard of `(member, bytes)`, in order.
fn write_tar(path: &Path, members: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    tar.finish().unwrap();
}

fn encoded(rgb: [u8; 3], format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(12, 8, image::Rgb(rgb)));
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Two shards as img2dataset writes them: keys in order, `.jpg`/`.png`/
/// `.webp` images, `.txt` captions and `.json` metadata with a recaption.
fn webdataset_fixture(dir: &Path) -> String {
    use image::ImageFormat::{Jpeg, Png, WebP};
    let json = |long: &str| format!(r#"{{"url": "http://example.org/x", "recaption": "{long}", "width": 12}}"#).into_bytes();
    write_tar(
        &dir.join("shards/00000.tar"),
        &[
            ("000000000.jpg", encoded([250, 0, 0], Jpeg)),
            ("000000000.txt", b"a red square\n".to_vec()),
            ("000000000.json", json("A large red square fills the whole picture.")),
            ("000000001.png", encoded([0, 250, 0], Png)),
            ("000000001.txt", b"a green square".to_vec()),
            ("000000001.json", json("Green, edge to edge.")),
        ],
    );
    write_tar(
        &dir.join("shards/00001.tar"),
        &[
            ("000010000.webp", encoded([0, 0, 250], WebP)),
            ("000010000.txt", b"a blue square".to_vec()),
            ("000010000.json", json("A blue square on nothing else.")),
        ],
    );
    format!("webdataset:{}/shards/{{00000..00001}}.tar", dir.display())
}

#[test]
fn webdataset_source() {
    let tmp = tempfile::tempdir().unwrap();
    let source = webdataset_fixture(tmp.path());
    let out = run(tmp.path(), json!({"source": source, "resolution": 8, "long_field": "recaption"})).unwrap();
    let (shape, data) = tensor(&out);
    assert_eq!(shape, vec![3, 8, 8, 3]);
    let pixel = |i: usize| &data[i * 8 * 8 * 3..i * 8 * 8 * 3 + 3];
    assert!(pixel(0)[0] > 240 && pixel(0)[1] < 10, "jpeg: {:?}", pixel(0));
    assert_eq!(pixel(1), &[0, 250, 0], "png");
    assert_eq!(pixel(2), &[0, 0, 250], "webp (lossless)");
    let records = lines(&out, "records.jsonl");
    assert_eq!(records[0]["short"], json!(["a red square"]));
    assert_eq!(records[0]["long"], json!(["A large red square fills the whole picture."]));
    assert_eq!(records[2]["source"], "00001.tar/000010000");
    assert_eq!(records[1]["label"], Value::Null);
    assert_eq!(metrics(&out)["ingest.images"], 3.0);

    // Without long_field, long repeats short (downstream `captions = "long"` is refused when compiling).
    let out = run(&tmp.path().join("short"), json!({"source": source, "resolution": 8, "images": 2})).unwrap();
    let records = lines(&out, "records.jsonl");
    assert_eq!(records.len(), 2, "`images` caps the count, first in shard order");
    assert_eq!(records[1]["long"], json!(["a green square"]));
}

#[test]
fn webdataset_errors_name_the_shard_and_the_member() {
    let tmp = tempfile::tempdir().unwrap();
    let source = webdataset_fixture(tmp.path());
    write_tar(
        &tmp.path().join("shards/00001.tar"),
        &[
            ("000010000.jpg", b"not a jpeg".to_vec()),
            ("000010000.txt", b"a blue square".to_vec()),
            ("000010001.png", encoded([9, 9, 9], image::ImageFormat::Png)),
            ("000010001.txt", b"  ".to_vec()),
            ("000010002.png", encoded([9, 9, 9], image::ImageFormat::Png)),
            ("000010002.txt", b"grey".to_vec()),
            ("000010002.json", br#"{"recaption": 3}"#.to_vec()),
            ("000010003.txt", b"no image".to_vec()),
        ],
    );
    let given = |extra: Value| {
        let mut v = json!({"source": source, "resolution": 8, "long_field": "recaption"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    let err = err_text(run(&tmp.path().join("a"), given(json!({}))));
    assert!(err.contains("00001.tar: member 000010000.jpg: cannot decode image"), "{err}");
    let out = run(&tmp.path().join("b"), given(json!({"on_error": "skip"}))).unwrap();
    assert_eq!(metrics(&out)["ingest.skipped"], 4.0);
    assert_eq!(metrics(&out)["ingest.images"], 2.0);

    let only = |name: &str, members: &[(&str, Vec<u8>)]| {
        let path = tmp.path().join(name);
        write_tar(&path, members);
        let src = format!("webdataset:{}", path.display());
        err_text(run(&tmp.path().join(format!("{name}.out")), json!({"source": src, "long_field": "recaption"})))
    };
    let png = || encoded([1, 2, 3], image::ImageFormat::Png);
    let err = only("empty.tar", &[("k.png", png()), ("k.txt", b" \n".to_vec())]);
    assert!(err.contains("empty.tar: member k.txt: empty caption"), "{err}");
    let err = only("field.tar", &[("k.png", png()), ("k.txt", b"x".to_vec()), ("k.json", br#"{"recaption": 3}"#.to_vec())]);
    assert!(err.contains("field.tar: member k.json: field \"recaption\" (long_field) is not a string"), "{err}");
    let err = only("nojson.tar", &[("k.png", png()), ("k.txt", b"x".to_vec())]);
    assert!(err.contains("nojson.tar: member k.json: missing"), "{err}");
    let err = only("noimage.tar", &[("k.txt", b"x".to_vec())]);
    assert!(err.contains("noimage.tar: sample k: no image member"), "{err}");

    // A shard that is not a tar file fails even under skip.
    std::fs::write(tmp.path().join("junk.tar"), vec![7u8; 1000]).unwrap();
    let src = format!("webdataset:{}", tmp.path().join("junk.tar").display());
    let err = err_text(run(&tmp.path().join("junk"), json!({"source": src, "on_error": "skip"})));
    assert!(err.contains("junk.tar"), "{err}");
}

#[test]
fn webdataset_parameters_are_checked_when_compiling() {
    let check = |given: Value| CaptionIngest.check(&params(given)).err().map(|e| (e.param, e.message));
    assert!(check(json!({"source": "webdataset:d/{0..9}.tar", "long_field": "caption_long"})).is_none());
    let (param, msg) = check(json!({"source": "webdataset:d/{0..9.tar"})).unwrap();
    assert_eq!((param.as_str(), msg.contains("without a `}`")), ("source", true), "{msg}");
    assert_eq!(check(json!({"source": "webdataset:"})).unwrap().0, "source");
    assert_eq!(check(json!({"source": "builtin:shapes", "long_field": "x"})).unwrap().0, "long_field");
    assert_eq!(check(json!({"source": "webdataset:a.tar", "long_field": " "})).unwrap().0, "long_field");
}
