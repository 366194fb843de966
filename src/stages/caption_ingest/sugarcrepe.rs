//! `sugarcrepe:DIR`: the official SugarCrepe benchmark files plus COCO val2017 images.
//!
//! Each `{subset}.json` is an object keyed "0", "1", ... whose values hold
//! `filename`, `caption` and `negative_caption`. Images are grouped by filename.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

use super::coco::TEMPLATES;
use super::dataset::{Dataset, Negative, Options, Record, resolve};
use super::imageio;
use crate::stages::StageContext;

pub const SUBSETS: [&str; 7] = ["add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"];

/// One entry of a SugarCrepe subset file, fields trimmed (possibly empty).
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub filename: String,
    pub caption: String,
    pub negative: String,
}

/// The subset files present in `dir`, in [`SUBSETS`] order; an error when
/// there is none (what the file fingerprints of a SugarCrepe copy hash).
pub fn subset_files(dir: &Path) -> anyhow::Result<Vec<(&'static str, std::path::PathBuf)>> {
    let files: Vec<_> = SUBSETS.iter().map(|&s| (s, dir.join(format!("{s}.json")))).filter(|(_, p)| p.is_file()).collect();
    if files.is_empty() {
        bail!("no SugarCrepe subset files ({}.json) in {}", SUBSETS.join(".json, "), dir.display());
    }
    Ok(files)
}

/// Reads `{dir}/{subset}.json`, entries by numeric key; `Ok(None)` when the
/// file is absent (benchmark copies often hold only some subsets).
pub fn read_subset(dir: &Path, subset: &str) -> anyhow::Result<Option<Vec<Entry>>> {
    let path = dir.join(format!("{subset}.json"));
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Value::Object(entries) = json else {
        bail!("{}: expected an object keyed \"0\", \"1\", ...", path.display());
    };
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.as_str()));
    keys.into_iter()
        .map(|key| {
            let entry = &entries[key.as_str()];
            let field = |name: &str| {
                entry
                    .get(name)
                    .and_then(Value::as_str)
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| anyhow!("{} key {key:?}: missing string field {name:?}", path.display()))
            };
            Ok(Entry { key: key.clone(), filename: field("filename")?, caption: field("caption")?, negative: field("negative_caption")? })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

struct Group {
    filename: String,
    captions: Vec<String>,
    /// (subset, caption, negative caption)
    pairs: Vec<(&'static str, String, String)>,
}

/// One image per distinct filename, in order of first appearance (subsets in
/// [`SUBSETS`] order, entries by numeric key), up to `opts.images` kept. Its
/// captions are the distinct positive captions; each entry is a negative.
pub(super) fn ingest(ctx: &StageContext, opts: &Options, dir: &Path, image_root: &Path) -> anyhow::Result<Dataset> {
    let mut data = Dataset::new(ctx, opts, &[], TEMPLATES)?;
    let mut groups: Vec<Group> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut missing = 0;
    for subset in SUBSETS {
        ctx.check_cancelled()?;
        let Some(entries) = read_subset(dir, subset)? else {
            tracing::warn!(target: "ablate::caption_ingest", "SugarCrepe subset file {} not found; skipped", dir.join(format!("{subset}.json")).display());
            missing += 1;
            continue;
        };
        for Entry { key, filename, caption, negative } in entries {
            if filename.is_empty() || caption.is_empty() || negative.is_empty() {
                let path = dir.join(format!("{subset}.json"));
                let err = anyhow!("{} key {key:?}: empty filename, caption or negative_caption", path.display());
                data.problem(opts, err)?;
                continue;
            }
            let at = *by_name.entry(filename.clone()).or_insert_with(|| {
                groups.push(Group { filename, captions: Vec::new(), pairs: Vec::new() });
                groups.len() - 1
            });
            let group = &mut groups[at];
            if !group.captions.contains(&caption) {
                group.captions.push(caption.clone());
            }
            group.pairs.push((subset, caption, negative));
        }
    }
    if missing == SUBSETS.len() {
        bail!("no SugarCrepe subset files ({}.json) found in {}", SUBSETS.join(".json, "), dir.display());
    }
    data.extra_metrics.push(("ingest.missing_subsets", missing as f64));

    ctx.progress().set_length(opts.images.min(groups.len()) as u64);
    for (g, group) in groups.into_iter().enumerate() {
        if data.records.len() >= opts.images {
            break;
        }
        if g % 64 == 0 {
            ctx.check_cancelled()?;
        }
        match imageio::load_rgb(&resolve(image_root, &group.filename), opts.resolution) {
            Ok(pixels) => {
                let captions = group.captions;
                let record = Record { short: captions.clone(), long: captions, label: None, source: group.filename, split: None };
                let index = data.push(&pixels, record)?;
                for (subset, positive, negative) in group.pairs {
                    data.add_negative(Negative { index, subset: subset.to_owned(), positive, negative })?;
                }
                ctx.progress().set_position(data.records.len() as u64);
            }
            Err(err) => data.problem(opts, err)?,
        }
    }
    Ok(data)
}
