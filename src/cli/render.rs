//! Plain-text tables and DAG renderings for the terminal.

use std::fmt::Write as _;

use crate::freshness::Freshness;
use crate::pipeline::Plan;

/// A left-aligned text table with a header row.
pub struct Table {
    /// Every cell's text, one after another: a plan of 100,000 rows is one
    /// string here, not half a million.
    text: String,
    /// Where each cell ends in `text`.
    cell_ends: Vec<usize>,
    /// Where each row (the header first) ends in `cell_ends`.
    row_ends: Vec<usize>,
    /// Each column's widest cell, in characters.
    widths: Vec<usize>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        let mut table = Table { text: String::new(), cell_ends: Vec::new(), row_ends: Vec::new(), widths: Vec::new() };
        table.push(header);
        table
    }

    /// Adds a row; a cell longer than [`MAX_CELL`] characters is cut there
    /// and says how long it was (`--json` keeps whole values).
    pub fn row(&mut self, cells: Vec<String>) {
        self.push(cells.into_iter().map(clip));
    }

    fn push(&mut self, cells: impl IntoIterator<Item = impl AsRef<str>>) {
        for (column, cell) in cells.into_iter().enumerate() {
            let cell = cell.as_ref();
            if column == self.widths.len() {
                self.widths.push(0);
            }
            self.widths[column] = self.widths[column].max(cell.chars().count());
            self.text.push_str(cell);
            self.cell_ends.push(self.text.len());
        }
        self.row_ends.push(self.cell_ends.len());
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory");
        String::from_utf8(out).expect("cells are strings")
    }

    /// The table written line by line (a plan of 100,000 instances is never
    /// one string in memory).
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut line = String::new();
        let mut first = 0;
        for &end in &self.row_ends {
            line.clear();
            for (column, c) in (first..end).enumerate() {
                let cell = &self.text[if c == 0 { 0 } else { self.cell_ends[c - 1] }..self.cell_ends[c]];
                if column > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                // Padded by hand: `format!`'s width argument is limited to u16.
                line.extend(std::iter::repeat_n(' ', self.widths[column] - cell.chars().count()));
            }
            writeln!(out, "{}", line.trim_end())?;
            first = end;
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
