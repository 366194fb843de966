//! `ablate serve`: pages, dashboards, 404s, injection and traversal attempts,
//! and a few hundred concurrent requests. Loopback only.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/study.rs"]
mod study;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use http::{Server, fetch};

/// The repository's own dashboards.
fn shipped_dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

#[test]
fn pages_render_from_the_store() {
    let ws = Ws::new();
    let file = study::build(&ws);
    let plan = ws.plan(&file);
    let server = Server::start(&ws, &shipped_dashboards());
    let a = server.addr;

    let index = fetch(a, "/");
    assert_eq!(index.status, 200);
    assert!(index.headers.to_ascii_lowercase().contains("content-security-policy"));
    assert!(index.body.contains("<table") && index.body.contains("href=\"/runs/1\"") && index.body.contains("done"), "{}", index.body);

    let run = fetch(a, "/runs/1");
    assert_eq!(run.status, 200);
    assert!(run.body.contains("<svg class=\"dag\""), "the DAG is drawn");
    assert_eq!(run.body.matches("<g class=\"node\"").count(), 17, "one node per instance");
    assert!(run.body.contains("data-status=\"done\""));
    assert!(!run.body.contains("EventSource"), "a finished run needs no live updates");

    let train = stage_keys(&plan, "train").into_iter().next().unwrap();
    let inst = fetch(a, &format!("/instances/{train}"));
    assert_eq!(inst.status, 200);
    for needle in ["model.txt", "sugarcrepe.mean", "loss curve", "needs data", "used by", "LR=0.001"] {
        assert!(inst.body.contains(needle), "instance page lacks {needle}");
    }
    assert_eq!(fetch(a, &format!("/instances/{}", &train[..8])).status, 200, "key prefixes work");

    let pipeline = fetch(a, "/pipelines/study");
    assert_eq!(pipeline.status, 200);
    assert!(pipeline.body.contains("sugarcrepe.mean by") && pipeline.body.contains("±"), "pivots: {}", pipeline.body);
    let pivot = fetch(a, "/pipelines/study/pivot?metric=sugarcrepe.mean&rows=loss&cols=captions");
    assert_eq!(pivot.status, 200);
    assert!(pivot.body.contains("0.6050") && pivot.body.contains("0.8050"), "means over seeds: {}", pivot.body);

    let dashboards = fetch(a, "/dashboards");
    assert!(dashboards.body.contains("/dashboards/overview") && dashboards.body.contains("/dashboards/lift-vs-clip"));
    let overview = fetch(a, "/dashboards/overview");
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Recent runs") && overview.body.contains("<svg"), "{}", overview.body);
    assert!(!overview.body.contains("class=\"error\""), "every overview panel works: {}", overview.body);
    // The LIFT study has not run here: every panel says so, none fails.
    let lift = fetch(a, "/dashboards/lift-vs-clip");
    assert_eq!(lift.status, 200);
    assert!(lift.body.matches("no data yet").count() >= 5, "{}", lift.body);
    assert!(!lift.body.contains("class=\"error\""), "{}", lift.body);
    // Dashboard parameters come from the URL and are bound: the study's final
    // metrics appear, and pivots on an axis it lacks say so.
    let lift = fetch(a, "/dashboards/lift-vs-clip?pipeline=study");
    assert!(lift.body.contains("All final metrics of the study") && lift.body.contains("<td>eval</td>"), "{}", lift.body);
    assert!(lift.body.contains("`encoder` is not an axis of this study"), "{}", lift.body);
}

#[test]
fn broken_panels_show_their_error_and_the_server_stays_up() {
    let ws = Ws::new();
    study::build(&ws);
    let dir = ws.root().join("dashboards");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mixed.toml"),
        r#"
title = "Mixed <b>"
[params]
stage = "eval"
[[panels]]
title = "good"
sql = "SELECT stage, COUNT(*) AS n FROM v_results WHERE stage = :stage GROUP BY stage"
[[panels]]
title = "bad sql"
sql = "SELECT nope FROM nowhere"
[[panels]]
title = "a write"
sql = "DELETE FROM runs"
[[panels]]
title = "bad chart"
chart = "line"
sql = "SELECT 'a' AS x, 'b' AS y"
[[panels]]
title = "bad spec"
chart = "pie"
sql = "SELECT 1"
[[panels]]
title = "empty pivot"
chart = "bar"
pivot = { metric = "never.recorded", rows = ["loss"] }
[[panels]]
title = "too many bars"
chart = "bar"
sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) SELECT 'c' || i AS x, i AS y FROM n"
[[panels]]
title = "long table"
sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) SELECT i FROM n"
[[panels]]
title = "huge values"
chart = "line"
sql = "SELECT 0 AS x, 1e308 AS y UNION ALL SELECT 1, -1e308"
[[panels]]
title = "misspelt axis"
pivot = { metric = "zero_shot.top1", rows = ["los"] }
[[panels]]
title = "misspelt parameter"
sql = "SELECT stage FROM v_results WHERE stage = :stag"
[[panels]]
title = "endless"
sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
"#,
    )
    .unwrap();
    std::fs::write(dir.join("broken.toml"), "title = [").unwrap();
    let mut server = Server::start_with(&ws, &dir, &["--query-timeout", "1"]);
    let began = std::time::Instant::now();
    let page = fetch(server.addr, "/dashboards/mixed");
    assert!(began.elapsed() < std::time::Duration::from_secs(30), "the page took {:?}", began.elapsed());
    assert_eq!(page.status, 200);
    assert!(page.body.contains("the query ran longer than 1 s and was stopped"), "{}", page.body);
    assert!(page.body.contains("Mixed &lt;b&gt;"), "titles are escaped");
    assert!(page.body.contains("<td>eval</td><td class=\"num\">8</td>"), "{}", page.body);
    assert!(page.body.contains("no such table: nowhere"));
    assert!(page.body.contains("read-only"), "the write is refused inside its panel");
    assert!(page.body.contains("line charts need numbers"));
    assert!(page.body.contains("invalid panel") && page.body.contains("pie"));
    assert!(page.body.contains("no data yet"));
    assert!(page.body.contains("too many to draw") && page.body.contains("showing the first 1000 of 1500 rows"));
    assert!(page.body.contains("`los` is not an axis of this study"), "{}", page.body);
    assert!(page.body.contains("the query uses :stag, which neither"), "{}", page.body);
    assert_eq!(page.body.matches("class=\"error\"").count(), 8, "{}", page.body);
    assert!(page.body.matches("no data yet").count() >= 2, "empty pivot and unplottable values");
    // A parameter value with SQL in it is bound, not run.
    let page = fetch(server.addr, "/dashboards/mixed?stage=eval'%20OR%20'1'='1");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h2>good</h2><p class=\"empty\">no data yet"), "{}", page.body);
    let broken = fetch(server.addr, "/dashboards/broken");
    assert_eq!(broken.status, 200);
    assert!(broken.body.contains("invalid"), "{}", broken.body);
    assert_eq!(ws.runs().len(), 1, "nothing was written");
    assert!(server.alive());
}

#[test]
fn unknown_things_are_404_and_requests_cannot_inject_or_traverse() {
    let ws = Ws::new();
    study::build(&ws);
    let dir = ws.root().join("dashboards");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ok.toml"), "title = \"ok\"\n").unwrap();
    std::fs::write(ws.root().join("secret.toml"), "title = \"SECRET-DASHBOARD\"\n").unwrap();
    let mut server = Server::start(&ws, &dir);
    let a = server.addr;
    for target in [
        "/runs/999",
        "/runs/0",
        "/runs/-1",
        "/runs/abc",
        "/runs/1%20OR%201=1",
        "/runs/1;DROP%20TABLE%20runs",
        "/runs/999/events",
        "/instances/ffffffffffff",
        "/instances/zzzz",
        "/instances/'%20OR%20''='",
        "/pipelines/nope",
        "/pipelines/study'%20--",
        "/pipelines/x'%20OR%20'1'='1/pivot?metric=loss",
        "/dashboards/nope",
        "/dashboards/..%2Fsecret",
        "/dashboards/../secret",
        "/dashboards/%2e%2e%2fsecret",
        "/dashboards/ok.toml",
        "/../../etc/passwd",
        "/static/../../etc/passwd",
        "/objects/ab",
        "/nothing",
    ] {
        let r = fetch(a, target);
        assert!(r.status == 404 || r.status == 400, "{target}: {} {}", r.status, r.body);
        assert!(!r.body.contains("SECRET-DASHBOARD") && !r.body.contains("root:"), "{target} leaked a file");
    }
    // A request for another host name (DNS rebinding) is refused.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: evil.example:8787\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    }
    // Injection through a pivot's parameters selects nothing (and breaks nothing).
    let r = fetch(a, "/pipelines/study/pivot?metric=x'%20OR%201=1%20--&rows=loss");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("no data yet"));
    assert_eq!(fetch(a, "/pipelines/study/pivot").status, 400, "a pivot needs a metric");
    for bad in ["rows=nope", "rows=loss&cols=loss", "rows=loss&stage=nope"] {
        let r = fetch(a, &format!("/pipelines/study/pivot?metric=sugarcrepe.mean&{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    // A repeated parameter is answered in the page, not by a bare 400 text.
    let r = fetch(a, "/pipelines/study/pivot?metric=sugarcrepe.mean&metric=loss&rows=loss");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("give one metric") && r.body.contains("</html>"), "{}", r.body);
    let r = fetch(a, "/pipelines/study/pivot?metric=sugarcrepe.mean&metric=sugarcrepe.mean&rows=loss&rows=captions");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("0.6050") && r.body.contains("0.8050"), "{}", r.body);
    assert_eq!(fetch(a, "/dashboards/ok").status, 200);
    assert_eq!(ws.runs().len(), 1, "the store is unchanged");
    assert!(server.alive());
}

#[test]
fn stays_up_under_hundreds_of_concurrent_requests() {
    let ws = Ws::new();
    let file = study::build(&ws);
    let key = all_keys(&ws.plan(&file)).into_iter().next().unwrap();
    let mut server = Server::start(&ws, &shipped_dashboards());
    let addr = server.addr;
    let targets =
        ["/".to_owned(), "/runs/1".to_owned(), format!("/instances/{key}"), "/dashboards/overview".to_owned(), "/runs/999".to_owned()];
    let start = Instant::now();
    let threads: Vec<_> = (0..300)
        .map(|i| {
            let target = targets[i % targets.len()].clone();
            std::thread::spawn(move || http::get(addr, &target).map(|r| (target, r.status)))
        })
        .collect();
    let mut ok = 0;
    for t in threads {
        let (target, status) = t.join().expect("client thread").expect("request failed at the transport level");
        let expected = if target == "/runs/999" { 404 } else { 200 };
        assert_eq!(status, expected, "{target}");
        ok += 1;
    }
    assert_eq!(ok, 300);
    assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
    assert!(server.alive());
    assert_eq!(fetch(addr, "/").status, 200, "still serving afterwards");
}

#[test]
fn store_text_is_escaped_and_a_running_run_streams_progress() {
    let ws = Ws::new();
    let file = ws.write(
        "x.toml",
        r#"
[pipeline]
name = "esc<script>"

[axes]
tag = ["<img src=x onerror=alert(1)>"]

[stages.slow]
kind = "command"
run = "echo '${tag}' > $ABLATE_OUT/t.txt; echo 'ablate:metric <b>bold</b> 1'; while [ ! -e @R@/go ]; do sleep 0.05; done"
"#,
    );
    let run = ws.spawn(&["run", file.to_str().unwrap()]);
    wait_until(Duration::from_secs(30), "the run to start", || {
        // The store may still be migrating when it first appears: retry until `runs` answers.
        let out = ws.run(&["runs", "--json"]);
        out.code == Some(0) && out.json()[0]["status"] == "running"
    });
    let server = Server::start(&ws, &ws.root().join("no-dashboards"));
    let page = fetch(server.addr, "/runs/1");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("EventSource"), "a running run updates live");
    assert!(page.body.contains("esc&lt;script&gt;") && !page.body.contains("esc<script>"), "{}", page.body);
    assert!(page.body.contains("data-status=\"running\""));
    // The event stream sends progress while the run is running.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /runs/1/events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).contains("\"total\"") {
            let n = s.read(&mut chunk).expect("reading the event stream");
            assert!(n > 0, "stream closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("text/event-stream") && text.contains("\"status\":\"running\""), "{text}");
    }
    std::fs::write(ws.root().join("go"), "").unwrap();
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let key = ws.runs();
    assert_eq!(key[0]["status"], "done");
    let page = fetch(server.addr, "/pipelines/esc%3Cscript%3E");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("<img src=x") && page.body.contains("&lt;img src=x"), "{}", page.body);
    assert!(!page.body.contains("<b>bold</b>") && page.body.contains("&lt;b&gt;bold&lt;/b&gt;"), "{}", page.body);
}

#[test]
fn a_server_started_before_the_first_run_fills_in_once_a_store_exists() {
    let ws = Ws::new();
    let server = Server::start(&ws, &shipped_dashboards());
    let index = fetch(server.addr, "/");
    assert_eq!(index.status, 200);
    assert!(index.body.contains("no ablate store"), "{}", index.body);
    assert_eq!(fetch(server.addr, "/runs/1").status, 404);
    let lift = fetch(server.addr, "/dashboards/lift-vs-clip");
    assert_eq!(lift.status, 200);
    assert!(lift.body.contains("no data yet"));
    assert!(!ws.db().exists(), "serving creates no store");
    study::build(&ws);
    let index = fetch(server.addr, "/");
    assert!(index.body.contains("href=\"/runs/1\""), "{}", index.body);
    assert_eq!(fetch(server.addr, "/runs/1").status, 200);
}
