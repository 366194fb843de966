//! Shared helpers for the integration tests: each test gets a temporary
//! directory holding its pipeline files, a counter directory (outside the
//! workspace) that `command` stages append to, and the workspace `.ablate/`.
//! The real binary is driven with `--workspace`; state is observed through its
//! `--json` outputs only.

#![allow(dead_code)]

pub mod services;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// For `--force stamp --force fixed`: `stamp` writes other bytes each time
/// (a timestamp, like a nondeterministic GPU sum), `fixed` the same bytes;
/// `copy` and `reader` read them.
pub const FORCED: &str = r#"
[pipeline]
name = "nd"

[stages.stamp]
kind = "command"
run = "date +%s%N > $ABLATE_OUT/x.txt"

[stages.fixed]
kind = "command"
run = "echo same > $ABLATE_OUT/x.txt"

[stages.copy]
kind = "command"
needs = ["stamp"]
run = "echo x >> @C@/copy; cp $ABLATE_INPUT_STAMP/x.txt $ABLATE_OUT/y.txt"

[stages.reader]
kind = "command"
needs = ["fixed"]
run = "echo x >> @C@/reader; cp $ABLATE_INPUT_FIXED/x.txt $ABLATE_OUT/y.txt"
"#;

/// What `run --force stamp --force fixed` of [`FORCED`] must have done:
/// rerun both and `copy`, kept `reader`.
#[track_caller]
pub fn assert_forced_outcome(ws: &Ws, file: &Path, summary: &Value) {
    let plan = ws.plan(file);
    let want = BTreeSet::from([key_of(&plan, "stamp"), key_of(&plan, "fixed"), key_of(&plan, "copy")]);
    assert_eq!(keys_in(summary, "executed"), want, "{summary}");
    assert_eq!(keys_in(summary, "cached"), BTreeSet::from([key_of(&plan, "reader")]), "{summary}");
    assert_eq!((ws.count("copy"), ws.count("reader")), (2, 1));
    assert!(plan.iter().all(|r| r["status"] == "cached"), "{plan:?}");
}

/// `down` fails once, leaving a checkpoint in its state, unless `@R@/ok` exists.
const RESUMABLE: &str = r#"
[pipeline]
name = "resumable"

[stages.up]
kind = "command"
run = "date +%s%N > $ABLATE_OUT/x.txt"

[stages.down]
kind = "command"
needs = ["up"]
run = "if [ -f $ABLATE_STATE/ckpt ]; then echo resumed > $ABLATE_OUT/r.txt; exit 0; fi; touch $ABLATE_STATE/ckpt; [ -f @R@/ok ]; echo fresh > $ABLATE_OUT/r.txt"
"#;

/// `--force up` restarts `down`, which is not done, from scratch: the
/// checkpoint it left was made from the old inputs. `run` runs the file
/// (locally or under Slurm) and returns the exit code and summary.
pub fn forced_dependant_starts_afresh(ws: &Ws, run: impl Fn(&Path, &[&str]) -> (Option<i32>, Value, Out)) {
    let file = ws.write("resumable.toml", RESUMABLE);
    let (code, _, out) = run(&file, &[]);
    assert_eq!(code, Some(1), "down fails the first time: {}", out.describe());
    std::fs::write(ws.root().join("ok"), "").unwrap();
    let (code, _, out) = run(&file, &["--force", "up"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    let show = ws.show(&key_of(&ws.plan(&file), "down"));
    let r = show["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == "r.txt").unwrap().clone();
    assert_eq!(std::fs::read_to_string(ws.store().join(r["path"].as_str().unwrap())).unwrap(), "fresh\n");
}

/// Default limit for one CLI invocation: a hung binary fails the test instead of the suite.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ablate")
}

/// The result of one finished invocation.
#[derive(Debug)]
pub struct Out {
    /// `None` when the process died of a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Out {
    pub fn describe(&self) -> String {
        format!("ablate {:?}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.args, self.code, self.stdout, self.stderr)
    }

    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Out {
        assert_eq!(self.code, Some(code), "unexpected exit code\n{}", self.describe());
        assert_no_panic(&self);
        self
    }

    #[track_caller]
    pub fn ok(self) -> Out {
        self.expect_code(0)
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

#[track_caller]
pub fn assert_no_panic(out: &Out) {
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"), "the binary panicked\n{}", out.describe());
}

/// A process started in the background; its output goes to files so that
/// grandchildren (a stage's `sleep`) holding the descriptors cannot block us.
pub struct Bg {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    args: Vec<String>,
}

impl Bg {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `limit`) for the process to exit.
    #[track_caller]
    pub fn wait(mut self, limit: Duration) -> Out {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.collect(None);
                panic!("ablate did not finish within {limit:?}\n{}", out.describe());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.collect(status.code())
    }

    /// SIGKILL (what `kill -9` sends), then reap the process so its pid is really gone.
    pub fn kill9(mut self) -> Out {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap");
        self.collect(status.code())
    }

    fn collect(&self, code: Option<i32>) -> Out {
        Out {
            code,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            args: self.args.clone(),
        }
    }
}

/// One test's scratch area.
pub struct Ws {
    tmp: tempfile::TempDir,
    logs: std::cell::Cell<usize>,
    /// The store on the test PostgreSQL server: (URL, schema). `None`: the workspace's SQLite file.
    pg: Option<(String, String)>,
}

impl Drop for Ws {
    fn drop(&mut self) {
        if let (Some((_, schema)), Ok(url)) = (&self.pg, services::postgres()) {
            services::drop_schema(&url, schema);
        }
    }
}

impl Default for Ws {
    fn default() -> Self {
        Self::new()
    }
}

impl Ws {
    /// A scratch area whose store is the workspace's SQLite file, or, with
    /// `ABLATE_TEST_BACKEND=postgres`, a fresh schema on the test PostgreSQL
    /// server (how `.ci/run` runs part of the suite against PostgreSQL).
    pub fn new() -> Ws {
        let tmp = tempfile::Builder::new().prefix("ablate-it-").tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("counts")).unwrap();
        std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
        let mut ws = Ws { tmp, logs: std::cell::Cell::new(0), pg: None };
        if std::env::var("ABLATE_TEST_BACKEND").as_deref() == Ok("postgres") {
            let url = services::postgres().unwrap_or_else(|e| panic!("ABLATE_TEST_BACKEND=postgres, but {e}"));
            ws.pg = Some(services::fresh_schema(&url));
        }
        ws
    }

    /// A scratch area whose store is on the test PostgreSQL server; `None`
    /// (after saying why) when there is none outside CI.
    #[track_caller]
    pub fn postgres() -> Option<Ws> {
        let url = services::require("PostgreSQL", services::postgres())?;
        let mut ws = Ws::new();
        if ws.pg.is_none() {
            ws.pg = Some(services::fresh_schema(&url));
        }
        Some(ws)
    }

    /// Exchanges this scratch area's PostgreSQL store (`None`: its SQLite
    /// file) with `db`, for a workspace used both ways.
    pub fn swap_db(&mut self, db: &mut Option<(String, String)>) {
        std::mem::swap(&mut self.pg, db);
    }

    /// The `--db` URL of this scratch area's store, when it is on PostgreSQL.
    pub fn db_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|(url, _)| url.as_str())
    }

    /// Runs SQL on this scratch area's PostgreSQL schema with `psql`.
    pub fn psql(&self, sql: &str) -> String {
        let (_, schema) = self.pg.as_ref().expect("a PostgreSQL scratch area");
        services::psql(&services::postgres().expect("PostgreSQL"), schema, sql)
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The workspace directory (holds ablate.db and objects/).
    pub fn store(&self) -> PathBuf {
        self.root().join(".ablate")
    }

    pub fn db(&self) -> PathBuf {
        self.store().join("ablate.db")
    }

    /// Directory for counter files (outside the workspace).
    pub fn counts(&self) -> PathBuf {
        self.root().join("counts")
    }

    /// Writes a pipeline file; `@C@` is replaced by the counter directory and
    /// `@R@` by the test's root directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root().join(name);
        let text = text.replace("@C@", &self.counts().display().to_string()).replace("@R@", &self.root().display().to_string());
        std::fs::write(&path, text).expect("write pipeline");
        path
    }

    /// Lines in counter file `name` (0 when absent): how often a stage really executed.
    pub fn count(&self, name: &str) -> usize {
        std::fs::read_to_string(self.counts().join(name)).map(|s| s.lines().count()).unwrap_or(0)
    }

    /// Every counter file and its count.
    pub fn all_counts(&self) -> std::collections::BTreeMap<String, usize> {
        std::fs::read_dir(self.counts())
            .unwrap()
            .map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let n = self.count(&name);
                (name, n)
            })
            .collect()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.root())
            .arg("--workspace")
            .arg(self.store())
            .args(args)
            .env_remove("ABLATE_WORKSPACE")
            .env_remove("ABLATE_LEASE_SECS")
            .env("NO_COLOR", "1")
            // Slurm runs follow their jobs with a short poll ceiling.
            .env("ABLATE_SLURM_POLL_MAX_SECS", "1")
            .stdin(Stdio::null());
        match &self.pg {
            Some((url, _)) => cmd.env("ABLATE_DB", url),
            None => cmd.env_remove("ABLATE_DB"),
        };
        // Built-in encoder names resolve in the repository's models/ (the
        // binary runs in a temporary directory).
        if std::env::var_os("ABLATE_MODELS").is_none() {
            cmd.env("ABLATE_MODELS", Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
        }
        cmd
    }

    /// Starts `ablate --workspace WS ARGS...` in the background.
    pub fn spawn(&self, args: &[&str]) -> Bg {
        let n = self.logs.get();
        self.logs.set(n + 1);
        let stdout = self.root().join("logs").join(format!("{n}.out"));
        let stderr = self.root().join("logs").join(format!("{n}.err"));
        let child = self
            .command(args)
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning the ablate binary");
        Bg { child, stdout, stderr, args: args.iter().map(|s| s.to_string()).collect() }
    }

    /// Runs `ablate --workspace WS ARGS...` to completion.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Out {
        let out = self.spawn(args).wait(TIMEOUT);
        assert_no_panic(&out);
        out
    }

    /// `plan FILE --format json`, which must succeed.
    #[track_caller]
    pub fn plan(&self, file: &Path) -> Vec<Value> {
        let out = self.run(&["plan", file.to_str().unwrap(), "--format", "json"]).ok();
        out.json().as_array().cloned().expect("plan JSON is an array")
    }

    /// `run FILE --json ARGS...`, returning the exit code and the summary.
    #[track_caller]
    pub fn run_json(&self, file: &Path, extra: &[&str]) -> (Option<i32>, Value, Out) {
        let mut args = vec!["run", file.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let json = out.json();
        (out.code, json, out)
    }

    /// `show KEY --json`, which must succeed.
    #[track_caller]
    pub fn show(&self, key: &str) -> Value {
        self.run(&["show", key, "--json"]).ok().json()
    }

    /// `runs --json`, which must succeed.
    #[track_caller]
    pub fn runs(&self) -> Vec<Value> {
        self.run(&["runs", "--json"]).ok().json().as_array().cloned().unwrap()
    }
}

/// Rows of a plan for one stage.
pub fn rows<'a>(plan: &'a [Value], stage: &str) -> Vec<&'a Value> {
    plan.iter().filter(|r| r["stage"] == stage).collect()
}

/// Keys of a plan's rows for one stage (unique, sorted).
pub fn stage_keys(plan: &[Value], stage: &str) -> BTreeSet<String> {
    rows(plan, stage).iter().map(|r| r["key"].as_str().unwrap().to_owned()).collect()
}

/// The single key of a stage that has one instance.
#[track_caller]
pub fn key_of(plan: &[Value], stage: &str) -> String {
    let keys = stage_keys(plan, stage);
    assert_eq!(keys.len(), 1, "stage {stage} has {} instances", keys.len());
    keys.into_iter().next().unwrap()
}

/// Every unique key of a plan.
pub fn all_keys(plan: &[Value]) -> BTreeSet<String> {
    plan.iter().map(|r| r["key"].as_str().unwrap().to_owned()).collect()
}

/// Keys listed under `field` ("executed", "cached", ...) of a `run --json` summary.
pub fn keys_in(summary: &Value, field: &str) -> BTreeSet<String> {
    summary[field]
        .as_array()
        .unwrap_or_else(|| panic!("summary has no `{field}` list: {summary}"))
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Keys whose plan status is `status` ("cached" or "run").
pub fn with_status(plan: &[Value], status: &str) -> BTreeSet<String> {
    plan.iter().filter(|r| r["status"] == status).map(|r| r["key"].as_str().unwrap().to_owned()).collect()
}

/// Attempt statuses recorded for an instance (`show KEY --json`).
pub fn attempt_statuses(show: &Value) -> Vec<String> {
    show["attempts"].as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap().to_owned()).collect()
}

/// Polls `cond` every 25 ms until it holds; panics after `limit`.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The models directory filled by `scripts/fetch-models` (`$ABLATE_MODELS`,
/// else `models/` in the repository). Absent, tests that need it skip with a
/// message — except in CI (`CI=true`), whose `.ci/run` fetches the models, so
/// there an absent directory fails.
pub fn models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ABLATE_MODELS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(std::env::var("CI").is_err(), "models directory {} is absent in CI: .ci/run must run scripts/fetch-models", dir.display());
    eprintln!("SKIPPED: models directory {} is absent; run scripts/fetch-models to enable this test", dir.display());
    None
}
