//! The repository is self-contained: a fresh clone in an empty directory plans
//! every shipped pipeline, and no tracked file points outside the clone (the
//! development layout's sibling `shared/` folder does not exist for users).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn git(args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The tracked files, or `None` (with a message) outside a git checkout.
fn tracked_files() -> Option<Vec<String>> {
    let listed = git(&["ls-files", "-z"], Path::new(REPO));
    if listed.is_none() {
        assert!(std::env::var("CI").is_err(), "{REPO} is not a git checkout with `git` on PATH in CI");
        eprintln!("SKIPPED: {REPO} is not a git checkout (or git is missing)");
    }
    Some(listed?.split('\0').filter(|f| !f.is_empty()).map(str::to_owned).collect())
}

/// A path a pipeline names that leaves the directory it is run from: absolute,
/// or climbing with `..`. Source values like `fashion-mnist:DIR` are judged by
/// their part after the colon.
fn leaves_the_clone(value: &str) -> bool {
    let path = value.split_once(':').map_or(value, |(_, rest)| rest);
    path.starts_with('/') || path.split('/').any(|part| part == "..")
}

fn string_values(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| string_values(v, out)),
        toml::Value::Table(table) => table.values().for_each(|v| string_values(v, out)),
        _ => {}
    }
}

#[test]
fn the_path_check_tells_inside_from_outside() {
    for outside in ["../data/sugarcrepe", "/usr/share/datasets/fashion-mnist", "fashion-mnist:/data", "a/../../b"] {
        assert!(leaves_the_clone(outside), "{outside}");
    }
    for inside in ["data/sugarcrepe", "jsonl:pipelines/data/sources/manifest.jsonl", "builtin:shapes", "${encoder}", "a photo"] {
        assert!(!leaves_the_clone(inside), "{inside}");
    }
}

#[test]
fn no_tracked_file_reads_outside_the_clone() {
    let Some(files) = tracked_files() else { return };
    // Spelled in two parts so that this file does not match itself.
    let sibling = ["..", "/shared"].concat();
    let mut offenders = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(Path::new(REPO).join(file)) else { continue };
        if text.contains(&sibling) {
            offenders.push(format!("{file}: mentions {sibling}"));
        }
        if file.starts_with("pipelines/") && file.ends_with(".toml") {
            let parsed: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let mut values = Vec::new();
            string_values(&parsed, &mut values);
            offenders.extend(values.into_iter().filter(|v| leaves_the_clone(v)).map(|v| format!("{file}: names {v:?}")));
        }
    }
    assert!(offenders.is_empty(), "files that depend on paths outside a clone:\n{}", offenders.join("\n"));
}

#[test]
fn a_fresh_clone_plans_every_shipped_pipeline() {
    let Some(models) = models_dir() else { return };
    if tracked_files().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("ablate");
    git(&["clone", "--quiet", REPO, clone.to_str().unwrap()], tmp.path()).expect("git clone of the repository");
    let mut pipelines: Vec<_> = std::fs::read_dir(clone.join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    pipelines.sort();
    assert!(pipelines.len() >= 4, "{pipelines:?}");
    for pipeline in pipelines {
        let relative = pipeline.strip_prefix(&clone).unwrap();
        let out = Command::new(bin())
            .current_dir(&clone)
            .arg("--workspace")
            .arg(tmp.path().join("ws"))
            .args(["plan", relative.to_str().unwrap(), "--format", "json"])
            .env_remove("ABLATE_WORKSPACE")
            .env_remove("ABLATE_DB")
            .env("ABLATE_MODELS", &models)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ablate plan {} in a fresh clone failed:\n{stderr}", relative.display());
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!plan.as_array().unwrap().is_empty(), "{}: empty plan", relative.display());
    }
}
