//! Submitting: ready instances grouped into job arrays, each array's
//! `--dependency` on its upstream jobs, and the batch scripts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use anyhow::Context as _;

use super::{Follower, Live, State};
use crate::exec::{NodeOutcome, node_label};
use crate::slurm_commands::{self as slurm, shell_quote};
use crate::store::{SlurmJobRow, SlurmTask};

impl Follower<'_> {
    /// Submits every waiting instance whose upstream is done or in Slurm,
    /// grouped into arrays by (depth, stage, resources), shallowest first so
    /// that deeper groups can depend on the jobs just submitted.
    pub(super) async fn submit_ready(&mut self) -> anyhow::Result<()> {
        let n = self.plan.nodes.len();
        let mut ready = vec![false; n];
        for i in 0..n {
            if self.state[i] != State::Waiting {
                continue;
            }
            let upstream = &self.plan.nodes[i].upstream;
            if let Some(&bad) = upstream.iter().find(|&&u| matches!(self.state[u], State::Failed | State::Skipped)) {
                self.skip(i, bad).await?;
                continue;
            }
            if self.is_held(i) {
                // A done dependant of forced reruns. With nobody left to
                // compare their outputs (detached, or interrupted), it reruns.
                if !self.slurm.detach && !self.unattended {
                    if !upstream.iter().all(|&u| self.state[u] == State::Done) {
                        continue;
                    }
                    if self.upstream_unchanged(i).await? {
                        self.before_force[i] = None;
                        self.report.cached.push(i);
                        self.set_done(i);
                        continue;
                    }
                }
                self.forced[i] = true;
            }
            ready[i] = upstream.iter().all(|&u| ready[u] || matches!(self.state[u], State::Done | State::Live(_)));
        }
        if self.stopping {
            return Ok(());
        }
        type Group = (usize, usize, u32, u32, Option<String>, Option<String>, bool);
        let mut groups: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
        for i in (0..n).filter(|&i| ready[i]) {
            let node = &self.plan.nodes[i];
            let group = (self.depth[i], self.stage_of(i), node.cpus, node.gpus, node.mem.clone(), node.time.clone(), self.forced[i]);
            groups.entry(group).or_default().push(i);
        }
        for (_, members) in groups {
            for chunk in members.chunks(self.slurm.array_limit.max(1)) {
                self.submit(chunk).await?;
            }
        }
        Ok(())
    }

    /// Records that an instance was not run because `upstream` failed (or was skipped).
    pub(super) async fn skip(&mut self, i: usize, upstream: usize) -> anyhow::Result<()> {
        let plan = self.plan;
        let reason = format!("upstream {} ({}) failed", node_label(plan, upstream), plan.nodes[upstream].key.short());
        self.state[i] = State::Skipped;
        self.store.record_skipped(self.run_id, self.ids[i], &reason).await?;
        self.report.skipped.push(i);
        self.observer.finished(&node_label(plan, i), plan.nodes[i].key.as_str(), &NodeOutcome::Skipped(reason));
        Ok(())
    }

    /// One `sbatch` for a group of instances with no dependency between them.
    pub(super) async fn submit(&mut self, chunk: &[usize]) -> anyhow::Result<()> {
        let plan = self.plan;
        let first = &plan.nodes[chunk[0]];
        let stage = plan.spec.stages[self.stage_of(chunk[0])].name.as_str();
        let upstream: Vec<Vec<SlurmTask>> = chunk
            .iter()
            .map(|&i| {
                let mut tasks: Vec<SlurmTask> = plan.nodes[i]
                    .upstream
                    .iter()
                    .filter_map(|&u| match &self.state[u] {
                        State::Live(live) => Some(live.row.task.clone()),
                        _ => None,
                    })
                    .collect();
                tasks.sort_by_key(|t| t.to_string());
                tasks.dedup();
                tasks
            })
            .collect();
        let Dependencies { task_ids, dependency } = dependencies(&upstream);
        let as_array = chunk.len() > 1 || task_ids.is_some();
        let task_ids = task_ids.unwrap_or_else(|| (0..chunk.len() as i64).collect());

        self.scripts += 1;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let name = safe_name(stage);
        let script = self.dir.join(format!("{:03}-{name}.sh", self.scripts));
        let log_pattern = self.dir.join(format!("{:03}-{name}-{}.log", self.scripts, if as_array { "%A_%a" } else { "%j" }));
        let keys: Vec<(i64, &str)> = task_ids.iter().copied().zip(chunk.iter().map(|&i| plan.nodes[i].key.as_str())).collect();
        let forced = self.forced[chunk[0]];
        std::fs::write(&script, self.script_text(stage, &keys, as_array, forced)?)
            .with_context(|| format!("writing {}", script.display()))?;
        if forced {
            // Here, not in the job: a job Slurm requeues must resume.
            for (_, key) in &keys {
                self.store.workspace().clear_state(key)?;
            }
        }

        let mut args = vec![
            format!("--job-name=ablate:{}:{stage}", plan.spec.name),
            format!("--output={}", log_pattern.display()),
            // A requeued job appends to its log instead of truncating it.
            "--open-mode=append".to_owned(),
            // Jobs below a failed one are cancelled by Slurm instead of pending forever.
            "--kill-on-invalid-dep=yes".to_owned(),
            format!("--chdir={}", std::env::current_dir()?.display()),
            format!("--cpus-per-task={}", first.cpus.max(1)),
        ];
        if first.gpus > 0 {
            args.push(format!("--gres=gpu:{}", first.gpus));
        }
        args.extend(first.mem.iter().map(|m| format!("--mem={m}")));
        args.extend(first.time.iter().map(|t| format!("--time={t}")));
        args.extend(self.slurm.partition.iter().map(|p| format!("--partition={p}")));
        args.extend(self.slurm.account.iter().map(|a| format!("--account={a}")));
        args.extend(self.slurm.qos.iter().map(|q| format!("--qos={q}")));
        if as_array {
            args.push(format!("--array={}", task_ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")));
        }
        if let Some(dependency) = &dependency {
            args.push(format!("--dependency={dependency}"));
        }
        args.extend(self.slurm.sbatch_args.iter().cloned());
        // The database URL travels in the job's environment, not on its command line.
        let db = self.store.workspace().db.clone();
        let env: Vec<(&str, &str)> = db.as_deref().map(|url| ("ABLATE_DB", url)).into_iter().collect();
        let job_id = slurm::sbatch(&args, &script, &env)
            .await
            .with_context(|| format!("submitting {} instance(s) of stage `{stage}` (sbatch options: {})", chunk.len(), args.join(" ")))?;

        let log = |task: i64| {
            let pattern = log_pattern.display().to_string();
            if as_array { pattern.replace("%A", &job_id).replace("%a", &task.to_string()) } else { pattern.replace("%j", &job_id) }
        };
        let rows: Vec<(i64, Option<i64>, String)> =
            chunk.iter().zip(&task_ids).map(|(&i, &t)| (self.ids[i], as_array.then_some(t), log(t))).collect();
        self.store.record_submission(self.run_id, &job_id, &rows).await?;
        for (&i, &t) in chunk.iter().zip(&task_ids) {
            let task = SlurmTask { job_id: job_id.clone(), array_task: as_array.then_some(t) };
            self.observer.waiting(&node_label(plan, i), &format!("submitted as Slurm job {task}"));
            let row = SlurmJobRow {
                id: 0,
                run_id: self.run_id,
                follower_id: self.run_id,
                instance_id: self.ids[i],
                task,
                log_path: log(t),
                state: "PENDING".into(),
                cancelled: false,
            };
            self.state[i] = State::Live(Live { row, seen: "PENDING".into() });
        }
        self.summary.jobs_submitted += chunk.len();
        // Row ids are needed to close jobs: read them back.
        self.refresh_rows().await
    }

    /// Fills in store row ids of live jobs recorded in this process.
    pub(super) async fn refresh_rows(&mut self) -> anyhow::Result<()> {
        let open = self.store.open_slurm_jobs_of_run(self.run_id).await?;
        let by_task: HashMap<(i64, SlurmTask), SlurmJobRow> = open.into_iter().map(|j| ((j.instance_id, j.task.clone()), j)).collect();
        for (i, state) in self.state.iter_mut().enumerate() {
            if let State::Live(live) = state
                && live.row.id == 0
                && let Some(row) = by_task.get(&(self.ids[i], live.row.task.clone()))
            {
                live.row.id = row.id;
            }
        }
        Ok(())
    }

    pub(super) fn script_text(&self, stage: &str, keys: &[(i64, &str)], as_array: bool, force: bool) -> anyhow::Result<String> {
        let ws = self.store.workspace();
        let bin = match std::env::var_os("ABLATE_SLURM_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => std::env::current_exe().context("finding the ablate binary to run in jobs")?,
        };
        let mut text = format!(
            "#!/bin/sh\n# ablate run {}: {} instance(s) of stage `{stage}` of pipeline `{}`.\n\
             # Written by ablate for Slurm; each task runs one instance with `ablate exec`.\n",
            self.run_id,
            keys.len(),
            self.plan.spec.name
        );
        let exec = format!(
            "exec {} --workspace {} exec --run {}{}",
            shell_quote(&bin.display().to_string()),
            shell_quote(&ws.root.display().to_string()),
            self.run_id,
            if force { " --force" } else { "" }
        );
        if as_array {
            text.push_str("case \"${SLURM_ARRAY_TASK_ID-}\" in\n");
            for (task, key) in keys {
                text.push_str(&format!("  {task}) key={key} ;;\n"));
            }
            text.push_str("  *) echo \"ablate: array task ${SLURM_ARRAY_TASK_ID-(none)} has no instance in $0\" >&2; exit 2 ;;\nesac\n");
            text.push_str(&format!("{exec} \"$key\"\n"));
        } else {
            text.push_str(&format!("{exec} {}\n", keys[0].1));
        }
        Ok(text)
    }
}

/// How a job array depends on the jobs of its upstream instances.
#[derive(Debug, PartialEq)]
struct Dependencies {
    /// Array task ids to use, when they follow an upstream array's (`aftercorr`).
    task_ids: Option<Vec<i64>>,
    dependency: Option<String>,
}

/// Tasks above this many of one upstream array are waited for as the whole array.
const MAX_TASK_DEPENDENCIES: usize = 64;

/// The `--dependency` of a group, given each member's live upstream tasks.
/// When every member depends on exactly one task of the same upstream array,
/// each on a different one, the group takes those task ids and depends with
/// `aftercorr` (task N waits only for upstream task N); everything else is
/// `afterok` on the exact tasks (or on whole arrays past a limit).
fn dependencies(upstream: &[Vec<SlurmTask>]) -> Dependencies {
    let arrays: Vec<&str> =
        upstream.first().map_or(Vec::new(), |first| first.iter().filter(|t| t.array_task.is_some()).map(|t| t.job_id.as_str()).collect());
    let correlated = arrays.into_iter().find_map(|array| {
        let tasks: Option<Vec<i64>> = upstream
            .iter()
            .map(|refs| {
                let mut of_array = refs.iter().filter(|t| t.job_id == array);
                match (of_array.next(), of_array.next()) {
                    (Some(t), None) => t.array_task,
                    _ => None,
                }
            })
            .collect();
        let tasks = tasks?;
        let distinct: HashSet<i64> = tasks.iter().copied().collect();
        (distinct.len() == tasks.len()).then(|| (array.to_owned(), tasks))
    });
    let mut parts: Vec<String> = Vec::new();
    if let Some((array, _)) = &correlated {
        parts.push(format!("aftercorr:{array}"));
    }
    let mut plain: Vec<String> = Vec::new();
    let mut tasks_of: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for task in upstream.iter().flatten() {
        if correlated.as_ref().is_some_and(|(array, _)| *array == task.job_id) {
            continue;
        }
        match task.array_task {
            Some(t) => tasks_of.entry(task.job_id.clone()).or_default().push(t),
            None => plain.push(task.job_id.clone()),
        }
    }
    plain.sort();
    plain.dedup();
    for (array, mut tasks) in tasks_of {
        tasks.sort_unstable();
        tasks.dedup();
        if tasks.len() > MAX_TASK_DEPENDENCIES {
            plain.push(array);
        } else {
            plain.extend(tasks.iter().map(|t| format!("{array}_{t}")));
        }
    }
    if !plain.is_empty() {
        parts.push(format!("afterok:{}", plain.join(":")));
    }
    Dependencies { task_ids: correlated.map(|(_, tasks)| tasks), dependency: (!parts.is_empty()).then(|| parts.join(",")) }
}

/// A stage name fit for file names.
fn safe_name(stage: &str) -> String {
    stage.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(job: &str, t: Option<i64>) -> SlurmTask {
        SlurmTask { job_id: job.into(), array_task: t }
    }

    #[test]
    fn one_to_one_upstream_tasks_correlate() {
        let d = dependencies(&[vec![task("7", Some(0)), task("5", None)], vec![task("7", Some(1)), task("5", None)]]);
        assert_eq!(d.task_ids, Some(vec![0, 1]));
        assert_eq!(d.dependency.as_deref(), Some("aftercorr:7,afterok:5"));
    }

    #[test]
    fn shared_upstream_tasks_are_waited_for_exactly() {
        let d = dependencies(&[vec![task("7", Some(0))], vec![task("7", Some(0))]]);
        assert_eq!(d.task_ids, None);
        assert_eq!(d.dependency.as_deref(), Some("afterok:7_0"));
        let none = dependencies(&[vec![], vec![]]);
        assert_eq!(none, Dependencies { task_ids: None, dependency: None });
    }

    #[test]
    fn many_tasks_of_one_array_become_the_array() {
        let refs: Vec<Vec<SlurmTask>> = vec![(0..100).map(|t| task("9", Some(t))).collect()];
        assert_eq!(dependencies(&refs).dependency.as_deref(), Some("afterok:9"));
    }
}
