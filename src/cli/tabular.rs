//! Rows of JSON cells printed as a text table, JSON or CSV: the one output path
//! of `history` and `sql`.

use serde_json::Value;

use super::print_json;
use super::render::Table;
use crate::filter::value_text;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl Format {
    pub fn from_flags(json: bool, csv: bool) -> Format {
        if json {
            Format::Json
        } else if csv {
            Format::Csv
        } else {
            Format::Table
        }
    }
}

/// A cell as plain text: strings unquoted, NULL empty.
pub fn text(v: &Value) -> String {
    if v.is_null() { String::new() } else { value_text(v) }
}

/// One CSV field (RFC 4180 quoting).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// Prints columns and rows; JSON is an array of objects keyed by column.
pub fn print(columns: &[String], rows: &[Vec<Value>], format: Format) {
    match format {
        Format::Json => {
            let objects = rows.iter().map(|r| Value::Object(columns.iter().cloned().zip(r.iter().cloned()).collect())).collect();
            print_json(&Value::Array(objects));
        }
        Format::Csv => {
            println!("{}", columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            for r in rows {
                println!("{}", r.iter().map(|v| csv_field(&text(v))).collect::<Vec<_>>().join(","));
            }
        }
        Format::Table => {
            let header: Vec<&str> = columns.iter().map(String::as_str).collect();
            let mut table = Table::new(&header);
            for r in rows {
                table.row(r.iter().map(|v| text(v).replace('\n', " ")).collect());
            }
            print!("{}", table.render());
        }
    }
}
