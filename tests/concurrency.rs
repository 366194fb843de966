//! Several `ablate run` processes sharing one workspace.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const GRID: &str = r#"
[pipeline]
name = "shared"

[axes]
i = [0, 1, 2, 3, 4, 5]

[stages.prep]
kind = "command"
run = "echo x >> @C@/prep; sleep 0.3; echo prep > $ABLATE_OUT/prep.txt"

[stages.s]
kind = "command"
needs = ["prep"]
run = "echo x >> @C@/s-${i}; sleep 0.3; echo ${i} > $ABLATE_OUT/s.txt; echo 'ablate:metric v ${i}'"

[stages.t]
kind = "command"
needs = ["s"]
run = "echo x >> @C@/t-${i}; sleep 0.3; cat $ABLATE_INPUT_S/s.txt > $ABLATE_OUT/t.txt"
"#;

fn check_concurrent(processes: usize) {
    let ws = Ws::new();
    let file = ws.write("grid.toml", GRID);
    let plan = ws.plan(&file);
    assert_eq!(plan.len(), 13);

    let children: Vec<Bg> = (0..processes).map(|_| ws.spawn(&["run", file.to_str().unwrap(), "-j", "2", "--json"])).collect();
    let outs: Vec<Out> = children.into_iter().map(|c| c.wait(Duration::from_secs(60))).collect();
    let mut executed_total = 0;
    let mut executed_union = BTreeSet::new();
    for out in &outs {
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_no_panic(out);
        let lower = out.stderr.to_lowercase();
        assert!(!lower.contains("database is locked") && !lower.contains("sqlite_busy"), "{}", out.describe());
        let summary = out.json();
        assert_eq!(summary["status"], "done", "{summary}");
        assert!(summary["failed"].as_array().unwrap().is_empty());
        let executed = keys_in(&summary, "executed");
        executed_total += executed.len();
        executed_union.extend(executed.clone());
        // Every instance is accounted for in each process: executed here, or by the other one, or cached.
        let mut seen = executed;
        seen.extend(keys_in(&summary, "done_elsewhere"));
        seen.extend(keys_in(&summary, "cached"));
        assert!(seen.is_subset(&all_keys(&plan)));
    }
    assert_eq!(executed_total, 13, "no instance executed by two processes");
    assert_eq!(executed_union, all_keys(&plan));

    // Every instance's command ran exactly once in total.
    let counts = ws.all_counts();
    assert_eq!(counts.len(), 13, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");

    // The store is consistent: everything cached, one done attempt each, no row left running.
    let plan = ws.plan(&file);
    assert!(plan.iter().all(|r| r["status"] == "cached"), "{plan:?}");
    for key in all_keys(&plan) {
        let show = ws.show(&key);
        assert_eq!(attempt_statuses(&show), vec!["done"], "{key}");
        if show["instance"]["params"]["run"].as_str().unwrap().contains("ablate:metric") {
            assert_eq!(show["metrics"].as_array().unwrap().len(), 1, "metric rows are not lost: {show}");
        }
    }
    let runs = ws.runs();
    assert_eq!(runs.len(), processes);
    assert!(runs.iter().all(|r| r["status"] == "done"), "{runs:?}");
}

#[test]
fn two_concurrent_runs_share_one_workspace() {
    check_concurrent(2);
}

#[test]
fn three_concurrent_runs_share_one_workspace() {
    check_concurrent(3);
}

/// A run waiting on an instance another run holds takes it over when that
/// run is killed (`kill -9`: no chance to release its claim).
#[test]
fn a_waiting_run_takes_over_when_the_holder_is_killed() {
    let ws = Ws::new();
    let file = ws.write(
        "slow.toml",
        "[pipeline]\nname = \"slow\"\n\n[stages.a]\nkind = \"command\"\nrun = \"echo x >> @C@/a; sleep 2; echo ok > $ABLATE_OUT/o.txt\"\n\n[stages.b]\nkind = \"command\"\nneeds = [\"a\"]\nrun = \"echo x >> @C@/b\"\n",
    );
    let f = file.to_str().unwrap();
    let holder = ws.spawn(&["run", f]);
    wait_until(Duration::from_secs(20), "the first run to start a", || ws.count("a") == 1);
    let waiter = ws.spawn(&["run", f, "--json"]);
    std::thread::sleep(Duration::from_millis(800));
    holder.kill9();
    let out = waiter.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!((ws.count("a"), ws.count("b")), (2, 1), "a reran once in the waiting run, then b");
    let a = ws.show(&key_of(&ws.plan(&file), "a"));
    assert_eq!(attempt_statuses(&a), vec!["lost", "done"], "{a}");
}
