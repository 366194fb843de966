//! `evaluate`: scores a `train` instance's encoders on the ingest's test
//! split (OpenCLIP's `zero_shot.py` plus CLIP_benchmark and SugarCrepe):
//!
//! - `zero_shot`: classes embedded from the ingest's prompt templates
//!   (averaged, re-normalised): `zero_shot.top1`, `zero_shot.top5`,
//!   `zero_shot.mean_per_class_recall`;
//! - `retrieval`: image↔caption Recall@1/5/10 over the test images' captions
//!   of the trained length, every caption of an image a positive
//!   (CLIP_benchmark), or with `retrieval_captions = "first"` only its first
//!   caption (LIFT's protocol): `retrieval.i2t.r1` … `retrieval.t2i.r10`;
//! - `compositional`: SugarCrepe's strict positive-vs-hard-negative accuracy
//!   of the test images' negatives (the shapes negatives, or SugarCrepe's own
//!   with COCO images): `compositional.<subset>` and their unweighted
//!   `compositional.mean`.
//!
//! Output `embeddings.safetensors`: the L2-normalised embeddings it scored,
//! `images` `[N, D]` with `image_index` (i64, the ingest's image of each row)
//! and `captions` `[Nc, D]` with `caption_image` (i64), for analysis outside.
//!
//! The text side is the one training used: the frozen encoder's cached
//! embeddings (the `text_embed` instance upstream of the `train` instance;
//! the encoder does not run again) or the scratch tower with its tokenizer.
//! The kind sees its `train` stage's upstream stages too
//! ([`StageKind::sees_ancestors`]), so `needs = ["train"]` is enough.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use burn::prelude::*;

use super::caption_ingest::artifacts::{IngestLine, IngestNegative, IngestText, SplitName, read_images, stream_text};
use super::train::{self, ModelDescription};
use super::{
    ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind, UpstreamInstance, UpstreamOutputs,
};
use super::{caption_ingest, text_embed};
use crate::device::{DeviceRequest, OnBackend};
use crate::eval::compositional::{self, Compositional, Tally};
use crate::eval::{Scored, Suite};
use crate::images::ImageSet;
use crate::loss::l2_normalize;
use crate::model::named::{HostTensor, Layout, load};
use crate::model::{ClipConfig, ClipModel};
use crate::precision::Precision;
use crate::tensor_file::{F32Rows, RawTensor, TensorFile, TensorShape, TensorWriter};
use crate::text::pooling;
use crate::train::data::eval_patches;
use crate::train::pad_tokens;
use crate::train::vocab::TextTokenizer;
use crate::train::whiten::Whitening;
use safetensors::Dtype;

/// The kind's name, as `kind = "..."` writes it.
pub const NAME: &str = "evaluate";

pub struct Evaluate;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::new(
        "suites",
        ParamType::ListOf(Suite::NAMES),
        ParamDefault::StrList(Suite::DEFAULT_NAMES),
        "which metric suites to run (a suite added later runs where listed: the default never grows)",
    ),
    ParamSpec::new("split", ParamType::OneOf(&["test", "train"]), ParamDefault::Str("test"), "which ingest split to score"),
    ParamSpec::new(
        "retrieval_captions",
        ParamType::OneOf(&["all", "first"]),
        ParamDefault::Str("all"),
        "retrieval positives: every caption of an image (CLIP_benchmark) or only its first (LIFT's COCO and Flickr30K protocol)",
    )
    .unkeyed_at_default(),
    ParamSpec::new("batch_size", ParamType::Int, ParamDefault::Int(256), "images or texts per forward pass"),
    ParamSpec::new("device", ParamType::Str, ParamDefault::Str("auto"), "auto | cpu | cuda:N"),
];

impl StageKind for Evaluate {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        // 2: the CPU runs blocks through the fused kernels (other summation
        // order, so other low bits than version 1's outputs).
        2
    }
    fn summary(&self) -> &'static str {
        "zero-shot classification, image-text retrieval and SugarCrepe-style compositional accuracy of a trained model"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn sees_ancestors(&self) -> bool {
        true
    }
    fn check(&self, params: &Params) -> Result<(), ParamError> {
        if params.int("batch_size") < 1 {
            return Err(ParamError::new("batch_size", "must be at least 1"));
        }
        let suites = params.str_list("suites");
        if suites.is_empty() {
            return Err(ParamError::new("suites", format!("list at least one of {:?}", Suite::NAMES)));
        }
        if let Some(twice) = suites.iter().enumerate().find(|(i, s)| suites[..*i].contains(s)).map(|(_, s)| s) {
            return Err(ParamError::new("suites", format!("lists {twice:?} twice")));
        }
        DeviceRequest::parse(params.str("device")).map_err(|e| ParamError::new("device", e))?;
        Ok(())
    }
    fn required_upstream(&self, _params: &Params) -> Vec<&'static str> {
        vec![train::NAME, caption_ingest::NAME]
    }

    /// A frozen cache holds the hard negatives of test images only, so the
    /// compositional suite of a frozen text side scores the test split.
    fn check_upstream(&self, params: &Params, upstream: &[UpstreamInstance<'_>]) -> Result<(), ParamError> {
        if let Some(cache) = UpstreamInstance::of_kind(upstream, text_embed::NAME)
            && params.str("split") == "train"
            && suites(params).contains(&Suite::Compositional)
        {
            return Err(ParamError::new(
                "split",
                format!(
                    "is \"train\" but text_embed stage `{}` holds the hard negatives of test images only: \
                     score the compositional suite with split = \"test\", or leave it out of `suites`",
                    cache.stage
                ),
            ));
        }
        Ok(())
    }

    fn resources(&self, params: &Params) -> Resources {
        super::device_resources(params)
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let params = ctx.params().clone();
        let suites = suites(&params);
        let trained = ctx.upstream_of_kind(train::NAME)?;
        let ingest = ctx.upstream_of_kind(caption_ingest::NAME)?;
        let ModelDescription { config, captions: length, .. } = ModelDescription::read(trained)?;
        let data = IngestText::read_records(ingest, &length)?;
        let images = read_images(ingest)?;
        let split = if params.str("split") == "train" { SplitName::Train } else { SplitName::Test };
        let eval_images: Vec<usize> = data.records.iter().filter(|r| r.split == split).map(|r| r.index).collect();
        if eval_images.is_empty() {
            bail!("the ingest has no {} images to evaluate", params.str("split"));
        }
        let position: HashMap<usize, usize> = eval_images.iter().enumerate().map(|(p, &i)| (i, p)).collect();

        // The texts to score: captions of the evaluated images, their negatives, class prompts.
        let per_image = if params.str("retrieval_captions") == "first" { 1 } else { usize::MAX };
        let captions: Vec<(usize, &str)> = eval_images
            .iter()
            .flat_map(|&i| data.records[i].captions(&length).iter().take(per_image).map(move |c| (i, c.as_str())))
            .collect();
        // Only the compositional suite scores negatives (and a frozen cache
        // holds those of test images only): those of the evaluated images,
        // with their line in negatives.jsonl, read line by line.
        let mut negatives: Vec<(usize, IngestNegative)> = Vec::new();
        if suites.contains(&Suite::Compositional) {
            stream_text(ingest, true, |line| {
                if let IngestLine::Negative(row, n) = line
                    && position.contains_key(&n.index)
                {
                    negatives.push((row, n));
                }
                Ok(())
            })?;
        }
        let prompts = data.classes.prompts();

        let device = DeviceRequest::parse(params.str("device")).map_err(anyhow::Error::msg)?;
        let batch = params.int("batch_size") as usize;
        let text_source = match config.text {
            None => TextSource::Frozen(
                ctx.upstream_of_kind(text_embed::NAME).context("a frozen-text model is scored with its text_embed cache")?,
            ),
            Some(_) => TextSource::Scratch(trained),
        };
        let job = EmbedJob {
            config: &config,
            trained,
            text: text_source,
            images: &images,
            eval_images: &eval_images,
            captions: &captions,
            position: &position,
            negatives: &negatives,
            prompts: &prompts,
            batch,
        };
        let device = device.resolve()?;
        ctx.ran_on(&device.name());
        let e = device.run(&job)?;

        let labels: Vec<Option<usize>> = eval_images.iter().map(|&i| data.records[i].label).collect();
        let caption_image: Vec<usize> = captions.iter().map(|(i, _)| position[i]).collect();
        let scored = Scored {
            images: &e.images,
            labels: &labels,
            prompts: &e.prompts,
            templates: data.classes.templates.len(),
            captions: &e.captions,
            caption_image: &caption_image,
            compositional: e.compositional.as_ref(),
        };
        for suite in Suite::ALL.iter().filter(|s| suites.contains(s)) {
            for (name, value) in suite.score(&scored)? {
                ctx.metric(&name, value);
            }
        }
        // Streamed, tensors in name order: no second copy of the embeddings.
        let dim = e.images.first().map_or(0, Vec::len);
        let shapes = [
            ("caption_image", Dtype::I64, vec![captions.len()]),
            ("captions", Dtype::F32, vec![e.captions.len(), dim]),
            ("image_index", Dtype::I64, vec![eval_images.len()]),
            ("images", Dtype::F32, vec![e.images.len(), dim]),
        ]
        .map(|(name, dtype, shape)| TensorShape { name: name.to_owned(), dtype, shape });
        let mut out = TensorWriter::create(&ctx.output("embeddings.safetensors")?, &shapes, Default::default())?;
        out.append(&RawTensor::i64(&captions.iter().map(|&(i, _)| i as i64).collect::<Vec<_>>()).bytes)?;
        e.captions.iter().try_for_each(|row| out.append_f32(row))?;
        out.append(&RawTensor::i64(&eval_images.iter().map(|&i| i as i64).collect::<Vec<_>>()).bytes)?;
        e.images.iter().try_for_each(|row| out.append_f32(row))?;
        out.finish()?;
        ctx.metric("eval.images", eval_images.len() as f64);
        Ok(())
    }
}

/// The suites an instance runs (the parameter's type is the registry's names).
fn suites(params: &Params) -> Vec<Suite> {
    params.str_list("suites").iter().map(|s| Suite::from_name(s).expect("the parameter's type is the registry's names")).collect()
}

enum TextSource<'a> {
    Frozen(&'a UpstreamOutputs),
    Scratch(&'a UpstreamOutputs),
}

struct EmbedJob<'a> {
    config: &'a ClipConfig,
    trained: &'a UpstreamOutputs,
    text: TextSource<'a>,
    images: &'a ImageSet,
    eval_images: &'a [usize],
    captions: &'a [(usize, &'a str)],
    /// Each evaluated image's row among `eval_images`.
    position: &'a HashMap<usize, usize>,
    /// The negatives of the evaluated images, with their row in negatives.jsonl.
    negatives: &'a [(usize, IngestNegative)],
    prompts: &'a [String],
    batch: usize,
}

/// L2-normalised embeddings of everything the suites score, and the
/// compositional accuracy, tallied a chunk of negatives at a time.
struct Embedded {
    images: Vec<Vec<f32>>,
    captions: Vec<Vec<f32>>,
    prompts: Vec<Vec<f32>>,
    compositional: Option<Compositional>,
}

/// Negatives embedded at once for the compositional tally.
const NEGATIVE_CHUNK: usize = 4096;

impl OnBackend for &EmbedJob<'_> {
    type Output = Embedded;
    fn run<B: Backend>(self, device: &B::Device) -> anyhow::Result<Embedded> {
        embed::<B>(self, device)
    }
}

fn read_weights(upstream: &UpstreamOutputs, artifact: &str, into: &mut HashMap<String, HostTensor>) -> anyhow::Result<()> {
    let file = TensorFile::open(upstream.artifact(artifact)?)?;
    for name in file.names() {
        let (shape, values) = file.f32(&name)?;
        into.insert(name, HostTensor { shape, values });
    }
    Ok(())
}

fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, dim] = t.dims();
    let values: Vec<f32> = l2_normalize(t).into_data().convert::<f32>().into_vec().expect("f32 data");
    values.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect()
}

fn embed<B: Backend>(job: &EmbedJob<'_>, device: &B::Device) -> anyhow::Result<Embedded> {
    let mut weights = HashMap::new();
    read_weights(job.trained, "image_encoder.safetensors", &mut weights)?;
    if job.config.text.is_some() {
        read_weights(job.trained, "text_encoder.safetensors", &mut weights)?;
    }
    let whitening = match (weights.remove(Whitening::MEAN), weights.remove(Whitening::MATRIX)) {
        (Some(mean), Some(matrix)) => Some(Whitening::from_parts(mean.values, matrix.values)?),
        _ => None,
    };
    let model: ClipModel<B> = load(job.config.init::<B>(device), Layout::PyTorch, weights)
        .with_context(|| format!("loading the weights of train stage '{}'", job.trained.stage))?;
    let vit = &job.config.vit;
    let mut images = Vec::with_capacity(job.eval_images.len());
    for chunk in job.eval_images.chunks(job.batch) {
        let pixels = eval_patches(job.images, chunk, vit.image_size, vit.patch_size)?;
        let x = Tensor::<B, 2>::from_data(TensorData::new(pixels, [chunk.len() * vit.patches(), vit.patch_dim()]), device);
        images.extend(rows(model.encode_images(x, chunk.len(), Precision::F32)));
    }
    let mut tally = Tally::default();
    let (captions, prompts) = match job.text {
        TextSource::Frozen(cache) => {
            let frozen = FrozenCache::open(cache, whitening)?;
            for chunk in job.negatives.chunks(NEGATIVE_CHUNK) {
                let (pos, neg) = frozen.negatives(chunk)?;
                add_examples(&mut tally, job, &images, chunk, &pos, &neg);
            }
            (frozen.captions(job)?, frozen.prompts(job)?)
        }
        TextSource::Scratch(trained) => {
            let tokenizer_path = trained.artifact("vocab.json").or_else(|_| trained.artifact("tokenizer.json"))?;
            let tokenizer = TextTokenizer::load(tokenizer_path)?;
            let tower = model.text.as_ref().expect("scratch models have a text tower");
            let context = job.config.text.as_ref().expect("scratch").context;
            let embed_texts = |texts: Vec<&str>| -> anyhow::Result<Vec<Vec<f32>>> {
                let mut out = Vec::with_capacity(texts.len());
                for chunk in texts.chunks(job.batch) {
                    let ids: Vec<Vec<u32>> = chunk.iter().map(|t| tokenizer.encode(t, context)).collect::<anyhow::Result<_>>()?;
                    let (data, eos) = pad_tokens(ids.iter().map(Vec::as_slice));
                    out.extend(rows(tower.forward(Tensor::from_data(data, device), &eos, Precision::F32)));
                }
                Ok(out)
            };
            for chunk in job.negatives.chunks(NEGATIVE_CHUNK) {
                let pos = embed_texts(chunk.iter().map(|(_, n)| n.positive.as_str()).collect())?;
                let neg = embed_texts(chunk.iter().map(|(_, n)| n.negative.as_str()).collect())?;
                add_examples(&mut tally, job, &images, chunk, &pos, &neg);
            }
            (embed_texts(job.captions.iter().map(|(_, c)| *c).collect())?, embed_texts(job.prompts.iter().map(String::as_str).collect())?)
        }
    };
    let compositional = (!job.negatives.is_empty()).then(|| tally.finish());
    Ok(Embedded { images, captions, prompts, compositional })
}

fn add_examples(
    tally: &mut Tally,
    job: &EmbedJob<'_>,
    images: &[Vec<f32>],
    chunk: &[(usize, IngestNegative)],
    pos: &[Vec<f32>],
    neg: &[Vec<f32>],
) {
    for (((_, n), positive), negative) in chunk.iter().zip(pos).zip(neg) {
        let image = &images[job.position[&n.index]];
        tally.add(compositional::Example { subset: &n.subset, image, positive, negative });
    }
}

/// A frozen encoder's cache, rows picked and ordered like the job's texts
/// (whitened as the training's were, if they were, then L2-normalised).
struct FrozenCache<'a> {
    stage: &'a str,
    whitening: Option<Whitening>,
    file: TensorFile,
    captions: F32Rows,
    /// The image of each caption row.
    caption_image: Vec<usize>,
    positives: F32Rows,
    negatives: F32Rows,
    /// Row in the cache's negatives of each line of negatives.jsonl.
    negative_rows: HashMap<i64, usize>,
}

/// `rows` of `table`, each whitened (when given) and L2-normalised.
fn normalized(table: &F32Rows, rows: &[usize], whitening: Option<&Whitening>) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut values = table.gather(rows)?;
    if let Some(w) = whitening {
        w.apply(&mut values);
    }
    let mut rows: Vec<Vec<f32>> = values.chunks_exact(table.dim().max(1)).map(<[f32]>::to_vec).collect();
    rows.iter_mut().for_each(|r| pooling::l2_normalize(r));
    Ok(rows)
}

impl<'a> FrozenCache<'a> {
    fn open(cache: &'a UpstreamOutputs, whitening: Option<Whitening>) -> anyhow::Result<FrozenCache<'a>> {
        let file = TensorFile::open(cache.artifact("embeddings.safetensors")?)?;
        let negative_rows = file.i64("negative_row")?.into_iter().enumerate().map(|(j, r)| (r, j)).collect();
        let (positives, negatives) = (file.f32_table("negative_positive")?, file.f32_table("negative_negative")?);
        let (captions, caption_image) = text_embed::caption_rows(cache)?;
        if let Some(w) = &whitening
            && w.dim() != captions.dim()
        {
            bail!(
                "the training's text whitening is {}-wide but text_embed stage '{}' has {}-wide embeddings",
                w.dim(),
                cache.stage,
                captions.dim()
            );
        }
        Ok(FrozenCache { stage: &cache.stage, whitening, file, captions, caption_image, positives, negatives, negative_rows })
    }

    fn captions(&self, job: &EmbedJob<'_>) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut by_image: HashMap<usize, Vec<usize>> = HashMap::new();
        for (row, &i) in self.caption_image.iter().enumerate() {
            by_image.entry(i).or_default().push(row);
        }
        let mut rows = Vec::with_capacity(job.captions.len());
        let mut next: HashMap<usize, usize> = HashMap::new();
        for &(image, text) in job.captions {
            let k = next.entry(image).or_default();
            let row = by_image.get(&image).and_then(|rows| rows.get(*k)).with_context(|| {
                format!(
                    "text_embed stage '{}' has no embedding for caption {text:?} of image {image}: it embedded other captions",
                    self.stage
                )
            })?;
            *k += 1;
            rows.push(*row);
        }
        normalized(&self.captions, &rows, self.whitening.as_ref())
    }

    /// The (positive, negative) rows of a chunk of negatives.
    fn negatives(&self, chunk: &[(usize, IngestNegative)]) -> anyhow::Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        let rows: Vec<usize> = chunk
            .iter()
            .map(|(row, _)| {
                self.negative_rows.get(&(*row as i64)).copied().with_context(|| {
                    format!(
                        "text_embed stage '{}' holds the hard negatives of test images only; evaluate with split = \"test\"",
                        self.stage
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let w = self.whitening.as_ref();
        Ok((normalized(&self.positives, &rows, w)?, normalized(&self.negatives, &rows, w)?))
    }

    fn prompts(&self, job: &EmbedJob<'_>) -> anyhow::Result<Vec<Vec<f32>>> {
        let prompts = self.file.f32_table("class_prompts")?;
        if prompts.len() != job.prompts.len() {
            bail!("text_embed stage '{}' has {} class prompts, the ingest lists {}", self.stage, prompts.len(), job.prompts.len());
        }
        normalized(&prompts, &(0..prompts.len()).collect::<Vec<_>>(), self.whitening.as_ref())
    }
}
