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

/// Every object file under the workspace, with its bytes.
fn objects(ws: &Ws) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(&ws.store().join("objects"), &mut out);
    out
}

/// A lost, foreign or damaged `ablate.db` is refused at once (exit 2), by
/// `gc` above all: judged against an empty store every object would look
/// unreferenced. Nothing is written to the file or the objects.
#[test]
fn a_replaced_or_damaged_store_is_refused_and_gc_deletes_nothing() {
    let ws = Ws::new();
    if ws.db_url().is_some() {
        return; // about the SQLite file; PostgreSQL has no such file
    }
    let (file, _, _) = setup(&ws);
    let before = objects(&ws);
    assert!(before.len() >= 3, "{before:?}");
    let db = ws.db();
    let replace = |bytes: &[u8]| {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        std::fs::write(&db, bytes).unwrap();
    };
    let foreign = {
        let other = ws.root().join("other.db");
        let out = std::process::Command::new("python3")
            .args(["-c", &format!("import sqlite3; c = sqlite3.connect({:?}); c.execute('create table notes(x)'); c.commit()", other)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(other).unwrap()
    };
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for (case, bytes, says) in
        [("empty", &b""[..], "no ablate store"), ("foreign", &foreign, "other tables (notes)"), ("damaged", &garbage, "cannot read it")]
    {
        replace(bytes);
        for args in [&["gc"][..], &["gc", "--dry-run"], &["runs"], &["run", file.to_str().unwrap()]] {
            if case == "empty" && args[0] == "run" {
                continue; // a new store in place of a lost one is allowed
            }
            let started = std::time::Instant::now();
            let out = ws.run(args).expect_code(2);
            assert!(out.stderr.contains(says), "{case}: {}", out.describe());
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{case}: refused at once, not after a pool timeout");
            assert_eq!(std::fs::read(&db).unwrap(), bytes, "{case}: {args:?} left the file as it was");
            assert_eq!(objects(&ws), before, "{case}: {args:?} deleted no object");
        }
    }
}
