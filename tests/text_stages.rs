//! The text-embedding cache and the text-pair similarity analysis, through
//! the binary, on the real MiniLM (and SmolLM2) from scripts/fetch-models.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// Two encoders × two caption lengths of text_embed under a grid that also
/// varies loss and seed downstream: each (encoder, captions) is embedded once.
const GRID: &str = r#"
[pipeline]
name = "embed-grid"

[axes]
encoder = ["minilm", "@SMOL@"]
captions = ["short", "long"]
loss = ["infonce", "cosine"]
seed = [0, 1, 2]

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
images = 6
resolution = 8

[stages.text]
kind = "text_embed"
needs = ["data"]
encoder = "${encoder}"
captions = "${captions}"
device = "cpu"

[stages.train]
kind = "command"
needs = ["text"]
run = "ls $ABLATE_INPUT_TEXT > $ABLATE_OUT/inputs.txt; echo ${loss} ${seed} >> $ABLATE_OUT/inputs.txt"
"#;

/// Reads a safetensors file's header: tensor name → (dtype, shape), and the metadata.
fn safetensors_header(path: &std::path::Path) -> (serde_json::Map<String, Value>, serde_json::Map<String, Value>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header.remove("__metadata__").and_then(|m| m.as_object().cloned()).unwrap_or_default();
    (header, meta)
}

#[test]
fn each_encoder_and_caption_set_is_embedded_once_for_the_whole_grid() {
    let Some(models) = models_dir() else { return };
    let ws = Ws::new();
    let smol = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let file = ws.write("grid.toml", &GRID.replace("@SMOL@", smol.to_str().unwrap()));
    let plan = ws.plan(&file);
    assert_eq!(rows(&plan, "text").len(), 4);
    assert_eq!(rows(&plan, "train").len(), 24);
    let (code, summary, out) = ws.run_json(&file, &["-j", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let executed = keys_in(&summary, "executed");
    let text_keys = stage_keys(&plan, "text");
    assert_eq!(executed.intersection(&text_keys).count(), 4, "one encoder run per (encoder, captions): {summary}");
    assert_eq!(executed.len(), 1 + 4 + 24);

    // The cache's layout and metadata.
    let short_minilm =
        rows(&plan, "text").into_iter().find(|r| r["axes"]["encoder"] == "minilm" && r["axes"]["captions"] == "short").unwrap();
    let show = ws.show(short_minilm["key"].as_str().unwrap());
    assert_eq!(show["instance"]["params"]["pooling"], "mean", "BERT encoders default to mean pooling");
    assert_eq!(show["instance"]["params"]["encoder_sha256"].as_str().unwrap().len(), 64);
    let artifact = |name: &str| {
        let a = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("no {name}"));
        ws.store().join(a["path"].as_str().unwrap())
    };
    let (tensors, meta) = safetensors_header(&artifact("embeddings.safetensors"));
    assert_eq!(meta["pooling"], "mean");
    assert_eq!(meta["dim"], "384");
    let index: Value = serde_json::from_slice(&std::fs::read(artifact("captions.json")).unwrap()).unwrap();
    assert_eq!((index["dim"].as_u64(), index["rows"].as_u64()), (Some(384), Some(6)), "one short caption per builtin image: {index}");
    assert_eq!(index["shards"], serde_json::json!([{"name": "captions/00000.safetensors", "rows": 6}]));
    assert_eq!(index["samples"]["shapes/5"], serde_json::json!([5, 6]), "sample key -> rows [start, end)");
    let (shard, _) = safetensors_header(&artifact("captions/00000.safetensors"));
    assert_eq!(shard["captions"]["shape"], serde_json::json!([6, 384]));
    assert_eq!(shard["captions"]["dtype"], "F32");
    assert_eq!(shard["caption_image"]["dtype"], "I64");
    assert_eq!(tensors["negative_positive"]["shape"], tensors["negative_negative"]["shape"]);
    assert_eq!(tensors["class_prompts"]["shape"][0], 5 * 4, "5 shape classes × 4 templates");
    let metrics: BTreeSet<String> = show["metrics"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect();
    for m in ["embed.texts", "embed.unique_texts", "embed.truncated", "embed.texts_per_s"] {
        assert!(metrics.contains(m), "{m} missing: {metrics:?}");
    }
    let smol_row = rows(&plan, "text").into_iter().find(|r| r["axes"]["encoder"] != "minilm").unwrap();
    assert_eq!(ws.show(smol_row["key"].as_str().unwrap())["instance"]["params"]["pooling"], "eos", "decoders default to <eos> pooling");

    // A rerun encodes nothing.
    let (code, summary, _) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0));
    assert!(keys_in(&summary, "executed").is_empty());
}

#[test]
fn the_cache_key_follows_the_model_files() {
    let Some(models) = models_dir() else { return };
    let ws = Ws::new();
    // A copy of MiniLM whose weights then change: the text_embed key must change.
    let copy = ws.root().join("minilm-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(models.join("all-MiniLM-L6-v2")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    let text = format!(
        "[pipeline]\nname = \"k\"\n\n[stages.data]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\nimages = 4\n\n\
         [stages.text]\nkind = \"text_embed\"\nneeds = [\"data\"]\nencoder = \"{}\"\n",
        copy.display()
    );
    let file = ws.write("k.toml", &text);
    let before = key_of(&ws.plan(&file), "text");
    let config = copy.join("config.json");
    let edited = std::fs::read_to_string(&config).unwrap().replace("\"hidden_act\"", "\"_ablate_note\": 1, \"hidden_act\"");
    std::fs::write(&config, edited).unwrap();
    let after = key_of(&ws.plan(&file), "text");
    assert_ne!(before, after, "a changed model file must change the cache key");
}

/// `NAME.toml`: a shapes ingest and one `text_embed` stage `text` with `params` (TOML lines).
fn embed_study(ws: &Ws, name: &str, params: &str) -> std::path::PathBuf {
    ws.write(
        &format!("{name}.toml"),
        &format!(
            "[pipeline]\nname = \"{name}\"\n\n[stages.data]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\n\n\
             [stages.text]\nkind = \"text_embed\"\nneeds = [\"data\"]\n{params}\n"
        ),
    )
}

#[test]
fn max_tokens_leaves_room_for_text_or_is_a_located_error() {
    let ws = Ws::new();
    let file = embed_study(&ws, "short", "encoder = \"minilm\"\nmax_tokens = 2");
    let out = ws.run(&["plan", file.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("stages.text.max_tokens") && out.stderr.contains("is below 3"), "{}", out.describe());
    if models_dir().is_some() {
        let out = ws.run(&["embed", "--encoder", "minilm", "--max-tokens", "2", "hello"]).expect_code(2);
        assert!(out.stderr.contains("--max-tokens 2 is below 3"), "{}", out.describe());
        ws.run(&["embed", "--encoder", "minilm", "--max-tokens", "3", "hello"]).ok();
    }
}

#[test]
fn max_tokens_defaults_to_the_encoders_own_limit_and_may_not_exceed_it() {
    if models_dir().is_none() {
        return;
    }
    let ws = Ws::new();
    // MiniLM: sentence_bert_config.json's max_seq_length; SmolLM2: the GGUF's context length.
    for (encoder, limit) in [("minilm", 256), ("smollm2", 8192)] {
        let file = embed_study(&ws, encoder, &format!("encoder = \"{encoder}\""));
        let plan = ws.plan(&file);
        let over = embed_study(&ws, &format!("{encoder}-over"), &format!("encoder = \"{encoder}\"\nmax_tokens = {}", limit + 1));
        let out = ws.run(&["plan", over.to_str().unwrap()]).expect_code(2);
        let wanted = format!("exceeds the encoder's own limit of {limit} tokens");
        assert!(
            out.stderr.contains("-over.toml:12:14:") && out.stderr.contains("stages.text.max_tokens") && out.stderr.contains(&wanted),
            "{}",
            out.describe()
        );
        let at_limit = embed_study(&ws, &format!("{encoder}-at"), &format!("encoder = \"{encoder}\"\nmax_tokens = {limit}"));
        assert_eq!(key_of(&ws.plan(&at_limit), "text"), key_of(&plan, "text"), "the default is the limit, written or not");
        let below = embed_study(&ws, &format!("{encoder}-below"), &format!("encoder = \"{encoder}\"\nmax_tokens = {}", limit - 1));
        assert_ne!(key_of(&ws.plan(&below), "text"), key_of(&plan, "text"), "max_tokens is keyed");
    }
    let out = ws.run(&["embed", "--encoder", "minilm", "--max-tokens", "257", "hello"]).expect_code(2);
    assert!(out.stderr.contains("--max-tokens 257 exceeds the encoder's own limit of 256 tokens"), "{}", out.describe());
}

#[test]
fn a_missing_encoder_is_a_located_error() {
    let ws = Ws::new();
    let file = embed_study(&ws, "bad", "encoder = \"/nonexistent/model\"");
    let out = ws.run(&["plan", file.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("bad.toml:11:11") && out.stderr.contains("stages.text.encoder"), "{}", out.describe());
    assert!(out.stderr.contains("/nonexistent/model"), "{}", out.describe());
}

#[test]
fn text_similarity_on_sugarcrepe_and_ingest_negatives() {
    if models_dir().is_none() {
        return;
    }
    let sugarcrepe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sugarcrepe");
    let ws = Ws::new();
    let text = format!(
        "[pipeline]\nname = \"sim\"\n\n[stages.data]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\nimages = 20\nresolution = 8\n\n\
         [stages.sim]\nkind = \"text_similarity\"\nneeds = [\"data\"]\nencoder = \"minilm\"\nsugarcrepe = \"{}\"\nmax_pairs = 10\ndevice = \"cpu\"\n",
        sugarcrepe.display()
    );
    let file = ws.write("sim.toml", &text);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let show = ws.show(&key_of(&ws.plan(&file), "sim"));
    let metric = |name: &str| {
        show["metrics"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no metric {name}"))["value"]
            .as_f64()
            .unwrap()
    };
    for subset in ["add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"] {
        assert_eq!(metric(&format!("similarity.sugarcrepe.{subset}.pairs")), 10.0);
        let mean = metric(&format!("similarity.sugarcrepe.{subset}.mean"));
        assert!((-1.0..=1.0).contains(&mean) && mean > 0.3, "{subset}: alike captions are similar ({mean})");
        let share = metric(&format!("similarity.sugarcrepe.{subset}.above_0.9"));
        assert!((0.0..=1.0).contains(&share));
    }
    assert_eq!(metric("similarity.sugarcrepe.all.pairs"), 70.0);
    assert!(metric("similarity.ingest.all.pairs") > 0.0);
    // Swapping words keeps the bag of words: MiniLM's mean pooling finds
    // swap pairs more alike than replacements (the homogeneity LIFT measures).
    assert!(metric("similarity.sugarcrepe.swap_att.mean") > metric("similarity.sugarcrepe.replace_obj.mean"));
    let artifact = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == "similarities.jsonl").unwrap();
    let lines = std::fs::read_to_string(ws.store().join(artifact["path"].as_str().unwrap())).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"sugarcrepe\"")).count(), 70);
}

/// A frozen training pairs the ingest's images with the cache's rows by
/// position: a cache of another ingest, or of the other caption length, is a
/// located error when planning. Its evaluation on the training split scores
/// retrieval and zero-shot (the cache has no negatives of training images, so
/// asking for the compositional suite there is one too).
#[test]
fn a_frozen_training_checks_its_cache_and_evaluates_on_the_training_split() {
    if models_dir().is_none() {
        return;
    }
    let ws = Ws::new();
    let study = |text_needs: &str, train_extra: &str| {
        format!(
            "[pipeline]\nname = \"frozen\"\n\n\
             [stages.data]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\nimages = 60\nresolution = 16\n\n\
             [stages.other]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\nimages = 60\nresolution = 16\nseed = 1\n\n\
             [stages.text]\nkind = \"text_embed\"\nneeds = [\"{text_needs}\"]\nencoder = \"minilm\"\ndevice = \"cpu\"\n\n\
             [stages.lift]\nkind = \"train\"\nneeds = [\"data\", \"text\"]\ntext = \"frozen\"\nsteps = 2\nbatch_size = 8\n{train_extra}\n\
             [stages.eval]\nkind = \"evaluate\"\nneeds = [\"lift\"]\nsplit = \"train\"\nsuites = [\"retrieval\", \"zero_shot\"]\n"
        )
    };
    let other = ws.write("other.toml", &study("other", ""));
    let out = ws.run(&["plan", other.to_str().unwrap()]).expect_code(2);
    assert!(
        out.stderr.contains("stages.lift.needs") && out.stderr.contains("embeds the captions of another caption_ingest instance"),
        "{}",
        out.describe()
    );
    let long = ws.write("long.toml", &study("data", "captions = \"long\"\n"));
    let out = ws.run(&["plan", long.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("stages.lift.captions") && out.stderr.contains("embeds the short captions"), "{}", out.describe());
    // Nor has it negatives of training images: scoring them is caught when planning.
    let compositional =
        ws.write("compositional.toml", &study("data", "").replace("suites = [\"retrieval\"", "suites = [\"compositional\", \"retrieval\""));
    let out = ws.run(&["plan", compositional.to_str().unwrap()]).expect_code(2);
    assert!(out.stderr.contains("stages.eval.split") && out.stderr.contains("negatives of test images only"), "{}", out.describe());

    let good = ws.write("good.toml", &study("data", ""));
    ws.run(&["run", good.to_str().unwrap()]).ok();
    let eval = ws.show(&key_of(&ws.plan(&good), "eval"));
    let metric = |name: &str| eval["metrics"].as_array().unwrap().iter().any(|m| m["name"] == name);
    assert!(metric("retrieval.i2t.r1") && metric("zero_shot.top1") && !metric("compositional.mean"), "{eval}");
}

/// `text_whiten`: the training fits the map on its training captions and
/// stores it with the image tower; the evaluation scores texts through the
/// same map (its caption rows are the cache's rows, whitened, normalised).
#[test]
fn a_whitened_frozen_training_stores_its_map_and_the_evaluation_applies_it() {
    use ablate::tensor_file::TensorFile;
    if models_dir().is_none() {
        return;
    }
    let ws = Ws::new();
    let file = ws.write(
        "white.toml",
        "[pipeline]\nname = \"white\"\n\n\
         [stages.data]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\nimages = 80\nresolution = 16\n\n\
         [stages.text]\nkind = \"text_embed\"\nneeds = [\"data\"]\nencoder = \"minilm\"\ndevice = \"cpu\"\n\n\
         [stages.lift]\nkind = \"train\"\nneeds = [\"data\", \"text\"]\ntext = \"frozen\"\nsteps = 2\nbatch_size = 8\ntext_whiten = 0.05\n\n\
         [stages.eval]\nkind = \"evaluate\"\nneeds = [\"lift\"]\n",
    );
    ws.run(&["run", file.to_str().unwrap()]).ok();
    let plan = ws.plan(&file);
    let artifact = |stage: &str, name: &str| {
        let show = ws.show(&key_of(&plan, stage));
        let a = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("{name}")).clone();
        ws.store().join(a["path"].as_str().unwrap())
    };
    let model: Value = serde_json::from_str(&std::fs::read_to_string(artifact("lift", "model.json")).unwrap()).unwrap();
    assert_eq!(model["text_whiten"], 0.05);
    let weights = TensorFile::open(&artifact("lift", "image_encoder.safetensors")).unwrap();
    let (mean_shape, mean) = weights.f32("text_whiten.mean").unwrap();
    let (matrix_shape, matrix) = weights.f32("text_whiten.matrix").unwrap();
    assert_eq!((mean_shape, matrix_shape), (vec![384], vec![384, 384]));
    let whiten = |row: &[f32]| -> Vec<f64> {
        let x: Vec<f64> = row.iter().zip(&mean).map(|(v, m)| f64::from(v - m)).collect();
        (0..384).map(|j| (0..384).map(|i| x[i] * f64::from(matrix[i * 384 + j])).sum()).collect()
    };

    // The cache's caption rows of each image, the records' splits.
    let cache = TensorFile::open(&artifact("text", "captions/00000.safetensors")).unwrap();
    let (_, rows) = cache.f32("captions").unwrap();
    let owner = cache.i64("caption_image").unwrap();
    let records: Vec<Value> =
        std::fs::read_to_string(artifact("data", "records.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let train: Vec<usize> = (0..owner.len()).filter(|&r| records[owner[r] as usize]["split"] == "train").collect();
    // Fit on the training captions: their whitened mean is zero.
    let mut sum = vec![0f64; 384];
    for &r in &train {
        sum.iter_mut().zip(whiten(&rows[r * 384..(r + 1) * 384])).for_each(|(s, v)| *s += v);
    }
    assert!(sum.iter().all(|s| (s / train.len() as f64).abs() < 1e-3), "whitened training captions are centred");

    // The evaluation's caption rows: the test captions, whitened and normalised.
    let eval = TensorFile::open(&artifact("eval", "embeddings.safetensors")).unwrap();
    let (_, scored) = eval.f32("captions").unwrap();
    let scored_image = eval.i64("caption_image").unwrap();
    assert!(!scored_image.is_empty());
    for (k, &image) in scored_image.iter().enumerate() {
        let r = owner.iter().position(|&o| o == image).unwrap();
        let w = whiten(&rows[r * 384..(r + 1) * 384]);
        let norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (a, b) in scored[k * 384..(k + 1) * 384].iter().zip(&w) {
            assert!((f64::from(*a) - b / norm).abs() < 1e-4, "caption {k}: evaluated {a}, expected {}", b / norm);
        }
    }
}

/// The streamed cache holds, row for row, what the encoder gives each text
/// alone: captions in record order, class prompts class-major, and the
/// negatives (with their positives) of test-split images only.
#[test]
fn the_streamed_cache_holds_each_texts_own_embedding() {
    use ablate::tensor_file::TensorFile;
    let Some(models) = models_dir() else { return };
    let ws = Ws::new();
    let file = embed_study(&ws, "rows", "encoder = \"minilm\"\ncaptions = \"long\"");
    let text = ws.write(
        "rows.toml",
        &std::fs::read_to_string(&file)
            .unwrap()
            .replace("source = \"builtin:shapes\"", "source = \"builtin:shapes\"\nimages = 30\nresolution = 8"),
    );
    let (code, _, out) = ws.run_json(&text, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&text);
    let artifact = |stage: &str, name: &str| {
        let show = ws.show(&key_of(&plan, stage));
        let a = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap().clone();
        ws.store().join(a["path"].as_str().unwrap())
    };
    let lines = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(artifact("data", name)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let records = lines("records.jsonl");
    let classes: Value = serde_json::from_str(&std::fs::read_to_string(artifact("data", "classes.json")).unwrap()).unwrap();
    let test: Vec<bool> = records.iter().map(|r| r["split"] == "test").collect();
    let negatives: Vec<Value> = lines("negatives.jsonl").into_iter().filter(|n| test[n["index"].as_u64().unwrap() as usize]).collect();
    assert!(!negatives.is_empty() && test.contains(&false), "both splits present");
    let s = |v: &Value| v.as_str().unwrap().to_owned();
    let captions: Vec<String> = records.iter().flat_map(|r| r["long"].as_array().unwrap().iter().map(s)).collect();
    let prompts: Vec<String> = classes["classes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| classes["templates"].as_array().unwrap().iter().map(move |t| s(t).replace("{}", c.as_str().unwrap())))
        .collect();
    let cache = TensorFile::open(&artifact("text", "embeddings.safetensors")).unwrap();
    // The caption rows: the shards in index order, and each sample's rows by its key.
    let index: Value = serde_json::from_slice(&std::fs::read(artifact("text", "captions.json")).unwrap()).unwrap();
    let mut caption_rows = Vec::new();
    for shard in index["shards"].as_array().unwrap() {
        let file = TensorFile::open(&artifact("text", shard["name"].as_str().unwrap())).unwrap();
        caption_rows.extend(file.f32_rows("captions").unwrap());
    }
    let mut next = 0;
    for r in &records {
        let n = r["long"].as_array().unwrap().len() as u64;
        assert_eq!(index["samples"][r["source"].as_str().unwrap()], serde_json::json!([next, next + n]), "{r}");
        next += n;
    }
    let encoder = models.join("all-MiniLM-L6-v2");
    for (tensor, texts) in [
        ("captions", captions),
        ("class_prompts", prompts),
        ("negative_negative", negatives.iter().map(|n| s(&n["negative"])).collect()),
        ("negative_positive", negatives.iter().map(|n| s(&n["positive"])).collect()),
    ] {
        let rows = if tensor == "captions" { caption_rows.clone() } else { cache.f32_rows(tensor).unwrap() };
        assert_eq!(rows.len(), texts.len(), "{tensor}");
        let want = ablate::text::embed(encoder.to_str().unwrap(), ablate::text::Pooling::Mean, 256, &texts).unwrap();
        for ((row, want), text) in rows.iter().zip(&want).zip(&texts) {
            let diff = row.iter().zip(&want.embedding).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "{tensor}: row of {text:?} differs by {diff}");
        }
    }
    let negative_row = cache.i64("negative_row").unwrap();
    assert_eq!(negative_row.len(), negatives.len());
    let state = ws.store().join("state").join(key_of(&plan, "text"));
    assert!(!state.join("embedded.f32").exists(), "the scratch rows are removed once the cache is written");
}
