//! A small ablation study made of `command` stages, for the history, plot and
//! dashboard tests: 2 losses × 2 caption lengths × 2 seeds of `train` (a loss
//! curve and final metrics whose values depend on the axes) and `eval` below
//! it. Include with `#[path = "common/study.rs"] mod study;` next to `mod common;`.

#![allow(dead_code)]

use std::path::PathBuf;

use crate::common::Ws;

/// Final `sugarcrepe.mean` of (loss, captions) before the per-seed offset of 0.01 × seed.
pub const BASE: &[(&str, &str, f64)] =
    &[("infonce", "short", 0.60), ("infonce", "long", 0.70), ("cosine", "short", 0.65), ("cosine", "long", 0.80)];

pub const STUDY: &str = r#"
[pipeline]
name = "study"

[axes]
loss = ["infonce", "cosine"]
captions = ["short", "long"]
seed = [0, 1]

[stages.data]
kind = "command"
run = "echo data > $ABLATE_OUT/data.txt"

[stages.train]
kind = "command"
needs = ["data"]
env = ["LR=0.001"]
run = """
case ${loss}-${captions} in infonce-short) v=0.60;; infonce-long) v=0.70;; cosine-short) v=0.65;; cosine-long) v=0.80;; esac
m=$(awk "BEGIN{print $v + ${seed} * 0.01}")
for s in 0 1 2 3; do echo "ablate:metric loss $(awk "BEGIN{print 1 / ($s + 1) + ${seed} * 0.1}") $s"; done
echo "ablate:metric sugarcrepe.mean $m"
echo ${loss} > $ABLATE_OUT/model.txt
"""

[stages.eval]
kind = "command"
needs = ["train"]
run = """
echo "ablate:metric zero_shot.top1 $(awk "BEGIN{print 0.5 + ${seed} * 0.02}")"
cat $ABLATE_INPUT_TRAIN/model.txt > $ABLATE_OUT/score.txt
"""
"#;

/// Writes and runs the study; returns the pipeline file.
#[track_caller]
pub fn build(ws: &Ws) -> PathBuf {
    let file = ws.write("study.toml", STUDY);
    let (code, _, out) = ws.run_json(&file, &["--jobs", "2"]);
    assert_eq!(code, Some(0), "{}", out.describe());
    file
}

/// A smaller study for the backend and cluster tests: 2 losses × 2 seeds of
/// `train` (a loss curve and a final metric) below one `data`, and an `eval`
/// per `train`: 9 instances.
pub const SMALL: &str = r#"
[pipeline]
name = "small"

[axes]
loss = ["infonce", "cosine"]
seed = [0, 1]

[stages.data]
kind = "command"
run = "echo data > $ABLATE_OUT/data.txt"

[stages.train]
kind = "command"
needs = ["data"]
run = """
for s in 0 1 2; do echo "ablate:metric loss $(awk "BEGIN{print 1 / ($s + 1) + ${seed} * 0.1}") $s"; done
echo "ablate:metric top1 $(awk "BEGIN{print 0.5 + ${seed} * 0.01}")"
echo ${loss} ${seed} > $ABLATE_OUT/model.txt
"""

[stages.train.resources]
cpus = 1
mem = "100M"
time = "00:05:00"

[stages.eval]
kind = "command"
needs = ["train"]
run = "echo \"ablate:metric acc $(wc -c < $ABLATE_INPUT_TRAIN/model.txt)\"; cat $ABLATE_INPUT_TRAIN/model.txt > $ABLATE_OUT/score.txt"
"#;
