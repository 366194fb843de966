//! Declarative dashboards: each `dashboards/NAME.toml` is a page of panels.
//!
//! ```toml
//! title = "LIFT vs CLIP"
//! description = "optional text under the title"
//!
//! [params]                      # optional; `?pipeline=...` in the URL overrides,
//! pipeline = "lift-vs-clip"     # and SQL reads it as :pipeline (always bound)
//!
//! [[panels]]
//! title = "Runs"
//! chart = "table"               # table (default) | line | bar
//! sql = "SELECT id, status, duration_s FROM v_runs ORDER BY id DESC LIMIT 20"
//!
//! [[panels]]
//! title = "Zero-shot top-1"
//! chart = "bar"
//! pivot = { metric = "zero_shot.top1", rows = ["text"], cols = ["loss"] }
//!
//! [[panels]]
//! title = "Claims"
//! claims = { pipeline = "lift-vs-clip" }  # or `claims = {}`: the `pipeline` parameter
//! ```
//!
//! A SQL panel drawn as a chart takes its columns by name: `x`, `y` and
//! optionally `series` (and `error` for bars); by default the first, second
//! and third columns. Panels are parsed one by one so that a broken panel
//! shows its own error while the rest of the page renders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::pivot::PivotSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChartKind {
    Table,
    Line,
    Bar,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Sql(String),
    Pivot(PivotSpec),
    Claims(ClaimsSpec),
}

/// A panel listing a study's `[[claims]]` with their verdicts.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimsSpec {
    /// The study (default: the dashboard's `pipeline` parameter).
    #[serde(default)]
    pub pipeline: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub chart: ChartKind,
    pub source: Source,
    /// Column names for charts of SQL panels.
    pub x: Option<String>,
    pub y: Option<String>,
    pub series: Option<String>,
    pub error: Option<String>,
}

/// A dashboard file; each panel parsed separately (`Err` holds what is wrong with it).
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub name: String,
    pub title: String,
    pub description: Option<String>,
    pub params: BTreeMap<String, String>,
    pub panels: Vec<(String, Result<Panel, String>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    title: Option<String>,
    description: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    #[serde(default)]
    panels: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PanelSpec {
    title: String,
    chart: Option<ChartKind>,
    sql: Option<String>,
    pivot: Option<PivotSpec>,
    claims: Option<ClaimsSpec>,
    x: Option<String>,
    y: Option<String>,
    series: Option<String>,
    error: Option<String>,
}

fn panel(value: toml::Value) -> Result<Panel, String> {
    let spec: PanelSpec = value.try_into().map_err(|e: toml::de::Error| e.message().trim().to_owned())?;
    let chart = spec.chart.unwrap_or(ChartKind::Table);
    let source = match (spec.sql, spec.pivot, spec.claims) {
        (None, None, Some(claims)) => {
            if chart != ChartKind::Table {
                return Err("a claims panel is a table".into());
            }
            Source::Claims(claims)
        }
        (Some(sql), None, None) => Source::Sql(sql),
        (None, Some(pivot), None) => {
            if chart == ChartKind::Line {
                return Err("a pivot panel is drawn as a table or bars, not a line".into());
            }
            if pivot.metric.trim().is_empty() {
                return Err("pivot.metric is empty".into());
            }
            Source::Pivot(pivot)
        }
        (None, None, None) => return Err("a panel needs `sql`, `pivot` or `claims`".into()),
        _ => return Err("give one of `sql`, `pivot` and `claims`, not both".into()),
    };
    Ok(Panel { title: spec.title, chart, source, x: spec.x, y: spec.y, series: spec.series, error: spec.error })
}

/// Whether a name can be a dashboard (file stem): letters, digits, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses a dashboard's text; `Err` only when the file as a whole is unreadable.
pub fn parse(name: &str, text: &str) -> anyhow::Result<Dashboard> {
    let file: FileSpec = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    let params = file
        .params
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    let panels = file
        .panels
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let title = v.get("title").and_then(|t| t.as_str()).map_or_else(|| format!("panel {}", i + 1), str::to_owned);
            (title, panel(v))
        })
        .collect();
    Ok(Dashboard {
        name: name.to_owned(),
        title: file.title.unwrap_or_else(|| name.to_owned()),
        description: file.description,
        params,
        panels,
    })
}

/// The dashboard files of a directory, by name (sorted); a missing directory has none.
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p.clone())))
        .filter(|(name, _)| valid_name(name))
        .collect();
    out.sort();
    out
}

/// Loads the dashboard called `name` from `dir`. The name is only ever
/// compared with the directory's listing, never joined into a path, so a
/// request cannot reach another file.
pub fn load(dir: &Path, name: &str) -> Option<anyhow::Result<Dashboard>> {
    let (_, path) = list(dir).into_iter().find(|(n, _)| n == name)?;
    Some(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display())).and_then(|text| parse(name, &text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_parse_one_by_one() {
        let d = parse(
            "x",
            r#"
title = "T"
[params]
pipeline = "p"
n = 3
[[panels]]
title = "runs"
sql = "SELECT 1"
[[panels]]
title = "bars"
chart = "bar"
pivot = { metric = "m", rows = ["loss"] }
[[panels]]
title = "broken"
chart = "pie"
sql = "SELECT 1"
[[panels]]
title = "both"
sql = "SELECT 1"
pivot = { metric = "m" }
[[panels]]
title = "claims"
claims = { pipeline = "p" }
[[panels]]
title = "claims as bars"
chart = "bar"
claims = {}
"#,
        )
        .unwrap();
        assert_eq!(d.title, "T");
        assert_eq!(d.params["n"], "3");
        assert_eq!(d.panels.len(), 6);
        assert!(matches!(&d.panels[4].1.as_ref().unwrap().source, Source::Claims(c) if c.pipeline.as_deref() == Some("p")));
        assert!(d.panels[5].1.as_ref().unwrap_err().contains("a claims panel is a table"));
        assert_eq!(d.panels[0].1.as_ref().unwrap().chart, ChartKind::Table);
        assert!(matches!(&d.panels[1].1.as_ref().unwrap().source, Source::Pivot(p) if p.rows == ["loss"]));
        assert!(d.panels[2].1.as_ref().unwrap_err().contains("pie"), "{:?}", d.panels[2].1);
        assert!(d.panels[3].1.as_ref().unwrap_err().contains("not both"));
        assert!(parse("x", "title = ").is_err());
        assert!(valid_name("lift-vs-clip") && !valid_name("../etc") && !valid_name("a.b") && !valid_name(""));
    }
}
