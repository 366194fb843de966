//! Rendering dashboard panels to HTML. Each panel is rendered on its own and
//! any failure (bad SQL, a column that is not there, a broken spec) becomes an
//! error box inside that panel, never an error of the page.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::sync::OnceCell;

use super::html::{self, Cell, esc};
use crate::chart::{BarChart, BarSeries, Chart, LineChart, Series};
use crate::claims::{self, Outcome};
use crate::dashboard::{ChartKind, Panel, Source};
use crate::filter::value_text;
use crate::pipeline::PipelineSpec;
use crate::pivot::{self, Pivot};
use crate::store::{HistoryRow, QueryResult, Store};

/// Chart size in pages and reports.
pub const CHART_SIZE: (u32, u32) = (720, 380);

/// What panels of one page share: the store and the history, loaded at most once.
pub struct Ctx<'a> {
    pub store: &'a Store,
    history: OnceCell<Vec<HistoryRow>>,
    /// How long a SQL panel's query may run.
    query_timeout: Duration,
}

impl<'a> Ctx<'a> {
    pub fn new(store: &'a Store, query_timeout: Duration) -> Ctx<'a> {
        Ctx { store, history: OnceCell::new(), query_timeout }
    }

    pub async fn history(&self) -> anyhow::Result<&[HistoryRow]> {
        Ok(self.history.get_or_try_init(|| self.store.history(None)).await?.as_slice())
    }
}

/// A titled panel box around markup.
pub fn section(title: &str, body: &str) -> String {
    format!("<section class=\"panel\"><h2>{}</h2>{body}</section>", esc(title))
}

/// One dashboard panel; `params` are the dashboard's parameters (URL values win).
pub async fn panel(ctx: &Ctx<'_>, title: &str, spec: &Result<Panel, String>, params: &HashMap<String, String>) -> String {
    let body = match spec {
        Err(e) => html::error_box(&format!("invalid panel: {e}")),
        Ok(p) => match body(ctx, p, params).await {
            Ok(markup) => markup,
            Err(e) => html::error_box(&format!("{e:#}")),
        },
    };
    section(title, &body)
}

async fn body(ctx: &Ctx<'_>, p: &Panel, params: &HashMap<String, String>) -> anyhow::Result<String> {
    match &p.source {
        Source::Sql(sql) => {
            // A parameter the dashboard does not set would bind NULL and
            // match nothing: a misspelt `:pipline` reads as "no data yet".
            if let Some(unset) = crate::store::prepare_sql(sql).names.into_iter().find(|n| !params.contains_key(n)) {
                let mut set: Vec<&str> = params.keys().map(String::as_str).collect();
                set.sort_unstable();
                let set = if set.is_empty() { "none".to_owned() } else { set.join(", ") };
                anyhow::bail!("the query uses :{unset}, which neither the dashboard's [params] nor the URL sets (params: {set})");
            }
            let result = ctx.store.read_only_query(sql, params, Some(ctx.query_timeout)).await?;
            if result.rows.is_empty() {
                return Ok(html::empty("no data yet"));
            }
            match p.chart {
                ChartKind::Table => Ok(query_table(&result)),
                kind => {
                    let chart = sql_chart(&result, p, kind).map_err(|e| anyhow::anyhow!(e))?;
                    if chart.is_empty() { Ok(html::empty("no data yet")) } else { chart.svg(CHART_SIZE) }
                }
            }
        }
        Source::Claims(claims) => {
            let Some(name) = claims.pipeline.as_ref().or_else(|| params.get("pipeline")) else {
                anyhow::bail!("a claims panel needs a pipeline: claims = {{ pipeline = \"NAME\" }} or the dashboard's [params] pipeline");
            };
            if ctx.store.pipeline_source(name).await?.is_none() {
                return Ok(html::empty(&format!("no data yet: the pipeline `{name}` has not run here")));
            }
            let Some(spec) = pivot::stored_spec(ctx.store, name).await? else {
                anyhow::bail!("the stored file of pipeline `{name}` no longer parses");
            };
            if spec.claims.is_empty() {
                return Ok(html::empty(&format!("the pipeline `{name}` declares no [[claims]]")));
            }
            let rows: Vec<HistoryRow> = ctx.history().await?.iter().filter(|r| r.pipeline == *name).cloned().collect();
            Ok(claims_table(&spec, &pivot::current_version(rows, &spec).0))
        }
        Source::Pivot(spec) => {
            let mut spec = spec.clone();
            if spec.pipeline.is_none() {
                spec.pipeline = params.get("pipeline").cloned();
            }
            let history = ctx.history().await?;
            let pivot = pivot::pivot(history, &spec);
            if pivot.is_empty() {
                let of = spec.pipeline.as_ref().map(|p| format!(" of {p}")).unwrap_or_default();
                return Ok(html::empty(&format!("no data yet: no finished instance{of} has recorded `{}`", spec.metric)));
            }
            pivot::check(&spec, history).map_err(|e| anyhow::anyhow!(e))?;
            match p.chart {
                ChartKind::Bar => Ok(format!("{}{}", Chart::Bar(pivot.bar_chart("")).svg(CHART_SIZE)?, over_note(&pivot))),
                _ => Ok(pivot_table(&pivot)),
            }
        }
    }
}

/// A study's claims with their verdicts (study page, report, `claims`
/// panels), `history` being its rows as it stands; a claim that cannot be
/// decided shows its error in place.
pub fn claims_table(spec: &PipelineSpec, history: &[HistoryRow]) -> String {
    let outcomes = match claims::evaluate(spec, history) {
        Ok(outcomes) => outcomes,
        Err(e) => return html::error_box(&e.to_string()),
    };
    let mut rows = Vec::new();
    let mut notes = String::new();
    for outcome in outcomes {
        match outcome {
            Ok(o) => {
                let cells = o.cells();
                // Name, metric and expectation are text; the rest numbers, the verdict a status word.
                let mut row: Vec<Cell> = cells[..3].iter().cloned().map(Cell::Text).collect();
                row.extend(cells[3..7].iter().cloned().map(Cell::Num));
                row.push(Cell::Raw(html::status(&cells[7])));
                rows.push(row);
                let _ = write!(notes, "<li>{}</li>", esc(&o.note()));
            }
            Err(e) => notes.push_str(&format!("<li>{}</li>", html::error_box(&e.to_string()))),
        }
    }
    format!("{}<ul class=\"notes\">{notes}</ul>", html::table(&Outcome::HEADER, rows))
}

/// Most rows a table panel shows: a page must stay loadable whatever a query returns.
const MAX_TABLE_ROWS: usize = 1000;
/// Most bar groups and lines a chart panel draws before it asks for aggregation instead.
const MAX_CATEGORIES: usize = 200;
const MAX_SERIES: usize = 50;

/// A query result as a table (the first rows of a long one, saying so).
pub fn query_table(result: &QueryResult) -> String {
    let header: Vec<&str> = result.columns.iter().map(String::as_str).collect();
    let shown = result.rows.iter().take(MAX_TABLE_ROWS).map(|r| r.iter().map(html::json_cell).collect()).collect();
    let mut out = html::table(&header, shown);
    if result.rows.len() > MAX_TABLE_ROWS {
        out.push_str(&html::empty(&format!("showing the first {MAX_TABLE_ROWS} of {} rows", result.rows.len())));
    }
    out
}

fn over_note(p: &Pivot) -> String {
    if p.over.is_empty() { String::new() } else { format!("<p class=\"empty\">mean ± std over {}</p>", esc(&p.over.join(", "))) }
}

/// A pivot as a table: row labels down, column labels across, `mean ± std (n)` cells.
pub fn pivot_table(p: &Pivot) -> String {
    let corner = if p.spec.rows.is_empty() { p.spec.metric.clone() } else { p.spec.rows.join(" / ") };
    let mut header: Vec<String> = vec![corner];
    header.extend(p.col_labels.iter().map(|c| if p.spec.cols.is_empty() { p.spec.metric.clone() } else { c.clone() }));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows = p
        .row_labels
        .iter()
        .zip(&p.cells)
        .map(|(label, cells)| {
            let mut row = vec![Cell::Text(label.clone())];
            row.extend(cells.iter().map(|c| Cell::Num(c.map(|c| c.text()).unwrap_or_default())));
            row
        })
        .collect();
    let mut out = String::new();
    if !p.spec.cols.is_empty() {
        let _ = write!(out, "<p>columns: {}</p>", esc(&p.spec.cols.join(" / ")));
    }
    out.push_str(&html::table(&header, rows));
    out.push_str(&over_note(p));
    out
}

fn column(result: &QueryResult, name: Option<&str>, default: usize, what: &str) -> Result<Option<usize>, String> {
    match name {
        Some(n) => result
            .columns
            .iter()
            .position(|c| c == n)
            .map(Some)
            .ok_or_else(|| format!("the query has no column `{n}` for {what} (columns: {})", result.columns.join(", "))),
        None => Ok((default < result.columns.len()).then_some(default)),
    }
}

fn number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// A line or bar chart from a query's columns.
fn sql_chart(result: &QueryResult, p: &Panel, kind: ChartKind) -> Result<Chart, String> {
    let x = column(result, p.x.as_deref(), 0, "x")?.ok_or("a chart needs at least two columns (x and y)")?;
    let y = column(result, p.y.as_deref(), 1, "y")?.ok_or("a chart needs at least two columns (x and y)")?;
    let error = match &p.error {
        Some(_) => column(result, p.error.as_deref(), 0, "error")?,
        None => None,
    };
    let series = column(result, p.series.as_deref(), 2, "series")?.filter(|s| Some(*s) != error);
    let series_name = |row: &[serde_json::Value]| series.map(|s| value_text(&row[s])).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for row in &result.rows {
        let n = series_name(row);
        if !names.contains(&n) {
            names.push(n);
            if names.len() > MAX_SERIES {
                return Err(format!("more than {MAX_SERIES} series are too many to draw: aggregate in the query"));
            }
        }
    }
    let (x_label, y_label) = (result.columns[x].clone(), result.columns[y].clone());
    if kind == ChartKind::Line {
        let mut lines: Vec<Series> = names.iter().map(|n| Series { name: n.clone(), points: Vec::new() }).collect();
        for row in &result.rows {
            let (Some(xv), Some(yv)) = (number(&row[x]), number(&row[y])) else {
                return Err(format!("line charts need numbers in `{x_label}` and `{y_label}`; found {} and {}", row[x], row[y]));
            };
            let i = names.iter().position(|n| *n == series_name(row)).expect("collected above");
            lines[i].points.push((xv, yv));
        }
        return Ok(Chart::Line(LineChart { title: String::new(), x_label, y_label, series: lines }));
    }
    let mut categories: Vec<String> = Vec::new();
    for row in &result.rows {
        let c = value_text(&row[x]);
        if !categories.contains(&c) {
            categories.push(c);
            if categories.len() > MAX_CATEGORIES {
                return Err(format!("more than {MAX_CATEGORIES} bar groups are too many to draw: aggregate in the query"));
            }
        }
    }
    let mut bars: Vec<BarSeries> = names.iter().map(|n| BarSeries { name: n.clone(), bars: vec![None; categories.len()] }).collect();
    for row in &result.rows {
        let Some(v) = number(&row[y]) else {
            return Err(format!("bar charts need numbers in `{y_label}`; found {}", row[y]));
        };
        let s = names.iter().position(|n| *n == series_name(row)).expect("collected above");
        let c = categories.iter().position(|c| *c == value_text(&row[x])).expect("collected above");
        bars[s].bars[c] = Some((v, error.and_then(|e| number(&row[e]))));
    }
    Ok(Chart::Bar(BarChart { title: String::new(), x_label, y_label, categories, series: bars }))
}
