//! `caption_ingest`: images with captions, hard negatives and class labels.
//!
//! The first stage of a LIFT-style study: it turns a caption source into a
//! fixed-resolution image tensor plus text that later stages embed (frozen LLM
//! text encoder), train on (ViT image encoder) and evaluate with (SugarCrepe-style
//! compositional negatives, zero-shot classification).
//!
//! # Sources (`source` parameter)
//! - `builtin:shapes`: generated scenes of 1..=`max_objects` coloured shapes on a
//!   black background (see `shapes.rs`); needs nothing installed. `images` is the
//!   number generated. Deterministic: the same parameters give byte-identical artifacts.
//!   Short caption: "red circle, blue square and green cross" (colour + shape,
//!   objects left to right). Long caption: a few fixed templates, e.g. "The image
//!   shows a large red circle in the upper left. To its right is a small blue
//!   square, in the lower right. There are two objects in total, on a plain black
//!   background." Label: the shape of the largest object (ties → leftmost);
//!   classes: circle, square, triangle, diamond, cross. One negative per SugarCrepe
//!   subset that applies to the scene (relations and swaps need two objects),
//!   each checked false for the scene.
//! - `fashion-mnist:DIR`: IDX files, plain or `.gz` (`train-images-idx3-ubyte`,
//!   `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`).
//!   Official split (train files → train, t10k → test; `test_fraction` is ignored);
//!   `images` caps the total, shared in proportion 60000:10000. Negatives: `replace_obj`.
//! - `coco:CAPTIONS_JSON` (+ `image_root`): COCO captions format; images in the
//!   order of the `images` array; `long` = `short` = all captions (COCO has no recaptions).
//! - `jsonl:MANIFEST`: `{"image", "captions", "long_captions"?, "label"?}` per line;
//!   relative paths against `image_root`, else the manifest's directory.
//! - `sugarcrepe:DIR` (+ `image_root`, COCO val2017): the official `{subset}.json`
//!   files; one image per distinct filename; every entry becomes a negative.
//! - `webdataset:PATTERN`: tar shards as img2dataset writes them (`KEY.jpg|jpeg|
//!   png|webp`, `KEY.txt`, optional `KEY.json`), listed with brace groups
//!   (`data/{00000..00099}.tar`); `long_field` names the `.json` field holding a
//!   long caption, and without it `captions = "long"` downstream is an error.
//!   See `webdataset.rs`, also for what enters the key.
//!
//! For the file sources, `images` is the maximum number of images kept, the first
//! ones in file order; images dropped under `on_error = "skip"` do not count
//! towards it. Images are centre-cropped to a square and resized (triangle
//! filter, i.e. bilinear, widened when downscaling) to `resolution`.
//!
//! # Artifacts (the contract with downstream stages)
//! - `images.json` and `images/00000.safetensors`, `images/00001.safetensors`, …:
//!   the images in shards of 1,024 (`crate::images::SHARD_IMAGES`), each one
//!   tensor `images`, dtype U8, shape `[k, resolution, resolution, 3]`,
//!   row-major HWC RGB, written as the source produces them (memory does not
//!   grow with the dataset); the index is `{"n", "side", "shard_images",
//!   "shards": [artifact names in order]}`. Instances made before shards have
//!   one `images.safetensors` instead, which readers still take.
//! - `records.jsonl`: one object per image, in tensor order:
//!   `{"index": i, "split": "train"|"test", "short": [..], "long": [..],
//!   "label": class index or null, "source": file name or generated id}`.
//!   `source` is `shapes/{i}` (builtin), `{idx file}#{item}` (Fashion-MNIST), or
//!   the image path as written in the COCO / manifest / SugarCrepe file. Manifest
//!   classes are the distinct labels in order of first appearance.
//!   `short` holds alt-text style captions, `long` recaption-style ones (both
//!   non-empty lists). Split, unless the source has an official one: shuffle
//!   0..N with the seed and put the first round(N × `test_fraction`) in test.
//! - `negatives.jsonl`: `{"index": image index, "subset": one of add_att, add_obj,
//!   replace_att, replace_obj, replace_rel, swap_att, swap_obj, "positive": "..",
//!   "negative": ".."}` per line, ordered by image index.
//! - `classes.json`: `{"classes": [names], "templates": ["a photo of a {}.", ..]}`;
//!   `label` indexes `classes`; `classes` is empty for sources without labels.
//!
//! Metrics: `ingest.images`, `ingest.train`, `ingest.test`, `ingest.negatives`,
//! `ingest.skipped` (images, or SugarCrepe entries, dropped under `on_error =
//! "skip"`), and for SugarCrepe `ingest.missing_subsets`.

pub mod artifacts;
mod coco;
mod dataset;
mod fashion;
mod fingerprint;
mod imageio;
mod jsonl;
mod rng;
mod shapes;
pub mod sugarcrepe;
mod webdataset;

use std::path::PathBuf;

use anyhow::anyhow;

use super::{ParamDefault, ParamError, ParamSpec, ParamType, Params, StageContext, StageKind, UpstreamInstance};
use dataset::Options;

/// The kind's name, as `kind = "..."` writes it.
pub const NAME: &str = "caption_ingest";

pub struct CaptionIngest;

const SOURCES_HELP: &str = "builtin:shapes, fashion-mnist:DIR, coco:CAPTIONS_JSON, jsonl:MANIFEST, sugarcrepe:DIR, webdataset:PATTERN";

const PARAMS: &[ParamSpec] = &[
    ParamSpec::new(
        "source",
        ParamType::Str,
        ParamDefault::Required,
        "builtin:shapes | fashion-mnist:DIR | coco:CAPTIONS_JSON | jsonl:MANIFEST | sugarcrepe:DIR | webdataset:PATTERN (tar shards, e.g. data/{00000..00099}.tar)",
    ),
    ParamSpec::new(
        "images",
        ParamType::Int,
        ParamDefault::Int(2000),
        "images generated (builtin:shapes) or the maximum taken, first in file order (file sources)",
    ),
    ParamSpec::new("resolution", ParamType::Int, ParamDefault::Int(32), "output side length in pixels (square RGB), 8..=1024"),
    ParamSpec::new("max_objects", ParamType::Int, ParamDefault::Int(3), "objects per builtin:shapes scene, 1..=3"),
    ParamSpec::new("seed", ParamType::Int, ParamDefault::Int(0), "seed for scene generation, negatives and the train/test split"),
    ParamSpec::new(
        "test_fraction",
        ParamType::Float,
        ParamDefault::Float(0.2),
        "share of images in the test split, in [0, 1) (fashion-mnist uses the official split)",
    ),
    ParamSpec::new(
        "image_root",
        ParamType::Str,
        ParamDefault::Absent,
        "image directory (required for coco: and sugarcrepe:, optional base for jsonl:)",
    ),
    ParamSpec::new(
        "on_error",
        ParamType::OneOf(&["fail", "skip"]),
        ParamDefault::Str("fail"),
        "a missing or undecodable image or an empty caption: fail, or skip and count it",
    ),
    ParamSpec::new(
        "long_field",
        ParamType::Str,
        ParamDefault::Absent,
        "webdataset: the field of each sample's .json holding its long caption (without it, captions = \"long\" downstream is an error)",
    ),
];

/// A parsed `source` parameter.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Shapes,
    FashionMnist(PathBuf),
    Coco(PathBuf),
    Jsonl(PathBuf),
    SugarCrepe(PathBuf),
    /// The pattern as written; [`webdataset::shards`] lists the shards.
    WebDataset(String),
}

impl Source {
    fn parse(s: &str) -> Result<Source, String> {
        let Some((prefix, rest)) = s.split_once(':') else {
            return Err(format!("{s:?} is not a source; expected one of {SOURCES_HELP}"));
        };
        if prefix == "builtin" {
            return match rest {
                "shapes" => Ok(Source::Shapes),
                _ => Err(format!("unknown builtin source {s:?}; the only builtin is builtin:shapes")),
            };
        }
        if prefix == "webdataset" {
            if rest.trim().is_empty() {
                return Err(format!("{s:?} names no shards; expected webdataset:PATTERN, e.g. webdataset:data/{{00000..00099}}.tar"));
            }
            webdataset::shards(rest)?;
            return Ok(Source::WebDataset(rest.to_owned()));
        }
        let ctor: fn(PathBuf) -> Source = match prefix {
            "fashion-mnist" => Source::FashionMnist,
            "coco" => Source::Coco,
            "jsonl" => Source::Jsonl,
            "sugarcrepe" => Source::SugarCrepe,
            _ => {
                return Err(format!("unknown source prefix {prefix:?}; expected one of {SOURCES_HELP}"));
            }
        };
        if rest.trim().is_empty() {
            return Err(format!("{s:?} names no path; expected {prefix}:PATH"));
        }
        Ok(ctor(PathBuf::from(rest)))
    }

    fn needs_image_root(&self) -> bool {
        matches!(self, Source::Coco(_) | Source::SugarCrepe(_))
    }
}

/// Validates the parameters (shared by `check` at compile time and `run`).
fn validate(params: &Params) -> Result<(Source, Options), ParamError> {
    let source = Source::parse(params.opt_str("source").unwrap_or("")).map_err(|m| ParamError::new("source", m))?;
    let int = |name: &str, default: i64| params.opt_int(name).unwrap_or(default);
    let ranged = |name: &str, default: i64, lo: i64, hi: i64| -> Result<i64, ParamError> {
        let v = int(name, default);
        if (lo..=hi).contains(&v) { Ok(v) } else { Err(ParamError::new(name, format!("must be in {lo}..={hi}, got {v}"))) }
    };
    let images = ranged("images", 2000, 1, i64::from(u32::MAX))? as usize;
    let resolution = ranged("resolution", 32, 8, 1024)? as u32;
    let max_objects = ranged("max_objects", 3, 1, 3)? as usize;
    let test_fraction = params.get("test_fraction").and_then(|v| v.as_f64()).unwrap_or(0.2);
    if !(0.0..1.0).contains(&test_fraction) {
        return Err(ParamError::new("test_fraction", format!("must be in [0, 1), got {test_fraction}")));
    }
    let image_root = params.opt_str("image_root").map(PathBuf::from);
    if source.needs_image_root() && image_root.is_none() {
        return Err(ParamError::new("image_root", "is required for coco: and sugarcrepe: sources (the directory holding the images)"));
    }
    let long_field = params.opt_str("long_field");
    if long_field.is_some() && !matches!(source, Source::WebDataset(_)) {
        return Err(ParamError::new("long_field", "applies to webdataset: sources only"));
    }
    if long_field.is_some_and(|f| f.trim().is_empty()) {
        return Err(ParamError::new("long_field", "is empty; name the .json field that holds the long caption"));
    }
    let opts = Options {
        images,
        resolution,
        max_objects,
        seed: int("seed", 0) as u64,
        test_fraction,
        image_root,
        skip_errors: params.opt_str("on_error") == Some("skip"),
    };
    Ok((source, opts))
}

impl StageKind for CaptionIngest {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "images with short and long captions, hard negatives and class labels"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, params: &Params) -> Result<(), ParamError> {
        validate(params).map(|_| ())
    }
    /// A file source's files (see [`fingerprint`]), so that the key follows them.
    fn derive(&self, params: &Params) -> Result<Vec<(String, serde_json::Value)>, ParamError> {
        let (source, opts) = validate(params)?;
        let hash = fingerprint::of(&source, opts.image_root.as_deref()).map_err(|e| ParamError::new("source", format!("{e:#}")))?;
        Ok(hash.map(|h| ("source_sha256".to_owned(), serde_json::Value::from(h))).into_iter().collect())
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let (source, opts) = validate(ctx.params()).map_err(|e| anyhow!("parameter {}: {}", e.param, e.message))?;
        let root = opts.image_root.clone().unwrap_or_default();
        let data = match &source {
            Source::Shapes => shapes::ingest(ctx, &opts)?,
            Source::FashionMnist(dir) => fashion::ingest(ctx, &opts, dir)?,
            Source::Coco(path) => coco::ingest(ctx, &opts, path, &root)?,
            Source::Jsonl(path) => jsonl::ingest(ctx, &opts, path, opts.image_root.as_deref())?,
            Source::SugarCrepe(dir) => sugarcrepe::ingest(ctx, &opts, dir, &root)?,
            Source::WebDataset(pattern) => {
                let shards = webdataset::shards(pattern).map_err(anyhow::Error::msg)?;
                let long_field = ctx.params().opt_str("long_field").map(str::to_owned);
                webdataset::ingest(ctx, &opts, &shards, long_field.as_deref())?
            }
        };
        let name = ctx.params().str("source").to_owned();
        dataset::write(ctx, data, &opts, &name)
    }
}

/// For a stage reading captions of `length` from its upstream ingest: long
/// captions must exist, which a `webdataset:` source without `long_field`
/// does not give. An error at `captions`, when compiling.
pub fn check_long_captions(length: &str, upstream: &[UpstreamInstance<'_>]) -> Result<(), ParamError> {
    let Some(ingest) = UpstreamInstance::of_kind(upstream, NAME) else { return Ok(()) };
    let webdataset = ingest.params.opt_str("source").is_some_and(|s| s.starts_with("webdataset:"));
    if length == "long" && webdataset && ingest.params.opt_str("long_field").is_none() {
        return Err(ParamError::new(
            "captions",
            format!(
                "is \"long\" but caption_ingest stage `{}` reads webdataset shards without `long_field`, so it has no long captions: \
                 set its long_field to the .json field that holds them, or use captions = \"short\"",
                ingest.stage
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
