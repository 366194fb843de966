//! Ablation pivots: one metric of finished instances arranged by axis values,
//! mean ± standard deviation over the axes left out (seeds, typically).
//! Shared by `ablate plot bars`, the dashboard's pivot panels and the report.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::chart::{BarChart, BarSeries};
use crate::filter::value_text;
use crate::store::HistoryRow;

/// What to pivot. Empty `rows`/`cols` put everything in one row/column.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PivotSpec {
    pub metric: String,
    #[serde(default)]
    pub rows: Vec<String>,
    #[serde(default)]
    pub cols: Vec<String>,
    #[serde(default)]
    pub pipeline: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Cell {
    pub mean: f64,
    /// Sample standard deviation (0 for a single value).
    pub std: f64,
    pub n: usize,
    /// The mean's 95 % Student-t interval over the values (seeds, typically):
    /// `mean ± t(0.975, n − 1) · std / √n`; null (NaN) for a single value.
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Student's t 0.975 quantiles for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199,
    2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// t(0.975, df): the table, then 1.96 + 2.5 / df (within 0.002 above 30).
fn t975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df - 1],
        _ => 1.959_964 + 2.5 / df as f64,
    }
}

impl Cell {
    /// Mean and sample std of `values`, summed in sorted order so the cell
    /// does not depend on the order the store returned the rows in (two
    /// orders can differ in the last bit).
    pub fn of(values: &[f64]) -> Cell {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let values = &sorted;
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        let half = t975(n.saturating_sub(1)) * std / (n as f64).sqrt();
        Cell { mean, std, n, ci_low: mean - half, ci_high: mean + half }
    }

    /// `0.712 ± 0.013 (n=3)`, or just the value when there is one.
    pub fn text(&self) -> String {
        if self.n > 1 { format!("{} ± {} (n={})", four(self.mean), four(self.std), self.n) } else { four(self.mean) }
    }

    /// `0.712 [0.680, 0.744] (n=3)`: the 95 % interval instead of the std.
    pub fn ci_text(&self) -> String {
        if self.n > 1 {
            format!("{} [{}, {}] (n={})", four(self.mean), four(self.ci_low), four(self.ci_high), self.n)
        } else {
            four(self.mean)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Pivot {
    pub spec: PivotSpec,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// `cells[row][col]`
    pub cells: Vec<Vec<Option<Cell>>>,
    /// Axes that vary among the pivoted rows but are neither rows nor columns: averaged over.
    pub over: Vec<String>,
}

impl Pivot {
    pub fn is_empty(&self) -> bool {
        self.cells.iter().flatten().all(Option::is_none)
    }

    /// Bars: one group per row label, one series per column label, ± std.
    pub fn bar_chart(&self, title: &str) -> BarChart {
        BarChart {
            title: title.to_owned(),
            x_label: self.spec.rows.join(" / "),
            y_label: self.spec.metric.clone(),
            categories: self.row_labels.clone(),
            series: self
                .col_labels
                .iter()
                .enumerate()
                .map(|(c, name)| BarSeries {
                    name: if self.spec.cols.is_empty() { String::new() } else { name.clone() },
                    // A NaN or infinite mean (a diverged run) has no bar; tables show it.
                    bars: self
                        .cells
                        .iter()
                        .map(|row| row[c].filter(|cell| cell.mean.is_finite()).map(|cell| (cell.mean, Some(cell.std))))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The pivot's axes and stage exist among the rows of its pipeline (all
/// rows when it names none), and no axis is both a row and a column (as
/// `results --by` and `plot bars` check): a misspelt axis would otherwise
/// fold every row into one cell.
pub fn check(spec: &PivotSpec, history: &[HistoryRow]) -> Result<(), String> {
    let rows: Vec<&HistoryRow> = history.iter().filter(|r| spec.pipeline.as_ref().is_none_or(|p| *p == r.pipeline)).collect();
    let axes = distinct(rows.iter().flat_map(|r| r.axes.keys().map(String::as_str)).chain(["stage"]));
    let asked: Vec<&String> = spec.rows.iter().chain(&spec.cols).collect();
    if let Some(unknown) = asked.iter().find(|a| !axes.contains(&a.as_str())) {
        return Err(format!("`{unknown}` is not an axis of this study (axes: {})", axes.join(", ")));
    }
    if let Some(twice) = asked.iter().enumerate().find(|(i, a)| asked[..*i].contains(a)).map(|(_, a)| a) {
        return Err(format!("`{twice}` is named twice in rows and cols"));
    }
    if let Some(stage) = &spec.stage
        && !rows.iter().any(|r| r.stage == *stage)
    {
        let stages = distinct(rows.iter().map(|r| r.stage.as_str()));
        return Err(format!("no finished instance of stage `{stage}` (stages: {})", stages.join(", ")));
    }
    Ok(())
}

/// The rows of a study's current version: of stages it still has, with axes
/// it still has, at values it still has. An edit that drops an axis, a value
/// or a stage leaves the older rows in the store (`history` lists them);
/// averaged with the new ones they would pass for more seeds. Also returns
/// how many rows were left out.
pub fn current_version(rows: Vec<HistoryRow>, spec: &crate::pipeline::PipelineSpec) -> (Vec<HistoryRow>, usize) {
    let total = rows.len();
    let kept: Vec<HistoryRow> = rows
        .into_iter()
        .filter(|r| {
            spec.stages.iter().any(|s| s.name == r.stage)
                && r.axes.iter().all(|(name, value)| spec.axes.iter().any(|a| a.name == *name && a.values.contains(value)))
        })
        .collect();
    let left_out = total - kept.len();
    (kept, left_out)
}

/// [`current_version`] of the study `name` as last run (else as last
/// planned), from the file text the store keeps; all rows if it no longer parses.
pub async fn current_rows(store: &crate::store::Store, name: &str) -> anyhow::Result<(Vec<HistoryRow>, usize)> {
    current_study(store, name).await.map(|(_, rows, left_out)| (rows, left_out))
}

/// [`current_rows`] with the parsed file they follow (`None` if it no longer parses).
pub async fn current_study(
    store: &crate::store::Store,
    name: &str,
) -> anyhow::Result<(Option<crate::pipeline::PipelineSpec>, Vec<HistoryRow>, usize)> {
    let rows = store.history(Some(name)).await?;
    Ok(match stored_spec(store, name).await? {
        Some(spec) => {
            let (rows, left_out) = current_version(rows, &spec);
            (Some(spec), rows, left_out)
        }
        None => (None, rows, 0),
    })
}

/// The study `name` as the store last recorded its file, if that still parses.
pub async fn stored_spec(store: &crate::store::Store, name: &str) -> anyhow::Result<Option<crate::pipeline::PipelineSpec>> {
    let Some(source) = store.pipeline_source(name).await? else { return Ok(None) };
    Ok(crate::pipeline::parse::parse(crate::pipeline::SourceFile { path: source.path.into(), text: source.text }).ok())
}

/// Four decimals, or three significant digits for a value too small to show
/// in them (a learning rate of 4.8e-5 is not `0.0000`).
fn four(v: f64) -> String {
    if v != 0.0 && v.abs() < 5e-5 { format!("{v:.3e}") } else { format!("{v:.4}") }
}

/// The rows that stand for each (pipeline, stage, axes) now: a binding planned
/// again with new parameters supersedes the older instance.
pub fn latest(rows: &[HistoryRow]) -> Vec<&HistoryRow> {
    let mut best: HashMap<(&str, &str, String), &HistoryRow> = HashMap::new();
    for r in rows {
        let id = (r.pipeline.as_str(), r.stage.as_str(), serde_json::to_string(&r.axes).unwrap_or_default());
        match best.get(&id) {
            Some(b) if (b.seen_at.as_str(), b.done_at.as_deref()) > (r.seen_at.as_str(), r.done_at.as_deref()) => {}
            _ => {
                best.insert(id, r);
            }
        }
    }
    // Keep the input order (which follows the plan) for stable labels.
    let keep: std::collections::HashSet<*const HistoryRow> = best.into_values().map(|b| b as *const HistoryRow).collect();
    rows.iter().filter(|r| keep.contains(&(*r as *const HistoryRow))).collect()
}

/// The [`latest`] rows that have at least one of `metrics`: what a summary
/// is made of.
pub fn latest_with<'a>(rows: &'a [HistoryRow], metrics: &[String]) -> Vec<&'a HistoryRow> {
    latest(rows).into_iter().filter(|r| metrics.iter().any(|m| r.metrics.contains_key(m))).collect()
}

/// Names (of stages, axes, metrics) once each, sorted, for messages that
/// list what exists.
pub fn distinct<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = names.into_iter().collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn label(row: &HistoryRow, axes: &[String]) -> String {
    if axes.is_empty() {
        return "all".into();
    }
    let text = |a: &String| match row.axes.get(a) {
        Some(v) => value_text(v),
        None if a == "stage" => row.stage.clone(),
        None => "-".to_owned(),
    };
    axes.iter().map(text).collect::<Vec<_>>().join(" / ")
}

/// Pivots the latest rows matching the spec's pipeline, stage and metric.
/// When the metric comes from several stages (LIFT and CLIP evaluated by two
/// `evaluate` stages) and the spec places `stage` nowhere, `stage` leads the
/// rows: averaging two branches into one bar would pass for seeds.
pub fn pivot(rows: &[HistoryRow], spec: &PivotSpec) -> Pivot {
    let selected: Vec<&HistoryRow> = latest(rows)
        .into_iter()
        .filter(|r| spec.pipeline.as_ref().is_none_or(|p| *p == r.pipeline))
        .filter(|r| spec.stage.as_ref().is_none_or(|s| *s == r.stage))
        .filter(|r| r.metrics.contains_key(&spec.metric))
        .collect();
    let mut spec = spec.clone();
    let placed = |axis: &str| spec.rows.iter().chain(&spec.cols).any(|a| a == axis);
    if !placed("stage") && distinct(selected.iter().map(|r| r.stage.as_str())).len() > 1 {
        spec.rows.insert(0, "stage".to_owned());
    }
    let mut row_labels: Vec<String> = Vec::new();
    let mut col_labels: Vec<String> = Vec::new();
    let mut values: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    for r in &selected {
        let (rl, cl) = (label(r, &spec.rows), label(r, &spec.cols));
        let ri = row_labels.iter().position(|l| *l == rl).unwrap_or_else(|| {
            row_labels.push(rl);
            row_labels.len() - 1
        });
        let ci = col_labels.iter().position(|l| *l == cl).unwrap_or_else(|| {
            col_labels.push(cl);
            col_labels.len() - 1
        });
        values.entry((ri, ci)).or_default().push(r.metrics[&spec.metric]);
    }
    let cells =
        (0..row_labels.len()).map(|ri| (0..col_labels.len()).map(|ci| values.get(&(ri, ci)).map(|v| Cell::of(v))).collect()).collect();
    let over = varying_axes(&selected).into_iter().filter(|a| !spec.rows.contains(a) && !spec.cols.contains(a)).collect();
    Pivot { spec, row_labels, col_labels, cells, over }
}

/// Axes that take more than one value among the rows, in first-seen order.
pub fn varying_axes(rows: &[&HistoryRow]) -> Vec<String> {
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    for r in rows {
        for (name, value) in &r.axes {
            let text = value_text(value);
            match seen.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => {
                    if !values.contains(&text) {
                        values.push(text);
                    }
                }
                None => seen.push((name.clone(), vec![text])),
            }
        }
    }
    seen.into_iter().filter(|(_, v)| v.len() > 1).map(|(n, _)| n).collect()
}

/// A default layout for a study table: every varying axis but the last one as
/// rows, the last as columns, averaging over seed-like axes (their name
/// contains "seed"), which are what repeated runs differ in.
pub fn default_layout(axis_order: &[String], rows: &[&HistoryRow]) -> (Vec<String>, Vec<String>) {
    let varying = varying_axes(rows);
    let mut ordered: Vec<String> = axis_order.iter().filter(|a| varying.contains(a)).cloned().collect();
    ordered.extend(varying.into_iter().filter(|a| !axis_order.contains(a)));
    ordered.retain(|a| !a.to_ascii_lowercase().contains("seed"));
    match ordered.pop() {
        Some(last) if !ordered.is_empty() => (ordered, vec![last]),
        Some(last) => (vec![last], Vec::new()),
        None => (Vec::new(), Vec::new()),
    }
}

/// The metrics a study table shows when none are asked for: LIFT's headline
/// numbers (compositional mean accuracy, zero-shot top-1, R@1 both ways).
pub const HEADLINE_METRICS: &[&str] = &["compositional.mean", "zero_shot.top1", "retrieval.i2t.r1", "retrieval.t2i.r1"];

/// One row of a study table: a combination of the grouping axes and, per
/// metric, the mean ± std over the instances that share it.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    /// The stage, when the metrics come from several stages (LIFT and CLIP
    /// branches evaluated by two `evaluate` stages, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub axes: serde_json::Map<String, serde_json::Value>,
    pub metrics: std::collections::BTreeMap<String, Cell>,
}

/// A study's results: `selected` ([`latest_with`] the `metrics`), grouped by
/// the `by` axes (in `axis_values`' order), aggregated over every other axis.
pub fn summarize(
    selected: Vec<&HistoryRow>,
    metrics: &[String],
    by: &[String],
    axis_values: &[(String, Vec<serde_json::Value>)],
) -> Vec<SummaryRow> {
    let rank = |axis: &str, v: Option<&serde_json::Value>| -> usize {
        let values = axis_values.iter().find(|(a, _)| a == axis).map(|(_, vs)| vs.as_slice()).unwrap_or(&[]);
        v.and_then(|v| values.iter().position(|x| x == v)).unwrap_or(usize::MAX)
    };
    let mut stages: Vec<&str> = Vec::new();
    for r in &selected {
        if !stages.contains(&r.stage.as_str()) {
            stages.push(&r.stage);
        }
    }
    let by_stage = stages.len() > 1;
    type Group<'a> = (Vec<usize>, Option<String>, serde_json::Map<String, serde_json::Value>, Vec<&'a HistoryRow>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for r in selected {
        let stage = by_stage.then(|| r.stage.clone());
        let key: serde_json::Map<String, serde_json::Value> =
            by.iter().map(|a| (a.clone(), r.axes.get(a).cloned().unwrap_or(serde_json::Value::Null))).collect();
        match groups.iter_mut().find(|(_, s, k, _)| *s == stage && *k == key) {
            Some((_, _, _, members)) => members.push(r),
            None => {
                let stage_rank = stages.iter().position(|s| *s == r.stage).unwrap_or(0);
                let order = std::iter::once(stage_rank).chain(by.iter().map(|a| rank(a, r.axes.get(a)))).collect();
                groups.push((order, stage, key, vec![r]));
            }
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
        .into_iter()
        .map(|(_, stage, axes, members)| {
            let metrics = metrics
                .iter()
                .filter_map(|m| {
                    // A NaN (a diverged seed) makes the cell NaN rather than vanish.
                    let values: Vec<f64> = members.iter().filter_map(|r| r.metrics.get(m).copied()).collect();
                    (!values.is_empty()).then(|| (m.clone(), Cell::of(&values)))
                })
                .collect();
            SummaryRow { stage, axes, metrics }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cells_carry_the_student_t_interval_of_the_mean() {
        // scipy.stats.t.interval(0.95, 2, loc=0.2, scale=0.1 / sqrt(3)) = (-0.04841, 0.44841).
        let c = Cell::of(&[0.1, 0.3, 0.2]);
        assert!((c.ci_low + 0.048_41).abs() < 1e-4 && (c.ci_high - 0.448_41).abs() < 1e-4, "{c:?}");
        assert_eq!(c.ci_text(), "0.2000 [-0.0484, 0.4484] (n=3)");
        // Five equal values: a zero-width interval; one value: none.
        let c = Cell::of(&[0.5; 5]);
        assert_eq!((c.ci_low, c.ci_high), (0.5, 0.5));
        assert!(Cell::of(&[0.5]).ci_low.is_nan());
        // Beyond the table, within 0.002 of t(0.975, 60) = 2.0003 and t(0.975, 200) = 1.9719.
        assert!((t975(60) - 2.0003).abs() < 2e-3 && (t975(200) - 1.9719).abs() < 2e-3);
    }

    #[test]
    fn cells_show_small_values() {
        assert_eq!(Cell::of(&[4.775e-5]).text(), "4.775e-5");
        assert_eq!(Cell::of(&[0.71234]).text(), "0.7123");
        assert_eq!(Cell::of(&[0.5, 0.5]).text(), "0.5000 ± 0.0000 (n=2)");
        assert_eq!(Cell::of(&[f64::NAN]).text(), "NaN");
    }

    fn row(loss: &str, seed: i64, top1: f64, seen: &str) -> HistoryRow {
        HistoryRow {
            pipeline: "p".into(),
            stage: "eval".into(),
            key: format!("{loss}{seed}{seen}"),
            kind: "command".into(),
            axes: json!({"loss": loss, "seed": seed}).as_object().unwrap().clone(),
            params: Default::default(),
            metrics: [("top1".to_owned(), top1)].into_iter().collect(),
            done_at: Some(seen.into()),
            run_id: 1,
            seen_at: seen.into(),
        }
    }

    #[test]
    fn a_metric_of_several_stages_is_pivoted_by_stage_first() {
        let mut clip = row("infonce", 0, 0.2, "1");
        clip.stage = "eval_clip".into();
        let rows = vec![clip, row("infonce", 0, 0.6, "1"), row("infonce", 1, 0.8, "1")];
        let spec = PivotSpec { metric: "top1".into(), rows: vec!["loss".into()], ..Default::default() };
        let p = pivot(&rows, &spec);
        assert_eq!(p.spec.rows, ["stage", "loss"]);
        assert_eq!(p.row_labels, ["eval_clip / infonce", "eval / infonce"]);
        assert_eq!(p.cells[1][0].unwrap().n, 2);
        // Placed by the spec, or one stage chosen: as asked.
        let by_stage = PivotSpec { cols: vec!["stage".into()], ..spec.clone() };
        assert_eq!(pivot(&rows, &by_stage).spec.rows, ["loss"]);
        let one = PivotSpec { stage: Some("eval".into()), ..spec };
        assert_eq!(pivot(&rows, &one).row_labels, ["infonce"]);
    }

    #[test]
    fn summary_groups_by_axes_in_file_order_and_aggregates_the_rest() {
        let rows = vec![row("infonce", 0, 0.2, "1"), row("cosine", 0, 0.4, "1"), row("cosine", 1, 0.6, "1"), row("infonce", 1, 0.4, "1")];
        let order = vec![("loss".to_owned(), vec![json!("cosine"), json!("infonce")])];
        let table = summarize(latest_with(&rows, &["top1".to_owned()]), &["top1".to_owned()], &["loss".to_owned()], &order);
        assert_eq!(table.len(), 2);
        assert_eq!(table[0].axes["loss"], json!("cosine"));
        let c = table[0].metrics["top1"];
        assert!((c.mean - 0.5).abs() < 1e-12 && c.n == 2 && (c.std - 0.141_421_356).abs() < 1e-6);
        // The same values in any order give the same bits.
        let v = [1.0, 1e-16, 1e-16, -1.0]; // summed as given: 0 one way, 2.2e-16 the other
        let mut w = v;
        w.reverse();
        assert_eq!(Cell::of(&v), Cell::of(&w));
        assert!((table[1].metrics["top1"].mean - 0.3).abs() < 1e-12);
        let everything = summarize(latest_with(&rows, &["top1".to_owned()]), &["top1".to_owned()], &[], &order);
        assert_eq!(everything.len(), 1);
        assert_eq!(everything[0].metrics["top1"].n, 4);
        assert!(summarize(latest_with(&rows, &["missing".to_owned()]), &["missing".to_owned()], &[], &order).is_empty());
    }

    #[test]
    fn mean_and_std_over_the_axes_left_out_with_superseded_rows_ignored() {
        let rows = vec![
            row("cosine", 0, 0.1, "1"),
            row("cosine", 0, 0.5, "2"), // supersedes the first
            row("cosine", 1, 0.7, "1"),
            row("infonce", 0, 0.2, "1"),
        ];
        let spec = PivotSpec { metric: "top1".into(), rows: vec!["loss".into()], ..Default::default() };
        let p = pivot(&rows, &spec);
        assert_eq!(p.row_labels, vec!["cosine", "infonce"]);
        let c = p.cells[0][0].unwrap();
        assert_eq!(c.n, 2);
        assert!((c.mean - 0.6).abs() < 1e-12 && (c.std - 0.1414213562).abs() < 1e-6);
        assert_eq!(p.cells[1][0].unwrap().n, 1);
        assert_eq!(p.over, vec!["seed"]);
        let refs: Vec<&HistoryRow> = rows.iter().collect();
        assert_eq!(default_layout(&["loss".into(), "seed".into()], &refs), (vec!["loss".to_owned()], vec![]));
        assert!(pivot(&rows, &PivotSpec { metric: "none".into(), ..Default::default() }).is_empty());
    }
}
