//! HTML building blocks. Every text that comes from the store, a dashboard
//! file or a request goes through [`esc`] before it reaches a page; only
//! `Cell::Raw` and the `body` of a page take markup, built by this module or a
//! renderer from escaped parts.

use std::fmt::Write as _;

use serde_json::Value;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value for a link.
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A table cell: text (escaped when rendered) or markup.
pub enum Cell {
    Text(String),
    Raw(String),
    /// A number, right-aligned.
    Num(String),
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

/// A JSON cell from a query: numbers right-aligned, NULL as an empty cell.
pub fn json_cell(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Text(String::new()),
        Value::Number(n) => Cell::Num(match n.as_f64() {
            Some(f) if n.is_f64() => format_number(f),
            _ => n.to_string(),
        }),
        Value::String(s) => Cell::Text(s.clone()),
        other => Cell::Text(other.to_string()),
    }
}

/// Floats with up to 4 decimals, without trailing zeros.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "0" || s == "-0" { format!("{v:.3e}") } else { s.to_owned() }
}

/// A `<table>` with a header row.
pub fn table(header: &[&str], rows: Vec<Vec<Cell>>) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            match cell {
                Cell::Text(t) => {
                    let _ = write!(out, "<td>{}</td>", esc(&t));
                }
                Cell::Raw(m) => {
                    let _ = write!(out, "<td>{m}</td>");
                }
                Cell::Num(n) => {
                    let _ = write!(out, "<td class=\"num\">{}</td>", esc(&n));
                }
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A link with escaped text; `href` must be built from [`url`]-encoded parts.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// A status word in its colour.
pub fn status(s: &str) -> String {
    format!("<span class=\"st st-{}\">{}</span>", esc(&s.replace(|c: char| !c.is_ascii_alphanumeric(), "")), esc(s))
}

pub fn empty(text: &str) -> String {
    format!("<p class=\"empty\">{}</p>", esc(text))
}

pub fn error_box(text: &str) -> String {
    format!("<pre class=\"error\">{}</pre>", esc(text))
}

pub fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => String::new(),
        Some(s) if s < 60.0 => format!("{s:.1} s"),
        Some(s) if s < 3600.0 => format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => format!("{}h {:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64),
    }
}

/// Colours by status, shared by the status words and the DAG's nodes.
pub const STATUS_COLORS: &[(&str, &str)] = &[
    ("done", "#b7e1a1"),
    ("cached", "#d9d9d9"),
    ("running", "#9ecae1"),
    ("failed", "#f4a3a3"),
    ("skipped", "#fdd49e"),
    ("interrupted", "#cbc9e2"),
    ("lost", "#cbc9e2"),
    ("invalidated", "#fdd49e"),
    ("pending", "#ffffff"),
];

pub fn status_color(s: &str) -> &'static str {
    STATUS_COLORS.iter().find(|(n, _)| *n == s).map_or("#ffffff", |(_, c)| c)
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:.6em 1.2em}header a{color:#fff;margin-right:1.2em;text-decoration:none}
main{padding:1em 1.5em;max-width:1400px}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;background:#fff;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#eceff1}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0;overflow-x:auto}
.panel h2{margin-top:.2em}.empty{color:#888;font-style:italic}
pre.error{background:#fdecea;color:#8a1c1c;padding:.6em;white-space:pre-wrap}
.st{padding:0 .4em;border-radius:3px}
code,pre{font-family:'DejaVu Sans Mono',monospace;font-size:.85em}
.bar{background:#eee;height:12px;width:300px;display:inline-block;vertical-align:middle}
.bar>span{background:#4caf50;height:12px;display:block}
svg.dag text{font-family:'DejaVu Sans',sans-serif;font-size:11px}
";

fn status_css() -> String {
    let mut out = String::new();
    for (name, color) in STATUS_COLORS {
        let _ = write!(out, ".st-{name}{{background:{color}}}");
    }
    out
}

/// A whole page; `body` is markup.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · ablate</title><style>{CSS}{}</style></head>\
         <body><header><a href=\"/\"><b>ablate</b></a><a href=\"/\">runs</a><a href=\"/pipelines\">pipelines</a><a href=\"/dashboards\">dashboards</a></header>\
         <main>{body}</main></body></html>",
        esc(title),
        status_css()
    )
}

/// A self-contained page for a file (no links back to a server).
pub fn standalone(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}{}</style></head><body><main>{body}</main></body></html>",
        esc(title),
        status_css()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_urls() {
        assert_eq!(esc("<script>alert('x')</script>&\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;");
        assert_eq!(url("a b/../é"), "a%20b%2F..%2F%C3%A9");
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(0.123456), "0.1235");
    }
}
