//! `[stages.X.resources]`: the local CPU budget and checked Slurm values.

mod common;

use common::*;

const CPU_HUNGRY: &str = r#"
[pipeline]
name = "cpus"

[axes]
i = [0, 1, 2]

[stages.work]
kind = "command"
run = "mkdir @C@/running-${i}; n=$(ls -d @C@/running-* | wc -l); echo $n >> @C@/overlap; sleep 0.4; rmdir @C@/running-${i}"

[stages.work.resources]
cpus = 2
mem = "1G"
time = "1-00:00"
"#;

/// Largest number of instances seen running at once.
fn overlap(ws: &Ws) -> usize {
    std::fs::read_to_string(ws.counts().join("overlap")).unwrap().lines().map(|l| l.trim().parse::<usize>().unwrap()).max().unwrap()
}

#[test]
fn instances_asking_for_cpus_share_the_cpu_budget() {
    let ws = Ws::new();
    let file = ws.write("cpus.toml", CPU_HUNGRY);
    let (code, _, out) = ws.run_json(&file, &["--jobs", "3", "--cpus", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(overlap(&ws), 1, "two CPUs each, two in the budget: one at a time");

    let ws = Ws::new();
    let file = ws.write("cpus.toml", CPU_HUNGRY);
    let (code, _, out) = ws.run_json(&file, &["--jobs", "3", "--cpus", "4"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(overlap(&ws), 2, "four CPUs: two at a time");

    // More than the whole budget: runs, alone.
    let ws = Ws::new();
    let file = ws.write("cpus.toml", CPU_HUNGRY);
    let (code, _, out) = ws.run_json(&file, &["--jobs", "3", "--cpus", "1"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(overlap(&ws), 1);
}

#[test]
fn memory_and_time_limits_are_checked_where_they_are_written() {
    for (line, message) in [("mem = \"lots\"", "expected a memory size"), ("time = \"4 hours\"", "expected a time limit")] {
        let ws = Ws::new();
        let file = ws.write(
            "bad.toml",
            &format!("[pipeline]\nname = \"bad\"\n\n[stages.a]\nkind = \"command\"\nrun = \"true\"\n\n[stages.a.resources]\n{line}\n"),
        );
        let out = ws.run(&["plan", file.to_str().unwrap()]);
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(out.stderr.contains("bad.toml:9:") && out.stderr.contains(message), "{}", out.describe());
        assert!(!ws.db().exists());
    }
}
