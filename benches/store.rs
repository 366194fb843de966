//! Store and planner benchmarks (issue 2): `cargo bench --bench store`.
//!
//! 1. `plan` on a 100,000-instance grid: compile (parse, expand, hash keys) and
//!    the cache check against a store in which every instance is done.
//! 2. Metric rows inserted per second, in batched multi-row inserts.
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
}

fn rt_block(store: &Store, instance_id: i64, metrics: &[MetricPoint]) {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(store.insert_metrics(instance_id, 1, metrics)))
        .expect("insert");
}
