//! Plain-text tables and DAG renderings for the terminal.

use std::fmt::Write as _;

use crate::freshness::Freshness;
use crate::pipeline::Plan;

/// A left-aligned text table with a header row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row; a cell longer than [`MAX_CELL`] characters is cut there
    /// and says how long it was (`--json` keeps whole values).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(clip).collect());
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory");
        String::from_utf8(out).expect("cells are strings")
    }

    /// The table written line by line (a plan of 100,000 instances is never
    /// one string in memory).
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut line = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            line.clear();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                // Padded by hand: `format!`'s width argument is limited to u16.
                line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// The longest table cell shown whole.
pub const MAX_CELL: usize = 1000;

fn clip(cell: String) -> String {
    let n = cell.chars().count();
    if n <= MAX_CELL {
        return cell;
    }
    let kept: String = cell.chars().take(MAX_CELL).collect();
    format!("{kept}… ({n} characters)")
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn long_cells_are_cut_and_say_so() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["x".repeat(70_000), "y".into()]);
        t.row(vec!["z".into(), "w".into()]);
        let text = t.render();
        assert!(text.contains("… (70000 characters)  y"), "{}", &text[text.len() - 80..]);
        let column = |line: usize, c: char| text.lines().nth(line).unwrap().chars().position(|x| x == c);
        assert_eq!(column(2, 'w'), column(1, 'y'), "columns line up");
    }
}

fn node_caption(plan: &Plan, node: usize) -> (String, String) {
    let n = &plan.nodes[node];
    let stages: Vec<&str> = {
        let mut s: Vec<&str> = n.bindings.iter().map(|&b| plan.stage_name(&plan.bindings[b])).collect();
        s.dedup();
        s
    };
    let axes = &plan.bindings[n.bindings[0]].axes;
    let axes: Vec<String> = axes.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect();
    (format!("{} ({})", stages.join(", "), n.kind.name()), format!("{} {}", axes.join(" "), n.key.short()).trim().to_owned())
}

/// Text inside a DOT double-quoted string: backslashes and quotes escaped,
/// line breaks as DOT's `\n`.
fn dot_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\r', "").replace('\n', "\\n")
}

/// Text inside a Mermaid `["..."]` label, which Mermaid renders as HTML:
/// entity codes for what would end the label or be read as markup.
fn mermaid_text(text: &str) -> String {
    text.replace('&', "#amp;").replace('"', "#quot;").replace('<', "#lt;").replace('>', "#gt;").replace('\r', "").replace('\n', " ")
}

/// Graphviz DOT, nodes filled by status (grey cached, orange to run).
pub fn dot(plan: &Plan, freshness: &[Freshness]) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n",
        dot_text(&plan.spec.name)
    );
    for (i, fresh) in freshness.iter().enumerate() {
        let (title, detail) = node_caption(plan, i);
        let color = if fresh.is_cached() { "#d9d9d9" } else { "#fdb863" };
        let _ = writeln!(out, "  n{i} [label=\"{}\\n{}\", fillcolor=\"{color}\"];", dot_text(&title), dot_text(&detail));
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        for &u in &node.upstream {
            let _ = writeln!(out, "  n{u} -> n{i};");
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart, with `cached` and `run` classes.
pub fn mermaid(plan: &Plan, freshness: &[Freshness]) -> String {
    let mut out = String::from("flowchart LR\n");
    for (i, fresh) in freshness.iter().enumerate() {
        let (title, detail) = node_caption(plan, i);
        let class = if fresh.is_cached() { "cached" } else { "run" };
        let _ = writeln!(out, "  n{i}[\"{}<br/>{}\"]:::{class}", mermaid_text(&title), mermaid_text(&detail));
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        for &u in &node.upstream {
            let _ = writeln!(out, "  n{u} --> n{i}");
        }
    }
    out.push_str("  classDef cached fill:#d9d9d9\n  classDef run fill:#fdb863\n");
    out
}
