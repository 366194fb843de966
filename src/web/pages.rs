//! Request handlers. Path segments are parsed and validated here (run ids as
//! integers, keys as hex, dashboard names against the directory listing) and
//! then only ever bound as query parameters; unknown things are 404s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::json;

use super::html::{self, Cell, esc, url};
use super::panels::{self, CHART_SIZE, Ctx, section};
use super::{AppState, Page, WebError, dag, study};
use crate::chart::{Chart, LineChart, Series};
use crate::dashboard;
use crate::filter::value_text;
use crate::pivot::{self, PivotSpec};
use crate::store::{AttemptStatus, RunRecord, RunStatus, Store};

type Result<T> = std::result::Result<T, WebError>;

fn run_id(text: &str) -> Result<i64> {
    text.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| WebError::NotFound(format!("no run {text}")))
}

async fn run_of(store: &Store, text: &str) -> Result<RunRecord> {
    let id = run_id(text)?;
    store.run_by_id(id).await?.ok_or_else(|| WebError::NotFound(format!("no run {id} in this workspace")))
}

/// The store, or for a list page the "nothing yet" page when there is none.
macro_rules! store_or_empty {
    ($state:expr, $title:expr) => {
        match $state.store().await {
            Ok(store) => store,
            Err(WebError::NotFound(message)) => return Ok(Page::new($title, format!("<h1>{}</h1>{}", esc($title), html::empty(&message)))),
            Err(e) => return Err(e),
        }
    };
}

pub async fn index(State(state): State<Arc<AppState>>) -> Result<Page> {
    let runs = store_or_empty!(state, "Runs").runs(200).await?;
    let body = if runs.is_empty() { html::empty("no runs yet") } else { study::runs_table(&runs, true) };
    Ok(Page::new("Runs", format!("<h1>Runs</h1>{body}")))
}

pub async fn pipelines(State(state): State<Arc<AppState>>) -> Result<Page> {
    let names = store_or_empty!(state, "Pipelines").pipeline_names().await?;
    let rows = names
        .iter()
        .map(|(name, done)| vec![Cell::Raw(html::link(&format!("/pipelines/{}", url(name)), name)), Cell::Num(done.to_string())])
        .collect();
    let body = if names.is_empty() { html::empty("no pipelines yet") } else { html::table(&["pipeline", "finished instances"], rows) };
    Ok(Page::new("Pipelines", format!("<h1>Pipelines</h1>{body}")))
}

/// Counts of node statuses in a run's DAG, as sent to the live view.
fn progress_json(run: &RunRecord, graph: &crate::store::RunGraph) -> serde_json::Value {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in &graph.nodes {
        *counts.entry(n.status.as_str()).or_default() += 1;
    }
    let nodes: serde_json::Map<String, serde_json::Value> = graph.nodes.iter().map(|n| (n.key.clone(), json!(n.status))).collect();
    json!({"run": run.id, "status": run.status, "total": graph.nodes.len(), "counts": counts, "nodes": nodes, "duration_s": run.duration_s})
}

fn progress_bar(run: &RunRecord, graph: &crate::store::RunGraph) -> String {
    let total = graph.nodes.len().max(1);
    let finished = graph.nodes.iter().filter(|n| n.status.is_finished()).count();
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for n in &graph.nodes {
        match counts.iter_mut().find(|(s, _)| *s == n.status.as_str()) {
            Some((_, c)) => *c += 1,
            None => counts.push((n.status.as_str(), 1)),
        }
    }
    counts.sort();
    let summary: Vec<String> = counts.iter().map(|(s, c)| format!("{} {c}", html::status(s))).collect();
    format!(
        "<p id=\"progress\" data-status=\"{}\"><span class=\"bar\"><span id=\"progress-bar\" style=\"width:{:.0}%\"></span></span> \
         <span id=\"progress-text\">{finished}/{} finished</span> · <span id=\"progress-counts\">{}</span></p>",
        esc(run.status.as_str()),
        100.0 * finished as f64 / total as f64,
        graph.nodes.len(),
        summary.join(" ")
    )
}

/// Live updates of a running run: node colours and counts from server-sent events.
fn live_script(run: &RunRecord) -> String {
    let colors: serde_json::Map<String, serde_json::Value> = html::STATUS_COLORS.iter().map(|(s, c)| (s.to_string(), json!(c))).collect();
    format!(
        "<script>(function(){{const colors={};const es=new EventSource('/runs/{}/events');\
         es.onmessage=function(e){{const d=JSON.parse(e.data);let fin=0;\
         for(const [k,s] of Object.entries(d.nodes)){{if(['done','cached','failed','skipped'].includes(s))fin++;\
         const g=document.querySelector('g.node[data-key=\"'+k+'\"]');if(g){{g.dataset.status=s;g.querySelector('rect').setAttribute('fill',colors[s]||'#fff');}}}}\
         document.getElementById('progress-bar').style.width=(100*fin/Math.max(1,d.total))+'%';\
         document.getElementById('progress-text').textContent=fin+'/'+d.total+' finished';\
         document.getElementById('progress-counts').textContent=Object.entries(d.counts).map(function(c){{return c[0]+' '+c[1];}}).join(' · ');\
         if(d.status!=='running'){{es.close();location.reload();}}}};}})();</script>",
        serde_json::Value::Object(colors),
        run.id
    )
}

pub async fn run(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Page> {
    let store = state.store().await?;
    let run = run_of(store, &id).await?;
    let graph = store.run_graph(run.id).await?;
    let attempts = store.attempts_of_run(run.id).await?;
    let mut body = format!(
        "<h1>Run {} {}</h1><p>{} · {} by {}@{} · started {} · {}</p>",
        run.id,
        html::status(run.status.as_str()),
        run.pipeline.as_deref().map_or_else(|| "-".to_owned(), |p| html::link(&format!("/pipelines/{}", url(p)), p)),
        esc(&run.command),
        esc(&run.user),
        esc(&run.host),
        esc(&run.started_at),
        esc(&html::duration(run.duration_s)),
    );
    body.push_str(&progress_bar(&run, &graph));
    let dag = if graph.nodes.is_empty() { html::empty("no stage instances") } else { dag::svg(&graph, true) };
    body.push_str(&section("DAG", &dag));
    let rows = attempts
        .iter()
        .map(|a| {
            vec![
                Cell::Num(a.id.to_string()),
                Cell::Raw(html::link(&format!("/instances/{}", url(&a.key)), &a.key[..a.key.len().min(12)])),
                Cell::Text(a.kind.clone()),
                Cell::Raw(html::status(a.status.as_str())),
                Cell::Text(a.started_at.clone()),
                Cell::Text(a.ended_at.clone().unwrap_or_default()),
                Cell::Text(a.device.clone()),
                Cell::Text(a.error.clone().unwrap_or_default()),
            ]
        })
        .collect();
    body.push_str(&section("Attempts", &html::table(&["attempt", "key", "kind", "status", "started", "ended", "device", "error"], rows)));
    if run.status == RunStatus::Running {
        body.push_str(&live_script(&run));
    }
    Ok(Page::new(&format!("Run {}", run.id), body))
}

/// Server-sent events: the run's progress every second until it is no longer running.
pub async fn run_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = std::result::Result<Event, Infallible>>>> {
    let run = run_of(state.store().await?, &id).await?;
    let stream = futures_util::stream::unfold((state, run.id, false), |(state, id, finished)| async move {
        if finished {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let snapshot = async {
            let store = state.store().await.map_err(|_| anyhow::anyhow!("the store is gone"))?;
            let run = store.run_by_id(id).await?.ok_or_else(|| anyhow::anyhow!("run {id} disappeared"))?;
            let graph = store.run_graph(id).await?;
            anyhow::Ok((run.status != RunStatus::Running, progress_json(&run, &graph)))
        };
        let (done, data) = match snapshot.await {
            Ok(v) => v,
            Err(e) => (true, json!({"status": "error", "error": format!("{e:#}"), "nodes": {}, "counts": {}, "total": 0})),
        };
        Some((Ok(Event::default().data(data.to_string())), (state, id, done)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn instance(State(state): State<Arc<AppState>>, Path(key): Path<String>) -> Result<Page> {
    let store = state.store().await?;
    if key.len() < 4 || key.len() > 64 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(WebError::NotFound(format!("`{key}` is not a stage key")));
    }
    let mut found = store.instances_by_prefix(&key.to_ascii_lowercase()).await?;
    if found.len() != 1 {
        return Err(WebError::NotFound(format!("no single stage instance with key {key}")));
    }
    let inst = found.remove(0);
    let bindings = store.bindings_of(inst.id).await?;
    let upstream = store.upstream_of(inst.id).await?;
    let downstream = store.downstream_of(inst.id).await?;
    let attempts = store.attempts_of_instance(inst.id).await?;
    let done = store.done_attempt_of(inst.id).await?;
    // The done attempt's metrics, else the running one's so far (a live view).
    let running = if done.is_none() { attempts.iter().rev().find(|a| a.status == AttemptStatus::Running) } else { None };
    let metrics = match done.as_ref().map(|d| d.attempt_id).or(running.map(|a| a.id)) {
        Some(attempt) => store.metrics_of_attempt(attempt).await?,
        None => Vec::new(),
    };
    let mut body = format!(
        "<h1>Instance <code>{}</code></h1><p>kind <b>{}</b> (version {}) · created {}</p>",
        esc(&inst.key),
        esc(&inst.kind),
        inst.kind_version,
        esc(&inst.created_at)
    );
    let params = serde_json::to_string_pretty(&inst.params).unwrap_or_default();
    body.push_str(&section("Parameters", &format!("<pre>{}</pre>", esc(&params))));
    let rows = bindings
        .iter()
        .map(|b| {
            let axes = b.axes.as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect::<Vec<_>>().join(" "));
            vec![
                Cell::Raw(html::link(&format!("/pipelines/{}", url(&b.pipeline)), &b.pipeline)),
                Cell::Text(b.stage.clone()),
                Cell::Text(axes.unwrap_or_default()),
            ]
        })
        .collect();
    body.push_str(&section("Appears in", &html::table(&["pipeline", "stage", "axes"], rows)));
    let mut lineage = String::new();
    for (u, needs) in &upstream {
        let _ = write!(
            lineage,
            "<li>needs {}: {} ({})</li>",
            esc(needs),
            html::link(&format!("/instances/{}", url(&u.key)), &u.key[..12]),
            esc(&u.kind)
        );
    }
    for d in &downstream {
        let _ = write!(lineage, "<li>used by {} ({})</li>", html::link(&format!("/instances/{}", url(&d.key)), &d.key[..12]), esc(&d.kind));
    }
    body.push_str(&section(
        "Lineage",
        &if lineage.is_empty() { html::empty("no upstream or downstream") } else { format!("<ul>{lineage}</ul>") },
    ));
    let rows = attempts
        .iter()
        .map(|a| {
            vec![
                Cell::Num(a.id.to_string()),
                Cell::Raw(html::link(&format!("/runs/{}", a.run_id), &a.run_id.to_string())),
                Cell::Raw(html::status(a.status.as_str())),
                Cell::Text(a.started_at.clone()),
                Cell::Text(a.ended_at.clone().unwrap_or_default()),
                Cell::Text(format!("{}:{}", a.host, a.pid)),
                Cell::Text(a.device.clone()),
                Cell::Text(a.error.clone().unwrap_or_default()),
            ]
        })
        .collect();
    body.push_str(&section("Attempts", &html::table(&["attempt", "run", "status", "started", "ended", "host", "device", "error"], rows)));
    if let Some(d) = &done {
        let rows = d
            .artifacts
            .iter()
            .map(|a| {
                vec![Cell::Text(a.name.clone()), Cell::Num(a.bytes.to_string()), Cell::Text(a.hash.clone()), Cell::Text(a.path.clone())]
            })
            .collect();
        body.push_str(&section("Artifacts", &html::table(&["artifact", "bytes", "sha-256", "path (in the workspace)"], rows)));
    }
    // Final values: the unstepped value, else the last step (as `ablate show`).
    let mut finals: Vec<(&str, Option<f64>, Option<i64>)> = Vec::new();
    for m in metrics.iter().rev() {
        if !finals.iter().any(|(n, _, _)| *n == m.name) {
            finals.push((&m.name, m.value, m.step));
        }
    }
    finals.sort_by(|a, b| a.0.cmp(b.0));
    let rows = finals
        .iter()
        .map(|(n, v, s)| {
            let value = v.map_or_else(|| "NaN/inf".to_owned(), html::format_number);
            vec![Cell::Text(n.to_string()), Cell::Num(value), Cell::Num(s.map(|s| s.to_string()).unwrap_or_default())]
        })
        .collect();
    body.push_str(&section(
        "Metrics",
        &if finals.is_empty() { html::empty("no metrics recorded") } else { html::table(&["metric", "value", "step"], rows) },
    ));
    for metric in store.stepped_metrics(&inst.key).await? {
        let points = store.metric_curve(&inst.key, &metric).await?.into_iter().map(|(s, v)| (s as f64, v)).collect();
        let chart = Chart::Line(LineChart {
            title: String::new(),
            x_label: "step".into(),
            y_label: metric.clone(),
            series: vec![Series { name: String::new(), points }],
        });
        body.push_str(&section(&format!("{metric} curve"), &chart.svg(CHART_SIZE)?));
    }
    if let Some(a) = running {
        // Reload while it runs: the curve grows as training flushes it.
        body.insert_str(
            0,
            &format!("<p class=\"live\">attempt {} is running: metrics and curves so far; this page reloads every 5 s</p>", a.id),
        );
    }
    let page = Page::new(&format!("Instance {}", &inst.key[..12]), body);
    Ok(if running.is_some() { page.refreshing(5) } else { page })
}

async fn known_pipeline(store: &Store, name: &str) -> Result<()> {
    if store.pipeline_names().await?.iter().any(|(n, _)| n == name) || store.pipeline_source(name).await?.is_some() {
        Ok(())
    } else {
        Err(WebError::NotFound(format!("no pipeline named {name}")))
    }
}

pub async fn pipeline(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Page> {
    let store = state.store().await?;
    known_pipeline(store, &name).await?;
    let body = study::body(store, &name, true).await?;
    let form = format!(
        "<form action=\"/pipelines/{}/pivot\" method=\"get\">pivot: metric <input name=\"metric\"> rows <input name=\"rows\" placeholder=\"axis,axis\"> \
         columns <input name=\"cols\" placeholder=\"axis\"> stage <input name=\"stage\"> <button>show</button></form>",
        url(&name)
    );
    Ok(Page::new(&name, format!("<h1>Pipeline {}</h1>{form}{body}", esc(&name))))
}

/// A pivot's URL parameters. Read as pairs, not a struct, so a repeated
/// parameter is answered in the page rather than by axum's plain-text 400:
/// `rows`/`cols` given twice add up, two different metrics or stages are an error.
struct PivotQuery {
    metric: Option<String>,
    rows: Vec<String>,
    cols: Vec<String>,
    stage: Option<String>,
}

impl PivotQuery {
    fn from_pairs(pairs: Vec<(String, String)>) -> std::result::Result<Self, WebError> {
        let mut q = PivotQuery { metric: None, rows: vec![], cols: vec![], stage: None };
        for (key, value) in pairs {
            let value = value.trim().to_owned();
            match key.as_str() {
                "rows" => q.rows.extend(axis_list(&value)),
                "cols" => q.cols.extend(axis_list(&value)),
                "metric" | "stage" if value.is_empty() => {}
                "metric" | "stage" => {
                    let slot = if key == "metric" { &mut q.metric } else { &mut q.stage };
                    match slot {
                        Some(before) if *before != value => {
                            return Err(WebError::BadRequest(format!("give one {key}, not both `{before}` and `{value}`")));
                        }
                        _ => *slot = Some(value),
                    }
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

fn axis_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// An ablation pivot chosen in the URL; the parameters only select among loaded rows.
pub async fn pivot(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Page> {
    let store = state.store().await?;
    known_pipeline(store, &name).await?;
    let q = PivotQuery::from_pairs(pairs)?;
    let Some(metric) = q.metric else {
        return Err(WebError::BadRequest("give ?metric=NAME (and rows=AXIS,... cols=AXIS)".into()));
    };
    let spec = PivotSpec { metric: metric.clone(), rows: q.rows, cols: q.cols, pipeline: Some(name.clone()), stage: q.stage };
    let (history, _) = pivot::current_rows(&store, &name).await?;
    pivot::check(&spec, &history).map_err(WebError::BadRequest)?;
    let p = pivot::pivot(&history, &spec);
    let body = if p.is_empty() {
        html::empty(&format!("no data yet: no finished instance of {name} has recorded `{metric}`"))
    } else {
        format!("{}{}", panels::pivot_table(&p), Chart::Bar(p.bar_chart(&metric)).svg(CHART_SIZE)?)
    };
    Ok(Page::new(&format!("{name}: {metric}"), format!("<h1>{}: {}</h1>{}", esc(&name), esc(&metric), section("Pivot", &body))))
}

pub async fn dashboards(State(state): State<Arc<AppState>>) -> Result<Page> {
    let list = dashboard::list(&state.dashboards);
    let rows = list
        .iter()
        .map(|(name, _)| {
            let title = dashboard::load(&state.dashboards, name).and_then(|r| r.ok()).map_or_else(|| name.clone(), |d| d.title);
            vec![Cell::Raw(html::link(&format!("/dashboards/{}", url(name)), name)), Cell::Text(title)]
        })
        .collect();
    let body = if list.is_empty() {
        html::empty(&format!("no dashboards in {}", state.dashboards.display()))
    } else {
        html::table(&["dashboard", "title"], rows)
    };
    Ok(Page::new("Dashboards", format!("<h1>Dashboards</h1>{body}")))
}

pub async fn dashboard_page(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Page> {
    if !dashboard::valid_name(&name) {
        return Err(WebError::NotFound(format!("no dashboard named {name}")));
    }
    let d = match dashboard::load(&state.dashboards, &name) {
        None => return Err(WebError::NotFound(format!("no dashboard named {name}"))),
        Some(Err(e)) => {
            return Ok(Page::new(
                &name,
                format!("<h1>{}</h1>{}", esc(&name), html::error_box(&format!("this dashboard file is invalid: {e:#}"))),
            ));
        }
        Some(Ok(d)) => d,
    };
    // Only declared parameters are taken from the URL; their values are bound, never spliced.
    let params: HashMap<String, String> =
        d.params.iter().map(|(k, default)| (k.clone(), query.get(k).cloned().unwrap_or_else(|| default.clone()))).collect();
    let store = match state.store().await {
        Ok(store) => Some(store),
        Err(WebError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let mut body = format!("<h1>{}</h1>", esc(&d.title));
    if let Some(text) = &d.description {
        let _ = write!(body, "<p>{}</p>", esc(text));
    }
    if !params.is_empty() {
        let mut form = String::from("<form method=\"get\">");
        for (k, v) in &d.params {
            let _ = write!(form, "{} <input name=\"{}\" value=\"{}\"> ", esc(k), esc(k), esc(params.get(k).unwrap_or(v)));
        }
        form.push_str("<button>apply</button></form>");
        body.push_str(&form);
    }
    match store {
        Some(store) => {
            let ctx = Ctx::new(store, state.query_timeout);
            for (title, panel) in &d.panels {
                body.push_str(&panels::panel(&ctx, title, panel, &params).await);
            }
        }
        None => {
            for (title, _) in &d.panels {
                body.push_str(&section(title, &html::empty("no data yet: nothing has run in this workspace")));
            }
        }
    }
    Ok(Page::new(&d.title, body))
}

pub async fn not_found() -> WebError {
    WebError::NotFound("no such page".into())
}
