//! `[[claims]]` in a pipeline file: a comparison of one metric between two
//! selections of a study's cells. This module holds what the file says: the
//! tables → [`Claim`]s, every problem located (file, line, column,
//! `claims[N].key`), and which cells each side selects and how they pair
//! (checked when compiling, before anything runs). Deciding a claim from
//! results is `crate::claims`; no key depends on a claim.
//!
//! A cell is a (stage, axis values) of the file, as `expand` would make it.
//! Cells of `a` and `b` pair on every axis both sides span and neither
//! selection names, seeds included (`stage` counts as an axis when neither
//! names one); any other axis a side spans and leaves open is averaged on
//! that side.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use serde::Serialize;
use serde_json::Value;
use toml_edit::Table;

use super::diag::{Diagnostic, Diagnostics, SourceFile};
use super::expand;
use super::parse::{Axis, PipelineSpec, StageSpec, item_span, key_span, scalar};
use crate::echo::{ECHOED, shorten};
use crate::filter::value_text;

/// What a claim expects of the difference a − b.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// a > b (by more than the margin).
    Greater,
    /// a < b (by more than the margin).
    Less,
    /// |a − b| < margin.
    Equivalent,
}

impl Expect {
    pub const ALL: [Expect; 3] = [Expect::Greater, Expect::Less, Expect::Equivalent];

    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Greater => "greater",
            Expect::Less => "less",
            Expect::Equivalent => "equivalent",
        }
    }
}

/// One side of a claim: a stage and/or axis values (`{ stage = "eval", loss = "cosine" }`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub stage: Option<String>,
    pub axes: Vec<(String, Value)>,
    pub span: Option<Range<usize>>,
}

impl Selection {
    /// Whether the selection names `axis` (`stage` included).
    pub fn names(&self, axis: &str) -> bool {
        if axis == STAGE { self.stage.is_some() } else { self.axes.iter().any(|(a, _)| a == axis) }
    }
}

/// A `[[claims]]` table.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Position among the file's claims (`claims[N]` in messages).
    pub index: usize,
    pub name: String,
    pub metric: String,
    pub a: Selection,
    pub b: Selection,
    pub expect: Expect,
    pub margin: f64,
    pub span: Option<Range<usize>>,
    pub metric_span: Option<Range<usize>>,
}

impl Claim {
    /// A located error about this claim's `key` (empty: the claim as a whole).
    pub fn error(&self, spec: &PipelineSpec, span: Option<Range<usize>>, key: &str, message: &str) -> Diagnostic {
        let dotted = if key.is_empty() { format!("claims[{}]", self.index) } else { format!("claims[{}].{key}", self.index) };
        spec.file.error(span.or_else(|| self.span.clone()), &dotted, format!("claim `{}`: {message}", self.name))
    }
}

/// Axes averaged on each side (named by neither the pairing nor the side's selection).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Averaged {
    pub a: Vec<String>,
    pub b: Vec<String>,
}

/// The name under which a selection gives its stage, and pairing lists it.
pub const STAGE: &str = "stage";

/// A (stage, axis values) of the file.
#[derive(Debug, Clone)]
pub struct Cell {
    pub stage: String,
    pub axes: BTreeMap<String, Value>,
}

impl Cell {
    pub fn value_of(&self, axis: &str) -> Option<Value> {
        if axis == STAGE { Some(Value::from(self.stage.as_str())) } else { self.axes.get(axis).cloned() }
    }

    pub fn matches(&self, selection: &Selection) -> bool {
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

/// The cells of each side of a claim, paired.
pub struct Pairing<'c> {
    pub on: Vec<String>,
    pub averaged: Averaged,
    /// The cells of `a` and of `b` in each pair, in the order of `a`'s cells.
    pub pairs: Vec<(Vec<&'c Cell>, Vec<&'c Cell>)>,
}

/// The claim's cells as the file plans them, paired (the check before anything runs).
pub fn planned(spec: &PipelineSpec, cells: &[Cell], claim: &Claim) -> Result<(), Diagnostics> {
    let a = side(spec, cells, claim, &claim.a, "a")?;
    let b = side(spec, cells, claim, &claim.b, "b")?;
    pair(spec, claim, &a, &b).map(|_| ())
}

/// The cells a selection matches (an error naming the claim when none does).
pub fn side<'c>(
    spec: &PipelineSpec,
    cells: &'c [Cell],
    claim: &Claim,
    selection: &Selection,
    key: &str,
) -> Result<Vec<&'c Cell>, Diagnostics> {
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

/// The axes a side spans: `stage`, then its cells' axes in the file's order.
fn spanned(spec: &PipelineSpec, cells: &[&Cell]) -> Vec<String> {
    let names = spec.axes.iter().map(|a| a.name.as_str()).filter(|a| cells.iter().any(|c| c.axes.contains_key(*a)));
    std::iter::once(STAGE).chain(names).map(str::to_owned).collect()
}

pub fn pair<'c>(spec: &PipelineSpec, claim: &Claim, a: &[&'c Cell], b: &[&'c Cell]) -> Result<Pairing<'c>, Diagnostics> {
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
/// Checks that every claim's selections match instances of the file and
/// leave pairs (before anything has run: `ablate plan` reports it).
pub fn check(spec: &PipelineSpec) -> Result<(), Diagnostics> {
    if spec.claims.is_empty() {
        return Ok(());
    }
    let cells = cells(spec)?;
    let errors: Vec<Diagnostic> = spec.claims.iter().filter_map(|claim| planned(spec, &cells, claim).err()).flat_map(|e| e.0).collect();
    if errors.is_empty() { Ok(()) } else { Err(Diagnostics(errors)) }
}

const KEYS: &str = "name, metric, a, b, expect, margin";

/// The claims of the file's `[[claims]]` tables (none when it has none).
pub fn parse(file: &SourceFile, root: &Table, axes: &[Axis], stages: &[StageSpec], errors: &mut Vec<Diagnostic>) -> Vec<Claim> {
    let Some(item) = root.get("claims") else { return Vec::new() };
    let Some(tables) = item.as_array_of_tables() else {
        errors.push(file.error(item_span(root, "claims"), "claims", "expected [[claims]] tables"));
        return Vec::new();
    };
    let mut claims: Vec<Claim> = Vec::new();
    for (index, table) in tables.iter().enumerate() {
        let Some(claim) = parse_claim(file, index, table, axes, stages, errors) else { continue };
        if let Some(first) = claims.iter().find(|c| c.name == claim.name) {
            let message = format!("claim name `{}` is also the name of claims[{}]: names must be unique", claim.name, first.index);
            errors.push(file.error(item_span(table, "name"), &format!("claims[{index}].name"), message));
            continue;
        }
        claims.push(claim);
    }
    claims
}

fn parse_claim(
    file: &SourceFile,
    index: usize,
    table: &Table,
    axes: &[Axis],
    stages: &[StageSpec],
    errors: &mut Vec<Diagnostic>,
) -> Option<Claim> {
    let before = errors.len();
    let dotted = |key: &str| format!("claims[{index}].{key}");
    let span = table.span().or_else(|| table.iter().next().and_then(|(k, _)| key_span(table, k)));
    for (key, _) in table.iter() {
        if !matches!(key, "name" | "metric" | "a" | "b" | "expect" | "margin") {
            errors.push(file.error(key_span(table, key), &dotted(key), format!("unknown key (expected {KEYS})")));
        }
    }
    let mut text = |key: &str, what: &str| -> Option<String> {
        match table.get(key).map(|i| i.as_str()) {
            None => {
                errors.push(file.error(span.clone(), &dotted(key), format!("missing required key `{key}` ({what})")));
                None
            }
            Some(Some(s)) if !s.trim().is_empty() => Some(s.to_owned()),
            Some(_) => {
                errors.push(file.error(item_span(table, key), &dotted(key), format!("expected a non-empty string ({what})")));
                None
            }
        }
    };
    let name = text("name", "what the claim says, unique in the file");
    let metric = text("metric", "the metric compared, e.g. \"compositional.mean\"");
    let expect = match table.get("expect").map(|i| i.as_str()) {
        None => {
            errors.push(file.error(span.clone(), &dotted("expect"), "missing required key `expect` (greater, less or equivalent)"));
            None
        }
        Some(s) => {
            let found = s.and_then(|s| Expect::ALL.into_iter().find(|e| e.as_str() == s));
            if found.is_none() {
                errors.push(file.error(item_span(table, "expect"), &dotted("expect"), "expected \"greater\", \"less\" or \"equivalent\""));
            }
            found
        }
    };
    let margin = match table.get("margin") {
        None if expect == Some(Expect::Equivalent) => {
            errors.push(file.error(span.clone(), &dotted("margin"), "missing required key `margin`: an equivalence needs one"));
            None
        }
        None => Some(0.0),
        Some(item) => {
            let value = item.as_float().or_else(|| item.as_integer().map(|i| i as f64));
            match value {
                Some(m) if m.is_finite() && m > 0.0 => Some(m),
                Some(0.0) if expect != Some(Expect::Equivalent) => Some(0.0),
                Some(0.0) => {
                    errors.push(file.error(item_span(table, "margin"), &dotted("margin"), "an equivalence needs a margin above 0"));
                    None
                }
                _ => {
                    errors.push(file.error(item_span(table, "margin"), &dotted("margin"), "expected a number at least 0"));
                    None
                }
            }
        }
    };
    let a = selection(file, index, table, "a", span.clone(), axes, stages, errors);
    let b = selection(file, index, table, "b", span.clone(), axes, stages, errors);
    if errors.len() > before {
        return None;
    }
    Some(Claim {
        index,
        name: name?,
        metric: metric?,
        a: a?,
        b: b?,
        expect: expect?,
        margin: margin?,
        span,
        metric_span: item_span(table, "metric"),
    })
}

/// A side: `{ stage = "NAME", AXIS = VALUE, ... }` naming stages and axis values of this file.
#[allow(clippy::too_many_arguments)]
fn selection(
    file: &SourceFile,
    index: usize,
    claim: &Table,
    key: &str,
    claim_span: Option<Range<usize>>,
    axes: &[Axis],
    stages: &[StageSpec],
    errors: &mut Vec<Diagnostic>,
) -> Option<Selection> {
    let dotted = format!("claims[{index}].{key}");
    let Some(item) = claim.get(key) else {
        let message = format!("missing required key `{key}` (a selection, e.g. {{ stage = \"eval\", loss = \"cosine\" }})");
        errors.push(file.error(claim_span, &dotted, message));
        return None;
    };
    let span = item_span(claim, key);
    let Some(table) = item.as_table_like() else {
        errors.push(file.error(
            span,
            &dotted,
            "expected a selection: an inline table of a stage and/or axis values, e.g. { stage = \"eval\" }",
        ));
        return None;
    };
    let mut out = Selection { span, ..Selection::default() };
    let mut ok = true;
    let mut fail = |span: Option<Range<usize>>, key: &str, message: String| {
        errors.push(file.error(span, &format!("{dotted}.{key}"), message));
        ok = false;
    };
    for (name, value) in table.iter() {
        let value_span = value.span().or_else(|| table.key(name).and_then(|k| k.span()));
        if name == STAGE {
            match value.as_str() {
                Some(s) if stages.iter().any(|st| st.name == s) => out.stage = Some(s.to_owned()),
                Some(s) => {
                    let known: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
                    fail(value_span, name, format!("no stage `{}` in this file (stages: {})", shorten(s, ECHOED), known.join(", ")))
                }
                None => fail(value_span, name, "expected a stage name (a string)".to_owned()),
            }
            continue;
        }
        let Some(axis) = axes.iter().find(|a| a.name == name) else {
            let known: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
            let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
            fail(table.key(name).and_then(|k| k.span()), name, format!("unknown axis `{name}` (`stage` or an axis: {known})"));
            continue;
        };
        // A value written as another type but reading the same (`seed = "1"`) is that value.
        let found = value
            .as_value()
            .and_then(scalar)
            .and_then(|v| axis.values.iter().find(|u| **u == v || value_text(u) == value_text(&v)).cloned());
        match found {
            Some(v) => out.axes.push((name.to_owned(), v)),
            None => {
                let values: Vec<String> = axis.values.iter().map(|v| shorten(&v.to_string(), ECHOED)).collect();
                fail(value_span, name, format!("not a value of axis `{name}` (values: {})", values.join(", ")))
            }
        }
    }
    ok.then_some(out)
}
