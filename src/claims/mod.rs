//! Declared claims (`[[claims]]` in a pipeline file): a comparison of one
//! metric between two selections of a study's cells, decided by a paired
//! bootstrap instead of by eye.
//!
//! `parse` reads the tables (with located errors), `pairing` finds the cells
//! of each side and pairs them, `stats` computes the mean difference, its
//! confidence interval and the verdict. Claims never touch a stage: they are
//! read after the fact from finished results, so no key depends on them.

pub mod stats;
pub mod values;

use serde::Serialize;

pub use crate::pipeline::claims::{Averaged, Claim, Expect, Selection, check};
use crate::pipeline::claims::{Cell, cells};
use crate::pipeline::{Diagnostics, PipelineSpec};
use crate::store::HistoryRow;

pub use stats::{Estimate, Verdict};

/// A claim checked against a study's results. `n`, `mean_diff` and the CI
/// are over the complete pairs; `missing` counts instances not yet run (or
/// without the metric), which make the verdict `incomplete`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub metric: String,
    pub expect: Expect,
    pub margin: f64,
    pub n: usize,
    pub mean_diff: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub verdict: Verdict,
    pub missing: usize,
    /// The axes cells were paired on (`stage` when both sides span several stages).
    pub paired_on: Vec<String>,
    pub averaged: Averaged,
}

impl Outcome {
    /// The columns of a claims table (terminal, web page, report).
    pub const HEADER: [&'static str; 8] = ["claim", "metric", "expect", "margin", "n", "mean a−b", "95% CI", "verdict"];

    /// This claim's row under [`Outcome::HEADER`].
    pub fn cells(&self) -> Vec<String> {
        let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
        let ci = match (self.ci_low, self.ci_high) {
            (Some(lo), Some(hi)) => format!("[{lo:.4}, {hi:.4}]"),
            _ => "-".to_owned(),
        };
        vec![
            self.name.clone(),
            self.metric.clone(),
            self.expect.as_str().to_owned(),
            format!("{}", self.margin),
            self.n.to_string(),
            number(self.mean_diff),
            ci,
            self.verdict_text(),
        ]
    }

    /// The verdict, with the count of missing values when incomplete.
    pub fn verdict_text(&self) -> String {
        match self.verdict {
            Verdict::Incomplete => format!("incomplete ({} missing)", self.missing),
            v => v.as_str().to_owned(),
        }
    }

    /// What the table leaves unsaid: the pairing and the averaged axes.
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if !self.paired_on.is_empty() {
            parts.push(format!("paired on {}", self.paired_on.join(", ")));
        }
        for (side, axes) in [("a", &self.averaged.a), ("b", &self.averaged.b)] {
            if !axes.is_empty() {
                parts.push(format!("{side} averaged over {}", axes.join(", ")));
            }
        }
        format!("{}: {}", self.name, if parts.is_empty() { "one pair".to_owned() } else { parts.join("; ") })
    }
}

/// Each claim of `spec` decided on `rows` (the study's results as it
/// stands), or the located error that keeps it from being decided.
pub fn evaluate(spec: &PipelineSpec, rows: &[HistoryRow]) -> Result<Vec<Result<Outcome, Diagnostics>>, Diagnostics> {
    let cells = cells(spec)?;
    let values = values::Values::new(rows);
    Ok(spec.claims.iter().map(|claim| decide(spec, &cells, &values, claim)).collect())
}

/// [`evaluate`], failing with every claim's error when any has one.
pub fn evaluate_all(spec: &PipelineSpec, rows: &[HistoryRow]) -> Result<Vec<Outcome>, Diagnostics> {
    let (ok, errors): (Vec<_>, Vec<_>) = evaluate(spec, rows)?.into_iter().partition(Result::is_ok);
    if errors.is_empty() {
        Ok(ok.into_iter().map(|o| o.expect("partitioned")).collect())
    } else {
        Err(Diagnostics(errors.into_iter().filter_map(Result::err).flat_map(|e| e.0).collect()))
    }
}

fn decide(spec: &PipelineSpec, cells: &[Cell], values: &values::Values, claim: &Claim) -> Result<Outcome, Diagnostics> {
    let pairing = values::measured(spec, cells, values, claim)?;
    let diffs: Vec<f64> = pairing.pairs.iter().filter_map(|p| Some(p.a? - p.b?)).collect();
    let missing = pairing.missing;
    let estimate = (!diffs.is_empty()).then(|| stats::paired_bootstrap(&diffs));
    let verdict = match &estimate {
        _ if missing > 0 => Verdict::Incomplete,
        Some(e) => stats::verdict(claim.expect, claim.margin, e.ci_low, e.ci_high),
        None => Verdict::Incomplete,
    };
    Ok(Outcome {
        name: claim.name.clone(),
        metric: claim.metric.clone(),
        expect: claim.expect,
        margin: claim.margin,
        n: diffs.len(),
        mean_diff: estimate.as_ref().map(|e| e.mean_diff),
        ci_low: estimate.as_ref().map(|e| e.ci_low),
        ci_high: estimate.as_ref().map(|e| e.ci_high),
        verdict,
        missing,
        paired_on: pairing.on,
        averaged: pairing.averaged,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::pipeline::{SourceFile, compile_source, parse::parse};

    const STUDY: &str = r#"[pipeline]
name = "c"

[axes]
method = ["new", "old"]
seed = [0, 1, 2]
extra = ["x", "y"]

[stages.eval]
kind = "command"
run = "echo ${method} ${seed}"

[stages.base]
kind = "command"
run = "echo ${seed} ${extra}"
"#;

    fn file(claims: &str) -> SourceFile {
        SourceFile { path: "p.toml".into(), text: format!("{STUDY}\n{claims}") }
    }

    /// The errors of a file with these claims, one string each.
    fn errors(claims: &str) -> Vec<String> {
        match parse(file(claims)).map_err(|e| e.0).and_then(|spec| check(&spec).map_err(|e| e.0)) {
            Ok(()) => Vec::new(),
            Err(e) => e.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[track_caller]
    fn assert_error(claims: &str, located: &str, message: &str) {
        let errors = errors(claims);
        assert!(errors.iter().any(|e| e.starts_with(located) && e.contains(message)), "want {located} … {message}, got {errors:#?}");
    }

    /// Line numbers below count from the claims text, which starts after `STUDY` and a blank line.
    fn line(n: usize) -> usize {
        STUDY.lines().count() + 1 + n
    }

    #[test]
    fn located_errors() {
        let claim = |body: &str| format!("[[claims]]\n{body}");
        let ok = "name = \"n\"\nmetric = \"m\"\na = { method = \"new\" }\nb = { method = \"old\" }\nexpect = \"greater\"\n";
        assert!(errors(&claim(ok)).is_empty(), "{:?}", errors(&claim(ok)));
        let l = line(1);
        assert_error(&claim(&ok.replace("name = \"n\"\n", "")), &format!("p.toml:{l}:1: claims[0].name:"), "missing required key `name`");
        assert_error(
            &claim(&ok.replace("metric = \"m\"", "metric = 3")),
            &format!("p.toml:{}:10: claims[0].metric:", line(3)),
            "non-empty string",
        );
        assert_error(
            &claim(&ok.replace("\"greater\"", "\"bigger\"")),
            &format!("p.toml:{}:10: claims[0].expect:", line(6)),
            "\"greater\", \"less\" or \"equivalent\"",
        );
        assert_error(&claim(&ok.replace("greater", "equivalent")), &format!("p.toml:{l}:1: claims[0].margin:"), "equivalence needs one");
        assert_error(
            &claim(&format!("{}margin = 0\n", ok.replace("greater", "equivalent"))),
            &format!("p.toml:{}:10: claims[0].margin:", line(7)),
            "above 0",
        );
        assert_error(&claim(&format!("{ok}margin = -1\n")), &format!("p.toml:{}:10: claims[0].margin:", line(7)), "at least 0");
        assert_error(&claim(&format!("{ok}colour = 1\n")), &format!("p.toml:{}:1: claims[0].colour:", line(7)), "unknown key");
        assert_error(
            &claim(&ok.replace("a = { method = \"new\" }\n", "")),
            &format!("p.toml:{l}:1: claims[0].a:"),
            "missing required key `a`",
        );
        assert_error(
            &claim(&ok.replace("a = { method = \"new\" }", "a = \"new\"")),
            &format!("p.toml:{}:5: claims[0].a:", line(4)),
            "selection",
        );
        assert_error(
            &claim(&ok.replace("{ method = \"new\" }", "{ stage = \"evl\" }")),
            &format!("p.toml:{}:15: claims[0].a.stage:", line(4)),
            "no stage `evl` in this file (stages: eval, base)",
        );
        assert_error(
            &claim(&ok.replace("{ method = \"new\" }", "{ methd = \"new\" }")),
            &format!("p.toml:{}:7: claims[0].a.methd:", line(4)),
            "unknown axis `methd`",
        );
        assert_error(
            &claim(&ok.replace("{ method = \"new\" }", "{ method = \"newer\" }")),
            &format!("p.toml:{}:16: claims[0].a.method:", line(4)),
            "not a value of axis `method` (values: \"new\", \"old\")",
        );
        assert_error(&format!("{}{}", claim(ok), claim(ok)), &format!("p.toml:{}:8: claims[1].name:", line(8)), "names must be unique");
        assert_error("[claims]\nname = \"n\"\n", &format!("p.toml:{}:1: claims:", line(1)), "expected [[claims]] tables");
        // A value written as another type but reading the same is that value.
        assert!(errors(&claim(&ok.replace("{ method = \"new\" }", "{ method = \"new\", seed = \"1\" }"))).is_empty());
    }

    #[test]
    fn selections_must_match_instances_and_pair() {
        let claim = |a: &str, b: &str| format!("[[claims]]\nname = \"n\"\nmetric = \"m\"\na = {a}\nb = {b}\nexpect = \"less\"\n");
        // `base` does not span `method`: the selection matches no instance.
        assert_error(
            &claim("{ stage = \"base\", method = \"new\" }", "{ stage = \"eval\" }"),
            &format!("p.toml:{}:5: claims[0].a:", line(4)),
            "claim `n`: selection `a` matches no instance: stage `base` has no instance",
        );
        // Both open on stage: cells pair on it, and `eval` and `base` share none.
        assert_error(
            &claim("{ method = \"new\" }", "{ extra = \"x\" }"),
            &format!("p.toml:{}:1: claims[0]:", line(1)),
            "claim `n`: the pairing leaves no pairs: no cell of `a` has a cell of `b` with the same values of stage, seed",
        );
        assert!(errors(&claim("{ stage = \"eval\", method = \"new\" }", "{ stage = \"base\", extra = \"x\" }")).is_empty());
        // compile checks it too (`ablate plan`).
        let text = claim("{ stage = \"base\", method = \"new\" }", "{ stage = \"eval\" }");
        assert!(compile_source(file(&text)).is_err());
    }

    #[test]
    fn claims_leave_keys_alone() {
        let plain = compile_source(SourceFile { path: "p.toml".into(), text: STUDY.to_owned() }).unwrap();
        let claim = "[[claims]]\nname = \"n\"\nmetric = \"m\"\na = { method = \"new\" }\nb = { method = \"old\" }\nexpect = \"greater\"\n";
        let with = compile_source(file(claim)).unwrap();
        let keys = |p: &crate::pipeline::Plan| p.nodes.iter().map(|n| n.key.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(keys(&plain), keys(&with));
        assert_eq!(with.spec.claims.len(), 1);
    }

    fn row(stage: &str, axes: serde_json::Value, metric: Option<f64>) -> HistoryRow {
        HistoryRow {
            pipeline: "c".into(),
            stage: stage.into(),
            key: format!("{stage}{axes}"),
            kind: "command".into(),
            axes: axes.as_object().unwrap().clone(),
            params: Default::default(),
            metrics: metric.map(|v| ("m".to_owned(), v)).into_iter().collect(),
            done_at: Some("t".into()),
            run_id: 1,
            seen_at: "t".into(),
        }
    }

    #[test]
    fn pairs_average_and_count_what_is_missing() {
        let spec = parse(file(
            "[[claims]]\nname = \"eval vs base\"\nmetric = \"m\"\na = { stage = \"eval\", method = \"new\" }\nb = { stage = \"base\" }\nexpect = \"greater\"\nmargin = 0.05\n",
        ))
        .unwrap();
        // eval new: 0.7 + seed/100; base: seed/100 + (0 for x, 0.1 for y) → b averages 0.05 over `extra`.
        let mut rows: Vec<HistoryRow> =
            (0..3).map(|s| row("eval", json!({"method": "new", "seed": s}), Some(0.7 + s as f64 / 100.0))).collect();
        for s in 0..3 {
            for (x, add) in [("x", 0.0), ("y", 0.1)] {
                rows.push(row("base", json!({"seed": s, "extra": x}), Some(s as f64 / 100.0 + add)));
            }
        }
        let o = evaluate_all(&spec, &rows).unwrap().remove(0);
        assert_eq!((o.n, o.missing, o.verdict), (3, 0, Verdict::Supported));
        assert!((o.mean_diff.unwrap() - 0.65).abs() < 1e-12, "{o:?}");
        assert_eq!(o.paired_on, ["seed"]);
        assert_eq!(o.averaged, Averaged { a: vec![], b: vec!["extra".into()] });
        assert_eq!(o.note(), "eval vs base: paired on seed; b averaged over extra");
        let json = serde_json::to_value(&o).unwrap();
        for field in ["name", "metric", "expect", "margin", "n", "mean_diff", "ci_low", "ci_high", "verdict"] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
        assert_eq!((json["expect"].as_str(), json["verdict"].as_str()), (Some("greater"), Some("supported")));

        // One base cell not run yet: its pair is out, the verdict incomplete.
        let partial: Vec<HistoryRow> =
            rows.iter().filter(|r| !(r.stage == "base" && r.axes["seed"] == 2 && r.axes["extra"] == "y")).cloned().collect();
        let o = evaluate_all(&spec, &partial).unwrap().remove(0);
        assert_eq!((o.n, o.missing, o.verdict_text().as_str()), (2, 1, "incomplete (1 missing)"));
        // Nothing run: every cell missing, no numbers.
        let o = evaluate_all(&spec, &[]).unwrap().remove(0);
        assert_eq!((o.n, o.missing, o.mean_diff), (0, 9, None));
        // Everything run and no instance recorded the metric: an unknown metric, located.
        let none: Vec<HistoryRow> = rows.iter().map(|r| HistoryRow { metrics: Default::default(), ..r.clone() }).collect();
        let e = evaluate_all(&spec, &none).unwrap_err().to_string();
        assert!(e.contains("p.toml:") && e.contains("claims[0].metric: claim `eval vs base`: unknown metric `m`"), "{e}");
    }
}
