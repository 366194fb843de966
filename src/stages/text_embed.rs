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

use super::caption_ingest;
use super::caption_ingest::artifacts::{IngestLine, SplitName, stream_text};
use super::caption_ingest::check_long_captions;
use super::text_common::{self, DistinctTexts, StageEncoder};
use super::{ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind, UpstreamInstance};
use crate::tensor_file::{RawTensor, TensorShape, TensorWriter};
use safetensors::Dtype;

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

        // Rows as ids of distinct texts, read line by line: millions of
        // captions are held as their distinct strings.
        let mut distinct = DistinctTexts::default();
        let (mut captions, mut caption_image, mut is_test) = (Vec::new(), Vec::new(), Vec::new());
        let (mut negatives, mut positives, mut negative_row) = (Vec::new(), Vec::new(), Vec::new());
        let classes = stream_text(ctx.upstream_of_kind(caption_ingest::NAME)?, true, |line| {
            match line {
                IngestLine::Record(r) => {
                    is_test.push(r.split == SplitName::Test);
                    for caption in r.captions(&length) {
                        captions.push(distinct.id(caption));
                        caption_image.push(r.index as i64);
                    }
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

        let dim = encoder.dim();
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
        // rows (captions, class prompts, negatives, their positives) stream
        // in between the two index tensors.
        let shapes = [
            ("caption_image", Dtype::I64, vec![n_captions]),
            ("captions", Dtype::F32, vec![n_captions, dim]),
            ("class_prompts", Dtype::F32, vec![n_prompts, dim]),
            ("negative_negative", Dtype::F32, vec![n_neg, dim]),
            ("negative_positive", Dtype::F32, vec![n_neg, dim]),
            ("negative_row", Dtype::I64, vec![n_neg]),
        ]
        .map(|(name, dtype, shape)| TensorShape { name: name.to_owned(), dtype, shape });
        let mut out = TensorWriter::create(&ctx.output("embeddings.safetensors")?, &shapes, metadata)?;
        out.append(&RawTensor::i64(&caption_image).bytes)?;
        drop(caption_image);
        let stats = encoder.embed_into(ctx, &distinct.in_order(), &rows, |row| out.append_f32(row))?;
        out.append(&RawTensor::i64(&negative_row).bytes)?;
        out.finish()?;

        stats.record(ctx, "embed");
        ctx.metric("embed.dim", dim as f64);
        ctx.metric("embed.captions", n_captions as f64);
        Ok(())
    }
}
