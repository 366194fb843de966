//! Training benchmarks on the CPU (burn Flex), numbers in docs/BENCHMARKS.md:
//!
//!     cargo bench --bench training                    # throughput + memory
//!     cargo bench --bench training -- throughput      # images/s, GFLOP/s
//!     cargo bench --bench training -- memory          # peak RSS vs batch, infonce vs cosine
//!     cargo bench --bench training -- shards          # images/s reading shards vs holding images in memory
//!
//! Throughput runs the real training loop (`ablate::train::bench`) for
//! vit-micro (batch 64) and vit-tiny (batch 16); the PyTorch side is
//! `scripts/bench-train-reference.py` with the same settings. Memory runs each
//! (loss, batch) in a child process and reads its peak resident set: once for
//! the loss alone on random [B, 384] embeddings (forward + backward), where
//! InfoNCE's B×B logits grow quadratically and the cosine loss linearly, and
//! once for a whole vit-micro training step.

use std::process::Command;

use ablate::loss::{Learned, Loss};
use ablate::precision::Precision;
use ablate::train::bench::BenchSpec;
use burn::prelude::*;

type Train = burn::backend::Autodiff<ablate::device::Cpu>;

fn throughput() -> anyhow::Result<()> {
    println!("| model | loss | batch | images/s | GFLOP/s (fwd+bwd) |");
    println!("|---|---|---|---|---|");
    for (model, batch, steps) in [("vit-micro", 64, 30), ("vit-micro", 256, 8), ("vit-tiny", 16, 4)] {
        let r = ablate::train::bench::run::<Train>(&bench(model, Loss::InfoNce, batch, 2, steps), &Default::default())?;
        println!("| {model} | infonce | {batch} | {:.1} | {:.1} |", r.images_per_s, r.gflops);
    }
    Ok(())
}

/// An f32 measurement without phase times.
fn bench(model: &str, loss: Loss, batch: usize, warmup: usize, steps: usize) -> BenchSpec<'_> {
    BenchSpec { model, loss, batch, precision: Precision::F32, warmup, steps, phases: false }
}

fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_maxrss
    }
}

/// In the child: one measurement, printed as `peak_kib`.
fn memory_one(what: &str, loss_name: &str, batch: usize) -> anyhow::Result<()> {
    let loss = Loss::from_name(loss_name).ok_or_else(|| anyhow::anyhow!("not a loss: {loss_name}"))?;
    let before = peak_rss_kib();
    match what {
        "loss" => {
            let device = Default::default();
            let x = Tensor::<Train, 2>::random([batch, 384], burn::tensor::Distribution::Normal(0.0, 1.0), &device).require_grad();
            let y = Tensor::<Train, 2>::random([batch, 384], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let t = Tensor::<Train, 1>::from_floats([2.659_26], &device).require_grad();
            let l = loss.compute(x.clone(), y, Learned { log_scale: Some(t), bias: None });
            let grads = l.backward();
            let g = x.grad(&grads).expect("gradient");
            let _: f32 = g.sum().into_scalar();
        }
        _ => {
            ablate::train::bench::run::<Train>(&bench("vit-micro", loss, batch, 1, 1), &Default::default())?;
        }
    }
    println!("{} {}", peak_rss_kib(), before);
    Ok(())
}

fn memory() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    for what in ["loss", "step"] {
        let batches: &[usize] = if what == "loss" { &[512, 1024, 2048, 4096, 8192] } else { &[64, 128, 256, 512] };
        println!("\n{what}: peak resident memory (MiB) by batch size");
        println!("| batch | infonce | cosine |");
        println!("|---|---|---|");
        for &b in batches {
            let mut cells = Vec::new();
            for l in ["infonce", "cosine"] {
                let out = Command::new(&exe).args(["memory-one", what, l, &b.to_string()]).output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let peak: f64 = text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                cells.push(format!("{:.0}", peak / 1024.0));
            }
            println!("| {b} | {} | {} |", cells[0], cells[1]);
        }
    }
    Ok(())
}

/// vit-micro training throughput with its images read from shards (as
/// `caption_ingest` writes them; page cache warm) against the same images in
/// memory: rounds alternate which goes first, then the medians and ratio.
fn shards() -> anyhow::Result<()> {
    use ablate::images::{ImageSet, SHARD_IMAGES, ShardWriter};
    use ablate::train::bench::{random_images, run_on};
    let (n, side) = (8 * SHARD_IMAGES, 32);
    let dir = tempfile::tempdir()?;
    let mut writer = ShardWriter::new(dir.path(), side);
    let images = random_images(n, side);
    for i in 0..n {
        writer.push(&images.fetch(&[i])?)?;
    }
    let index = dir.path().join("images.json");
    std::fs::write(&index, serde_json::to_vec(&writer.finish()?)?)?;
    let open = || ImageSet::open_sharded(&index, |name| Ok(dir.path().join(name)));
    open()?.fetch(&(0..n).collect::<Vec<_>>())?; // the page cache holds the shards
    let spec = bench("vit-micro", Loss::InfoNce, 64, 3, 40);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    println!("vit-micro batch 64, {n} images of {side}² ({} shards); load average {}", n / SHARD_IMAGES, load());
    let (mut memory, mut sharded) = (Vec::new(), Vec::new());
    for round in 0..5 {
        for from_shards in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let set = if from_shards { open()? } else { random_images(n, side) };
            let r = run_on::<Train>(&spec, set, &Default::default())?;
            println!("round {round}: {} {:.1} images/s", if from_shards { "shards" } else { "memory" }, r.images_per_s);
            if from_shards { &mut sharded } else { &mut memory }.push(r.images_per_s);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m, s) = (median(&mut memory), median(&mut sharded));
    println!("| images | median images/s, memory | median images/s, shards | shards / memory | load average at the end |");
    println!("|---|---|---|---|---|");
    println!("| {n} × {side}² | {m:.1} | {s:.1} | {:.3} | {} |", s / m, load());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ablate::alloc::keep_freed_buffers();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    match args.first().map(String::as_str) {
        Some("memory-one") => memory_one(&args[1], &args[2], args[3].parse()?),
        Some("throughput") => throughput(),
        Some("memory") => memory(),
        Some("shards") => shards(),
        _ => {
            throughput()?;
            memory()
        }
    }
}
