//! The cells a claim compares and how they pair.
//!
//! A cell is a (stage, axis values) of the file, as `expand` would make it.
//! Cells of `a` and `b` pair on every axis both sides span and neither
//! selection names, seeds included (`stage` counts as an axis when neither
//! names one); any other axis a side spans and leaves open is averaged on
//! that side.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::{Averaged, Claim, Selection};
use crate::filter::value_text;
use crate::pipeline::{Diagnostics, PipelineSpec, expand};
use crate::pivot;
use crate::store::HistoryRow;

/// The name under which a selection gives its stage, and pairing lists it.
pub const STAGE: &str = "stage";

/// A (stage, axis values) of the file.
#[derive(Debug, Clone)]
pub struct Cell {
    pub stage: String,
    pub axes: BTreeMap<String, Value>,
}

impl Cell {
    fn value_of(&self, axis: &str) -> Option<Value> {
        if axis == STAGE { Some(Value::from(self.stage.as_str())) } else { self.axes.get(axis).cloned() }
    }

    fn matches(&self, selection: &Selection) -> bool {
        selection.stage.as_ref().is_none_or(|s| *s == self.stage)
            && selection.axes.iter().all(|(axis, value)| self.axes.get(axis) == Some(value))
    }
}

/// Every cell of the file, stage by stage in file order.
pub fn cells(spec: &PipelineSpec) -> Result<Vec<Cell>, Diagnostics> {
    let stage_axes = expand::stage_axes(spec)?;
    let mut out = Vec::new();
    for (stage, axes) in spec.stages.iter().zip(&stage_axes) {
        let mut grid: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new()];
        for &a in axes {
            let axis = &spec.axes[a];
            grid = grid
                .into_iter()
                .flat_map(|cell| {
                    axis.values.iter().map(move |v| {
                        let mut cell = cell.clone();
                        cell.insert(axis.name.clone(), v.clone());
                        cell
                    })
                })
                .collect();
        }
        out.extend(grid.into_iter().map(|axes| Cell { stage: stage.name.clone(), axes }));
    }
    Ok(out)
}

/// The study's finished results by cell (the latest instance of each).
pub struct Values<'r> {
    rows: HashMap<(String, String), &'r HistoryRow>,
}

fn cell_id(stage: &str, axes: &BTreeMap<&String, &Value>) -> (String, String) {
    (stage.to_owned(), serde_json::to_string(axes).unwrap_or_default())
}

impl<'r> Values<'r> {
    pub fn new(rows: &'r [HistoryRow]) -> Values<'r> {
        let rows = pivot::latest(rows).into_iter().map(|r| (cell_id(&r.stage, &r.axes.iter().collect()), r)).collect();
        Values { rows }
    }

    fn row(&self, cell: &Cell) -> Option<&'r HistoryRow> {
        self.rows.get(&cell_id(&cell.stage, &cell.axes.iter().collect())).copied()
    }

    fn value(&self, cell: &Cell, metric: &str) -> Option<f64> {
        self.row(cell).and_then(|r| r.metrics.get(metric).copied())
    }
}

/// The cells of each side of a claim, paired.
struct Pairing<'c> {
    on: Vec<String>,
    averaged: Averaged,
    /// The cells of `a` and of `b` in each pair, in the order of `a`'s cells.
    pairs: Vec<(Vec<&'c Cell>, Vec<&'c Cell>)>,
}

/// One pair's values (the mean over its cells), `None` while any is missing.
pub struct PairValues {
    pub a: Option<f64>,
    pub b: Option<f64>,
}

/// A claim's pairs with their values.
pub struct Measured {
    pub on: Vec<String>,
    pub averaged: Averaged,
    pub pairs: Vec<PairValues>,
    /// Cells in pairs without a value yet.
    pub missing: usize,
}

/// The claim's cells as the file plans them, paired (the check before anything runs).
pub fn planned(spec: &PipelineSpec, cells: &[Cell], claim: &Claim) -> Result<(), Diagnostics> {
    let a = side(spec, cells, claim, &claim.a, "a")?;
    let b = side(spec, cells, claim, &claim.b, "b")?;
    pair(spec, claim, &a, &b).map(|_| ())
}

/// The claim's cells that can carry its metric, paired, with their values.
pub fn measured(spec: &PipelineSpec, cells: &[Cell], values: &Values, claim: &Claim) -> Result<Measured, Diagnostics> {
    let a = side(spec, cells, claim, &claim.a, "a")?;
    let b = side(spec, cells, claim, &claim.b, "b")?;
    let a = with_metric(spec, claim, values, a)?;
    let b = with_metric(spec, claim, values, b)?;
    let pairing = pair(spec, claim, &a, &b)?;
    // By identity: a cell both selections match is one missing value, not two.
    let mut missing: BTreeSet<*const Cell> = BTreeSet::new();
    let mut mean = |group: &[&Cell]| -> Option<f64> {
        let found: Vec<f64> = group.iter().filter_map(|c| values.value(c, &claim.metric)).collect();
        missing.extend(group.iter().filter(|c| values.value(c, &claim.metric).is_none()).map(|c| *c as *const Cell));
        (found.len() == group.len()).then(|| pivot::Cell::of(&found).mean)
    };
    let pairs = pairing.pairs.iter().map(|(a, b)| PairValues { a: mean(a), b: mean(b) }).collect();
    Ok(Measured { on: pairing.on, averaged: pairing.averaged, pairs, missing: missing.len() })
}

/// The cells a selection matches (an error naming the claim when none does).
fn side<'c>(spec: &PipelineSpec, cells: &'c [Cell], claim: &Claim, selection: &Selection, key: &str) -> Result<Vec<&'c Cell>, Diagnostics> {
    let matched: Vec<&Cell> = cells.iter().filter(|c| c.matches(selection)).collect();
    if matched.is_empty() {
        let message = match &selection.stage {
            Some(stage) => format!("selection `{key}` matches no instance: stage `{stage}` has no instance with these axis values"),
            None => format!("selection `{key}` matches no instance: no stage has an instance with these axis values"),
        };
        return Err(claim.error(spec, selection.span.clone(), key, &message).into());
    }
    Ok(matched)
}

/// A side's cells narrowed to the stages that record the metric. Until one
/// of them has, the stages with work left stay (their values are missing);
/// when every cell is finished and none recorded it, the metric is unknown.
fn with_metric<'c>(spec: &PipelineSpec, claim: &Claim, values: &Values, cells: Vec<&'c Cell>) -> Result<Vec<&'c Cell>, Diagnostics> {
    let recorded: BTreeSet<&str> = cells.iter().filter(|c| values.value(c, &claim.metric).is_some()).map(|c| c.stage.as_str()).collect();
    if !recorded.is_empty() {
        return Ok(cells.into_iter().filter(|c| recorded.contains(c.stage.as_str())).collect());
    }
    let unfinished: BTreeSet<&str> = cells.iter().filter(|c| values.row(c).is_none()).map(|c| c.stage.as_str()).collect();
    if unfinished.is_empty() {
        let known = pivot::distinct(cells.iter().filter_map(|c| values.row(c)).flat_map(|r| r.metrics.keys().map(String::as_str)));
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        let message = format!("unknown metric `{}`: no selected instance recorded it (their metrics: {known})", claim.metric);
        return Err(claim.error(spec, claim.metric_span.clone(), "metric", &message).into());
    }
    Ok(cells.into_iter().filter(|c| unfinished.contains(c.stage.as_str())).collect())
}

/// The axes a side spans: `stage`, then its cells' axes in the file's order.
fn spanned(spec: &PipelineSpec, cells: &[&Cell]) -> Vec<String> {
    let names = spec.axes.iter().map(|a| a.name.as_str()).filter(|a| cells.iter().any(|c| c.axes.contains_key(*a)));
    std::iter::once(STAGE).chain(names).map(str::to_owned).collect()
}

fn pair<'c>(spec: &PipelineSpec, claim: &Claim, a: &[&'c Cell], b: &[&'c Cell]) -> Result<Pairing<'c>, Diagnostics> {
    let (span_a, span_b) = (spanned(spec, a), spanned(spec, b));
    let on: Vec<String> = span_a.iter().filter(|x| span_b.contains(x) && !claim.a.names(x) && !claim.b.names(x)).cloned().collect();
    // Only axes that take several values on a side are worth saying.
    let averaged = |cells: &[&Cell], spanned: &[String], selection: &Selection| -> Vec<String> {
        let values = |x: &str| cells.iter().map(|c| c.value_of(x).map(|v| value_text(&v))).collect::<BTreeSet<_>>().len();
        spanned.iter().filter(|x| !on.contains(x) && !selection.names(x) && values(x) > 1).cloned().collect()
    };
    let averaged = Averaged { a: averaged(a, &span_a, &claim.a), b: averaged(b, &span_b, &claim.b) };
    let key = |c: &Cell| -> String { serde_json::to_string(&on.iter().map(|x| c.value_of(x)).collect::<Vec<_>>()).unwrap_or_default() };
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut pairs: Vec<(Vec<&Cell>, Vec<&Cell>)> = Vec::new();
    for &cell in a {
        let i = *index.entry(key(cell)).or_insert_with(|| {
            pairs.push((Vec::new(), Vec::new()));
            pairs.len() - 1
        });
        pairs[i].0.push(cell);
    }
    for &cell in b {
        if let Some(&i) = index.get(&key(cell)) {
            pairs[i].1.push(cell);
        }
    }
    pairs.retain(|(_, b)| !b.is_empty());
    if pairs.is_empty() {
        let on = if on.is_empty() { "nothing".to_owned() } else { on.join(", ") };
        let message = format!("the pairing leaves no pairs: no cell of `a` has a cell of `b` with the same values of {on}");
        return Err(claim.error(spec, None, "", &message).into());
    }
    Ok(Pairing { on, averaged, pairs })
}
