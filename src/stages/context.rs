//! What a running stage sees of the world.
//!
//! A stage kind gets its resolved parameters, the artifacts of its upstream
//! instances as plain file paths, and a place to write its own outputs; it hands
//! back artifacts (files it wrote) and metrics. It never sees the store, the
//! object layout or the run: that is what lets the same kind run in-process under
//! the local scheduler or alone under `ablate exec` on a cluster node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, anyhow, bail};

use super::params::Params;

/// Raised (through `anyhow`) when a stage stops because the user interrupted the run.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A flag shared by everything a run started; set once on Ctrl-C.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Progress reporting for a running stage (a bar in the terminal, nothing in tests).
pub trait Progress: Send + Sync {
    fn set_length(&self, _len: u64) {}
    fn set_position(&self, _pos: u64) {}
    fn set_message(&self, _msg: String) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Where a running stage's records go before it ends. The job runner hands
/// them to the store at once, so curves grow live and a checkpoint is in the
/// store before a crash; without one (unit tests) they wait for the end.
pub trait Recorder: Send + Sync {
    /// Appends metric points to the running attempt.
    fn metrics(&self, points: Vec<MetricPoint>);
    /// Records the file at `path` (left in place) as the running attempt's
    /// artifact `name`, replacing an earlier one of that name.
    fn artifact(&self, name: &str, path: &Path) -> anyhow::Result<()>;
    /// Records the device the attempt computes on (`cpu`, `cuda:0`).
    fn device(&self, device: &str);
}

/// One metric value, at a step (training curves) or without one (final numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub name: String,
    pub step: Option<i64>,
    pub value: f64,
}

/// The artifacts of one upstream instance, by artifact name.
#[derive(Debug, Clone)]
pub struct UpstreamOutputs {
    /// The upstream stage's name in the pipeline file (for messages only).
    pub stage: String,
    pub kind: String,
    pub key: String,
    pub params: Params,
    pub artifacts: BTreeMap<String, PathBuf>,
}

impl UpstreamOutputs {
    pub fn artifact(&self, name: &str) -> anyhow::Result<&Path> {
        self.artifacts
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| anyhow!("upstream stage '{}' ({}) has no artifact '{name}'", self.stage, self.kind))
    }
}

pub struct StageContext {
    params: Params,
    upstream: Vec<UpstreamOutputs>,
    out_dir: PathBuf,
    state_dir: PathBuf,
    outputs: BTreeMap<String, PathBuf>,
    metrics: Vec<MetricPoint>,
    cancel: CancelToken,
    progress: Arc<dyn Progress>,
    recorder: Option<Arc<dyn Recorder>>,
}

/// What a finished stage hands back.
pub struct StageOutputs {
    pub artifacts: BTreeMap<String, PathBuf>,
    pub metrics: Vec<MetricPoint>,
}

impl StageContext {
    /// `out_dir` receives this attempt's outputs; `state_dir` persists across
    /// attempts of the same instance (checkpoints), both private to the instance.
    pub fn new(
        params: Params,
        upstream: Vec<UpstreamOutputs>,
        out_dir: PathBuf,
        state_dir: PathBuf,
        cancel: CancelToken,
        progress: Arc<dyn Progress>,
    ) -> Self {
        StageContext {
            params,
            upstream,
            out_dir,
            state_dir,
            outputs: BTreeMap::new(),
            metrics: Vec::new(),
            cancel,
            progress,
            recorder: None,
        }
    }

    /// Sends records to `recorder` while the stage runs (see [`Recorder`]).
    pub fn with_recorder(mut self, recorder: Arc<dyn Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn upstream(&self) -> &[UpstreamOutputs] {
        &self.upstream
    }

    /// The single upstream instance of the given kind.
    pub fn upstream_of_kind(&self, kind: &str) -> anyhow::Result<&UpstreamOutputs> {
        let mut found = self.upstream.iter().filter(|u| u.kind == kind);
        match (found.next(), found.next()) {
            (Some(u), None) => Ok(u),
            (None, _) => bail!("this stage needs an upstream stage of kind '{kind}' (add it to `needs`)"),
            (Some(a), Some(b)) => bail!("more than one upstream stage of kind '{kind}' ('{}' and '{}')", a.stage, b.stage),
        }
    }

    /// Registers an output artifact and returns the path to write it to.
    pub fn output(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        // Any file name a researcher might write (`model final.pt`,
        // `lr=0.1+wd.json`), but no control characters (they break the
        // line-based listings) and nothing that climbs out of the folder.
        let segment_ok = |seg: &str| !seg.is_empty() && seg != "." && seg != ".." && !seg.chars().any(char::is_control);
        if !name.split('/').all(segment_ok) {
            bail!("invalid artifact name {name:?}: no control characters (such as a line break), and no empty, '.' or '..' folder names");
        }
        let path = self.out_dir.join(name);
        let folder = path.parent().unwrap_or(&self.out_dir);
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
        self.outputs.insert(name.to_owned(), path.clone());
        Ok(path)
    }

    /// The directory outputs are written to, for kinds (like `command`) that let
    /// a child process write there and register the files afterwards.
    pub fn out_dir(&self) -> anyhow::Result<&Path> {
        std::fs::create_dir_all(&self.out_dir).with_context(|| format!("creating {}", self.out_dir.display()))?;
        Ok(&self.out_dir)
    }

    /// A directory that survives failed or interrupted attempts of this instance.
    pub fn state_dir(&self) -> anyhow::Result<&Path> {
        std::fs::create_dir_all(&self.state_dir).with_context(|| format!("creating {}", self.state_dir.display()))?;
        Ok(&self.state_dir)
    }

    /// Records a final metric value.
    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.push(MetricPoint { name: name.to_owned(), step: None, value });
    }

    /// Records a metric value at a step (a point on a curve).
    pub fn metric_at(&mut self, name: &str, step: i64, value: f64) {
        self.metrics.push(MetricPoint { name: name.to_owned(), step: Some(step), value });
    }

    /// Hands the metrics recorded so far to the store now (a live curve)
    /// instead of with the attempt's end.
    pub fn flush_metrics(&mut self) {
        if let Some(recorder) = &self.recorder
            && !self.metrics.is_empty()
        {
            recorder.metrics(std::mem::take(&mut self.metrics));
        }
    }

    /// Records a file the stage keeps updating (a checkpoint) as artifact
    /// `name` of the running attempt now, so a crash does not lose the record
    /// of it; the file stays where it is. The stage's final output of the
    /// same name, if any, replaces it when the attempt ends.
    pub fn record_artifact_now(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        match &self.recorder {
            Some(recorder) => recorder.artifact(name, path),
            None => Ok(()),
        }
    }

    /// Records the device the stage computes on (shown by `runs`, `show`, the dashboard).
    pub fn ran_on(&self, device: &str) {
        if let Some(recorder) = &self.recorder {
            recorder.device(device);
        }
    }

    pub fn progress(&self) -> &dyn Progress {
        self.progress.as_ref()
    }

    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Returns `Err(Interrupted)` once the run was interrupted; call it between units of work.
    pub fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.cancel.is_cancelled() { Err(Interrupted.into()) } else { Ok(()) }
    }

    /// Metrics recorded so far (kept when a stage fails, e.g. the last finite loss).
    pub fn take_metrics(&mut self) -> Vec<MetricPoint> {
        std::mem::take(&mut self.metrics)
    }

    /// Ends the stage: every registered output must exist as a file.
    pub fn finish(self) -> anyhow::Result<StageOutputs> {
        for (name, path) in &self.outputs {
            if !path.is_file() {
                bail!("the stage registered artifact '{name}' but did not write it");
            }
        }
        Ok(StageOutputs { artifacts: self.outputs, metrics: self.metrics })
    }
}
