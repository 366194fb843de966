//! Tools beside the pipelines: `bench-train`, `warmup`, `embed`, `kinds`.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use super::{UsageError, print_json, render};
use crate::precision::Precision;
use crate::stages;
use crate::train::bench::BenchSpec;

pub(super) fn bench_train(bench: BenchSpec<'_>, device: &str, json: bool) -> anyhow::Result<ExitCode> {
    let device = checked_bench(&bench, device)?;
    let device_name = device.name();
    let result = device.run(bench)?;
    if json {
        print_json(&json!({"device": device_name, "result": result}));
    } else {
        println!(
            "{} on {device_name}: {:.1} images/s, {:.1} GFLOP/s (image tower fwd+bwd) over {} steps",
            result.what(),
            result.images_per_s,
            result.gflops,
            result.steps
        );
        if let Some(p) = result.phases_ms {
            println!(
                "per step: data {:.1} ms, forward {:.1} ms, backward {:.1} ms, gradient norm {:.1} ms, optimizer {:.1} ms",
                p.data, p.forward, p.backward, p.grad_norm, p.optimizer
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The device a `bench-train` or `warmup` asks for, once the preset, sizes
/// and device are checked (usage errors otherwise).
fn checked_bench(bench: &BenchSpec<'_>, device: &str) -> anyhow::Result<crate::device::Device> {
    use crate::device::DeviceRequest;
    let request = DeviceRequest::parse(device).map_err(UsageError)?;
    if crate::model::VitPreset::named(bench.model, "avg").is_none() {
        return Err(
            UsageError(format!("--model {}: not a model preset ({})", bench.model, crate::model::VitPreset::NAMES.join(", "))).into()
        );
    }
    if bench.batch < 2 || bench.steps < 1 {
        return Err(UsageError("--batch must be at least 2 and --steps at least 1".into()).into());
    }
    Ok(request.resolve().map_err(|e| UsageError(format!("{e:#}")))?)
}

/// `warmup`: a short training of the preset at this batch and precision, so
/// that burn's CUDA backend tunes and compiles its kernels into the
/// workspace's kernel cache (`device::use_kernel_cache`, set up before any
/// command that may use a GPU) ahead of a study.
pub(super) fn warmup(bench: BenchSpec<'_>, device: &str, workspace: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let device = checked_bench(&bench, device)?;
    let cache = match device {
        crate::device::Device::Cuda(_) => crate::device::use_kernel_cache(workspace)?,
        crate::device::Device::Cpu => None,
    };
    let before = cache.as_deref().map_or(0, walk_files);
    let device_name = device.name();
    let result = device.run(bench)?;
    let after = cache.as_deref().map_or(0, walk_files);
    if json {
        print_json(&json!({
            "device": device_name,
            "kernel_cache": cache,
            "cache_files_before": before,
            "cache_files_after": after,
            "result": result,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} on {device_name}: first step after {:.1} s, then {:.1} images/s", result.what(), result.first_step_s, result.images_per_s);
    match cache {
        Some(dir) => println!("kernel cache {}: {before} files before, {after} after", dir.display()),
        None => println!("no kernel cache on {device_name}: only a GPU has kernels to tune and compile"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Files under `dir`, at any depth (0 where it does not exist).
fn walk_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.flatten().map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 }).sum())
}

/// `bench-train`'s measurement on the requested backend.
impl crate::device::OnBackend for BenchSpec<'_> {
    type Output = crate::train::bench::BenchResult;
    fn run<B: burn::tensor::backend::Backend>(self, device: &B::Device) -> anyhow::Result<Self::Output> {
        crate::train::bench::run::<burn::backend::Autodiff<B>>(&self, device)
    }
}

pub(super) fn embed(
    encoder: &str,
    pooling: Option<&str>,
    max_tokens: Option<usize>,
    (device, precision): (&str, Precision),
    json: bool,
    texts: &[String],
) -> anyhow::Result<ExitCode> {
    use crate::device::DeviceRequest;
    use crate::text::{EmbedOptions, EncoderSpec, LoadedEncoder, Pooling, check_max_tokens};
    let usage = |e: anyhow::Error| UsageError(format!("{e:#}"));
    let spec = EncoderSpec::resolve(encoder).map_err(usage)?;
    let pooling: Pooling = match pooling {
        Some(p) => p.parse().map_err(usage)?,
        None => spec.family().map_err(usage)?.default_pooling(),
    };
    let limit = spec.token_limit().map_err(usage)?;
    let max_tokens = max_tokens.unwrap_or(limit);
    check_max_tokens(max_tokens, limit).map_err(|e| UsageError(format!("--max-tokens {e}")))?;
    // A GPU asked for that is not there is a usage error.
    let device = DeviceRequest::parse(device).map_err(UsageError)?.resolve().map_err(usage)?;
    let loaded = LoadedEncoder::load(&spec, device)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = EmbedOptions { pooling, max_tokens, batch_size: 64, normalize: true, precision };
    let embedded = loaded.embed_with_progress(&refs, &options, |_| Ok(()))?;
    if json {
        let rows: Vec<_> =
            texts.iter().zip(&embedded).map(|(t, e)| json!({"text": t, "tokens": e.tokens, "embedding": e.embedding})).collect();
        print_json(&serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    println!("encoder {} ({} dims, {} pooling, {})", spec.path().display(), loaded.dim(), pooling.name(), loaded.device_name());
    let mut table = render::Table::new(&["TEXT", "TOKENS", "TRUNCATED", "FIRST DIMS"]);
    for (t, e) in texts.iter().zip(&embedded) {
        let head: Vec<String> = e.embedding.iter().take(4).map(|v| format!("{v:+.4}")).collect();
        table.row(vec![t.clone(), e.tokens.len().to_string(), e.truncated.to_string(), format!("{} …", head.join(" "))]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

pub(super) fn kinds(json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let kinds: Vec<_> = stages::KINDS
            .iter()
            .map(|k| {
                json!({
                    "name": k.name(),
                    "version": k.version(),
                    "summary": k.summary(),
                    "params": k.params().iter().map(|p| json!({"name": p.name, "type": format!("{:?}", p.ty), "choices": p.ty.choices(), "default": p.default_value(), "required": matches!(p.default, stages::ParamDefault::Required), "doc": p.doc})).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(kinds));
        return Ok(ExitCode::SUCCESS);
    }
    for kind in stages::KINDS {
        println!("{} (version {}): {}", kind.name(), kind.version(), kind.summary());
        let mut table = render::Table::new(&["  PARAMETER", "DEFAULT", "DESCRIPTION"]);
        for p in kind.params() {
            let default = match p.default {
                stages::ParamDefault::Required => "required".to_owned(),
                stages::ParamDefault::Absent => "-".to_owned(),
                _ => p.default_value().map(|v| v.to_string()).unwrap_or_default(),
            };
            let doc = match p.ty {
                stages::ParamType::OneOf(choices) => format!("{}; one of {}", p.doc, choices.join(" | ")),
                stages::ParamType::ListOf(choices) => format!("{}; any of {}", p.doc, choices.join(" | ")),
                _ => p.doc.to_owned(),
            };
            table.row(vec![format!("  {}", p.name), default, doc]);
        }
        println!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}
