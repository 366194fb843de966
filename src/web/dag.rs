//! A run's DAG as inline SVG: a simple layered layout computed here (layer =
//! longest path from a source, order within a layer by the mean position of
//! upstream nodes), nodes filled by status, edges as curves left to right.

use std::fmt::Write as _;

use super::html::{esc, status_color, url};
use crate::filter::value_text;
use crate::store::RunGraph;

const W: f64 = 240.0;
const H: f64 = 46.0;
const GAP_X: f64 = 60.0;
const GAP_Y: f64 = 14.0;
const MARGIN: f64 = 10.0;

/// Node positions: `(layer, index within layer)` per node, and the layers.
fn layout(graph: &RunGraph) -> (Vec<(usize, usize)>, Vec<Vec<usize>>) {
    let n = graph.nodes.len();
    let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(u, d) in &graph.edges {
        upstream[d].push(u);
        downstream[u].push(d);
    }
    // Longest path from a source, in topological order (Kahn).
    let mut indegree: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut layer = vec![0usize; n];
    let mut queue: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(i) = queue.pop() {
        done[i] = true;
        for &d in &downstream[i] {
            layer[d] = layer[d].max(layer[i] + 1);
            indegree[d] -= 1;
            if indegree[d] == 0 {
                queue.push(d);
            }
        }
    }
    // A cycle cannot come from a plan, but a damaged store must still draw.
    let deepest = layer.iter().copied().max().unwrap_or(0);
    for i in 0..n {
        if !done[i] {
            layer[i] = deepest + 1;
        }
    }
    let count = layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); count];
    let label = |i: usize| (graph.nodes[i].stages.join(","), serde_json::to_string(&graph.nodes[i].axes).unwrap_or_default());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| label(i));
    for i in order {
        layers[layer[i]].push(i);
    }
    let mut position = vec![0usize; n];
    for l in &layers {
        for (p, &i) in l.iter().enumerate() {
            position[i] = p;
        }
    }
    // Two barycentre sweeps reduce crossings enough for study-shaped DAGs.
    for _ in 0..2 {
        for l in layers.iter_mut().skip(1) {
            let centre = |i: &usize| {
                let ups = &upstream[*i];
                if ups.is_empty() { f64::MAX } else { ups.iter().map(|&u| position[u] as f64).sum::<f64>() / ups.len() as f64 }
            };
            l.sort_by(|a, b| centre(a).partial_cmp(&centre(b)).unwrap_or(std::cmp::Ordering::Equal));
            for (p, &i) in l.iter().enumerate() {
                position[i] = p;
            }
        }
    }
    ((0..n).map(|i| (layer[i], position[i])).collect(), layers)
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_owned() } else { format!("{}…", text.chars().take(max - 1).collect::<String>()) }
}

/// The SVG; with `links`, nodes link to their instance pages.
pub fn svg(graph: &RunGraph, links: bool) -> String {
    if graph.nodes.is_empty() {
        return String::new();
    }
    let (pos, layers) = layout(graph);
    let tallest = layers.iter().map(Vec::len).max().unwrap_or(1);
    let height = 2.0 * MARGIN + tallest as f64 * (H + GAP_Y) - GAP_Y;
    let width = 2.0 * MARGIN + layers.len() as f64 * (W + GAP_X) - GAP_X;
    let at = |i: usize| {
        let (l, p) = pos[i];
        // Centre each layer vertically.
        let offset = (tallest - layers[l].len()) as f64 * (H + GAP_Y) / 2.0;
        (MARGIN + l as f64 * (W + GAP_X), MARGIN + offset + p as f64 * (H + GAP_Y))
    };
    let mut out = format!(
        "<svg class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\">"
    );
    out.push_str("<g class=\"edges\" fill=\"none\" stroke=\"#90a4ae\" stroke-width=\"1.2\">");
    for &(u, d) in &graph.edges {
        let (ux, uy) = at(u);
        let (dx, dy) = at(d);
        let (x1, y1, x2, y2) = (ux + W, uy + H / 2.0, dx, dy + H / 2.0);
        let mid = (x1 + x2) / 2.0;
        let _ = write!(out, "<path d=\"M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}\"/>");
    }
    out.push_str("</g>");
    for (i, node) in graph.nodes.iter().enumerate() {
        let (x, y) = at(i);
        let stage = node.stages.iter().map(|s| s.split_once('/').map_or(s.as_str(), |(_, st)| st)).collect::<Vec<_>>().join(", ");
        let title = if stage.is_empty() { node.kind.clone() } else { format!("{stage} ({})", node.kind) };
        let axes = node.axes.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect::<Vec<_>>().join(" ");
        let _ = write!(
            out,
            "<g class=\"node\" data-key=\"{key}\" data-status=\"{st}\"><title>{tip}</title>{open}<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{W}\" height=\"{H}\" rx=\"6\" fill=\"{fill}\" stroke=\"#546e7a\"/>\
             <text x=\"{tx:.1}\" y=\"{ty1:.1}\" font-weight=\"bold\">{t}</text><text x=\"{tx:.1}\" y=\"{ty2:.1}\">{a}</text>{close}</g>",
            key = esc(&node.key),
            st = node.status.as_str(),
            tip = esc(&format!("{title}\n{}\n{}\n{}", node.key, axes, node.status)),
            open = if links { format!("<a href=\"/instances/{}\">", url(&node.key)) } else { String::new() },
            close = if links { "</a>" } else { "" },
            fill = status_color(node.status.as_str()),
            tx = x + 8.0,
            ty1 = y + 18.0,
            ty2 = y + 35.0,
            t = esc(&clip(&title, 36)),
            a = esc(&clip(format!("{} {}", axes, &node.key[..node.key.len().min(8)]).trim(), 35)),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::store::{AttemptStatus, GraphNode, NodeStatus};

    fn node(key: &str, stage: &str) -> GraphNode {
        GraphNode {
            key: key.into(),
            kind: "command".into(),
            stages: vec![format!("p/{stage}")],
            axes: Map::new(),
            status: NodeStatus::Attempt(AttemptStatus::Done),
        }
    }

    #[test]
    fn layers_follow_longest_paths() {
        // a → b → c and a → c: c is in layer 2.
        let g = RunGraph { nodes: vec![node("aaaa", "a"), node("bbbb", "b"), node("cccc", "<c>")], edges: vec![(0, 1), (1, 2), (0, 2)] };
        let (pos, layers) = layout(&g);
        assert_eq!(pos.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(layers.len(), 3);
        let s = svg(&g, true);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<rect").count(), 3);
        assert!(s.contains("&lt;c&gt;") && !s.contains("<c>"));
        // A cycle (a damaged store) still lays out.
        let g = RunGraph { nodes: vec![node("aaaa", "a"), node("bbbb", "b")], edges: vec![(0, 1), (1, 0)] };
        assert_eq!(svg(&g, false).matches("<rect").count(), 2);
    }
}
