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
//! Output `embeddings.safetensors` (f32 unless noted; loadable by numpy and
//! PyTorch as is), `D` the encoder width:
//! - `captions` `[Nc, D]`: every caption of the chosen length, image by image
//!   in `records.jsonl` order, each image's captions in order;
//! - `caption_image` i64 `[Nc]`: the image index of each caption row;
//! - `negative_positive`, `negative_negative` `[Nn, D]`: the negatives of
//!   test-split images, in `negatives.jsonl` order;
//! - `negative_row` i64 `[Nn]`: each one's line (0-based) in `negatives.jsonl`;
//! - `class_prompts` `[C × T, D]`: class-major, row `c × T + t` is template `t`
//!   filled with class `c` (`classes.json`);
//!
//! and string metadata (`encoder`, `encoder_sha256`, `pooling`, `captions`,
//! `normalize`, `dim`, `classes`, `templates`).

use std::collections::HashMap;

use super::caption_ingest::artifacts::{IngestNegative, IngestText, SplitName};
use super::text_common::{self, StageEncoder};
use super::{ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind};
use crate::tensor_file::{self, RawTensor};

pub struct TextEmbed;

const PARAMS: &[ParamSpec] = &[
    text_common::ENCODER,
    text_common::POOLING,
    text_common::MAX_TOKENS,
    text_common::BATCH_SIZE,
    text_common::NORMALIZE,
    text_common::DEVICE,
    ParamSpec::new(
        "captions",
        ParamType::OneOf(&["short", "long"]),
        ParamDefault::Str("short"),
        "which captions of the ingest artifact to embed",
    ),
];

impl StageKind for TextEmbed {
    fn name(&self) -> &'static str {
        "text_embed"
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
        vec!["caption_ingest"]
    }

    fn resources(&self, params: &Params) -> Resources {
        super::device_resources(params)
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let params = ctx.params().clone();
        let length = params.str("captions").to_owned();
        let data = IngestText::read(ctx.upstream_of_kind("caption_ingest")?)?;
        let encoder = StageEncoder::load(&params)?;

        let mut texts: Vec<&str> = Vec::new();
        let mut caption_image: Vec<i64> = Vec::new();
        for record in &data.records {
            for caption in record.captions(&length) {
                texts.push(caption);
                caption_image.push(record.index as i64);
            }
        }
        let n_captions = texts.len();
        let test_negatives: Vec<(usize, &IngestNegative)> =
            data.negatives.iter().enumerate().filter(|(_, n)| data.records[n.index].split == SplitName::Test).collect();
        texts.extend(test_negatives.iter().map(|(_, n)| n.positive.as_str()));
        texts.extend(test_negatives.iter().map(|(_, n)| n.negative.as_str()));
        let negative_row: Vec<i64> = test_negatives.iter().map(|(row, _)| *row as i64).collect();
        let prompts = data.classes.prompts();
        texts.extend(prompts.iter().map(String::as_str));

        let (rows, stats) = encoder.embed(ctx, &texts)?;
        let n_neg = test_negatives.len();
        let (captions, rest) = rows.split_at(n_captions);
        let (positives, rest) = rest.split_at(n_neg);
        let (negatives, class_prompts) = rest.split_at(n_neg);
        let dim = encoder.dim();

        let metadata: HashMap<String, String> = [
            ("encoder", params.str("encoder").to_owned()),
            ("encoder_sha256", params.str("encoder_sha256").to_owned()),
            ("pooling", params.str("pooling").to_owned()),
            ("captions", length),
            ("normalize", params.bool("normalize").to_string()),
            ("dim", dim.to_string()),
            ("classes", data.classes.classes.len().to_string()),
            ("templates", data.classes.templates.len().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let tensors = [
            ("captions", RawTensor::f32_rows(captions, dim)),
            ("caption_image", RawTensor::i64(&caption_image)),
            ("negative_positive", RawTensor::f32_rows(positives, dim)),
            ("negative_negative", RawTensor::f32_rows(negatives, dim)),
            ("negative_row", RawTensor::i64(&negative_row)),
            ("class_prompts", RawTensor::f32_rows(class_prompts, dim)),
        ]
        .map(|(name, t)| (name.to_owned(), t));
        tensor_file::write(&ctx.output("embeddings.safetensors")?, &tensors, metadata)?;

        stats.record(ctx, "embed");
        ctx.metric("embed.dim", dim as f64);
        ctx.metric("embed.captions", n_captions as f64);
        Ok(())
    }
}
