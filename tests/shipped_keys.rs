//! Every key of every shipped pipeline (`pipelines/*.toml`) is pinned in
//! `tests/fixtures/shipped_keys/NAME.json` (instance label → key). A key that
//! moves reruns finished work for everyone who ran that study, so a change
//! that moves one fails here, naming the instances it re-keyed.
//!
//! When a re-key is intended (a kind's code version bumped on purpose, a
//! shipped file edited), regenerate the fixtures on the new commit and commit
//! them with the change, saying why in the message:
//!
//! ```sh
//! ABLATE_PIN_KEYS=1 cargo test --test shipped_keys
//! ```
//!
//! Pipelines with a text encoder derive keys from the model files: without
//! `models/` they are skipped (with a message), except under CI.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ablate::pipeline::{self, Plan, SourceFile};
use ablate::stages::text_common::ENCODER;

const REGENERATE: &str = "ABLATE_PIN_KEYS=1 cargo test --test shipped_keys";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/shipped_keys")
}

fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no shipped pipelines found");
    files
}

/// Whether a stage of the file runs a frozen text encoder, whose weights its key follows.
fn needs_models(file: &Path) -> bool {
    let spec = pipeline::parse::parse(SourceFile::read(file).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    spec.stages.iter().any(|s| s.kind.params().iter().any(|p| p.name == ENCODER.name))
}

/// `stage[axis=value,...]` (axes in declaration order) → key, for every instance of the file.
fn keys(plan: &Plan) -> BTreeMap<String, String> {
    plan.bindings
        .iter()
        .map(|b| {
            let axes: Vec<String> = b
                .axes
                .iter()
                .map(|(name, value)| format!("{name}={}", value.as_str().map_or_else(|| value.to_string(), str::to_owned)))
                .collect();
            let label = if axes.is_empty() { plan.stage_name(b).to_owned() } else { format!("{}[{}]", plan.stage_name(b), axes.join(",")) };
            (label, plan.nodes[b.node].key.to_string())
        })
        .collect()
}

/// What moved between the pinned keys and the current ones, one line each.
fn differences(pinned: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Vec<String> {
    let mut lines = Vec::new();
    for (label, key) in current {
        match pinned.get(label) {
            Some(old) if old != key => lines.push(format!("  moved   {label}: {old} -> {key}")),
            Some(_) => {}
            None => lines.push(format!("  new     {label}: {key}")),
        }
    }
    for (label, key) in pinned {
        if !current.contains_key(label) {
            lines.push(format!("  gone    {label}: {key}"));
        }
    }
    lines
}

#[test]
fn every_key_of_every_shipped_pipeline_is_pinned() {
    let regenerate = std::env::var_os("ABLATE_PIN_KEYS").is_some();
    // Shipped files name data and models relative to the repository root.
    std::env::set_current_dir(root()).unwrap();
    let have_models = shipped().iter().any(|f| needs_models(f)) && common::models_dir().is_some();
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for file in shipped() {
        let name = file.file_stem().unwrap().to_str().unwrap().to_owned();
        if needs_models(&file) && !have_models {
            eprintln!("SKIPPED: {name}: its keys follow the text encoders' weights");
            continue;
        }
        let plan = pipeline::compile(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let current = keys(&plan);
        let fixture = fixtures().join(format!("{name}.json"));
        if regenerate {
            std::fs::create_dir_all(fixtures()).unwrap();
            std::fs::write(&fixture, serde_json::to_string_pretty(&current).unwrap() + "\n").unwrap();
            eprintln!("pinned {} keys of {name} in {}", current.len(), fixture.display());
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&fixture) else {
            failures.push(format!("{name}: no pinned keys ({} is missing)", fixture.display()));
            continue;
        };
        let pinned: BTreeMap<String, String> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
        let diff = differences(&pinned, &current);
        if !diff.is_empty() {
            failures.push(format!("{name} ({}):\n{}", fixture.display(), diff.join("\n")));
        }
        checked.push(name);
    }
    // A fixture without its pipeline pins nothing: a renamed or removed file must take its pins along.
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        if !root().join("pipelines").join(format!("{stem}.toml")).is_file() {
            failures.push(format!("{}: pins keys of pipelines/{stem}.toml, which is not shipped", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "shipped pipeline keys changed: every moved key reruns finished work for everyone who ran that study.\n\
         {}\n\
         If the re-key is intended, regenerate the pins on this commit and commit them with the change, saying why:\n    {REGENERATE}",
        failures.join("\n")
    );
    assert!(regenerate || !checked.is_empty(), "no shipped pipeline was checked");
}
