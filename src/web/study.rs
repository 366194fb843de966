//! One study (pipeline) on a page: its runs, the DAG of its latest run, its
//! claims with their verdicts, a results table and an ablation pivot with bars per metric, and training
//! curves. The pipeline page and `ablate report` render the same body; the
//! report without links, so that the file stands alone.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::html::{self, Cell, esc, url};
use super::panels::{CHART_SIZE, claims_table, pivot_table, section};
use crate::chart::{Chart, LineChart, Series};
use crate::filter::value_text;
use crate::pipeline::{SourceFile, parse::parse};
use crate::pivot::{self, PivotSpec};
use crate::store::{HistoryRow, RunRecord, Store};

/// Most series drawn in one curve chart; beyond that the chart is unreadable.
const MAX_CURVES: usize = 24;

/// Axis and stage names in the order of the stored pipeline file, when it still parses.
async fn file_order(store: &Store, pipeline: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let Some(source) = store.pipeline_source(pipeline).await? else { return Ok((Vec::new(), Vec::new())) };
    match parse(SourceFile { path: source.path.into(), text: source.text }) {
        Ok(spec) => Ok((spec.axes.into_iter().map(|a| a.name).collect(), spec.stages.into_iter().map(|s| s.name).collect())),
        Err(_) => Ok((Vec::new(), Vec::new())),
    }
}

fn axes_text(row: &HistoryRow) -> String {
    row.axes.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect::<Vec<_>>().join(" ")
}

/// Runs with status, duration and outcome counts; `links` to run and pipeline pages.
pub fn runs_table(runs: &[RunRecord], links: bool) -> String {
    let rows = runs
        .iter()
        .map(|r| {
            let pipeline = r.pipeline.clone().unwrap_or_else(|| "-".into());
            vec![
                if links { Cell::Raw(html::link(&format!("/runs/{}", r.id), &r.id.to_string())) } else { Cell::Num(r.id.to_string()) },
                match &r.pipeline {
                    Some(p) if links => Cell::Raw(html::link(&format!("/pipelines/{}", url(p)), p)),
                    _ => Cell::Text(pipeline),
                },
                Cell::Text(r.command.clone()),
                Cell::Raw(html::status(r.status.as_str())),
                Cell::Text(r.started_at.clone()),
                Cell::Num(html::duration(r.duration_s)),
                Cell::Num(r.done.to_string()),
                Cell::Num(r.failed.to_string()),
                Cell::Num(r.skipped.to_string()),
                Cell::Text(r.host.clone()),
            ]
        })
        .collect();
    html::table(&["run", "pipeline", "command", "status", "started", "duration", "done", "failed", "skipped", "host"], rows)
}

/// The study body; `links` adds links to run and instance pages (off for reports).
pub async fn body(store: &Store, pipeline: &str, links: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    let runs = store.runs_of_pipeline(pipeline).await?;
    out.push_str(&section("Runs", &runs_table(&runs, links)));
    if let Some(latest) = runs.first() {
        let graph = store.run_graph(latest.id).await?;
        out.push_str(&section(&format!("DAG of run {}", latest.id), &super::dag::svg(&graph, links)));
    }

    let (spec, history, _) = pivot::current_study(store, pipeline).await?;
    if let Some(spec) = spec.as_ref().filter(|s| !s.claims.is_empty()) {
        out.push_str(&section("Claims", &claims_table(spec, &history)));
    }
    let rows = pivot::latest(&history);
    if rows.is_empty() {
        out.push_str(&section("Results", &html::empty("no data yet: no stage of this pipeline has finished")));
        return Ok(out);
    }
    let (axis_order, stage_order) = file_order(store, pipeline).await?;
    let mut stages: Vec<String> = stage_order.into_iter().filter(|s| rows.iter().any(|r| r.stage == *s)).collect();
    for r in &rows {
        if !stages.contains(&r.stage) {
            stages.push(r.stage.clone());
        }
    }
    for stage in &stages {
        let stage_rows: Vec<&HistoryRow> = rows.iter().copied().filter(|r| r.stage == *stage).collect();
        let metrics: BTreeSet<&String> = stage_rows.iter().flat_map(|r| r.metrics.keys()).collect();
        if metrics.is_empty() {
            continue;
        }
        out.push_str(&format!("<h2>Stage {}</h2>", esc(stage)));
        out.push_str(&section(&format!("{stage}: results"), &results_table(&stage_rows, &axis_order, &metrics, links)));
        let (row_axes, col_axes) = pivot::default_layout(&axis_order, &stage_rows);
        for metric in &metrics {
            let spec = PivotSpec {
                metric: (*metric).clone(),
                rows: row_axes.clone(),
                cols: col_axes.clone(),
                pipeline: Some(pipeline.to_owned()),
                stage: Some(stage.clone()),
            };
            let p = pivot::pivot(&history, &spec);
            if p.is_empty() || row_axes.is_empty() {
                continue;
            }
            let chart = Chart::Bar(p.bar_chart(metric)).svg(CHART_SIZE)?;
            out.push_str(&section(&format!("{stage}: {metric} by {}", row_axes.join(" / ")), &format!("{}{chart}", pivot_table(&p))));
        }
        out.push_str(&curves(store, stage, &stage_rows).await?);
    }
    Ok(out)
}

fn results_table(rows: &[&HistoryRow], axis_order: &[String], metrics: &BTreeSet<&String>, links: bool) -> String {
    let mut axes: Vec<String> = axis_order.iter().filter(|a| rows.iter().any(|r| r.axes.contains_key(*a))).cloned().collect();
    for r in rows {
        for a in r.axes.keys() {
            if !axes.contains(a) {
                axes.push(a.clone());
            }
        }
    }
    let mut header: Vec<&str> = axes.iter().map(String::as_str).collect();
    header.push("key");
    // A metric named like an axis (`loss`) is told apart by its prefix.
    let metric_names: Vec<String> = metrics.iter().map(|m| if axes.contains(m) { format!("metric.{m}") } else { (*m).clone() }).collect();
    header.extend(metric_names.iter().map(String::as_str));
    let body = rows
        .iter()
        .map(|r| {
            let mut cells: Vec<Cell> = axes.iter().map(|a| Cell::Text(r.axes.get(a).map(value_text).unwrap_or_default())).collect();
            let short = &r.key[..r.key.len().min(12)];
            cells.push(if links {
                Cell::Raw(html::link(&format!("/instances/{}", url(&r.key)), short))
            } else {
                Cell::Text(short.to_owned())
            });
            cells.extend(metrics.iter().map(|m| Cell::Num(r.metrics.get(*m).map(|v| html::format_number(*v)).unwrap_or_default())));
            cells
        })
        .collect();
    html::table(&header, body)
}

/// One chart per stepped metric of a stage, one line per instance.
async fn curves(store: &Store, stage: &str, rows: &[&HistoryRow]) -> anyhow::Result<String> {
    let mut charts: Vec<(String, Vec<Series>)> = Vec::new();
    for r in rows.iter().take(MAX_CURVES) {
        for metric in store.stepped_metrics(&r.key).await? {
            let points = store.metric_curve(&r.key, &metric).await?.into_iter().map(|(s, v)| (s as f64, v)).collect();
            let name = if axes_text(r).is_empty() { r.key[..12].to_owned() } else { axes_text(r) };
            let series = Series { name, points };
            match charts.iter_mut().find(|(m, _)| *m == metric) {
                Some((_, list)) => list.push(series),
                None => charts.push((metric, vec![series])),
            }
        }
    }
    let mut out = String::new();
    for (metric, series) in charts {
        let chart = Chart::Line(LineChart { title: String::new(), x_label: "step".into(), y_label: metric.clone(), series });
        let _ = write!(out, "{}", section(&format!("{stage}: {metric} curves"), &chart.svg(CHART_SIZE)?));
    }
    Ok(out)
}

/// `ablate report`: the study as one self-contained HTML document.
pub async fn report(store: &Store, pipeline: &str) -> anyhow::Result<String> {
    let body = body(store, pipeline, false).await?;
    let generated = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    Ok(html::standalone(
        &format!("{pipeline} · ablate report"),
        &format!("<h1>Study {}</h1><p>Generated by ablate {} on {generated}.</p>{body}", esc(pipeline), env!("CARGO_PKG_VERSION")),
    ))
}
