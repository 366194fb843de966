//! `jsonl:MANIFEST`: one JSON object per line,
//! `{"image": "path", "captions": [...], "long_captions": [...]?, "label": "name"?}`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde::Deserialize;

use super::coco::TEMPLATES;
use super::dataset::{Dataset, Options, Record, resolve};
use super::imageio;
use crate::stages::StageContext;

#[derive(Deserialize)]
struct Line {
    image: String,
    captions: Vec<String>,
    #[serde(default)]
    long_captions: Option<Vec<String>>,
    #[serde(default)]
    label: Option<String>,
}

/// Where relative image paths start: `image_root`, else the manifest's folder.
pub(super) fn image_base<'a>(manifest: &'a Path, image_root: Option<&'a Path>) -> &'a Path {
    image_root.unwrap_or_else(|| manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Lines in file order (blank lines ignored) until `opts.images` are kept.
/// Classes are the distinct labels in order of first appearance among kept
/// lines; `long` defaults to the captions when `long_captions` is absent or empty.
pub(super) fn ingest(ctx: &StageContext, opts: &Options, path: &Path, image_root: Option<&Path>) -> anyhow::Result<Dataset> {
    let base = image_base(path, image_root);
    let file = File::open(path).with_context(|| format!("cannot open manifest {}", path.display()))?;
    let mut data = Dataset::new(ctx, opts, &[], TEMPLATES)?;
    let mut class_index: HashMap<String, usize> = HashMap::new();
    ctx.progress().set_length(opts.images as u64);
    for (i, line) in BufReader::new(file).lines().enumerate() {
        if data.records.len() >= opts.images {
            break;
        }
        let lineno = i + 1;
        let line = line.with_context(|| format!("{} line {lineno}: cannot read", path.display()))?;
        // A byte-order mark, as some editors write at the start of UTF-8 files.
        let line = if lineno == 1 { line.trim_start_matches('\u{feff}').to_owned() } else { line };
        if line.trim().is_empty() {
            continue;
        }
        if lineno % 64 == 0 {
            ctx.check_cancelled()?;
        }
        // A malformed manifest line is always an error: `on_error` covers bad data, not a bad file.
        let entry: Line =
            serde_json::from_str(&line).map_err(|e| anyhow!("{} line {lineno}: invalid manifest entry: {e}", path.display()))?;
        let item = || -> anyhow::Result<Vec<u8>> {
            let empty = |c: &String| c.trim().is_empty();
            if entry.captions.is_empty() || entry.captions.iter().any(empty) {
                return Err(anyhow!("{} line {lineno}: empty caption for image {}", path.display(), entry.image));
            }
            if entry.long_captions.iter().flatten().any(empty) {
                return Err(anyhow!("{} line {lineno}: empty long caption for image {}", path.display(), entry.image));
            }
            if entry.label.as_deref().is_some_and(|l| l.trim().is_empty()) {
                return Err(anyhow!("{} line {lineno}: empty label for image {}", path.display(), entry.image));
            }
            imageio::load_rgb(&resolve(base, &entry.image), opts.resolution).map_err(|e| anyhow!("{} line {lineno}: {e:#}", path.display()))
        };
        match item() {
            Ok(pixels) => {
                let label = entry.label.map(|name| {
                    let next = data.classes.len();
                    *class_index.entry(name.clone()).or_insert_with(|| {
                        data.classes.push(name);
                        next
                    })
                });
                let short: Vec<String> = entry.captions.iter().map(|c| c.trim().to_owned()).collect();
                let long = match entry.long_captions {
                    Some(l) if !l.is_empty() => l.iter().map(|c| c.trim().to_owned()).collect(),
                    _ => short.clone(),
                };
                data.push(&pixels, Record { short, long, label, source: entry.image, split: None })?;
                ctx.progress().set_position(data.records.len() as u64);
            }
            Err(err) => data.problem(opts, err)?,
        }
    }
    Ok(data)
}
