//! Expansion: a [`PipelineSpec`] becomes the DAG of stage instances.
//!
//! A stage has one instance per combination of the axes it references itself
//! or through its upstream stages, and only those. An instance depends on the
//! one instance of each upstream stage whose axis values agree with its own.
//! Instances with equal keys are one node, within a file and across files.

use std::collections::HashMap;
use std::sync::Arc;

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;
use serde_json::{Map, Value};

use super::diag::{Diagnostic, Diagnostics};
use super::key::{KeyPrefix, StageKey};
use super::parse::{PipelineSpec, StageSpec};
use crate::stages::{ParamDefault, ParamError, ParamSpec, Params, StageKind, UpstreamInstance};

/// One unit of work: a stage kind with resolved parameters and upstream nodes.
#[derive(Clone)]
pub struct Node {
    pub key: StageKey,
    pub kind: &'static dyn StageKind,
    /// Shared by the instances of a stage that differ only in axes its own
    /// parameters do not name (an evaluation below a 50,000-seed grid).
    pub params: Arc<Params>,
    /// Upstream nodes (indices into [`Plan::nodes`]), in `needs` order.
    pub upstream: Vec<usize>,
    /// The `needs` stage name under which each upstream node is seen.
    pub upstream_stages: Vec<String>,
    pub gpus: u32,
    /// CPU cores asked for (0: not said): counted against the local
    /// scheduler's `--cpus` budget; Slurm's `--cpus-per-task` (at least 1).
    pub cpus: u32,
    /// Memory and time limit as Slurm writes them (`64G`, `04:00:00`); only the Slurm executor uses them.
    pub mem: Option<String>,
    pub time: Option<String>,
    /// Indices into [`Plan::bindings`]: where this node appears in the file.
    pub bindings: Vec<usize>,
}

/// A (stage, axis values) pair of the file, and the node it compiles to.
#[derive(Debug, Clone)]
pub struct Binding {
    pub stage: usize,
    /// The axis values of this instance, in axis declaration order.
    pub axes: Axes,
    pub node: usize,
}

/// The axis values of one binding, as indices into every axis's name and
/// values, which the bindings share: 100,000 bindings hold no names or
/// values of their own.
#[derive(Clone)]
pub struct Axes {
    grid: Arc<[(String, Vec<Value>)]>,
    /// (axis, value) indices, in axis declaration order.
    picks: Box<[(u32, u32)]>,
}

impl Axes {
    /// (name, value) pairs in axis declaration order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.picks.iter().map(|&(a, v)| {
            let (name, values) = &self.grid[a as usize];
            (name.as_str(), &values[v as usize])
        })
    }
}

impl std::fmt::Debug for Axes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A compiled pipeline: nodes in topological order (upstream first).
pub struct Plan {
    pub spec: PipelineSpec,
    pub nodes: Vec<Node>,
    pub bindings: Vec<Binding>,
}

impl Plan {
    /// Axes that no stage uses (no `${axis}` anywhere): most likely a
    /// forgotten reference, and the grid silently lacks that dimension.
    pub fn unused_axes(&self) -> Vec<super::Diagnostic> {
        self.spec
            .axes
            .iter()
            .filter(|axis| !self.bindings.iter().any(|b| b.axes.iter().any(|(name, _)| name == axis.name)))
            .map(|axis| {
                self.spec.file.error(
                    axis.span.clone(),
                    &format!("axes.{}", axis.name),
                    format!("no stage uses this axis (no `${{{}}}`): it adds nothing to the grid", axis.name),
                )
            })
            .collect()
    }

    pub fn stage_name(&self, binding: &Binding) -> &str {
        &self.spec.stages[binding.stage].name
    }

    /// Axis values of a binding as a JSON object.
    pub fn axes_json(binding: &Binding) -> Value {
        Value::Object(binding.axes.iter().map(|(name, value)| (name.to_owned(), value.clone())).collect())
    }

    /// Instance DAG for rendering (node weights index [`Plan::nodes`]).
    pub fn graph(&self) -> DiGraph<usize, ()> {
        let mut g = DiGraph::with_capacity(self.nodes.len(), self.nodes.len());
        let ids: Vec<_> = (0..self.nodes.len()).map(|i| g.add_node(i)).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for &u in &node.upstream {
                g.add_edge(ids[u], ids[i], ());
            }
        }
        g
    }
}

/// The axes each stage spans (its own references plus its upstream
/// stages'), as indices into `spec.axes` in declaration order; `order` is
/// upstream first.
fn spanned_axes(spec: &PipelineSpec, order: &[usize]) -> Vec<Vec<usize>> {
    let axis_index: HashMap<&str, usize> = spec.axes.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
    let stage_index: HashMap<&str, usize> = spec.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut stage_axes: Vec<Vec<usize>> = vec![Vec::new(); spec.stages.len()];
    for &s in order {
        let stage = &spec.stages[s];
        let mut axes: Vec<usize> =
            stage.params.iter().flat_map(|p| p.template.axis_refs()).filter_map(|a| axis_index.get(a).copied()).collect();
        for need in &stage.needs {
            axes.extend(stage_axes[stage_index[need.as_str()]].iter().copied());
        }
        axes.sort_unstable();
        axes.dedup();
        stage_axes[s] = axes;
    }
    stage_axes
}

/// The axes each stage of `spec` spans, by stage index (what its instances
/// differ in), without resolving parameters: for reading results by cell.
pub fn stage_axes(spec: &PipelineSpec) -> Result<Vec<Vec<usize>>, Diagnostics> {
    Ok(spanned_axes(spec, &stage_order(spec)?))
}

/// The most stage instances one pipeline file may expand to (a million plan
/// in about 40 s and 3.5 GB).
pub const MAX_INSTANCES: usize = 1_000_000;

/// Compiles a parsed pipeline into its instance DAG, or every problem found.
pub fn expand(spec: PipelineSpec) -> Result<Plan, Diagnostics> {
    let order = stage_order(&spec)?;
    let stage_index: HashMap<&str, usize> = spec.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let stage_axes = spanned_axes(&spec, &order);
    let axis_index: HashMap<&str, usize> = spec.axes.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();

    // For each stage, the node of each of its instances, by mixed-radix instance index.
    let mut stage_nodes: Vec<Vec<usize>> = vec![Vec::new(); spec.stages.len()];
    let mut errors = ErrorSet::default();
    let grid: Arc<[(String, Vec<Value>)]> = spec.axes.iter().map(|a| (a.name.clone(), a.values.clone())).collect();

    // The grid's size before any of it is built: a plan of billions of
    // instances would only end when memory does.
    let mut total: usize = 0;
    for (s, stage) in spec.stages.iter().enumerate() {
        let count = stage_axes[s].iter().try_fold(1usize, |n, &a| n.checked_mul(spec.axes[a].values.len()));
        total = count.and_then(|c| total.checked_add(c)).unwrap_or(usize::MAX);
        if total > MAX_INSTANCES {
            let sizes: Vec<String> =
                stage_axes[s].iter().map(|&a| format!("{} {}", spec.axes[a].name, spec.axes[a].values.len())).collect();
            let message = format!(
                "the plan would hold more than {MAX_INSTANCES} stage instances (stage `{}` alone: {} = {})",
                stage.name,
                sizes.join(" × "),
                count.map_or("more than any machine holds".to_owned(), |c| c.to_string())
            );
            return Err(spec.file.error(stage.span.clone(), &format!("stages.{}", stage.name), message).into());
        }
    }
    // Sized once: grown by doubling, 100,000 nodes left a quarter unused
    // and were copied at each step.
    let mut nodes: Vec<Node> = Vec::with_capacity(total);
    let mut bindings: Vec<Binding> = Vec::with_capacity(total);
    let mut by_key: HashMap<StageKey, usize> = HashMap::with_capacity(total);

    for &s in &order {
        let stage = &spec.stages[s];
        let axes = &stage_axes[s];
        let radix: Vec<usize> = axes.iter().map(|&a| spec.axes[a].values.len()).collect();
        let count: usize = radix.iter().product();
        let needs: Vec<usize> = stage.needs.iter().map(|n| stage_index[n.as_str()]).collect();
        let mut digits = vec![0usize; axes.len()];
        let mut this_stage = Vec::with_capacity(count);
        // Parameters depend only on the axes the stage's own templates name:
        // resolved (and checked, derived, keyed) once per cell of those.
        let own: Vec<usize> = {
            let names: Vec<&str> = stage.params.iter().flat_map(|e| e.template.axis_refs()).collect();
            (0..axes.len()).filter(|&p| names.contains(&spec.axes[axes[p]].name.as_str())).collect()
        };
        // Where every instance is a cell of its own, nothing is shared.
        let memo = own.len() < axes.len();
        let mut cells: HashMap<Vec<usize>, Option<Cell>> = HashMap::new();
        // The first cell's parameters, which the others are kept as differences from.
        let mut base: Option<Arc<Map<String, Value>>> = None;
        for _ in 0..count {
            let mut unshared = None;
            let mut resolve = || {
                let value_of = |name: &str| -> &Value {
                    let a = axis_index[name];
                    let pos = axes.iter().position(|&x| x == a).expect("referenced axes are spanned");
                    &spec.axes[a].values[digits[pos]]
                };
                let params = resolve_params(&spec, stage, &value_of, &mut errors)?;
                let key = KeyPrefix::new(stage.kind.name(), &Keyed::of(stage.kind.params(), &params));
                let params = match &base {
                    Some(base) => params.relative_to(base),
                    None => {
                        base = Some(Arc::clone(params.shared()));
                        params
                    }
                };
                Some(Cell { params: Arc::new(params), key })
            };
            let cell = match memo {
                true => cells.entry(own.iter().map(|&p| digits[p]).collect()).or_insert_with(&mut resolve),
                false => unshared.insert(resolve()),
            };
            let Some(Cell { params, key: key_prefix }) = cell.as_ref() else {
                advance(&mut digits, &radix);
                continue;
            };
            let params = Arc::clone(params);
            let mut upstream: Vec<usize> = needs
                .iter()
                .map(|&u| {
                    // Index of the upstream instance with agreeing axis values.
                    let mut index = 0;
                    for &a in &stage_axes[u] {
                        let pos = axes.iter().position(|&x| x == a).expect("upstream axes are spanned");
                        index = index * spec.axes[a].values.len() + digits[pos];
                    }
                    stage_nodes[u][index]
                })
                .collect();
            let mut upstream_stages = stage.needs.clone();
            if stage.kind.sees_ancestors() {
                add_ancestors(&nodes, &mut upstream, &mut upstream_stages);
            }
            let mut upstream_ok = true;
            for kind in stage.kind.required_upstream(&params) {
                let found: Vec<&str> = upstream_stages
                    .iter()
                    .zip(&upstream)
                    .filter(|&(_, &u)| nodes[u].kind.name() == kind)
                    .map(|(name, _)| name.as_str())
                    .collect();
                if found.len() != 1 {
                    upstream_ok = false;
                    let found = match found.as_slice() {
                        [] => "none".to_owned(),
                        names => format!("{} ({})", names.len(), names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")),
                    };
                    let among = if stage.kind.sees_ancestors() { "among its `needs` and their upstream stages" } else { "in `needs`" };
                    errors.push(spec.file.error(
                        stage.needs_span.clone().or(stage.span.clone()),
                        &format!("stages.{}.needs", stage.name),
                        format!("stage kind `{}` needs exactly one stage of kind `{kind}` {among}; found {found}", stage.kind.name()),
                    ));
                }
            }
            if upstream_ok {
                let view: Vec<UpstreamInstance> = upstream_stages
                    .iter()
                    .zip(&upstream)
                    .map(|(name, &u)| UpstreamInstance {
                        stage: name,
                        kind: nodes[u].kind.name(),
                        params: &nodes[u].params,
                        node: u,
                        upstream: &nodes[u].upstream,
                    })
                    .collect();
                if let Err(e) = stage.kind.check_upstream(&params, &view) {
                    errors.push(param_error(&spec, stage, e));
                }
            }
            let upstream_keys: Vec<&StageKey> = upstream.iter().map(|&u| &nodes[u].key).collect();
            let key = key_prefix.key(stage.kind.version(), &upstream_keys);
            let binding = bindings.len();
            let node = match by_key.get(&key) {
                Some(&n) => n,
                None => {
                    let defaults = stage.kind.resources(&params);
                    let gpus = stage.resources.gpus.unwrap_or(defaults.gpus);
                    let cpus = stage.resources.cpus.unwrap_or(defaults.cpus);
                    nodes.push(Node {
                        key: key.clone(),
                        kind: stage.kind,
                        params,
                        upstream,
                        upstream_stages,
                        gpus,
                        cpus,
                        mem: stage.resources.mem.clone(),
                        time: stage.resources.time.clone(),
                        bindings: Vec::new(),
                    });
                    by_key.insert(key, nodes.len() - 1);
                    nodes.len() - 1
                }
            };
            nodes[node].bindings.push(binding);
            // Both fit in u32: a spanned axis has at most MAX_INSTANCES values (checked above).
            let picks = axes.iter().zip(&digits).map(|(&a, &d)| (a as u32, d as u32)).collect();
            bindings.push(Binding { stage: s, axes: Axes { grid: Arc::clone(&grid), picks }, node });
            this_stage.push(node);
            advance(&mut digits, &radix);
        }
        stage_nodes[s] = this_stage;
        if !errors.0.is_empty() {
            // Downstream stages index into this one: stop at the first stage with errors.
            break;
        }
    }
    if !errors.0.is_empty() {
        return Err(Diagnostics(errors.0));
    }
    // Present bindings in file order of stages, then instance order.
    bindings.sort_by_key(|b| b.stage);
    for node in &mut nodes {
        node.bindings.clear();
    }
    for (i, b) in bindings.iter().enumerate() {
        nodes[b.node].bindings.push(i);
    }
    Ok(Plan { spec, nodes, bindings })
}

/// Increments a mixed-radix counter, last digit fastest.
fn advance(digits: &mut [usize], radix: &[usize]) {
    for i in (0..digits.len()).rev() {
        digits[i] += 1;
        if digits[i] < radix[i] {
            return;
        }
        digits[i] = 0;
    }
}

/// Problems deduplicated by message, so a bad value in a 10,000-instance grid
/// is reported once, not 10,000 times.
#[derive(Default)]
struct ErrorSet(Vec<Diagnostic>);

impl ErrorSet {
    fn push(&mut self, d: Diagnostic) {
        if !self.0.iter().any(|e| e.key == d.key && e.message == d.message) {
            self.0.push(d);
        }
    }
}

fn resolve_params<'v>(
    spec: &'v PipelineSpec,
    stage: &StageSpec,
    value_of: &impl Fn(&str) -> &'v Value,
    errors: &mut ErrorSet,
) -> Option<Params> {
    let file = &spec.file;
    let dotted = |key: &str| format!("stages.{}.{key}", stage.name);
    let mut map = Map::new();
    let mut ok = true;
    for entry in &stage.params {
        let Some(param) = stage.kind.params().iter().find(|p| p.name == entry.name) else { continue };
        let raw = entry.template.resolve(value_of);
        match param.coerce(&raw) {
            Ok(v) => {
                map.insert(entry.name.clone(), v);
            }
            Err(message) => {
                let refs = entry.template.axis_refs();
                let origin = match refs.as_slice() {
                    [axis] if matches!(entry.template, super::template::Template::Axis(_)) => {
                        format!(" (from axis `{axis}` = {})", value_of(axis))
                    }
                    _ => String::new(),
                };
                errors.push(file.error(entry.value_span.clone(), &dotted(&entry.name), format!("{message}{origin}")));
                ok = false;
            }
        }
    }
    for param in stage.kind.params() {
        if map.contains_key(param.name) || stage.params.iter().any(|e| e.name == param.name) {
            continue;
        }
        match param.default_value() {
            Some(v) => {
                map.insert(param.name.to_owned(), v);
            }
            None if matches!(param.default, ParamDefault::Required) => {
                errors.push(file.error(
                    stage.span.clone(),
                    &dotted(param.name),
                    format!("missing required parameter `{}` of stage kind `{}`", param.name, stage.kind.name()),
                ));
                ok = false;
            }
            None => {}
        }
    }
    if !ok {
        return None;
    }
    let mut params = Params::from(map);
    let derived = stage.kind.check(&params).and_then(|()| stage.kind.derive(&params));
    match derived {
        Ok(extra) => {
            for (name, value) in extra {
                params.insert(name, value);
            }
            Some(params)
        }
        Err(e) => {
            errors.push(param_error(spec, stage, e));
            None
        }
    }
}

/// A kind's error about one of a stage's parameters (or its `needs`), located there.
fn param_error(spec: &PipelineSpec, stage: &StageSpec, e: ParamError) -> Diagnostic {
    let span = if e.param == "needs" {
        stage.needs_span.clone()
    } else {
        stage.params.iter().find(|p| p.name == e.param).and_then(|p| p.value_span.clone())
    };
    spec.file.error(span.or(stage.span.clone()), &format!("stages.{}.{}", stage.name, e.param), e.message)
}

/// One resolved cell of a stage's own axes.
struct Cell {
    params: Arc<Params>,
    key: KeyPrefix,
}

/// The parameters that go into the key: all but those a kind declares
/// [`ParamSpec::unkeyed_at_default`] while they hold their default.
/// Serialises as the `Map` of those would, without copying it.
struct Keyed<'p> {
    params: &'p Params,
    left_out: Vec<&'static str>,
}

impl<'p> Keyed<'p> {
    fn of(specs: &'static [ParamSpec], params: &'p Params) -> Keyed<'p> {
        let left_out = specs.iter().filter(|p| params.get(p.name).is_some_and(|v| p.left_out_of_key(v))).map(|p| p.name).collect();
        Keyed { params, left_out }
    }
}

impl serde::Serialize for Keyed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.params.iter().filter(|(n, _)| !self.left_out.contains(n)))
    }
}

/// Stages in dependency order, or the cycle that prevents one.
fn stage_order(spec: &PipelineSpec) -> Result<Vec<usize>, Diagnostics> {
    let mut g = DiGraph::<usize, ()>::new();
    let ids: Vec<_> = (0..spec.stages.len()).map(|i| g.add_node(i)).collect();
    let index: HashMap<&str, usize> = spec.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    for (i, stage) in spec.stages.iter().enumerate() {
        for need in &stage.needs {
            g.add_edge(ids[index[need.as_str()]], ids[i], ());
        }
    }
    match petgraph::algo::toposort(&g, None) {
        Ok(order) => Ok(order.into_iter().map(|n| g[n]).collect()),
        Err(_) => {
            let scc = tarjan_scc(&g).into_iter().find(|c| c.len() > 1).expect("a cycle has a strongly connected component");
            // Walk `needs` edges inside the component until a stage repeats.
            let mut path = vec![scc[0]];
            loop {
                let here = *path.last().expect("non-empty");
                let next = g.neighbors_directed(here, petgraph::Direction::Incoming).find(|n| scc.contains(n)).expect("inside a cycle");
                if let Some(pos) = path.iter().position(|&p| p == next) {
                    let cycle: Vec<&str> =
                        path[pos..].iter().chain(std::iter::once(&next)).map(|&n| spec.stages[g[n]].name.as_str()).collect();
                    let first = &spec.stages[g[next]];
                    return Err(spec
                        .file
                        .error(
                            first.needs_span.clone(),
                            &format!("stages.{}.needs", first.name),
                            format!("dependency cycle: {}", cycle.join(" → ")),
                        )
                        .into());
                }
                path.push(next);
            }
        }
    }
}

/// Appends every ancestor of the nodes in `upstream` (with the stage name it
/// was needed under) that is not already there, nearest first.
fn add_ancestors(nodes: &[Node], upstream: &mut Vec<usize>, stages: &mut Vec<String>) {
    let mut i = 0;
    while i < upstream.len() {
        let node = &nodes[upstream[i]];
        for (&u, name) in node.upstream.iter().zip(&node.upstream_stages) {
            if !upstream.contains(&u) {
                upstream.push(u);
                stages.push(name.clone());
            }
        }
        i += 1;
    }
}
