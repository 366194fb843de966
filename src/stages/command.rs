//! `command`: runs a user's shell command as a stage.
//!
//! Lets researchers wrap their own scripts in a study. The command runs with
//! `sh -e -c` (the first failing command fails the stage) and sees, as environment variables:
//! - `ABLATE_OUT`: a directory; every regular file it leaves there becomes an artifact;
//! - `ABLATE_STATE`: a directory kept across attempts of this instance (checkpoints);
//! - `ABLATE_INPUT_<STAGE>`: for each upstream stage (name upper-cased, `-` → `_`),
//!   a directory holding that instance's artifacts by name (symbolic links).
//!
//! A line `ablate:metric NAME VALUE [STEP]` on its standard output records a metric.
//! A non-zero exit status fails the stage; Ctrl-C stops the command and
//! everything it started (its process group: SIGTERM, then SIGKILL after a
//! grace period), and so does the end of the command for anything it left
//! running in the background. What a `kill -9` of ablate left running is
//! stopped when the instance runs again (see [`stop_leftovers`]).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::process_group::{STOP_GRACE, stop_group, stop_leftovers};

use super::{Interrupted, ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind, UpstreamInstance};

/// The variable naming an upstream stage's inputs folder: its name upper-cased, `-` as `_`.
fn input_var(stage: &str) -> String {
    format!("ABLATE_INPUT_{}", stage.to_uppercase().replace('-', "_"))
}

/// The kind's name, as `kind = "..."` writes it.
pub const NAME: &str = "command";

pub struct Command;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::new("run", ParamType::Str, ParamDefault::Required, "the shell command (sh -c)"),
    ParamSpec::new("gpus", ParamType::Int, ParamDefault::Int(0), "GPUs the command needs, for the scheduler"),
    ParamSpec::new("env", ParamType::StrList, ParamDefault::StrList(&[]), "extra NAME=VALUE environment entries"),
];

impl StageKind for Command {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "a user's shell command; files it writes to $ABLATE_OUT become artifacts"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, params: &Params) -> Result<(), ParamError> {
        if params.int("gpus") < 0 {
            return Err(ParamError::new("gpus", "must be 0 or more"));
        }
        let name_ok = |n: &str| {
            n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if let Some(bad) = params.str_list("env").iter().find(|e| !e.split_once('=').is_some_and(|(n, _)| name_ok(n))) {
            return Err(ParamError::new(
                "env",
                format!("entry {bad:?} is not NAME=VALUE (NAME: letters, digits and '_', not starting with a digit)"),
            ));
        }
        let env = params.str_list("env");
        let names: Vec<&str> = env.iter().filter_map(|e| e.split_once('=').map(|(n, _)| n)).collect();
        if let Some(own) = names.iter().find(|n| n.starts_with("ABLATE_")) {
            return Err(ParamError::new(
                "env",
                format!("sets {own}: names starting with ABLATE_ are ablate's own (outputs, state, inputs)"),
            ));
        }
        if let Some(twice) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)).map(|(_, n)| n) {
            return Err(ParamError::new("env", format!("sets {twice} twice")));
        }
        if params.str("run").trim().is_empty() {
            return Err(ParamError::new("run", "is empty: give the shell command to run"));
        }
        Ok(())
    }
    /// Two upstream stages must not share one `ABLATE_INPUT_` variable
    /// (`x-y` and `x_y`, `ab` and `AB`): one of them would silently vanish.
    fn check_upstream(&self, _params: &Params, upstream: &[UpstreamInstance<'_>]) -> Result<(), ParamError> {
        for (i, u) in upstream.iter().enumerate() {
            if let Some(other) = upstream[..i].iter().find(|o| input_var(o.stage) == input_var(u.stage)) {
                return Err(ParamError::new(
                    "needs",
                    format!("stages `{}` and `{}` would both be ${}: rename one", other.stage, u.stage, input_var(u.stage)),
                ));
            }
        }
        Ok(())
    }
    fn resources(&self, params: &Params) -> Resources {
        Resources { gpus: params.int("gpus").max(0) as u32, cpus: 0 }
    }

    /// A command's process group is stopped by the stage itself (SIGTERM,
    /// then SIGKILL after a grace period): the runner waits for that, so
    /// nothing it started outlives the run.
    fn interrupt_grace(&self) -> Option<std::time::Duration> {
        None
    }
    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let script = ctx.params().str("run").to_owned();
        // Absolute, so that a script may change directory, and so that the
        // state folder names this instance whatever path led to the workspace.
        let out_dir = std::path::absolute(ctx.out_dir()?)?;
        let state_dir = std::fs::canonicalize(ctx.state_dir()?)?;
        stop_leftovers(&state_dir, STOP_GRACE);
        let inputs_root = state_dir.join("inputs");
        let mut process = Process::new("sh");
        process.arg("-e").arg("-c").arg(&script).env("ABLATE_OUT", &out_dir).env("ABLATE_STATE", &state_dir);
        for upstream in ctx.upstream() {
            let dir = inputs_root.join(&upstream.stage);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            for (name, path) in &upstream.artifacts {
                let link = dir.join(name);
                if let Some(folder) = link.parent() {
                    std::fs::create_dir_all(folder)?;
                }
                std::os::unix::fs::symlink(path, link)?;
            }
            process.env(input_var(upstream.stage.as_str()), &dir);
        }
        for entry in ctx.params().str_list("env") {
            let (name, value) = entry.split_once('=').expect("checked at compile time");
            process.env(name, value);
        }
        // The command runs in a process group of its own, so that stopping
        // it stops everything it started (a training script under `sh`, and
        // what that spawned), not just the shell. Its shell dies with the
        // process that runs it (a `kill -9` of `ablate run` must not leave it
        // writing on as an orphan).
        std::os::unix::process::CommandExt::process_group(&mut process, 0);
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut process, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = process.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().context("starting sh")?;
        let stdout = child.stdout.take().expect("stdout is piped");

        // Read metric lines on a thread so the main loop can watch for Ctrl-C.
        let reader = std::thread::spawn(move || {
            let mut metrics = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ablate:metric ") {
                    metrics.push(parse_metric_line(rest));
                } else {
                    tracing::info!(target: "ablate::command", "{line}");
                }
            }
            metrics
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if ctx.cancel_token().is_cancelled() {
                stop_group(&mut child, STOP_GRACE);
                return Err(Interrupted.into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // What the command left running in the background ends with it (it
        // would hold its output pipe open, and the stage with it).
        stop_group(&mut child, Duration::from_secs(1));
        let metrics = reader.join().unwrap_or_default();
        for metric in metrics {
            let (name, value, step) = metric.with_context(|| format!("command {script:?} printed a malformed metric line"))?;
            match step {
                Some(step) => ctx.metric_at(&name, step, value),
                None => ctx.metric(&name, value),
            }
        }
        if !status.success() {
            bail!("command {script:?} exited with {status}");
        }
        let registered = written_files(&out_dir).and_then(|names| names.iter().try_for_each(|name| ctx.output(name).map(drop)));
        if let Err(e) = registered {
            // The command's work must not go with the failed attempt's folder.
            let kept = state_dir.join("unsaved-outputs");
            let _ = std::fs::remove_dir_all(&kept);
            std::fs::rename(&out_dir, &kept).with_context(|| format!("{e:#}; keeping its outputs in {}", kept.display()))?;
            bail!("{e:#} (the command's outputs are kept in {})", kept.display());
        }
        Ok(())
    }
}

/// The files under `out` as artifact names (`folder/file` below folders).
/// Anything but files and folders is an error rather than left out: an
/// artifact is stored by its content, which a symbolic link does not have.
fn written_files(out: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut folders = vec![out.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() {
                let name = path.strip_prefix(out).expect("below the output folder").to_str().map(str::to_owned);
                names.push(name.with_context(|| format!("{} is not a UTF-8 file name", path.display()))?);
            } else {
                let what = if kind.is_symlink() { "a symbolic link" } else { "not a regular file" };
                bail!(
                    "$ABLATE_OUT/{} is {what}: an artifact must be a file (copy what it points to)",
                    path.strip_prefix(out).unwrap_or(&path).display()
                );
            }
        }
    }
    names.sort();
    Ok(names)
}

fn parse_metric_line(rest: &str) -> anyhow::Result<(String, f64, Option<i64>)> {
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (name, value, step) = match fields.as_slice() {
        [name, value] => (name, value, None),
        [name, value, step] => (name, value, Some(step)),
        _ => bail!("expected `ablate:metric NAME VALUE [STEP]`, got {rest:?}"),
    };
    let value: f64 = value.parse().with_context(|| format!("metric value {value:?}"))?;
    let step = step.map(|s| s.parse::<i64>().with_context(|| format!("metric step {s:?}"))).transpose()?;
    Ok((name.to_string(), value, step))
}

#[cfg(test)]
mod tests {
    use super::parse_metric_line;

    #[test]
    fn metric_lines() {
        assert_eq!(parse_metric_line("loss 0.5 3").unwrap(), ("loss".into(), 0.5, Some(3)));
        assert_eq!(parse_metric_line("acc 1").unwrap(), ("acc".into(), 1.0, None));
        assert!(parse_metric_line("acc").is_err());
        assert!(parse_metric_line("acc x").is_err());
    }
}
