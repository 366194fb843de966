//! `ablate exec KEY`: one planned instance, run by a separate process.

mod common;

use common::*;

const PIPE: &str = r#"
[pipeline]
name = "exec"

[axes]
seed = [0, 1]

[stages.data]
kind = "command"
run = "echo x >> @C@/data; echo data > $ABLATE_OUT/data.txt"

[stages.train]
kind = "command"
needs = ["data"]
run = "echo x >> @C@/train-${seed}; cat $ABLATE_INPUT_DATA/data.txt > $ABLATE_OUT/model.txt; echo ${seed} >> $ABLATE_OUT/model.txt; echo 'ablate:metric loss 0.5 1'"

[stages.eval]
kind = "command"
needs = ["train"]
run = "echo x >> @C@/eval-${seed}; cat $ABLATE_INPUT_TRAIN/model.txt > $ABLATE_OUT/score.txt"
"#;

#[test]
fn exec_runs_one_instance_after_its_upstream_and_refuses_before() {
    let ws = Ws::new();
    let file = ws.write("p.toml", PIPE);
    let plan = ws.plan(&file);
    let (code, summary, out) = ws.run_json(&file, &["--only", "data"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    assert_eq!(keys_in(&summary, "executed"), stage_keys(&plan, "data"));

    let train0 = rows(&plan, "train").iter().find(|r| r["axes"]["seed"] == 0).unwrap()["key"].as_str().unwrap().to_owned();
    let eval0 = rows(&plan, "eval").iter().find(|r| r["axes"]["seed"] == 0).unwrap()["key"].as_str().unwrap().to_owned();

    // eval's upstream (train) is not done: refuse, clearly, and run nothing.
    let out = ws.run(&["exec", &eval0]);
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(out.code.is_some());
    assert!(out.stderr.contains("not done"), "the refusal says the upstream is not done\n{}", out.describe());
    assert!(out.stderr.contains("train"), "and names it\n{}", out.describe());
    assert_eq!(ws.count("eval-0"), 0);

    // train's upstream is done: exec runs it in this separate process.
    let out = ws.run(&["exec", &train0, "--json"]).ok();
    let json = out.json();
    assert_eq!(json["key"], train0.as_str());
    assert_eq!(json["outcome"]["status"], "done", "{json}");
    assert_eq!(ws.count("train-0"), 1);
    assert_eq!(ws.count("train-1"), 0, "only the one instance");
    let show = ws.show(&train0);
    assert_eq!(attempt_statuses(&show), vec!["done"]);
    assert_eq!(show["metrics"][0]["name"], "loss");
    assert_eq!(show["artifacts"][0]["name"], "model.txt");

    // Now eval can be exec'd too, by a unique key prefix.
    let out = ws.run(&["exec", &eval0[..16]]).ok();
    assert!(out.stdout.contains("done"), "{}", out.describe());
    assert_eq!(ws.count("eval-0"), 1);

    // exec again: already done, nothing runs.
    let out = ws.run(&["exec", &eval0, "--json"]).ok();
    assert_eq!(out.json()["outcome"]["status"], "cached");
    assert_eq!(ws.count("eval-0"), 1);

    // The scheduler sees exec's work as done.
    let plan = ws.plan(&file);
    for key in [&train0, &eval0] {
        assert_eq!(plan.iter().find(|r| r["key"] == key.as_str()).unwrap()["status"], "cached");
    }
    let (code, summary, _) = ws.run_json(&file, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(summary["executed"].as_array().unwrap().len(), 2, "only seed 1 remained: {summary}");
    assert_eq!(ws.count("train-0"), 1);
}

#[test]
fn exec_rejects_unknown_keys_and_missing_stores() {
    let ws = Ws::new();
    let out = ws.run(&["exec", "abcdef012345"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(!ws.db().exists(), "exec on an empty workspace creates nothing");

    let file = ws.write("p.toml", PIPE);
    ws.run_json(&file, &["--only", "data"]);
    let out = ws.run(&["exec", "ffffffffffff"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("ffffffffffff"), "{}", out.describe());
}

/// Files below folders of `$ABLATE_OUT` are artifacts too, named
/// `folder/file`, and reach downstream commands at the same place (names
/// may hold spaces, `+` and `=`); a symbolic link fails the stage instead of
/// vanishing, and the outputs are kept in its state folder.
#[test]
fn files_in_output_folders_are_artifacts_and_links_are_refused() {
    let ws = Ws::new();
    let file = ws.write(
        "nest.toml",
        r#"
[pipeline]
name = "nest"

[stages.a]
kind = "command"
run = "echo top > $ABLATE_OUT/top.txt; mkdir -p $ABLATE_OUT/sub/deeper; echo one > $ABLATE_OUT/sub/one.txt; echo two > $ABLATE_OUT/sub/deeper/two.txt; echo w > \"$ABLATE_OUT/model final+lr=0.1.pt\""

[stages.b]
kind = "command"
needs = ["a"]
run = "cat $ABLATE_INPUT_A/sub/one.txt $ABLATE_INPUT_A/sub/deeper/two.txt > $ABLATE_OUT/b.txt"

[stages.link]
kind = "command"
run = "echo real > @R@/real.txt; ln -s @R@/real.txt $ABLATE_OUT/alias.txt; echo work > $ABLATE_OUT/work.txt"
"#,
    );
    let (code, summary, out) = ws.run_json(&file, &["--keep-going"]);
    assert_eq!(code, Some(1), "{}", out.describe());
    let plan = ws.plan(&file);
    let a = ws.show(&key_of(&plan, "a"));
    let names: Vec<&str> = a["artifacts"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["model final+lr=0.1.pt", "sub/deeper/two.txt", "sub/one.txt", "top.txt"]);
    let b = ws.show(&key_of(&plan, "b"));
    let path = ws.store().join(b["artifacts"][0]["path"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(path).unwrap(), "one\ntwo\n");
    let failed = summary["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{summary}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("alias.txt is a symbolic link"), "{summary}");
    // The command's work is not thrown away with the failed attempt.
    let kept = error.rsplit_once("kept in ").unwrap().1.trim_end_matches(')');
    assert_eq!(std::fs::read_to_string(std::path::Path::new(kept).join("work.txt")).unwrap(), "work\n", "{error}");
}

/// A stage reads nothing from ablate's terminal: its stdin is empty, so a
/// script that reads stdin ends instead of waiting for input that never comes.
#[test]
fn a_stage_reads_an_empty_stdin() {
    let ws = Ws::new();
    let file = ws.write("cat.toml", "[pipeline]\nname = \"cat\"\n\n[stages.c]\nkind = \"command\"\nrun = \"cat > $ABLATE_OUT/in.txt\"\n");
    // ablate's own stdin stays open (as a terminal's would) while it runs.
    let mut child = ws.command(&["run", file.to_str().unwrap()]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the stage waited for input on ablate's stdin");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success());
}
