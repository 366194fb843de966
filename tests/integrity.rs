//! Artifacts are verified: a corrupted or deleted object makes its producer stale.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;

const PIPE: &str = r#"
[pipeline]
name = "integrity"

[axes]
seed = [0, 1]

[stages.data]
kind = "command"
run = "echo x >> @C@/data; printf 'hello world 0123456789' > $ABLATE_OUT/data.bin; echo meta > $ABLATE_OUT/meta.txt"

[stages.train]
kind = "command"
needs = ["data"]
run = "echo x >> @C@/train-${seed}; cat $ABLATE_INPUT_DATA/data.bin > $ABLATE_OUT/model.bin; echo ${seed} >> $ABLATE_OUT/model.bin"
"#;

/// Runs the pipeline and returns (plan, data key, path of data.bin's object).
fn setup(ws: &Ws) -> (PathBuf, String, PathBuf) {
    let file = ws.write("p.toml", PIPE);
    let (code, _, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let plan = ws.plan(&file);
    assert!(plan.iter().all(|r| r["status"] == "cached"));
    let data = key_of(&plan, "data");
    let show = ws.show(&data);
    let artifact = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == "data.bin").expect("data.bin artifact").clone();
    let path = ws.store().join(artifact["path"].as_str().unwrap());
    assert!(path.is_file(), "{}", path.display());
    assert_eq!(artifact["bytes"], 22);
    assert!(path.display().to_string().contains(artifact["hash"].as_str().unwrap()), "objects are named by their hash");
    (file, data, path)
}

#[test]
fn a_corrupted_object_is_detected_and_recomputed() {
    let ws = Ws::new();
    let (file, data, object) = setup(&ws);

    // Same length, different bytes: only a hash check can tell.
    let mut perms = std::fs::metadata(&object).unwrap().permissions();
    assert!(perms.readonly(), "objects are stored read-only");
    perms.set_mode(perms.mode() | 0o200);
    std::fs::set_permissions(&object, perms).unwrap();
    std::fs::write(&object, b"HELLO WORLD 0123456789").unwrap();

    let plan = ws.plan(&file);
    let row = rows(&plan, "data")[0];
    assert_eq!(row["status"], "run", "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.starts_with("artifact corrupt"), "{row}");
    assert!(reason.contains("data.bin"), "the reason names the artifact: {row}");

    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert!(keys_in(&summary, "executed").contains(&data), "{summary}");
    assert_eq!(ws.count("data"), 2, "the producer was recomputed");
    assert_eq!(std::fs::read(&object).unwrap(), b"hello world 0123456789", "the object holds the right bytes again");

    let plan = ws.plan(&file);
    assert!(plan.iter().all(|r| r["status"] == "cached"), "{plan:?}");
    let (code, summary, _) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0));
    assert!(summary["executed"].as_array().unwrap().is_empty(), "{summary}");
}

#[test]
fn a_deleted_object_is_detected_and_recomputed() {
    let ws = Ws::new();
    let (file, data, object) = setup(&ws);
    std::fs::remove_file(&object).unwrap();

    let plan = ws.plan(&file);
    let row = rows(&plan, "data")[0];
    assert_eq!(row["status"], "run", "{row}");
    assert!(row["reason"].as_str().unwrap().starts_with("artifact missing"), "{row}");
    assert!(row["reason"].as_str().unwrap().contains("data.bin"), "{row}");

    let (code, summary, out) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert!(keys_in(&summary, "executed").contains(&data));
    assert_eq!(ws.count("data"), 2);
    assert!(object.is_file());
    assert!(ws.plan(&file).iter().all(|r| r["status"] == "cached"));
}

#[test]
fn a_corrupted_input_is_caught_when_a_downstream_stage_uses_it() {
    // The downstream must not consume a rotten cached input: its producer is redone first.
    let ws = Ws::new();
    let (file, data, object) = setup(&ws);
    let mut perms = std::fs::metadata(&object).unwrap().permissions();
    perms.set_mode(perms.mode() | 0o200);
    std::fs::set_permissions(&object, perms).unwrap();
    std::fs::write(&object, b"XXXXXXXXXXXXXXXXXXXXXX").unwrap();

    let (code, summary, out) = ws.run_json(&file, &["--force", "train"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert!(keys_in(&summary, "executed").contains(&data), "{summary}");
    assert_eq!(ws.count("data"), 2);
    let plan = ws.plan(&file);
    for key in stage_keys(&plan, "train") {
        let show = ws.show(&key);
        let model = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == "model.bin").unwrap().clone();
        let bytes = std::fs::read(ws.store().join(model["path"].as_str().unwrap())).unwrap();
        assert!(bytes.starts_with(b"hello world"), "train read the recomputed input, not the corrupt one");
    }
}
