//! `coco:CAPTIONS_JSON`: COCO captions annotations plus an image directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde::Deserialize;

use super::dataset::{Dataset, Options, Record, resolve};
use super::imageio;
use crate::stages::StageContext;

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    #[serde(default)]
    id: Option<u64>,
    image_id: u64,
    caption: String,
}

/// Generic zero-shot templates, written even though COCO has no classes.
pub(super) const TEMPLATES: &[&str] = &["a photo of a {}.", "a picture of a {}.", "an image of a {}."];

/// Images in the order of the file's `images` array, up to `opts.images` kept;
/// all captions of an image, in annotation order, are both `short` and `long`.
pub(super) fn ingest(ctx: &StageContext, opts: &Options, path: &Path, image_root: &Path) -> anyhow::Result<Dataset> {
    let file = File::open(path).with_context(|| format!("cannot open COCO captions file {}", path.display()))?;
    let coco: CocoFile =
        serde_json::from_reader(BufReader::new(file)).with_context(|| format!("{} is not a COCO captions file", path.display()))?;
    let mut captions: HashMap<u64, Vec<&CocoAnnotation>> = HashMap::new();
    for ann in &coco.annotations {
        captions.entry(ann.image_id).or_default().push(ann);
    }
    let mut data = Dataset::new(ctx, opts, &[], TEMPLATES)?;
    ctx.progress().set_length(opts.images.min(coco.images.len()) as u64);
    for image in &coco.images {
        if data.records.len() >= opts.images {
            break;
        }
        ctx.check_cancelled()?;
        let anns = captions.get(&image.id).map(Vec::as_slice).unwrap_or_default();
        let item = || -> anyhow::Result<(Vec<u8>, Vec<String>)> {
            if anns.is_empty() {
                return Err(anyhow!("{}: image id {} ({}) has no captions", path.display(), image.id, image.file_name));
            }
            if let Some(bad) = anns.iter().find(|a| a.caption.trim().is_empty()) {
                let id = bad.id.map_or_else(|| "without id".to_owned(), |id| id.to_string());
                return Err(anyhow!(
                    "{}: annotation {id} (image id {}, {}) has an empty caption",
                    path.display(),
                    image.id,
                    image.file_name
                ));
            }
            let pixels = imageio::load_rgb(&resolve(image_root, &image.file_name), opts.resolution)?;
            Ok((pixels, anns.iter().map(|a| a.caption.trim().to_owned()).collect()))
        };
        match item() {
            Ok((pixels, caps)) => {
                let record = Record { short: caps.clone(), long: caps, label: None, source: image.file_name.clone(), split: None };
                data.push(&pixels, record)?;
                ctx.progress().set_position(data.records.len() as u64);
            }
            Err(err) => data.problem(opts, err)?,
        }
    }
    Ok(data)
}
