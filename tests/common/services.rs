//! The real services some tests need: a Slurm cluster and a PostgreSQL
//! server, as `scripts/ci-services` starts them (and `.ci/run` runs it).
//!
//! Outside CI, a test whose service is missing says so on stderr (past the
//! test harness's capture, so it shows in `cargo test` output) and passes
//! without doing anything. With `CI` set, a missing service fails the test:
//! CI must never pass by skipping.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where `scripts/ci-services` leaves `export ABLATE_TEST_PG='...'`.
const STATE_ENV: &str = "/var/tmp/ablate-ci/env";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `Some(value)` when the service is there; otherwise a visible skip (or, in CI, a failure).
#[track_caller]
pub fn require<T>(service: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(why) if in_ci() => panic!("{service} is required in CI (`.ci/run` starts it with scripts/ci-services): {why}"),
        Err(why) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {}: {service} is not available ({why}); start it with `eval \"$(sudo bash scripts/ci-services)\"`",
                std::thread::current().name().unwrap_or("test")
            );
            None
        }
    }
}

fn quiet(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A Slurm cluster with an idle (or busy) node answers.
pub fn slurm() -> Result<(), String> {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let states = quiet(Command::new("sinfo").args(["--noheader", "--format=%t"]))?;
            if states.lines().any(|s| s.starts_with("idle") || s.starts_with("mix") || s.starts_with("alloc")) {
                Ok(())
            } else {
                Err(format!("no usable Slurm node (sinfo says {:?})", states.trim()))
            }
        })
        .clone()
}

/// The test server's URL: `ABLATE_TEST_PG`, else what `scripts/ci-services` wrote; it must answer.
pub fn postgres() -> Result<String, String> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let url = match std::env::var("ABLATE_TEST_PG") {
                Ok(url) if !url.is_empty() => url,
                _ => std::fs::read_to_string(STATE_ENV)
                    .ok()
                    .and_then(|text| {
                        text.lines().find_map(|l| l.strip_prefix("export ABLATE_TEST_PG=").map(|v| v.trim_matches('\'').to_owned()))
                    })
                    .ok_or_else(|| format!("ABLATE_TEST_PG is not set and {STATE_ENV} does not name a server"))?,
            };
            quiet(Command::new("psql").args([url.as_str(), "-qtAc", "SELECT 1"]))?;
            Ok(url)
        })
        .clone()
}

/// A fresh schema on the test server, so tests sharing one database never see
/// each other's rows; returns (URL that selects it, schema name).
pub fn fresh_schema(url: &str) -> (String, String) {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let schema = format!("t_{}_{n}_{nanos}", std::process::id());
    quiet(Command::new("psql").args([url, "-qtAc", &format!("CREATE SCHEMA {schema}")])).expect("creating a test schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{separator}options=-csearch_path%3D{schema}"), schema)
}

pub fn drop_schema(url: &str, schema: &str) {
    let _ = quiet(Command::new("psql").args([url, "-qtAc", &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")]));
}

/// Runs a `psql` query on the test server in `schema`, returning its unaligned output.
pub fn psql(url: &str, schema: &str, sql: &str) -> String {
    quiet(Command::new("psql").args([url, "-qtAc", &format!("SET search_path TO {schema}; {sql}")])).expect("psql query")
}
