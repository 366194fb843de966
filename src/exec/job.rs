//! Running one claimed instance: inputs in, stage kind, outputs into the store.
//!
//! Used by the local scheduler for every instance and by `ablate exec` for one,
//! so the two cannot drift apart.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use anyhow::Context as _;

use crate::stages::{CancelToken, Interrupted, MetricPoint, Params, Progress, Recorder, StageContext, StageKind, UpstreamOutputs};
use crate::store::{AttemptEnd, DoneAttempt, ObjectStore, PutObject, Store, Verified};

/// The done outputs of one upstream instance.
#[derive(Debug, Clone)]
pub struct UpstreamDone {
    pub stage: String,
    pub kind: String,
    pub key: String,
    pub params: Params,
    pub done: DoneAttempt,
}

/// Everything needed to execute one instance.
pub struct Job {
    pub instance_id: i64,
    pub key: String,
    pub kind: &'static dyn StageKind,
    pub params: Params,
    pub upstream: Vec<UpstreamDone>,
}

/// How an executed job ended.
#[derive(Debug)]
pub enum JobEnd {
    Done,
    Interrupted,
    Failed(String),
}

/// An upstream artifact that failed full verification.
#[derive(Debug, Clone)]
pub struct BrokenInput {
    pub upstream: usize,
    pub artifact: String,
    pub missing: bool,
}

/// Re-hashes every input artifact not yet verified in this run: inputs are
/// verified when a stage uses them, and each object at most once per run.
pub async fn verify_inputs(store: &Store, job: &Job, verified: &mut HashSet<String>) -> anyhow::Result<Option<BrokenInput>> {
    let objects = store.workspace().objects();
    let todo: Vec<(usize, String, String)> = job
        .upstream
        .iter()
        .enumerate()
        .flat_map(|(i, u)| u.done.artifacts.iter().map(move |a| (i, a.name.clone(), a.hash.clone())))
        .filter(|(_, _, hash)| !verified.contains(hash))
        .collect();
    let (broken, intact) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Option<BrokenInput>, Vec<String>)> {
        let mut intact = Vec::new();
        for (i, name, hash) in todo {
            match objects.verify_fully(&hash)? {
                Verified::Intact(_) => intact.push(hash),
                state => return Ok((Some(BrokenInput { upstream: i, artifact: name, missing: state == Verified::Missing }), intact)),
            }
        }
        Ok((None, intact))
    })
    .await??;
    verified.extend(intact);
    Ok(broken)
}

/// Runs a claimed job to its end and records the outcome on its attempt.
pub async fn run_job(
    store: &Store,
    job: &Job,
    attempt_id: i64,
    cancel: CancelToken,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<JobEnd> {
    let workspace = store.workspace().clone();
    let attempt_dir = workspace.attempt_dir(attempt_id);
    let objects = workspace.objects();
    let upstream: Vec<UpstreamOutputs> = job
        .upstream
        .iter()
        .map(|u| UpstreamOutputs {
            stage: u.stage.clone(),
            kind: u.kind.clone(),
            key: u.key.clone(),
            params: u.params.clone(),
            artifacts: u.done.artifacts.iter().map(|a| (a.name.clone(), objects.path(&a.hash))).collect(),
        })
        .collect();
    let (recorder, records) = StoreRecorder::new(objects.clone(), attempt_dir.join("recorded"));
    let recorded_early = recorder.recorded.clone();
    let writer = tokio::spawn(write_records(store.clone(), job.instance_id, attempt_id, records));
    let watched = cancel.clone();
    let mut ctx = StageContext::new(job.params.clone(), upstream, attempt_dir.join("out"), workspace.state_dir(&job.key), cancel, progress)
        .with_recorder(Arc::new(recorder));
    let kind = job.kind;
    let mut blocking = tokio::task::spawn_blocking(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| kind.run(&mut ctx)));
        let result = match result {
            Ok(r) => r,
            Err(panic) => Err(anyhow::anyhow!("the stage panicked: {}", panic_message(&panic))),
        };
        let mut metrics = ctx.take_metrics();
        let outcome = result.and_then(|()| {
            let outputs = ctx.finish()?;
            metrics.extend(outputs.metrics);
            outputs
                .artifacts
                .into_iter()
                .map(|(name, path)| Ok((name.clone(), objects.put(&path).with_context(|| format!("storing artifact {name}"))?)))
                .collect::<anyhow::Result<Vec<(String, PutObject)>>>()
        });
        (outcome, metrics)
    });
    let finished = tokio::select! {
        joined = &mut blocking => Some(joined),
        () = grace_after_interrupt(&watched, kind.interrupt_grace()) => None,
    };
    let Some(joined) = finished else {
        // The stage thread is left to the process's exit (`cli::main` does
        // not wait for it); what it recorded so far, its last checkpoint
        // above all, is in the store and its state folder.
        writer.abort();
        let grace = kind.interrupt_grace().unwrap_or_default().as_secs_f64();
        let message = format!("interrupted by the user (the stage did not stop within {grace} s; it resumes from its last checkpoint)");
        store.end_attempt(attempt_id, AttemptEnd::Interrupted, &message, &[]).await?;
        return Ok(JobEnd::Interrupted);
    };
    let (outcome, metrics): (anyhow::Result<Vec<(String, PutObject)>>, Vec<MetricPoint>) = joined.context("stage thread")?;
    // The context (and with it the recorder's sender) is gone: the writer
    // drains what the stage sent, so the attempt's end comes after its records.
    let recorded = writer.await.context("record writer")?;
    let outcome = match recorded {
        Err(e) if outcome.is_ok() => Err(e),
        _ => outcome,
    };
    let end = match outcome {
        Ok(artifacts) => {
            let inputs: Vec<i64> = job.upstream.iter().map(|u| u.done.attempt_id).collect();
            store.commit_done(attempt_id, job.instance_id, &artifacts, &metrics, &inputs).await?;
            // A final output that replaced what the attempt recorded early.
            let early: Vec<(String, u64)> = {
                let early = recorded_early.lock().expect("recorded");
                artifacts.iter().filter_map(|(name, object)| early.get(name).filter(|(hash, _)| *hash != object.hash).cloned()).collect()
            };
            for (hash, inode) in early {
                forget_replaced(&store, &hash, inode).await;
            }
            JobEnd::Done
        }
        Err(e) if e.is::<Interrupted>() => {
            store.end_attempt(attempt_id, AttemptEnd::Interrupted, "interrupted by the user", &metrics).await?;
            JobEnd::Interrupted
        }
        Err(e) => {
            let message = format!("{e:#}");
            store.end_attempt(attempt_id, AttemptEnd::Failed, &message, &metrics).await?;
            JobEnd::Failed(message)
        }
    };
    let _ = std::fs::remove_dir_all(&attempt_dir);
    Ok(end)
}

/// Returns `grace` after the run is cancelled; never without a grace.
async fn grace_after_interrupt(cancel: &CancelToken, grace: Option<std::time::Duration>) {
    let Some(grace) = grace else { return std::future::pending().await };
    while !cancel.is_cancelled() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(grace).await;
}

/// Objects recorded while an attempt runs, by artifact name: (hash, inode).
type Recorded = Arc<std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>>;

/// What a running stage sends to the store before it ends.
enum Record {
    Metrics(Vec<MetricPoint>),
    /// An artifact, and the object (hash, inode) it replaces for this
    /// attempt: the previous checkpoint, deleted once nothing references it.
    Artifact(String, PutObject, Option<(String, u64)>),
    Device(String),
}

/// The [`Recorder`] of a job: objects are stored on the stage's thread, rows
/// are written by [`write_records`] on the runtime, in the order sent.
struct StoreRecorder {
    objects: ObjectStore,
    /// Where a recorded file is linked (or copied) before it moves into the object store.
    staging: std::path::PathBuf,
    sender: tokio::sync::mpsc::UnboundedSender<Record>,
    /// The object each artifact name last recorded, with its inode.
    recorded: Recorded,
}

impl StoreRecorder {
    fn new(objects: ObjectStore, staging: std::path::PathBuf) -> (Self, tokio::sync::mpsc::UnboundedReceiver<Record>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (StoreRecorder { objects, staging, sender, recorded: Recorded::default() }, receiver)
    }

    fn send(&self, record: Record) {
        // The writer lives until every sender is dropped, so this cannot fail.
        let _ = self.sender.send(record);
    }
}

impl Recorder for StoreRecorder {
    fn metrics(&self, points: Vec<MetricPoint>) {
        self.send(Record::Metrics(points));
    }

    fn artifact(&self, name: &str, path: &std::path::Path) -> anyhow::Result<()> {
        // The object store takes files by rename: give it a second name of the
        // file (a hard link, else a copy) so the stage's own stays in place.
        std::fs::create_dir_all(&self.staging).with_context(|| format!("creating {}", self.staging.display()))?;
        let staged = self.staging.join(name);
        let _ = std::fs::remove_file(&staged);
        if std::fs::hard_link(path, &staged).is_err() {
            std::fs::copy(path, &staged).with_context(|| format!("copying {} for the store", path.display()))?;
        }
        let object = self.objects.put(&staged).with_context(|| format!("storing artifact {name}"))?;
        let replaced = match self.objects.inode(&object.hash)? {
            Some(inode) => self.recorded.lock().expect("recorded").insert(name.to_owned(), (object.hash.clone(), inode)),
            None => None,
        };
        let replaced = replaced.filter(|(hash, _)| *hash != object.hash);
        self.send(Record::Artifact(name.to_owned(), object, replaced));
        Ok(())
    }

    fn device(&self, device: &str) {
        self.send(Record::Device(device.to_owned()));
    }
}

/// Writes a running attempt's records as they come; the first failure is
/// returned once the stage has ended (the stage itself is not stopped).
async fn write_records(
    store: Store,
    instance_id: i64,
    attempt_id: i64,
    mut records: tokio::sync::mpsc::UnboundedReceiver<Record>,
) -> anyhow::Result<()> {
    let mut first_error = None;
    while let Some(record) = records.recv().await {
        let written = match &record {
            Record::Metrics(points) => store.insert_metrics(instance_id, attempt_id, points).await.context("recording metrics"),
            Record::Artifact(name, object, replaced) => {
                let recorded = store
                    .record_artifact(instance_id, attempt_id, name, object)
                    .await
                    .with_context(|| format!("recording artifact {name}"));
                if let (Ok(()), Some((hash, inode))) = (&recorded, replaced) {
                    forget_replaced(&store, hash, *inode).await;
                }
                recorded
            }
            Record::Device(device) => store.set_attempt_device(attempt_id, device).await.context("recording the device"),
        };
        if let Err(e) = written {
            tracing::warn!("{e:#}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Deletes an object an attempt recorded and then replaced (an earlier
/// checkpoint) when no artifact references it: otherwise every checkpoint
/// of a long training would stay in `objects/` until `ablate gc`. Left to
/// `gc` when another store shares the workspace's objects. A failure here
/// is a warning: what `gc` can still delete never fails the attempt.
async fn forget_replaced(store: &Store, hash: &str, inode: u64) {
    let workspace = store.workspace();
    let forget = async {
        if workspace.objects_unshared() && !store.hash_referenced(hash).await? && workspace.objects().remove_if_unchanged(hash, inode)? {
            store.forget_objects(&[hash.to_owned()]).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = forget.await {
        tracing::warn!("deleting the replaced object {hash} (ablate gc will): {e:#}");
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
