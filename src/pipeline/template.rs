//! Parameter values that may reference ablation axes.
//!
//! A string that is exactly `"${axis}"` takes the axis value with its type; a
//! `${axis}` inside a longer string is interpolated as text. `$${` writes a
//! literal `${`.

use serde_json::{Map, Value};
use toml_edit::Item;

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Literal(Value),
    /// The whole value is one axis reference: keeps the axis value's type.
    Axis(String),
    /// A string with interpolated axis references.
    Text(Vec<Piece>),
    Array(Vec<Template>),
    Table(Vec<(String, Template)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Axis(String),
}

impl Template {
    pub fn from_item(item: &Item) -> Result<Template, String> {
        match item {
            Item::Value(v) => Template::from_value(v),
            Item::Table(t) => {
                t.iter().map(|(k, i)| Ok((k.to_owned(), Template::from_item(i)?))).collect::<Result<_, String>>().map(Template::Table)
            }
            Item::ArrayOfTables(a) => a
                .iter()
                .map(|t| {
                    t.iter().map(|(k, i)| Ok((k.to_owned(), Template::from_item(i)?))).collect::<Result<_, String>>().map(Template::Table)
                })
                .collect::<Result<_, String>>()
                .map(Template::Array),
            Item::None => Ok(Template::Literal(Value::Null)),
        }
    }

    fn from_value(value: &toml_edit::Value) -> Result<Template, String> {
        Ok(match value {
            toml_edit::Value::String(s) => parse_string(s.value())?,
            toml_edit::Value::Integer(i) => Template::Literal(Value::from(*i.value())),
            toml_edit::Value::Float(f) => match serde_json::Number::from_f64(*f.value()) {
                Some(n) => Template::Literal(Value::Number(n)),
                None => return Err("NaN and infinite floats are not supported as parameters".into()),
            },
            toml_edit::Value::Boolean(b) => Template::Literal(Value::from(*b.value())),
            toml_edit::Value::Datetime(d) => Template::Literal(Value::from(d.value().to_string())),
            toml_edit::Value::Array(a) => Template::Array(a.iter().map(Template::from_value).collect::<Result<_, _>>()?),
            toml_edit::Value::InlineTable(t) => {
                Template::Table(t.iter().map(|(k, v)| Ok((k.to_owned(), Template::from_value(v)?))).collect::<Result<_, String>>()?)
            }
        })
    }

    /// Names of the axes this value references, in order of appearance.
    pub fn axis_refs(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_refs(&mut out);
        out
    }

    fn collect_refs<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Template::Literal(_) => {}
            Template::Axis(a) => out.push(a),
            Template::Text(pieces) => out.extend(pieces.iter().filter_map(|p| match p {
                Piece::Axis(a) => Some(a.as_str()),
                Piece::Text(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect_refs(out)),
            Template::Table(entries) => entries.iter().for_each(|(_, t)| t.collect_refs(out)),
        }
    }

    /// The value for one combination of axis values (`lookup` returns an axis' value).
    pub fn resolve<'v>(&self, lookup: &impl Fn(&str) -> &'v Value) -> Value {
        match self {
            Template::Literal(v) => v.clone(),
            Template::Axis(a) => lookup(a).clone(),
            Template::Text(pieces) => {
                let mut s = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => s.push_str(t),
                        Piece::Axis(a) => match lookup(a) {
                            Value::String(v) => s.push_str(v),
                            other => s.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(s)
            }
            Template::Array(items) => Value::Array(items.iter().map(|t| t.resolve(lookup)).collect()),
            Template::Table(entries) => Value::Object(entries.iter().map(|(k, t)| (k.clone(), t.resolve(lookup))).collect::<Map<_, _>>()),
        }
    }
}

fn parse_string(s: &str) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            text.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(format!("unterminated axis reference in {s:?} (write `${{axis}}`, or `$${{` for a literal `${{`)"));
            };
            let name = &tail[..end];
            if !super::parse::valid_name(name) {
                return Err(format!("invalid axis reference `${{{name}}}` in {s:?}"));
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Axis(name.to_owned()));
            rest = &tail[end + 1..];
        } else {
            text.push('$');
            rest = &after[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(match pieces.as_slice() {
        [] => Template::Literal(Value::from("")),
        [Piece::Axis(a)] => Template::Axis(a.clone()),
        [Piece::Text(t)] => Template::Literal(Value::from(t.as_str())),
        _ => Template::Text(pieces),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_reference_keeps_type_and_text_interpolates() {
        let v = Value::from(3);
        let lookup = |_: &str| &v;
        assert_eq!(parse_string("${seed}").unwrap().resolve(&lookup), Value::from(3));
        assert_eq!(parse_string("run-${seed}").unwrap().resolve(&lookup), Value::from("run-3"));
        assert_eq!(parse_string("a $${x} b").unwrap(), Template::Literal(Value::from("a ${x} b")));
        assert_eq!(parse_string("cost $5").unwrap(), Template::Literal(Value::from("cost $5")));
        assert!(parse_string("run-${seed").is_err());
        assert!(parse_string("${se ed}").is_err());
    }
}
