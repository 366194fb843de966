//! Result history: `history`, `compare`, `sql`, and the study lookup shared by
//! `plot bars` and `report`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::history::open;
use super::render::Table;
use super::tabular::{self, Format};
use super::{UsageError, print_json, resolve_instance};
use crate::filter::{self, Field, value_text};
use crate::pipeline::{Plan, SourceFile, parse::parse};
use crate::pivot;
use crate::store::{HistoryRow, Store, Workspace};

/// A study named by its pipeline file or by its pipeline name; the name must be in the store.
pub(super) async fn study_name(store: &Store, target: &str) -> anyhow::Result<String> {
    let path = Path::new(target);
    let name = if path.is_file() { parse(SourceFile::read(path)?)?.name } else { target.to_owned() };
    if store.pipeline_source(&name).await?.is_none() {
        let known: Vec<String> = store.pipeline_names().await?.into_iter().map(|(n, _)| n).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        return Err(UsageError(format!("no pipeline `{name}` in this workspace (pipelines: {known})")).into());
    }
    Ok(name)
}

use crate::echo::shorten as clip;

fn pairs(map: &Map<String, Value>, max: usize) -> String {
    map.iter().map(|(k, v)| format!("{k}={}", clip(&value_text(v), max))).collect::<Vec<_>>().join(" ")
}

pub async fn history(
    workspace: &Workspace,
    pipeline: Option<&str>,
    filter: Option<&str>,
    sort: Option<&str>,
    limit: Option<usize>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let expr = match filter {
        Some(text) => Some(filter::parse(text).map_err(|e| UsageError(format!("invalid --where expression at {}", e.render(text))))?),
        None => None,
    };
    let store = open(workspace).await?;
    let pipeline = match pipeline {
        Some(p) => Some(study_name(&store, p).await?),
        None => None,
    };
    let mut rows: Vec<HistoryRow> = store.history(pipeline.as_deref()).await?;
    if let Some(expr) = &expr {
        if let Some(e) = expr.unusable_comparison(&rows) {
            return Err(UsageError(format!("invalid --where expression at {}", e.render(filter.unwrap_or_default()))).into());
        }
        rows.retain(|r| expr.matches(r));
    }
    if let Some(sort) = sort {
        let (descending, name) = match sort.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, sort),
        };
        if name.trim().is_empty() {
            return Err(
                UsageError("--sort needs a field name (e.g. metric.zero_shot.top1, loss, done_at; prefix - to reverse)".into()).into()
            );
        }
        let field = Field::parse(name);
        if !rows.is_empty() && rows.iter().all(|r| field.get(r).is_none()) {
            return Err(UsageError(format!("--sort {name}: no row has this field ({})", filter::FIELDS)).into());
        }
        // Rows without the field go last in either direction.
        rows.sort_by(|a, b| {
            let (x, y) = (field.get(a), field.get(b));
            match (&x, &y) {
                (Some(_), Some(_)) if descending => filter::order_values(y.as_ref(), x.as_ref()),
                _ => filter::order_values(x.as_ref(), y.as_ref()),
            }
        });
    }
    if let Some(limit) = limit {
        rows.truncate(limit);
    }
    match format {
        Format::Json => print_json(&serde_json::to_value(&rows)?),
        Format::Csv => {
            let axes: BTreeSet<&String> = rows.iter().flat_map(|r| r.axes.keys()).collect();
            let params: BTreeSet<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
            let metrics: BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
            let mut columns: Vec<String> = ["pipeline", "stage", "key", "kind", "done_at", "run"].iter().map(|s| s.to_string()).collect();
            columns.extend(axes.iter().map(|a| format!("axis.{a}")));
            columns.extend(params.iter().map(|p| format!("param.{p}")));
            columns.extend(metrics.iter().map(|m| format!("metric.{m}")));
            let cells: Vec<Vec<Value>> = rows
                .iter()
                .map(|r| {
                    let mut cells = vec![json!(r.pipeline), json!(r.stage), json!(r.key), json!(r.kind), json!(r.done_at), json!(r.run_id)];
                    cells.extend(axes.iter().map(|a| r.axes.get(*a).cloned().unwrap_or(Value::Null)));
                    cells.extend(params.iter().map(|p| match r.params.get(*p) {
                        Some(v @ (Value::Array(_) | Value::Object(_))) => json!(v.to_string()),
                        Some(v) => v.clone(),
                        None => Value::Null,
                    }));
                    cells.extend(metrics.iter().map(|m| r.metrics.get(*m).map_or(Value::Null, |v| json!(v))));
                    cells
                })
                .collect();
            tabular::print(&columns, &cells, Format::Csv);
        }
        Format::Table => {
            let mut table = Table::new(&["PIPELINE", "STAGE", "KEY", "DONE", "AXES", "PARAMS", "METRICS"]);
            for r in &rows {
                let metrics = r.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                table.row(vec![
                    r.pipeline.clone(),
                    r.stage.clone(),
                    r.key[..12].to_owned(),
                    r.done_at.as_deref().map(|d| d.get(..19).unwrap_or(d).replace('T', " ")).unwrap_or_default(),
                    pairs(&r.axes, 40),
                    pairs(&r.params, 32).replace('\n', " "),
                    metrics,
                ]);
            }
            print!("{}", table.render());
            println!("{} instance(s)", rows.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sql(workspace: &Workspace, query: &str, format: Format, limit: Option<std::time::Duration>) -> anyhow::Result<ExitCode> {
    let store = open(workspace).await?;
    let result = store.read_only_query(query, &HashMap::new(), limit).await.map_err(|e| UsageError(format!("{e:#}")))?;
    if matches!(format, Format::Json)
        && let Some(twice) = result.columns.iter().enumerate().find(|(i, c)| result.columns[..*i].contains(c)).map(|(_, c)| c)
    {
        return Err(
            UsageError(format!("column `{twice}` appears twice, and JSON objects keep one: name them apart (… AS other_name)")).into()
        );
    }
    tabular::print(&result.columns, &result.rows, format);
    Ok(ExitCode::SUCCESS)
}

/// Parameters whose values differ (or exist on one side only).
fn param_diff(a: &Map<String, Value>, b: &Map<String, Value>) -> Vec<Value> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names.into_iter().filter(|n| a.get(*n) != b.get(*n)).map(|n| json!({"name": n, "a": a.get(n), "b": b.get(n)})).collect()
}

/// Metrics of both sides with `b - a`.
fn metric_diff(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> Vec<Value> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .map(|n| {
            let (x, y) = (a.get(n), b.get(n));
            let delta = match (x, y) {
                (Some(x), Some(y)) => json!(y - x),
                _ => Value::Null,
            };
            json!({"name": n, "a": x, "b": y, "delta": delta})
        })
        .collect()
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) if n.is_f64() => format!("{}", n.as_f64().unwrap_or_default()),
        other => clip(&value_text(other), 48).replace('\n', " "),
    }
}

pub async fn compare(workspace: &Workspace, a: &str, b: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = open(workspace).await?;
    let report = match (super::history::names_a_run(&store, a).await?, super::history::names_a_run(&store, b).await?) {
        (true, true) => compare_runs(&store, a, b).await?,
        (false, false) => compare_instances(&store, a, b).await?,
        _ => return Err(UsageError(format!("compare two runs (ids) or two instances (keys), not one of each: `{a}`, `{b}`")).into()),
    };
    if json {
        print_json(&report);
        return Ok(ExitCode::SUCCESS);
    }
    println!("A  {}", report["a"]["label"].as_str().unwrap_or(""));
    println!("B  {}", report["b"]["label"].as_str().unwrap_or(""));
    let rows_of = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let scoped = report["pairs"].as_array().is_some();
    let groups: Vec<(String, Value)> = if scoped {
        rows_of(&report["pairs"])
            .into_iter()
            .map(|p| (format!("{} {}", p["stage"].as_str().unwrap_or(""), p["axes_text"].as_str().unwrap_or("")), p))
            .collect()
    } else {
        vec![(String::new(), report.clone())]
    };
    fn scope_header<'a>(scoped: bool, h: &[&'a str]) -> Vec<&'a str> {
        if scoped { [&["STAGE / AXES"][..], h].concat() } else { h.to_vec() }
    }
    let mut params = Table::new(&scope_header(scoped, &["PARAMETER", "A", "B"]));
    let mut metrics = Table::new(&scope_header(scoped, &["METRIC", "A", "B", "DELTA"]));
    let (mut np, mut nm) = (0, 0);
    for (scope, g) in &groups {
        for p in rows_of(&g["params"]) {
            let mut row = vec![p["name"].as_str().unwrap_or("").to_owned(), cell(&p["a"]), cell(&p["b"])];
            if scoped {
                row.insert(0, scope.clone());
            }
            params.row(row);
            np += 1;
        }
        for m in rows_of(&g["metrics"]) {
            let mut row = vec![m["name"].as_str().unwrap_or("").to_owned(), cell(&m["a"]), cell(&m["b"]), cell(&m["delta"])];
            if let Some(d) = m["delta"].as_f64() {
                // Six significant decimals hide float noise such as 0.09999999999999998.
                let text = format!("{d:+.6}");
                row[3] = text.trim_end_matches('0').trim_end_matches('.').to_owned();
            }
            if scoped {
                row.insert(0, scope.clone());
            }
            metrics.row(row);
            nm += 1;
        }
    }
    println!();
    if report["pairs"].as_array().is_some_and(Vec::is_empty) {
        println!("no instance in common (runs are paired by stage and axis values)");
    } else {
        if np == 0 {
            println!("parameters: identical")
        } else {
            print!("{}", params.render())
        }
        println!();
        if nm == 0 { println!("metrics: none recorded") } else { print!("{}", metrics.render()) }
    }
    for side in ["only_in_a", "only_in_b"] {
        for o in rows_of(&report[side]) {
            println!(
                "{}: {} {} {}",
                side.replace('_', " "),
                o["stage"].as_str().unwrap_or(""),
                o["axes_text"].as_str().unwrap_or(""),
                o["key"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn compare_instances(store: &Store, a: &str, b: &str) -> anyhow::Result<Value> {
    let ia = resolve_instance(store, a).await?;
    let ib = resolve_instance(store, b).await?;
    let metrics = store.final_metrics().await?;
    let mut sides = Vec::new();
    for i in [&ia, &ib] {
        let bindings = store.bindings_of(i.id).await?;
        let where_ = bindings
            .iter()
            .map(|b| format!("{}/{} {}", b.pipeline, b.stage, b.axes.as_object().map(|m| pairs(m, 40)).unwrap_or_default()))
            .collect::<Vec<_>>();
        sides.push(json!({
            "key": i.key, "kind": i.kind, "kind_version": i.kind_version, "bindings": bindings,
            "label": format!("{} {} {}", &i.key[..12], i.kind, where_.first().cloned().unwrap_or_default()).trim().to_owned(),
        }));
    }
    let empty = Map::new();
    let (pa, pb) = (ia.params.as_object().unwrap_or(&empty), ib.params.as_object().unwrap_or(&empty));
    let none = BTreeMap::new();
    Ok(json!({
        "a": sides[0], "b": sides[1],
        "params": param_diff(pa, pb),
        "metrics": metric_diff(metrics.get(&ia.key).unwrap_or(&none), metrics.get(&ib.key).unwrap_or(&none)),
    }))
}

/// A run's instances by (stage, axes text): key and axes. Those are the cells of a study.
type Cells = BTreeMap<(String, String), (String, Map<String, Value>)>;

async fn compare_runs(store: &Store, a: &str, b: &str) -> anyhow::Result<Value> {
    let metrics = store.final_metrics().await?;
    let mut sides = Vec::new();
    let mut cells: Vec<Cells> = Vec::new();
    for text in [a, b] {
        let id: i64 = text.parse().map_err(|_| UsageError(format!("bad run id {text}")))?;
        let run = store.run_by_id(id).await?.ok_or_else(|| UsageError(format!("no run {id} in this workspace")))?;
        let graph = store.run_graph(id).await?;
        let mut by_cell = BTreeMap::new();
        for node in graph.nodes {
            let stage = node.stages.first().cloned().unwrap_or_else(|| node.kind.clone());
            by_cell.insert((stage, pairs(&node.axes, 40)), (node.key, node.axes));
        }
        sides.push(json!({
            "run": run,
            "label": format!("run {} {} {} {} ({} done, {} failed)", run.id, run.pipeline.as_deref().unwrap_or("-"), run.command, run.status, run.done, run.failed),
        }));
        cells.push(by_cell);
    }
    let none = BTreeMap::new();
    let mut matched = Vec::new();
    let mut only = [Vec::new(), Vec::new()];
    for (cell, (key_a, _)) in &cells[0] {
        match cells[1].get(cell) {
            Some((key_b, _)) => {
                let pa = store.instances_by_prefix(key_a).await?.into_iter().next().map(|i| i.params);
                let pb = store.instances_by_prefix(key_b).await?.into_iter().next().map(|i| i.params);
                let empty = Map::new();
                let (pa, pb) = (pa.unwrap_or_default(), pb.unwrap_or_default());
                matched.push(json!({
                    "stage": cell.0, "axes_text": cell.1, "a_key": key_a, "b_key": key_b, "same_key": key_a == key_b,
                    "params": param_diff(pa.as_object().unwrap_or(&empty), pb.as_object().unwrap_or(&empty)),
                    "metrics": metric_diff(metrics.get(key_a).unwrap_or(&none), metrics.get(key_b).unwrap_or(&none)),
                }));
            }
            None => only[0].push(json!({"stage": cell.0, "axes_text": cell.1, "key": key_a})),
        }
    }
    for (cell, (key_b, _)) in &cells[1] {
        if !cells[0].contains_key(cell) {
            only[1].push(json!({"stage": cell.0, "axes_text": cell.1, "key": key_b}));
        }
    }
    let [only_a, only_b] = only;
    Ok(json!({"a": sides[0], "b": sides[1], "pairs": matched, "only_in_a": only_a, "only_in_b": only_b}))
}

/// `ablate results FILE`: the study's table — the latest finished instances
/// by the `by` axes (default: every varying axis but seeds), mean ± std over
/// the rest.
pub async fn results(
    workspace: &Workspace,
    target: &str,
    metrics: &[String],
    by: &[String],
    ci: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let store = open(workspace).await?;
    let name = study_name(&store, target).await?;
    let axis_values = study_axes(&store, &name).await?;
    let (spec, rows, left_out) = if Path::new(target).is_file() {
        let spec = parse(SourceFile::read(Path::new(target))?)?;
        let (rows, left_out) = pivot::current_version(store.history(Some(&name)).await?, &spec);
        warn_if_stale(Path::new(target), &rows, metrics);
        (Some(spec), rows, left_out)
    } else {
        pivot::current_study(&store, &name).await?
    };
    warn_left_out(left_out);
    match summary_table(&rows, metrics, by, &axis_values)? {
        Some(table) => {
            print_summary(&table, format, ci);
            if let (Some(spec), Format::Table) = (&spec, format) {
                super::claims::print_after_results(spec, &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut known: BTreeSet<&str> = BTreeSet::new();
            rows.iter().for_each(|r| known.extend(r.metrics.keys().map(String::as_str)));
            let known = if rows.is_empty() {
                "none yet: run the pipeline first".to_owned()
            } else if known.is_empty() {
                "none: its finished stages recorded no metrics".to_owned()
            } else {
                known.into_iter().collect::<Vec<_>>().join(", ")
            };
            Err(UsageError(format!("no finished instance of `{name}` has the metrics asked for (metrics: {known})")).into())
        }
    }
}

/// Says (on stderr) when the table is not the file's as it stands: cells
/// whose latest finished instance is not the one the file now plans (the
/// file was edited and not rerun).
fn warn_if_stale(file: &Path, rows: &[HistoryRow], metrics: &[String]) {
    let Ok(plan) = crate::pipeline::compile(file) else { return };
    let planned: HashMap<(&str, String), &str> =
        plan.bindings.iter().map(|b| ((plan.stage_name(b), Plan::axes_json(b).to_string()), plan.nodes[b.node].key.as_str())).collect();
    let outdated = pivot::latest(rows)
        .into_iter()
        .filter(|r| metrics.is_empty() || metrics.iter().any(|m| r.metrics.contains_key(m)))
        .filter(|row| planned.get(&(row.stage.as_str(), Value::Object(row.axes.clone()).to_string())).is_some_and(|key| *key != row.key))
        .count();
    if outdated > 0 {
        tracing::warn!("{outdated} result row(s) come from an earlier version of {}: run it to update them", file.display());
    }
}

/// Says (on stderr) how many result rows of earlier versions of a study
/// (stages, axes or values it no longer has) a table leaves out.
pub(super) fn warn_left_out(left_out: usize) {
    if left_out > 0 {
        tracing::warn!("left out {left_out} result row(s) of stages, axes or values the study no longer has (`ablate history` lists them)");
    }
}

/// The axes of a stored study, in file order with their values.
pub(super) async fn study_axes(store: &Store, name: &str) -> anyhow::Result<Vec<(String, Vec<Value>)>> {
    let Some(source) = store.pipeline_source(name).await? else { return Ok(Vec::new()) };
    let spec = parse(SourceFile { path: source.path.into(), text: source.text })
        .map_err(|_| anyhow::anyhow!("the stored file of pipeline `{name}` no longer parses"))?;
    Ok(spec.axes.into_iter().map(|a| (a.name, a.values)).collect())
}

/// The summary rows, or `None` when no instance has any of the metrics.
pub(super) fn summary_table(
    rows: &[HistoryRow],
    metrics: &[String],
    by: &[String],
    axis_values: &[(String, Vec<Value>)],
) -> anyhow::Result<Option<Summary>> {
    if let Some(unknown) = by.iter().find(|a| !axis_values.iter().any(|(n, _)| n == *a)) {
        let axes: Vec<&str> = axis_values.iter().map(|(n, _)| n.as_str()).collect();
        return Err(UsageError(format!("--by {unknown}: not an axis of this study (axes: {})", axes.join(", "))).into());
    }
    let metrics: Vec<String> = if metrics.is_empty() {
        let present: Vec<String> =
            pivot::HEADLINE_METRICS.iter().filter(|m| rows.iter().any(|r| r.metrics.contains_key(**m))).map(|m| m.to_string()).collect();
        if present.is_empty() {
            return Ok(None);
        }
        present
    } else {
        // One metric nobody recorded beside others that were: a typo, not an
        // empty column. (None recorded at all is answered below.)
        let recorded = |m: &String| rows.iter().any(|r| r.metrics.contains_key(m));
        if let Some(missing) = metrics.iter().find(|m| !recorded(m))
            && metrics.iter().any(recorded)
        {
            let known = pivot::distinct(rows.iter().flat_map(|r| r.metrics.keys().map(String::as_str)));
            return Err(UsageError(format!("--metric {missing}: no finished instance recorded it (metrics: {})", known.join(", "))).into());
        }
        first_of_each(metrics)
    };
    let selected = pivot::latest_with(rows, &metrics);
    let by: Vec<String> = if by.is_empty() {
        let varying = pivot::varying_axes(&selected);
        axis_values.iter().map(|(n, _)| n.clone()).filter(|a| varying.contains(a) && !a.to_ascii_lowercase().contains("seed")).collect()
    } else {
        first_of_each(by)
    };
    let rows = pivot::summarize(selected, &metrics, &by, axis_values);
    Ok((!rows.is_empty()).then_some(Summary { by, metrics, rows }))
}

/// `names` with repeats dropped, in first-seen order (`--by loss --by loss`
/// is one column).
fn first_of_each(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

pub(super) struct Summary {
    by: Vec<String>,
    metrics: Vec<String>,
    rows: Vec<pivot::SummaryRow>,
}

/// `ci`: intervals instead of the std (text), or beside it (CSV).
pub(super) fn print_summary(table: &Summary, format: Format, ci: bool) {
    match format {
        Format::Json => print_json(&json!(table.rows)),
        Format::Csv => {
            let staged = table.rows.iter().any(|r| r.stage.is_some());
            let mut header: Vec<String> = if staged { vec!["stage".to_owned()] } else { Vec::new() };
            header.extend(table.by.iter().cloned());
            for m in &table.metrics {
                header.extend([format!("{m}.mean"), format!("{m}.std"), format!("{m}.n")]);
                if ci {
                    header.extend([format!("{m}.ci_low"), format!("{m}.ci_high")]);
                }
            }
            println!("{}", header.iter().map(|h| tabular::csv_field(h)).collect::<Vec<_>>().join(","));
            for r in &table.rows {
                let mut cells: Vec<String> = r.stage.iter().cloned().collect();
                cells.extend(table.by.iter().map(|a| r.axes.get(a).filter(|v| !v.is_null()).map_or_else(String::new, value_text)));
                for m in &table.metrics {
                    match r.metrics.get(m) {
                        Some(c) => cells.extend([c.mean.to_string(), c.std.to_string(), c.n.to_string()]),
                        None => cells.extend([String::new(), String::new(), "0".to_owned()]),
                    }
                    if ci {
                        let bound = |v: f64| if v.is_finite() { v.to_string() } else { String::new() };
                        cells.extend(r.metrics.get(m).map_or([String::new(), String::new()], |c| [bound(c.ci_low), bound(c.ci_high)]));
                    }
                }
                println!("{}", cells.iter().map(|c| tabular::csv_field(c)).collect::<Vec<_>>().join(","));
            }
        }
        Format::Table => {
            let staged = table.rows.iter().any(|r| r.stage.is_some());
            let header: Vec<&str> =
                staged.then_some("stage").into_iter().chain(table.by.iter().chain(&table.metrics).map(String::as_str)).collect();
            let mut out = Table::new(&header);
            for r in &table.rows {
                let mut cells: Vec<String> = r.stage.iter().cloned().collect();
                cells.extend(table.by.iter().map(|a| r.axes.get(a).filter(|v| !v.is_null()).map_or_else(|| "-".to_owned(), value_text)));
                let text = |c: &pivot::Cell| if ci { c.ci_text() } else { c.text() };
                cells.extend(table.metrics.iter().map(|m| r.metrics.get(m).map_or_else(|| "-".to_owned(), text)));
                out.row(cells);
            }
            print!("{}", out.render());
        }
    }
}
