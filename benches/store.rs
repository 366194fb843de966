//! Store and planner benchmarks (issue 2): `cargo bench --bench store`.
//!
//! 1. `plan` on a 100,000-instance grid: compile (parse, expand, hash keys) and
//!    the cache check against a store in which every instance is done.
//! 2. Metric rows inserted per second, in batched multi-row inserts.
//! 3. `ablate plan` of issue 19's grid of the real kinds (ingest →
//!    `text_embed` → `train` × 50,000 → `evaluate`, 100,003 instances,
//!    nothing run): the binary itself, wall time and peak RSS of each of 3
//!    runs after the first (which records the plan), and where the time goes.
//!    Needs the models (`scripts/fetch-models`, or `$ABLATE_MODELS`).
//!
//! Numbers go to docs/BENCHMARKS.md by hand, with the machine they ran on.

use std::time::Instant;

use ablate::freshness;
use ablate::pipeline::{self, SourceFile};
use ablate::stages::MetricPoint;
use ablate::store::{Claim, Store, Workspace};

fn grid_pipeline() -> String {
    let a: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let b: Vec<String> = (0..100).map(|i| format!("\"b{i}\"")).collect();
    let c: Vec<String> = (0..10).map(|i| format!("{}.5", i)).collect();
    format!(
        "[pipeline]\nname = \"grid\"\n\n[axes]\na = [{}]\nb = [{}]\nc = [{}]\n\n[stages.data]\nkind = \"command\"\nrun = \"true\"\n\n\
         [stages.cell]\nkind = \"command\"\nneeds = [\"data\"]\nrun = \"echo ${{a}} ${{b}} ${{c}}\"\n",
        a.join(", "),
        b.join(", "),
        c.join(", ")
    )
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(out);
    }
    (best, last.expect("n > 0"))
}

/// CPU time of this process so far (user + system, all threads): on a busy
/// machine it shows what the work costs, where wall time shows the contention.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: zero-initialised and filled by getrusage.
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // ABLATE_BENCH_DIR keeps the 100,000-instance store between runs (the
    // setup takes a minute or two); by default a temporary directory is used.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::env::var_os("ABLATE_BENCH_DIR").map_or_else(|| dir.path().join("ws"), std::path::PathBuf::from);
    let reuse = root.join("ablate.db").exists();
    let workspace = Workspace::new(root);
    let text = grid_pipeline();
    let source = || SourceFile { path: "grid.toml".into(), text: text.clone() };

    let cpu = cpu_seconds();
    let (compile_s, plan) = best_of(3, || pipeline::compile_source(source()).expect("valid pipeline"));
    println!("compile CPU (3 repetitions): {:.3} s", cpu_seconds() - cpu);
    println!("compile (parse + expand + keys), {} instances: {:.3} s", plan.nodes.len(), compile_s);

    rt.block_on(async {
        let store = Store::open(&workspace).await.expect("store");
        let pipeline_id = store.register_pipeline("grid", "grid.toml", &text).await.expect("pipeline");
        let run_id = store.start_run(Some(pipeline_id), "bench", &[]).await.expect("run");
        let t = Instant::now();
        let ids = store.register_plan(&plan, pipeline_id).await.expect("register");
        println!("register plan: {:.3} s", t.elapsed().as_secs_f64());

        // Mark everything done, each instance with one small artifact of its
        // own, through the real claim/put/commit path (32 at a time, so the
        // per-object fsyncs overlap).
        let t = Instant::now();
        let scratch = workspace.root.join("bench-scratch");
        let todo = if reuse { &ids[..0] } else { &ids[..] };
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, &id) in todo.iter().enumerate() {
            let (store, workspace, scratch, permit) =
                (store.clone(), workspace.clone(), scratch.clone(), limit.clone().acquire_owned().await.expect("open"));
            tasks.spawn(async move {
                let Claim::Claimed { attempt_id } = store.claim(id, run_id, false).await.expect("claim") else { panic!("fresh store") };
                let object = tokio::task::spawn_blocking(move || {
                    let dir = scratch.join(i.to_string());
                    std::fs::create_dir_all(&dir).expect("scratch");
                    let file = dir.join("out.txt");
                    std::fs::write(&file, format!("{i}\n")).expect("write");
                    workspace.objects().put(&file).expect("put")
                })
                .await
                .expect("put task");
                store.commit_done(attempt_id, id, &[("out.txt".into(), object)], &[], &[]).await.expect("commit");
                drop(permit);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
        println!("setup: {} instances done in {:.1} s", todo.len(), t.elapsed().as_secs_f64());

        // Planning an unchanged file again: registration is a lookup.
        let t = Instant::now();
        store.register_pipeline("grid", "grid.toml", &text).await.expect("pipeline");
        store.record_plan(&plan, pipeline_id).await.expect("record");
        let record_s = t.elapsed().as_secs_f64();
        println!("record plan again (unchanged file, as `plan` does): {record_s:.3} s");

        let mut check_s = f64::INFINITY;
        let mut check_cpu = f64::INFINITY;
        for _ in 0..3 {
            let reader = Store::open_read_only(&workspace).await.expect("open").expect("exists");
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let fresh = freshness::assess(&plan, Some(&reader)).await.expect("assess");
            check_s = check_s.min(t.elapsed().as_secs_f64());
            check_cpu = check_cpu.min(cpu_seconds() - cpu);
            assert!(fresh.iter().all(|f| f.is_cached()));
            reader.close().await;
        }
        println!("cache check (all cached): {check_s:.3} s wall, {check_cpu:.3} s CPU (all threads)");
        println!("plan total (compile + record + cache check): {:.3} s", compile_s + record_s + check_s);

        store.close().await;

        // Metric rows per second, into a store of their own so that repeated
        // runs measure the same thing.
        let metrics_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Workspace::new(metrics_dir.path())).await.expect("store");
        const ROWS: usize = 1_000_000;
        let metrics: Vec<MetricPoint> = (0..ROWS)
            .map(|i| MetricPoint {
                name: ["loss", "lr", "grad_norm", "images_per_s"][i % 4].into(),
                step: Some((i / 4) as i64),
                value: i as f64 * 0.5,
            })
            .collect();
        let cpu = cpu_seconds();
        let (insert_s, ()) = best_of(3, || rt_block(&store, 1, &metrics));
        println!("metrics CPU (3 repetitions): {:.3} s", cpu_seconds() - cpu);
        println!("metrics: {ROWS} rows in {insert_s:.3} s = {:.0} rows/s", ROWS as f64 / insert_s);
        store.close().await;
    });
    plan_real_kinds(&rt);
}

/// Issue 19's grid: captions × loss × 12,500 seeds below one ingest, as
/// `benches/scale/make-plan-grid` writes it.
fn real_kinds_pipeline() -> String {
    let seeds: Vec<String> = (0..12_500).map(|i| i.to_string()).collect();
    format!(
        "[pipeline]\nname = \"plan-100k\"\n\n[axes]\ncaptions = [\"short\", \"long\"]\nloss = [\"infonce\", \"cosine\"]\nseed = [{}]\n\n\
         [stages.data]\nkind = \"caption_ingest\"\nsource = \"builtin:shapes\"\n\n\
         [stages.text]\nkind = \"text_embed\"\nneeds = [\"data\"]\nencoder = \"minilm\"\ncaptions = \"${{captions}}\"\n\n\
         [stages.train]\nkind = \"train\"\nneeds = [\"data\", \"text\"]\ntext = \"frozen\"\ncaptions = \"${{captions}}\"\n\
         loss = \"${{loss}}\"\nseed = \"${{seed}}\"\n\n[stages.eval]\nkind = \"evaluate\"\nneeds = [\"train\"]\n",
        seeds.join(", ")
    )
}

/// Part 3: `ablate plan` of the real kinds' grid, run as a user runs it.
fn plan_real_kinds(rt: &tokio::runtime::Runtime) {
    let models = std::env::var_os("ABLATE_MODELS").map_or_else(|| std::path::PathBuf::from("models"), std::path::PathBuf::from);
    let models = std::fs::canonicalize(&models).unwrap_or(models);
    if !models.join("all-MiniLM-L6-v2").exists() {
        println!("real kinds: skipped, no MiniLM in {} (scripts/fetch-models)", models.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("grid.toml");
    let text = real_kinds_pipeline();
    std::fs::write(&file, &text).expect("grid");
    let plan_once = || {
        let out = std::process::Command::new("/usr/bin/time")
            .args(["-f", "%e %M"])
            .arg(env!("CARGO_BIN_EXE_ablate"))
            .arg("plan")
            .arg(&file)
            .current_dir(dir.path())
            .env("ABLATE_MODELS", &models)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("GNU time (/usr/bin/time) runs ablate plan");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ablate plan failed: {stderr}");
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        let (wall, kb) = last.split_once(' ').expect("GNU time's `%e %M`");
        (wall.parse::<f64>().expect("seconds"), kb.trim().parse::<f64>().expect("kB") / 1024.0)
    };
    let (wall, mb) = plan_once();
    println!("real kinds: first `ablate plan` (records 100,003 instances): {wall:.2} s, {mb:.0} MB peak RSS");
    let mut runs: Vec<(f64, f64)> = (0..3).map(|_| plan_once()).collect();
    for (w, m) in &runs {
        println!("real kinds: `ablate plan` again: {w:.2} s, {m:.0} MB peak RSS");
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("real kinds: median {:.2} s, worst peak RSS {:.0} MB", runs[1].0, runs.iter().map(|r| r.1).fold(0.0, f64::max));

    // Where the time goes, through the library (the models found as above:
    // `$ABLATE_MODELS`, else `models` in the package root, where benches run).
    let source = || SourceFile { path: file.clone(), text: text.clone() };
    let (compile_s, plan) = best_of(3, || pipeline::compile_source(source()).expect("valid pipeline"));
    let workspace = Workspace::new(dir.path().join(".ablate"));
    let assess_s = rt.block_on(async {
        let store = Store::open(&workspace).await.expect("store");
        let t = Instant::now();
        let fresh = freshness::assess(&plan, Some(&store)).await.expect("assess");
        assert!(fresh.iter().all(|f| !f.is_cached()));
        store.close().await;
        t.elapsed().as_secs_f64()
    });
    println!("real kinds: compile {compile_s:.3} s (best of 3), cache check and reasons {assess_s:.3} s");
}

fn rt_block(store: &Store, instance_id: i64, metrics: &[MetricPoint]) {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(store.insert_metrics(instance_id, 1, metrics)))
        .expect("insert");
}
