//! The dashboard in a real browser: headless Chromium loads pages served by
//! `ablate serve` from a test store, the rendered DOM must hold the tables and
//! the DAG's SVG, and a screenshot must show the DAG's status colours.
//!
//! Needs Debian's `chromium` (`scripts/ci-browser-deps` installs it). Without
//! it the test is skipped with a message, except under CI (`CI` set), where a
//! missing browser is a failure. `ABLATE_UPDATE_DOCS=1` also copies the
//! screenshot to docs/img/dashboard.png; `CHROMIUM=PATH` picks the browser.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/study.rs"]
mod study;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Server;

fn chromium() -> Option<PathBuf> {
    // CHROMIUM names the browser; set to a path that is not a file, it means "none".
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].iter().map(PathBuf::from).find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Runs headless Chromium with the flags this machine needs and a fresh profile;
/// returns stdout. Killed after 90 s so a hung browser fails the test instead of CI.
fn headless(browser: &Path, profile: &Path, args: &[String]) -> String {
    let out_file = profile.with_extension("out");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-quic",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?} exited with {status}");
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out_file).unwrap_or_default()
}

#[test]
fn dashboard_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(!in_ci(), "CI is set but chromium is not installed: run scripts/ci-browser-deps from .ci/run");
        // Written to the real stderr, past the test harness's capture, so the skip is visible.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED dashboard_renders_in_headless_chromium: chromium is not installed (scripts/ci-browser-deps installs it)"
        );
        return;
    };
    let ws = Ws::new();
    study::build(&ws);
    let server = Server::start(&ws, &Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards"));
    let base = format!("http://{}", server.addr);
    let profile = |name: &str| ws.root().join(format!("chromium-{name}"));

    // The run page: the DAG is in the DOM as SVG with one node per instance.
    let dom = headless(&browser, &profile("run"), &["--dump-dom".into(), format!("{base}/runs/1")]);
    assert!(dom.contains("<svg class=\"dag\""), "the DAG SVG is in the rendered DOM:\n{dom}");
    assert_eq!(dom.matches("class=\"node\"").count(), 17, "{dom}");
    assert!(dom.contains("<table") && dom.contains("<td"), "the attempts table rendered");

    // Tables and charts of the study page and a dashboard.
    let dom = headless(&browser, &profile("study"), &["--dump-dom".into(), format!("{base}/pipelines/study")]);
    assert!(dom.matches("<table").count() >= 4 && dom.contains("sugarcrepe.mean"), "{dom}");
    let dom = headless(&browser, &profile("overview"), &["--dump-dom".into(), format!("{base}/dashboards/overview")]);
    assert!(dom.contains("Recent runs") && dom.contains("<table") && dom.contains("<svg"), "{dom}");

    // A screenshot of the run page: the DAG's "done" green must be on it.
    let shot = ws.root().join("dashboard.png");
    headless(
        &browser,
        &profile("shot"),
        &[format!("--screenshot={}", shot.display()), "--window-size=1280,900".into(), format!("{base}/runs/1")],
    );
    let image = image::open(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display())).to_rgb8();
    assert_eq!((image.width(), image.height()), (1280, 900));
    let done_green = image.pixels().filter(|p| p.0 == [0xb7, 0xe1, 0xa1]).count();
    assert!(done_green > 1000, "the DAG's done nodes are visible ({done_green} green pixels)");
    eprintln!("screenshot: {}", shot.display());
    if std::env::var_os("ABLATE_UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img/dashboard.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::copy(&shot, &docs).unwrap();
    }
}
