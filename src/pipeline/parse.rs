//! Pipeline file syntax: TOML → [`PipelineSpec`], with every problem located.
//!
//! Parsing keeps byte spans (via `toml_edit`) so that type errors found later,
//! after axis substitution, still point at the right place in the file.

use std::collections::HashMap;
use std::ops::Range;

use serde_json::Value;
use toml_edit::{ImDocument, Item, Table};

use super::diag::{Diagnostic, Diagnostics, SourceFile, floor_char_boundary};
use super::template::Template;
use crate::echo::{ECHOED, shorten};
use crate::filter::value_text;
use crate::stages::{self, StageKind};

/// An ablation axis: a name and its values, in file order.
#[derive(Debug, Clone)]
pub struct Axis {
    pub name: String,
    pub values: Vec<Value>,
    pub span: Option<Range<usize>>,
}

/// One parameter as written in a stage table, before axis substitution.
#[derive(Debug, Clone)]
pub struct ParamEntry {
    pub name: String,
    pub template: Template,
    pub key_span: Option<Range<usize>>,
    pub value_span: Option<Range<usize>>,
}

/// Resources a stage asks for (`[stages.X.resources]`); never part of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSpec {
    pub gpus: Option<u32>,
    pub cpus: Option<u32>,
    pub mem: Option<String>,
    pub time: Option<String>,
}

#[derive(Clone)]
pub struct StageSpec {
    pub name: String,
    pub kind: &'static dyn StageKind,
    pub needs: Vec<String>,
    pub needs_span: Option<Range<usize>>,
    pub params: Vec<ParamEntry>,
    pub resources: ResourceSpec,
    pub span: Option<Range<usize>>,
}

impl std::fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSpec").field("name", &self.name).field("kind", &self.kind.name()).field("needs", &self.needs).finish()
    }
}

#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub file: SourceFile,
    pub name: String,
    pub description: Option<String>,
    pub axes: Vec<Axis>,
    pub stages: Vec<StageSpec>,
    /// `[[claims]]`: read from results, never part of a key.
    pub claims: Vec<super::claims::Claim>,
}

const RESERVED_STAGE_KEYS: &[&str] = &["kind", "needs", "resources"];

/// Parses and checks the file's structure (not yet the parameter values).
pub fn parse(file: SourceFile) -> Result<PipelineSpec, Diagnostics> {
    let doc = match ImDocument::parse(file.text.as_str()) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e.message().trim().to_owned();
            let key = e.span().map(|s| key_at(&file.text, s.start)).unwrap_or_default();
            return Err(file.error(e.span(), &key, format!("TOML syntax error: {message}")).into());
        }
    };
    let mut errors = Vec::new();
    let root = doc.as_table();
    for (key, _) in root.iter() {
        if !matches!(key, "pipeline" | "axes" | "stages" | "claims") {
            errors.push(file.error(
                key_span(root, key),
                key,
                "unknown top-level table (expected [pipeline], [axes], [stages.NAME] and [[claims]])",
            ));
        }
    }

    let (name, description) = parse_header(&file, root, &mut errors);
    let axes = parse_axes(&file, root, &mut errors);
    let stages = parse_stages(&file, root, &axes, &mut errors);
    let claims = super::claims::parse(&file, root, &axes, &stages, &mut errors);
    if errors.is_empty() { Ok(PipelineSpec { name, description, axes, stages, claims, file }) } else { Err(Diagnostics(errors)) }
}

/// Best-effort dotted key at a byte offset of text that does not parse: the
/// key of a value whose brackets are still open there (an unterminated
/// array), else the header on that line (an unterminated `[table`), else the
/// last `[table]` header before it plus the `key =` on its line, if any.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..floor_char_boundary(text, offset)].rfind('\n').map_or(0, |i| i + 1);
    let dotted = |header: &Option<String>, key: &str| match header {
        Some(h) => format!("{h}.{key}"),
        None => key.to_owned(),
    };
    let header_of = |line: &str| line.trim().trim_start_matches('[').trim_end_matches(']').trim().to_owned();
    let (mut header, mut open, mut depth) = (None::<String>, None::<String>, 0i64);
    for line in text[..line_start].lines() {
        let line = without_strings(line);
        let t = line.trim();
        let value = if depth == 0 {
            if t.starts_with('[') {
                header = Some(header_of(t));
                continue;
            }
            match t.split_once('=') {
                Some((k, v)) => {
                    open = Some(dotted(&header, k.trim()));
                    v.to_owned()
                }
                None => continue,
            }
        } else {
            t.to_owned()
        };
        depth += value.matches(['[', '{']).count() as i64 - value.matches([']', '}']).count() as i64;
        if depth <= 0 {
            depth = 0;
            open = None;
        }
    }
    if let Some(key) = open.filter(|_| depth > 0) {
        return key;
    }
    let line = text[line_start..].lines().next().unwrap_or("");
    if line.trim_start().starts_with('[') {
        return header_of(line);
    }
    let key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_owned()).filter(|k| !k.is_empty() && !k.starts_with('['));
    match (header, key) {
        (h, Some(k)) => dotted(&h, &k),
        (Some(h), None) => h,
        (None, None) => String::new(),
    }
}

/// A line with its quoted strings (and comment) removed, for counting brackets.
fn without_strings(line: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => break,
            (None, _) => out.push(c),
            (Some(q), _) if c == q => quote = None,
            _ => {}
        }
    }
    out
}

pub(crate) fn key_span(table: &Table, key: &str) -> Option<Range<usize>> {
    table.key(key).and_then(|k| k.span())
}

pub(crate) fn item_span(table: &Table, key: &str) -> Option<Range<usize>> {
    table.get(key).and_then(Item::span).or_else(|| key_span(table, key))
}

fn as_table<'a>(item: &'a Item) -> Option<&'a Table> {
    item.as_table()
}

fn parse_header(file: &SourceFile, root: &Table, errors: &mut Vec<Diagnostic>) -> (String, Option<String>) {
    let Some(item) = root.get("pipeline") else {
        errors.push(file.error(Some(0..0), "pipeline", "missing [pipeline] table with a `name`"));
        return (String::new(), None);
    };
    let Some(table) = as_table(item) else {
        errors.push(file.error(item_span(root, "pipeline"), "pipeline", "expected a table: [pipeline]"));
        return (String::new(), None);
    };
    let mut name = String::new();
    let mut description = None;
    for (key, value) in table.iter() {
        let dotted = format!("pipeline.{key}");
        match (key, value.as_str()) {
            ("name", Some(s)) if !s.trim().is_empty() => name = s.to_owned(),
            ("name", _) => errors.push(file.error(item_span(table, key), &dotted, "expected a non-empty string")),
            ("description", Some(s)) => description = Some(s.to_owned()),
            ("description", None) => errors.push(file.error(item_span(table, key), &dotted, "expected a string")),
            _ => errors.push(file.error(key_span(table, key), &dotted, "unknown key (expected `name` and `description`)")),
        }
    }
    if name.is_empty() && table.get("name").is_none() {
        errors.push(file.error(table.span().or(item_span(root, "pipeline")), "pipeline.name", "missing required key `name`"));
    }
    (name, description)
}

fn parse_axes(file: &SourceFile, root: &Table, errors: &mut Vec<Diagnostic>) -> Vec<Axis> {
    let Some(item) = root.get("axes") else { return Vec::new() };
    let Some(table) = as_table(item) else {
        errors.push(file.error(item_span(root, "axes"), "axes", "expected a table: [axes]"));
        return Vec::new();
    };
    let mut axes = Vec::new();
    for (name, item) in table.iter() {
        let dotted = format!("axes.{name}");
        let span = item_span(table, name);
        if !valid_name(name) {
            errors.push(file.error(key_span(table, name), &dotted, "axis names use ASCII letters, digits, '_' and '-'"));
            continue;
        }
        let Some(array) = item.as_array() else {
            errors.push(file.error(span, &dotted, "expected a list of values, e.g. [0, 1, 2]"));
            continue;
        };
        if array.is_empty() {
            errors.push(file.error(span.clone(), &dotted, format!("axis `{name}` is empty: give it at least one value")));
            axes.push(Axis { name: name.to_owned(), values: Vec::new(), span });
            continue;
        }
        let mut values: Vec<Value> = Vec::new();
        // Each value's text, to the value's index: a 12,500-value axis is
        // checked in linear time.
        let mut by_text: HashMap<String, usize> = HashMap::new();
        for value in array.iter() {
            match scalar(value) {
                // Values must differ as text too: a value names its
                // instances (`${axis}` in a string) and its results rows.
                Some(v) => match by_text.get(&value_text(&v)).map(|&i| &values[i]) {
                    Some(u) if *u == v => errors.push(file.error(
                        value.span(),
                        &dotted,
                        format!("duplicate value {} in axis `{name}`", shorten(&v.to_string(), ECHOED)),
                    )),
                    Some(u) => errors.push(file.error(
                        value.span(),
                        &dotted,
                        format!(
                            "value {} of axis `{name}` reads as the earlier value {}: axis values must differ as text",
                            shorten(&v.to_string(), ECHOED),
                            shorten(&u.to_string(), ECHOED)
                        ),
                    )),
                    None => {
                        by_text.insert(value_text(&v), values.len());
                        values.push(v);
                    }
                },
                None => errors.push(file.error(value.span(), &dotted, "axis values must be strings, integers, floats or booleans")),
            }
        }
        axes.push(Axis { name: name.to_owned(), values, span });
    }
    axes
}

pub(crate) fn scalar(value: &toml_edit::Value) -> Option<Value> {
    match value {
        toml_edit::Value::String(s) => Some(Value::from(s.value().as_str())),
        toml_edit::Value::Integer(i) => Some(Value::from(*i.value())),
        toml_edit::Value::Float(f) => serde_json::Number::from_f64(*f.value()).map(Value::Number),
        toml_edit::Value::Boolean(b) => Some(Value::from(*b.value())),
        _ => None,
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_stages(file: &SourceFile, root: &Table, axes: &[Axis], errors: &mut Vec<Diagnostic>) -> Vec<StageSpec> {
    let Some(item) = root.get("stages") else {
        errors.push(file.error(Some(0..0), "stages", "the pipeline has no stages: add a [stages.NAME] table"));
        return Vec::new();
    };
    let Some(stages_table) = as_table(item) else {
        errors.push(file.error(item_span(root, "stages"), "stages", "expected tables: [stages.NAME]"));
        return Vec::new();
    };
    let mut stages = Vec::new();
    for (name, item) in stages_table.iter() {
        let dotted = format!("stages.{name}");
        if !valid_name(name) {
            errors.push(file.error(key_span(stages_table, name), &dotted, "stage names use ASCII letters, digits, '_' and '-'"));
            continue;
        }
        let Some(table) = as_table(item) else {
            errors.push(file.error(item_span(stages_table, name), &dotted, "expected a table: [stages.NAME]"));
            continue;
        };
        if let Some(stage) = parse_stage(file, name, table, key_span(stages_table, name), axes, errors) {
            stages.push(stage);
        }
    }
    // `needs` must name stages of this file.
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for stage in &stages {
        for need in &stage.needs {
            if !names.contains(&need.as_str()) {
                let exists_but_invalid = stages_table.contains_key(need);
                if !exists_but_invalid {
                    errors.push(file.error(
                        stage.needs_span.clone(),
                        &format!("stages.{}.needs", stage.name),
                        format!("`needs` names a missing stage `{need}` (stages: {})", names.join(", ")),
                    ));
                }
            } else if need == &stage.name {
                errors.push(file.error(stage.needs_span.clone(), &format!("stages.{}.needs", stage.name), "a stage cannot need itself"));
            }
        }
    }
    stages
}

fn parse_stage(
    file: &SourceFile,
    name: &str,
    table: &Table,
    span: Option<Range<usize>>,
    axes: &[Axis],
    errors: &mut Vec<Diagnostic>,
) -> Option<StageSpec> {
    let dotted = |key: &str| format!("stages.{name}.{key}");
    let kind = match table.get("kind").map(|i| i.as_str()) {
        None => {
            errors.push(file.error(span.clone(), &dotted("kind"), "missing required key `kind`"));
            None
        }
        Some(None) => {
            errors.push(file.error(item_span(table, "kind"), &dotted("kind"), "expected a string naming a stage kind"));
            None
        }
        Some(Some(k)) => match stages::find(k) {
            Some(kind) => Some(kind),
            None => {
                errors.push(file.error(
                    item_span(table, "kind"),
                    &dotted("kind"),
                    format!("unknown stage kind `{k}` (known kinds: {})", stages::kind_names().join(", ")),
                ));
                None
            }
        },
    };

    let mut needs = Vec::new();
    let needs_span = item_span(table, "needs");
    if let Some(item) = table.get("needs") {
        match item.as_array() {
            Some(array) => {
                for value in array.iter() {
                    match value.as_str() {
                        Some(s) if needs.iter().any(|n| n == s) => {
                            errors.push(file.error(value.span(), &dotted("needs"), format!("names `{s}` twice")))
                        }
                        Some(s) => needs.push(s.to_owned()),
                        None => errors.push(file.error(value.span(), &dotted("needs"), "expected stage names (strings)")),
                    }
                }
            }
            None => errors.push(file.error(needs_span.clone(), &dotted("needs"), "expected a list of stage names, e.g. [\"data\"]")),
        }
    }

    let resources = match table.get("resources") {
        None => ResourceSpec::default(),
        Some(item) => parse_resources(file, name, table, item, errors),
    };

    let mut params = Vec::new();
    for (key, item) in table.iter() {
        if RESERVED_STAGE_KEYS.contains(&key) {
            continue;
        }
        let key_span = key_span(table, key);
        let value_span = item_span(table, key);
        if let Some(kind) = kind {
            if !kind.params().iter().any(|p| p.name == key) {
                let known: Vec<&str> = kind.params().iter().map(|p| p.name).collect();
                errors.push(file.error(
                    key_span,
                    &dotted(key),
                    format!("unknown key for stage kind `{}` (its parameters: {})", kind.name(), known.join(", ")),
                ));
                continue;
            }
        }
        match Template::from_item(item) {
            Ok(template) => {
                for axis in template.axis_refs() {
                    if !axes.iter().any(|a| a.name == axis) {
                        let defined: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
                        let list = if defined.is_empty() { "none".to_owned() } else { defined.join(", ") };
                        errors.push(file.error(
                            value_span.clone(),
                            &dotted(key),
                            format!("reference to undefined axis `{axis}` (defined axes: {list})"),
                        ));
                    }
                }
                params.push(ParamEntry { name: key.to_owned(), template, key_span, value_span });
            }
            Err(message) => errors.push(file.error(value_span, &dotted(key), message)),
        }
    }
    Some(StageSpec { name: name.to_owned(), kind: kind?, needs, needs_span, params, resources, span })
}

/// A memory size as Slurm's `--mem` takes it: digits, then an optional unit.
fn is_slurm_memory(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    s.len() - digits.len() <= 1 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A time limit as Slurm's `--time` takes it: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
fn is_slurm_time(s: &str) -> bool {
    let numbers = |part: &str, max_fields: usize| {
        let fields: Vec<&str> = part.split(':').collect();
        fields.len() <= max_fields && fields.iter().all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
    };
    match s.split_once('-') {
        Some((days, rest)) => numbers(days, 1) && numbers(rest, 3),
        None => numbers(s, 3),
    }
}

fn parse_resources(file: &SourceFile, stage: &str, stage_table: &Table, item: &Item, errors: &mut Vec<Diagnostic>) -> ResourceSpec {
    let mut spec = ResourceSpec::default();
    let Some(table) =
        as_table(item).map(|t| t as &dyn toml_edit::TableLike).or_else(|| item.as_inline_table().map(|t| t as &dyn toml_edit::TableLike))
    else {
        errors.push(file.error(
            item_span(stage_table, "resources"),
            &format!("stages.{stage}.resources"),
            "expected a table: [stages.NAME.resources]",
        ));
        return spec;
    };
    for (key, value) in table.iter() {
        let dotted = format!("stages.{stage}.resources.{key}");
        let span = value.span().or_else(|| table.key(key).and_then(|k| k.span()));
        let count = || value.as_integer().and_then(|i| u32::try_from(i).ok());
        match key {
            "gpus" => match count() {
                Some(n) => spec.gpus = Some(n),
                None => errors.push(file.error(span, &dotted, "expected a non-negative integer")),
            },
            "cpus" => match count() {
                Some(n) if n > 0 => spec.cpus = Some(n),
                _ => errors.push(file.error(span, &dotted, "expected a positive integer")),
            },
            "mem" => match value.as_str() {
                Some(s) if is_slurm_memory(s) => spec.mem = Some(s.to_owned()),
                _ => errors.push(file.error(span, &dotted, "expected a memory size such as \"64G\" (a number with K, M, G or T)")),
            },
            "time" => match value.as_str() {
                Some(s) if is_slurm_time(s) => spec.time = Some(s.to_owned()),
                _ => errors.push(file.error(
                    span,
                    &dotted,
                    "expected a time limit such as \"04:00:00\" (MINUTES, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)",
                )),
            },
            _ => errors.push(file.error(span, &dotted, "unknown resource (expected gpus, cpus, mem, time)")),
        }
    }
    spec
}
