//! A claim's pairs with the study's values: the latest finished instance of
//! each cell, the stages that record the metric, and what is still missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::{Averaged, Claim};
use crate::pipeline::claims::{Cell, pair, side};
use crate::pipeline::{Diagnostics, PipelineSpec};
use crate::pivot;
use crate::store::HistoryRow;

/// The study's finished results by cell (the latest instance of each).
pub struct Values<'r> {
    rows: HashMap<(String, String), &'r HistoryRow>,
}

impl<'r> Values<'r> {
    pub fn new(rows: &'r [HistoryRow]) -> Values<'r> {
        let rows = pivot::latest(rows).into_iter().map(|r| (cell_id(&r.stage, &r.axes.iter().collect()), r)).collect();
        Values { rows }
    }

    pub fn row(&self, cell: &Cell) -> Option<&'r HistoryRow> {
        self.rows.get(&cell_id(&cell.stage, &cell.axes.iter().collect())).copied()
    }

    pub fn value(&self, cell: &Cell, metric: &str) -> Option<f64> {
        self.row(cell).and_then(|r| r.metrics.get(metric).copied())
    }
}

fn cell_id(stage: &str, axes: &BTreeMap<&String, &Value>) -> (String, String) {
    (stage.to_owned(), serde_json::to_string(axes).unwrap_or_default())
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
