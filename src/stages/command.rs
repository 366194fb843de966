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
//! A non-zero exit status fails the stage; Ctrl-C kills the command.

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Interrupted, ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind};

pub struct Command;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::new("run", ParamType::Str, ParamDefault::Required, "the shell command (sh -c)"),
    ParamSpec::new("gpus", ParamType::Int, ParamDefault::Int(0), "GPUs the command needs, for the scheduler"),
    ParamSpec::new("env", ParamType::StrList, ParamDefault::StrList(&[]), "extra NAME=VALUE environment entries"),
];

impl StageKind for Command {
    fn name(&self) -> &'static str {
        "command"
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
        if let Some(bad) = params.str_list("env").iter().find(|e| !e.contains('=')) {
            return Err(ParamError::new("env", format!("entry {bad:?} is not NAME=VALUE")));
        }
        Ok(())
    }
    fn resources(&self, params: &Params) -> Resources {
        Resources { gpus: params.int("gpus").max(0) as u32, cpus: 0 }
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let script = ctx.params().str("run").to_owned();
        let out_dir = ctx.out_dir()?.to_path_buf();
        let inputs_root = ctx.state_dir()?.join("inputs");
        let mut process = Process::new("sh");
        process.arg("-e").arg("-c").arg(&script).env("ABLATE_OUT", &out_dir).env("ABLATE_STATE", ctx.state_dir()?);
        for upstream in ctx.upstream() {
            let dir = inputs_root.join(&upstream.stage);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            for (name, path) in &upstream.artifacts {
                std::os::unix::fs::symlink(path, dir.join(name))?;
            }
            let var = format!("ABLATE_INPUT_{}", upstream.stage.to_uppercase().replace('-', "_"));
            process.env(var, &dir);
        }
        for entry in ctx.params().str_list("env") {
            let (name, value) = entry.split_once('=').expect("checked at compile time");
            process.env(name, value);
        }
        // The command dies with the process that runs it (a `kill -9` of
        // `ablate run` must not leave it writing on as an orphan).
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut process, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = process.stdout(Stdio::piped()).spawn().context("starting sh")?;
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
                let _ = child.kill();
                let _ = child.wait();
                return Err(Interrupted.into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
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
        for entry in std::fs::read_dir(&out_dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                ctx.output(&name)?;
            }
        }
        Ok(())
    }
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
