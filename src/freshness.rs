//! Freshness: which instances of a plan are cached, and why the others must run.
//!
//! An instance is cached when a done attempt exists for its key and every
//! artifact of that attempt is intact. Intact is decided by a stat check
//! against what was recorded when the object was last verified, falling back
//! to re-hashing when the stat differs, so checking a large grid stays cheap
//! while a modified object is still caught.

use std::collections::HashMap;

use serde_json::Value;

use crate::pipeline::Plan;
use crate::store::{AttemptStatus, DoneAttempt, ObjectStat, ObjectStore, Store, SupersededInput, Verified};

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    NeverRun,
    /// Ran before but never finished (last attempt failed, interrupted, ...).
    Unfinished(AttemptStatus),
    ParamsChanged(Vec<String>),
    KindChanged {
        from: String,
        to: String,
    },
    UpstreamChanged,
    /// Its done attempt read outputs of this upstream stage that have since
    /// been replaced by other ones (the upstream ran again, writing other bytes).
    UpstreamOutputChanged(String),
    CodeVersionChanged {
        from: i64,
        to: i64,
    },
    ArtifactMissing(String),
    ArtifactCorrupt(String),
    Forced,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::Unfinished(status) => write!(f, "never finished (last attempt {status})"),
            Reason::ParamsChanged(names) => write!(f, "parameter changed ({})", names.join(", ")),
            Reason::KindChanged { from, to } => write!(f, "stage kind changed ({from} → {to})"),
            Reason::UpstreamChanged => write!(f, "upstream changed"),
            Reason::UpstreamOutputChanged(stage) => write!(f, "upstream output changed ({stage})"),
            Reason::CodeVersionChanged { from, to } => write!(f, "code version changed ({from} → {to})"),
            Reason::ArtifactMissing(name) => write!(f, "artifact missing ({name})"),
            Reason::ArtifactCorrupt(name) => write!(f, "artifact corrupt ({name})"),
            Reason::Forced => write!(f, "forced"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Freshness {
    Cached(DoneAttempt),
    Run(Reason),
    /// Done before, but an artifact is missing or corrupt: the attempt must be
    /// invalidated and the instance run again.
    Broken(DoneAttempt, Reason),
}

impl Freshness {
    pub fn is_cached(&self) -> bool {
        matches!(self, Freshness::Cached(_))
    }

    /// Why it must run; `None` when cached.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Freshness::Cached(_) => None,
            Freshness::Run(r) | Freshness::Broken(_, r) => Some(r),
        }
    }
}

/// Decides each node's freshness. `store` is `None` for a workspace with no store yet.
/// On a writable store, objects found intact with a new stat get that stat recorded,
/// so the next check is a plain stat again.
pub async fn assess(plan: &Plan, store: Option<&Store>) -> anyhow::Result<Vec<Freshness>> {
    let Some(store) = store else {
        return Ok(plan.nodes.iter().map(|_| Freshness::Run(Reason::NeverRun)).collect());
    };
    let keys: Vec<&str> = plan.nodes.iter().map(|n| n.key.as_str()).collect();
    let mut done = store.done_attempts(&keys).await?;

    // Check every distinct object once, on all cores (a stat each, a re-hash
    // only when the stat changed).
    let mut objects: HashMap<String, Option<ObjectStat>> = HashMap::new();
    for attempt in done.iter().flatten() {
        for artifact in &attempt.artifacts {
            objects.insert(artifact.hash.clone(), artifact.recorded);
        }
    }
    let objects: Vec<(String, Option<ObjectStat>)> = objects.into_iter().collect();
    let verified = verify_all(&store.workspace().objects(), &objects)?;
    if !store.is_read_only() {
        for (hash, recorded) in &objects {
            if let Some(Verified::Intact(now)) = verified.get(hash.as_str()) {
                if Some(*now) != *recorded {
                    store.refresh_object_stat(hash, *now).await?;
                }
            }
        }
    }

    // Only done instances can read superseded inputs.
    let superseded = if done.iter().any(Option::is_some) { store.superseded_inputs(&keys).await? } else { Vec::new() };
    let stale = stale_inputs(plan, &done, superseded);
    let mut out: Vec<Option<Freshness>> = Vec::with_capacity(plan.nodes.len());
    for (i, slot) in done.iter_mut().enumerate() {
        let Some(attempt) = slot.take() else {
            out.push(None);
            continue;
        };
        let broken = attempt.artifacts.iter().find_map(|a| match verified.get(a.hash.as_str()) {
            Some(Verified::Missing) => Some(Reason::ArtifactMissing(a.name.clone())),
            Some(Verified::Corrupt) => Some(Reason::ArtifactCorrupt(a.name.clone())),
            _ => None,
        });
        let broken = broken.or_else(|| stale.get(&i).cloned());
        out.push(Some(match broken {
            None => Freshness::Cached(attempt),
            Some(reason) => Freshness::Broken(attempt, reason),
        }));
    }

    // Explaining why the rest must run needs history, loaded only when some do.
    if out.iter().any(Option::is_none) {
        // A writable store recorded this plan before: a cell with a single
        // binding holds only the instance planned now.
        let min_rows = if store.is_read_only() { 1 } else { 2 };
        let previous = store.previous_bindings(&plan.spec.name, min_rows).await?;
        let latest = store.latest_attempt_statuses().await?;
        for (node, slot) in plan.nodes.iter().zip(out.iter_mut()) {
            if slot.is_none() {
                *slot = Some(Freshness::Run(why_run(plan, node, &previous, &latest)));
            }
        }
    }
    Ok(out.into_iter().map(|f| f.expect("every node assessed")).collect())
}

/// The done nodes that read upstream outputs which have since been replaced
/// by other bytes, with the reason. An upstream that ran again and wrote the
/// same bytes leaves its readers standing.
fn stale_inputs(plan: &Plan, done: &[Option<DoneAttempt>], superseded: Vec<SupersededInput>) -> HashMap<usize, Reason> {
    let mut stale = HashMap::new();
    for SupersededInput { position: i, upstream_instance_id, outputs: read } in superseded {
        let Some(&u) = plan.nodes[i].upstream.iter().find(|&&u| done[u].as_ref().is_some_and(|d| d.instance_id == upstream_instance_id))
        else {
            continue;
        };
        let then: std::collections::BTreeSet<(&str, &str)> = read.iter().map(|(n, h)| (n.as_str(), h.as_str())).collect();
        if done[u].as_ref().is_some_and(|now| now.outputs() != then) {
            let stage = plan.stage_name(&plan.bindings[plan.nodes[u].bindings[0]]).to_owned();
            stale.entry(i).or_insert(Reason::UpstreamOutputChanged(stage));
        }
    }
    stale
}

/// Verifies objects in parallel; returns each one's state by hash.
fn verify_all<'a>(objects: &ObjectStore, todo: &'a [(String, Option<ObjectStat>)]) -> anyhow::Result<HashMap<&'a str, Verified>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = todo.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(hash, recorded)| Ok((hash.as_str(), objects.verify(hash, *recorded)?)))
                        .collect::<std::io::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = HashMap::with_capacity(todo.len());
        for handle in handles {
            out.extend(handle.join().expect("verification thread")?);
        }
        Ok(out)
    })
}

fn why_run(plan: &Plan, node: &crate::pipeline::Node, previous: &Previous, latest: &HashMap<String, AttemptStatus>) -> Reason {
    if let Some(status) = latest.get(node.key.as_str()) {
        return Reason::Unfinished(*status);
    }
    let binding = &plan.bindings[node.bindings[0]];
    // The axes' text is built only for stages with earlier instances.
    let cell = previous.get(plan.stage_name(binding)).and_then(|cells| cells.get(&Plan::axes_json(binding).to_string()));
    // What changed since the last instance that ran there, else since the
    // last one a `plan` saw (edits planned but never run are not the baseline).
    let others: Vec<&crate::store::PreviousBinding> =
        cell.map(|list| list.iter().filter(|p| p.key != node.key.as_str()).collect()).unwrap_or_default();
    let earlier = others.iter().find(|p| p.ran).or(others.first());
    match earlier {
        None => Reason::NeverRun,
        Some(p) if p.kind != node.kind.name() => Reason::KindChanged { from: p.kind.clone(), to: node.kind.name().to_owned() },
        Some(p) if p.kind_version != i64::from(node.kind.version()) => {
            Reason::CodeVersionChanged { from: p.kind_version, to: i64::from(node.kind.version()) }
        }
        Some(p) => {
            let changed = changed_params(&serde_json::from_str(&p.params).unwrap_or(Value::Null), &node.params);
            if changed.is_empty() { Reason::UpstreamChanged } else { Reason::ParamsChanged(changed) }
        }
    }
}

/// Earlier bindings by stage, then by the axes' JSON text.
type Previous = HashMap<String, HashMap<String, Vec<crate::store::PreviousBinding>>>;

fn changed_params(before: &Value, now: &crate::stages::Params) -> Vec<String> {
    let Some(before) = before.as_object() else { return vec!["params".into()] };
    let mut names: Vec<String> = before
        .keys()
        .map(String::as_str)
        .chain(now.iter().map(|(k, _)| k))
        .filter(|k| before.get(*k) != now.get(k))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}
