//! Stage kinds: the units of work a pipeline is made of.
//!
//! Each kind lives in its own module and is registered by one line in
//! [`KINDS`]. A kind declares its parameters ([`ParamSpec`]), a code version
//! (bump it whenever a change alters what the kind produces: it is part of every
//! stage key, so bumping it invalidates exactly that kind's cached results), and
//! a `run` that works through a [`StageContext`].

pub mod caption_ingest;
pub mod command;
pub mod context;
pub mod evaluate;
pub mod params;
pub mod text_common;
pub mod text_embed;
pub mod text_similarity;
pub mod train;

pub use context::{CancelToken, Interrupted, MetricPoint, NoProgress, Progress, Recorder, StageContext, StageOutputs, UpstreamOutputs};
pub use params::{ParamDefault, ParamSpec, ParamType, Params};

/// Resources an instance asks the scheduler for, by default (a stage's
/// `[stages.X.resources]` overrides them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    pub gpus: u32,
    /// CPU cores; 0 leaves it unsaid (the local `--cpus` budget does not
    /// count the instance; Slurm gives it one core).
    pub cpus: u32,
}

/// A parameter-level problem found by a kind's own checks; the pipeline
/// compiler turns it into an error located at the parameter in the file.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

impl ParamError {
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        ParamError { param: param.to_owned(), message: message.into() }
    }
}

/// An upstream instance as [`StageKind::check_upstream`] sees it.
pub struct UpstreamInstance<'a> {
    /// The stage it is an instance of.
    pub stage: &'a str,
    pub kind: &'static str,
    pub params: &'a Params,
    /// Its index among the plan's instances, and those of its own upstream.
    pub node: usize,
    pub upstream: &'a [usize],
}

impl<'a> UpstreamInstance<'a> {
    /// The one instance of `kind` among `upstream`, if there is exactly one.
    pub fn of_kind<'s>(upstream: &'s [UpstreamInstance<'a>], kind: &str) -> Option<&'s UpstreamInstance<'a>> {
        let mut found = upstream.iter().filter(|u| u.kind == kind);
        found.next().filter(|_| found.next().is_none())
    }
}

pub trait StageKind: Send + Sync + 'static {
    /// The name used as `kind = "..."` in pipeline files.
    fn name(&self) -> &'static str;
    /// Code version: part of every stage key of this kind.
    fn version(&self) -> u32;
    /// One-line description for `--help` and docs.
    fn summary(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    /// Checks that span several parameters or need more than a type (a source
    /// string's format, say). Runs at compile time, before anything executes.
    fn check(&self, _params: &Params) -> Result<(), ParamError> {
        Ok(())
    }
    /// Parameters derived from the declared ones at compile time and added to
    /// them, so they become part of the stage key: the hash of an input file
    /// the kind reads (model weights, a benchmark's JSON), or a default that
    /// depends on another parameter. Errors are located at `ParamError::param`.
    fn derive(&self, _params: &Params) -> Result<Vec<(String, serde_json::Value)>, ParamError> {
        Ok(Vec::new())
    }
    /// Whether the kind reads the artifacts of its upstream stages' own
    /// upstream stages (all ancestors), not just of the stages it `needs`:
    /// `evaluate` needs only `train` but scores with the ingest's images and
    /// the frozen encoder's cache. The compiler then makes every ancestor a
    /// direct input of the instance (and so of its key and lineage).
    fn sees_ancestors(&self) -> bool {
        false
    }
    /// Kinds of which an instance must have exactly one upstream stage (among
    /// all ancestors for a kind that [`StageKind::sees_ancestors`]): checked
    /// when the pipeline is compiled, so a missing `needs` is a located error
    /// before anything runs.
    fn required_upstream(&self, _params: &Params) -> Vec<&'static str> {
        Vec::new()
    }
    /// Checks an instance against its upstream instances (their kinds and
    /// parameters, and which instances they read in turn), once
    /// [`StageKind::required_upstream`] holds: what would otherwise fail, or
    /// silently mismatch, at run time is a located error when compiling. An
    /// error at `needs` points at the stage's `needs`.
    fn check_upstream(&self, _params: &Params, _upstream: &[UpstreamInstance<'_>]) -> Result<(), ParamError> {
        Ok(())
    }
    fn resources(&self, _params: &Params) -> Resources {
        Resources::default()
    }
    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()>;
    /// How long after Ctrl-C or SIGTERM the runner waits for `run` to return
    /// (it checks the cancel token between steps and batches, and saves a
    /// checkpoint) before it records the attempt interrupted without it and
    /// stops waiting: one GPU op that autotunes, or a CPU step of a large
    /// model, can take far longer than anyone should wait, and a training
    /// resumes from its last periodic checkpoint either way. `None`: wait
    /// however long it takes, for a kind that must stop what it started.
    fn interrupt_grace(&self) -> Option<std::time::Duration> {
        Some(INTERRUPT_GRACE)
    }
}

/// [`StageKind::interrupt_grace`] of every kind that does not say otherwise:
/// with the run's own wind-down it keeps an interrupt under 5 s.
pub const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a kind with a `device` parameter (`auto | cpu | cuda:N`) asks for:
/// one GPU when it will run on one.
pub fn device_resources(params: &Params) -> Resources {
    let gpu = crate::device::DeviceRequest::parse(params.str("device")).is_ok_and(crate::device::DeviceRequest::uses_gpu);
    Resources { gpus: u32::from(gpu), ..Resources::default() }
}

/// Every registered kind. Adding a kind: one module plus one line here.
pub static KINDS: &[&dyn StageKind] = &[
    &caption_ingest::CaptionIngest,
    &command::Command,
    &text_embed::TextEmbed,
    &text_similarity::TextSimilarity,
    &train::Train,
    &evaluate::Evaluate,
];

pub fn find(name: &str) -> Option<&'static dyn StageKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}
