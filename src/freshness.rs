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
use crate::store::{DoneAttempt, Store, Verified};

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    NeverRun,
    /// Ran before but never finished (last attempt failed, interrupted, ...).
    Unfinished(String),
    ParamsChanged(Vec<String>),
    UpstreamChanged,
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
            Reason::UpstreamChanged => write!(f, "upstream changed"),
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
/// Objects found intact with a new stat are reported back so a writable caller can record them.
pub async fn assess(plan: &Plan, store: Option<&Store>) -> anyhow::Result<Vec<Freshness>> {
    let Some(store) = store else {
        return Ok(plan.nodes.iter().map(|_| Freshness::Run(Reason::NeverRun)).collect());
    };
    let mut done = store.done_attempts().await?;
    let previous = store.previous_bindings(&plan.spec.name).await?;
    let latest = store.latest_attempt_statuses().await?;
    let objects = store.workspace().objects();
    let mut verified: HashMap<String, Verified> = HashMap::new();
    let mut out = Vec::with_capacity(plan.nodes.len());
    for node in &plan.nodes {
        if let Some(attempt) = done.remove(node.key.as_str()) {
            let mut broken = None;
            for artifact in &attempt.artifacts {
                let state = match verified.get(&artifact.hash) {
                    Some(v) => *v,
                    None => {
                        let v = objects.verify(&artifact.hash, artifact.recorded)?;
                        if let (Verified::Intact(now), false) = (v, store.is_read_only()) {
                            if Some(now) != artifact.recorded {
                                store.refresh_object_stat(&artifact.hash, now).await?;
                            }
                        }
                        verified.insert(artifact.hash.clone(), v);
                        v
                    }
                };
                match state {
                    Verified::Intact(_) => {}
                    Verified::Missing => broken = Some(Reason::ArtifactMissing(artifact.name.clone())),
                    Verified::Corrupt => broken = Some(Reason::ArtifactCorrupt(artifact.name.clone())),
                }
                if broken.is_some() {
                    break;
                }
            }
            out.push(match broken {
                None => Freshness::Cached(attempt),
                Some(reason) => Freshness::Broken(attempt, reason),
            });
            continue;
        }
        if let Some(status) = latest.get(node.key.as_str()) {
            out.push(Freshness::Run(Reason::Unfinished(status.clone())));
            continue;
        }
        let binding = &plan.bindings[node.bindings[0]];
        let lookup = (plan.stage_name(binding).to_owned(), Plan::axes_json(binding).to_string());
        let earlier = previous.get(&lookup).and_then(|list| list.iter().find(|p| p.key != node.key.as_str()));
        out.push(Freshness::Run(match earlier {
            None => Reason::NeverRun,
            Some(p) if p.kind_version != i64::from(node.kind.version()) => {
                Reason::CodeVersionChanged { from: p.kind_version, to: i64::from(node.kind.version()) }
            }
            Some(p) => {
                let changed = changed_params(&p.params, &Value::Object(node.params.0.clone()));
                if changed.is_empty() { Reason::UpstreamChanged } else { Reason::ParamsChanged(changed) }
            }
        }));
    }
    Ok(out)
}

fn changed_params(before: &Value, now: &Value) -> Vec<String> {
    let (Some(before), Some(now)) = (before.as_object(), now.as_object()) else { return vec!["params".into()] };
    let mut names: Vec<String> = before.keys().chain(now.keys()).filter(|k| before.get(*k) != now.get(*k)).cloned().collect();
    names.sort();
    names.dedup();
    names
}
