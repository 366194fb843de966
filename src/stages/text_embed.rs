//! `text_embed`: the text-embedding cache — LIFT's whole efficiency story.
//!
//! Embeds, once, every caption of one length (`captions = "short" | "long"`)
//! of the upstream `caption_ingest` instance, plus the texts evaluation needs:
//! both captions of every hard negative of a test-split image (negatives only
//! serve evaluation) and every class prompt. Training and
//! evaluation branches read this cache; the encoder never runs again. The
//! stage key includes the encoder's weight fingerprint (`encoder_sha256`), so
//! the cache follows the model files, and a grid encodes each (encoder,
//! pooling, caption set) exactly once.
//!
//! Outputs (f32 unless noted; numpy and PyTorch load them as is), `D` the
//! encoder width. The caption rows are sharded like the ingest's images, so
//! neither side grows beyond a shard in memory:
//! - `captions/00000.safetensors`, …: shard `s` holds the captions of images
//!   `s × K .. (s + 1) × K` (`K` the ingest's `shard_images`): `captions`
//!   `[k, D]`, image by image in `records.jsonl` order, each image's captions
//!   in order, and `caption_image` i64 `[k]`, the image index of each row;
//! - `captions.json` ([`CaptionIndex`]): `dim`, `rows`, `shard_images`, the
//!   shards with their row counts, and `samples`, each sample's key
//!   (`records.jsonl` `source`) → its rows `[start, end)` over all shards;
//! - `embeddings.safetensors`, the texts evaluation needs:
//!   `negative_positive`, `negative_negative` `[Nn, D]`, the negatives of
//!   test-split images in `negatives.jsonl` order; `negative_row` i64 `[Nn]`,
//!   each one's line (0-based) there; `class_prompts` `[C × T, D]`,
//!   class-major (row `c × T + t` is template `t` filled with class `c`,
//!   `classes.json`); and string metadata (`encoder`, `encoder_sha256`,
//!   `pooling`, `captions`, `normalize`, `dim`, `classes`, `templates`).
//!
//! Caches written before the shards hold `captions` and `caption_image` in
//! `embeddings.safetensors`; [`caption_rows`] reads both layouts.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::caption_ingest;
use super::caption_ingest::artifacts::{IngestLine, SplitName, stream_text};
use super::caption_ingest::check_long_captions;
use super::text_common::{self, DistinctTexts, StageEncoder};
use super::{
    ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind, UpstreamInstance, UpstreamOutputs,
};
use crate::images::{SHARD_IMAGES, ShardIndex};
use crate::tensor_file::{F32Rows, RawTensor, TensorFile, TensorShape, TensorWriter};

/// The kind's name, as `kind = "..."` writes it.
pub const NAME: &str = "text_embed";

pub struct TextEmbed;

const PARAMS: &[ParamSpec] = &[
    text_common::ENCODER,
    text_common::POOLING,
    text_common::MAX_TOKENS,
    text_common::BATCH_SIZE,
    text_common::NORMALIZE,
    text_common::DEVICE,
    super::params::PRECISION,
    ParamSpec::new(
        "captions",
        ParamType::OneOf(&["short", "long"]),
        ParamDefault::Str("short"),
        "which captions of the ingest artifact to embed",
    ),
];

impl StageKind for TextEmbed {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "embeds captions, negatives and class prompts once with a frozen text encoder (the cache LIFT trains against)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, params: &Params) -> Result<(), ParamError> {
        text_common::check(params)
    }
    fn derive(&self, params: &Params) -> Result<Vec<(String, serde_json::Value)>, ParamError> {
        text_common::derive(params)
    }
    fn required_upstream(&self, _params: &Params) -> Vec<&'static str> {
        vec![caption_ingest::NAME]
    }
    fn check_upstream(&self, params: &Params, upstream: &[UpstreamInstance<'_>]) -> Result<(), ParamError> {
        check_long_captions(params.str("captions"), upstream)
    }

    fn resources(&self, params: &Params) -> Resources {
        super::device_resources(params)
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let params = ctx.params().clone();
        let length = params.str("captions").to_owned();
        let encoder = StageEncoder::load(&params)?;
        let dim = encoder.dim();
        let shard_images = image_shard_size(ctx.upstream_of_kind(caption_ingest::NAME)?)?;
        let samples_path = ctx.output("captions.json")?;
        let mut samples = SampleIndex::create(&samples_path, dim)?;

        // Rows as ids of distinct texts, read line by line: millions of
        // captions are held as their distinct strings.
        let mut distinct = DistinctTexts::default();
        let (mut captions, mut caption_image, mut is_test) = (Vec::new(), Vec::new(), Vec::new());
        let (mut negatives, mut positives, mut negative_row) = (Vec::new(), Vec::new(), Vec::new());
        let classes = stream_text(ctx.upstream_of_kind(caption_ingest::NAME)?, true, |line| {
            match line {
                IngestLine::Record(r) => {
                    is_test.push(r.split == SplitName::Test);
                    let start = captions.len();
                    for caption in r.captions(&length) {
                        captions.push(distinct.id(caption));
                        caption_image.push(r.index as i64);
                    }
                    samples.add(&r.source, start, captions.len())?;
                }
                // Negatives only serve evaluation, on the test split.
                IngestLine::Negative(row, n) if is_test[n.index] => {
                    negatives.push(distinct.id(&n.negative));
                    positives.push(distinct.id(&n.positive));
                    negative_row.push(row as i64);
                }
                IngestLine::Negative(..) => {}
            }
            Ok(())
        })?;
        let prompts = classes.prompts();
        let n_captions = captions.len();
        let n_prompts = prompts.len();
        let mut rows = captions;
        rows.extend(prompts.iter().map(|p| distinct.id(p)));
        rows.extend(negatives);
        rows.extend(positives);

        // One caption shard per image shard, empty ones included.
        let n_shards = is_test.len().div_ceil(shard_images);
        let mut shard_rows = vec![0usize; n_shards];
        caption_image.iter().for_each(|&i| shard_rows[i as usize / shard_images] += 1);
        let mut shards = Vec::with_capacity(n_shards);
        for (s, &n) in shard_rows.iter().enumerate() {
            let name = format!("captions/{s:05}.safetensors");
            shards.push((ctx.output(&name)?, CaptionShard { name, rows: n }));
        }
        samples.finish(CaptionIndex { dim, rows: n_captions, shard_images, shards: shards.iter().map(|(_, s)| s.clone()).collect() })?;

        let n_neg = negative_row.len();
        let metadata: HashMap<String, String> = [
            ("encoder", params.str("encoder").to_owned()),
            ("encoder_sha256", params.str("encoder_sha256").to_owned()),
            ("pooling", params.str("pooling").to_owned()),
            ("captions", length),
            ("normalize", params.bool("normalize").to_string()),
            ("dim", dim.to_string()),
            ("classes", classes.classes.len().to_string()),
            ("templates", classes.templates.len().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Declared in name order, the order the data follows; the embedded
        // rows (class prompts, negatives, their positives) stream in before
        // the index tensor.
        let shapes = [
            ("class_prompts", Dtype::F32, vec![n_prompts, dim]),
            ("negative_negative", Dtype::F32, vec![n_neg, dim]),
            ("negative_positive", Dtype::F32, vec![n_neg, dim]),
            ("negative_row", Dtype::I64, vec![n_neg]),
        ]
        .map(|(name, dtype, shape)| TensorShape { name: name.to_owned(), dtype, shape });
        let mut out = TensorWriter::create(&ctx.output("embeddings.safetensors")?, &shapes, metadata)?;
        let mut caption_shards = ShardWriter::new(shards, caption_image, dim);
        let stats = encoder.embed_into(ctx, &distinct.in_order(), &rows, |row| match caption_shards.take_row()? {
            true => caption_shards.push(row),
            false => out.append_f32(row),
        })?;
        caption_shards.finish()?;
        out.append(&RawTensor::i64(&negative_row).bytes)?;
        out.finish()?;

        stats.record(ctx, "embed");
        ctx.metric("embed.dim", dim as f64);
        ctx.metric("embed.captions", n_captions as f64);
        Ok(())
    }
}

/// `captions.json`, less its `samples` map (written first, and skipped by
/// readers that only need the shards).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptionIndex {
    pub dim: usize,
    pub rows: usize,
    pub shard_images: usize,
    pub shards: Vec<CaptionShard>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptionShard {
    /// The shard's artifact name.
    pub name: String,
    pub rows: usize,
}

/// The ingest's images per shard (`images.json`), or [`SHARD_IMAGES`] for
/// an ingest written as one file.
fn image_shard_size(ingest: &UpstreamOutputs) -> anyhow::Result<usize> {
    let Some(path) = ingest.artifacts.get("images.json") else { return Ok(SHARD_IMAGES) };
    Ok(ShardIndex::read(path)?.shard_images.max(1))
}

/// `captions.json` written as the records stream past: `samples` first,
/// one entry a record, then the shards once they are known.
struct SampleIndex {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    first: bool,
}

impl SampleIndex {
    fn create(path: &Path, dim: usize) -> anyhow::Result<SampleIndex> {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut index = SampleIndex { out: std::io::BufWriter::new(file), path: path.to_owned(), first: true };
        index.write(format_args!("{{\"dim\": {dim}, \"samples\": {{"))?;
        Ok(index)
    }

    fn write(&mut self, text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
        self.out.write_fmt(text).with_context(|| format!("writing {}", self.path.display()))
    }

    /// A sample's key and its rows `[start, end)`.
    fn add(&mut self, key: &str, start: usize, end: usize) -> anyhow::Result<()> {
        let sep = if std::mem::take(&mut self.first) { "\n" } else { ",\n" };
        self.write(format_args!("{sep}  {}: [{start}, {end}]", serde_json::Value::from(key)))
    }

    fn finish(mut self, index: CaptionIndex) -> anyhow::Result<()> {
        let rest = serde_json::to_string(&index)?;
        // `rest` is `{"dim":…,"rows":…}`: its fields after `dim` close the object.
        let tail = rest.split_once(',').map_or("}", |(_, t)| t);
        self.write(format_args!("\n}}, {tail}\n"))?;
        let file = self.out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", self.path.display()))?;
        file.sync_all().with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The caption rows, routed to their shards as they stream from the encoder.
struct ShardWriter {
    shards: std::vec::IntoIter<(PathBuf, CaptionShard)>,
    caption_image: Vec<i64>,
    dim: usize,
    /// The open shard and the rows it still takes.
    open: Option<(TensorWriter, usize)>,
    /// Caption rows handed to shards so far.
    rows: usize,
}

impl ShardWriter {
    fn new(shards: Vec<(PathBuf, CaptionShard)>, caption_image: Vec<i64>, dim: usize) -> ShardWriter {
        ShardWriter { shards: shards.into_iter(), caption_image, dim, open: None, rows: 0 }
    }

    /// Whether the next row is a caption's, opening (and closing empty)
    /// shards until one takes it.
    fn take_row(&mut self) -> anyhow::Result<bool> {
        while self.open.as_ref().is_none_or(|(_, left)| *left == 0) {
            if let Some((full, _)) = self.open.take() {
                full.finish()?;
            }
            let Some((path, shard)) = self.shards.next() else { return Ok(false) };
            let shapes = [
                TensorShape { name: "caption_image".into(), dtype: Dtype::I64, shape: vec![shard.rows] },
                TensorShape { name: "captions".into(), dtype: Dtype::F32, shape: vec![shard.rows, self.dim] },
            ];
            let mut w = TensorWriter::create(&path, &shapes, HashMap::new())?;
            w.append(&RawTensor::i64(&self.caption_image[self.rows..self.rows + shard.rows]).bytes)?;
            self.open = Some((w, shard.rows));
        }
        Ok(true)
    }

    fn push(&mut self, row: &[f32]) -> anyhow::Result<()> {
        let (w, left) = self.open.as_mut().expect("take_row opened a shard");
        w.append_f32(row)?;
        *left -= 1;
        self.rows += 1;
        Ok(())
    }

    /// Closes the last shard, and writes the empty ones after it.
    fn finish(mut self) -> anyhow::Result<()> {
        if self.take_row()? {
            anyhow::bail!("internal error: {} caption rows left unwritten", self.caption_image.len() - self.rows);
        }
        Ok(())
    }
}

/// A cache's caption rows and the image of each row: from the shards behind
/// `captions.json`, or from `embeddings.safetensors` for caches written
/// before them.
pub fn caption_rows(cache: &UpstreamOutputs) -> anyhow::Result<(F32Rows, Vec<usize>)> {
    let to_images = |v: Vec<i64>| v.into_iter().map(|i| i as usize).collect::<Vec<usize>>();
    let Some(path) = cache.artifacts.get("captions.json") else {
        let file = TensorFile::open(cache.artifact("embeddings.safetensors")?)?;
        return Ok((file.f32_table("captions")?, to_images(file.i64("caption_image")?)));
    };
    let reader = std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?);
    let index: CaptionIndex =
        serde_json::from_reader(reader).with_context(|| format!("{} is not a caption shard index", path.display()))?;
    let (mut parts, mut owners) = (Vec::with_capacity(index.shards.len()), Vec::with_capacity(index.rows));
    for shard in &index.shards {
        let file = TensorFile::open(cache.artifact(&shard.name)?)?;
        let (rows, images) = (file.f32_table("captions")?, file.i64("caption_image")?);
        if rows.len() != shard.rows || images.len() != shard.rows {
            anyhow::bail!("{}: {} rows where {} lists {}", shard.name, rows.len(), path.display(), shard.rows);
        }
        parts.push(rows);
        owners.extend(to_images(images));
    }
    let rows = F32Rows::concat(index.dim, parts).with_context(|| format!("reading the shards {} lists", path.display()))?;
    if rows.len() != index.rows {
        anyhow::bail!("{}: the shards hold {} rows, the index says {}", path.display(), rows.len(), index.rows);
    }
    Ok((rows, owners))
}
