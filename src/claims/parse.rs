//! `[[claims]]` tables → [`Claim`]s, every problem located (file, line,
//! column, `claims[N].key`) with the pipeline module's diagnostics.

use std::ops::Range;

use toml_edit::Table;

use super::pairing::STAGE;
use super::{Claim, Expect, Selection};
use crate::filter::value_text;
use crate::pipeline::diag::{Diagnostic, ECHOED, SourceFile, shorten};
use crate::pipeline::parse::{Axis, StageSpec, item_span, key_span, scalar};

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
