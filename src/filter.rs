//! `--where` expressions of `ablate history`: a tokenizer, a recursive-descent
//! parser and an evaluator over loaded rows.
//!
//! Filtering happens in Rust rather than in SQL so that user text never
//! reaches a query string, and so that axes, parameters and metrics (stored as
//! JSON and as rows of another table) compare with one set of rules.
//!
//! ```text
//! expr       := and_expr ("or" and_expr)*
//! and_expr   := primary ("and" primary)*
//! primary    := "(" expr ")" | comparison
//! comparison := field op literal
//! field      := name | "param." name | "axis." name | "metric." name   (names may contain dots)
//! op         := "=" | "==" | "!=" | "<" | "<=" | ">" | ">=" | "~"      (~ is "contains")
//! literal    := "string" | 'string' | number | true | false
//! ```

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Value};

/// A parse error at a 1-based character column of the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

impl ExprError {
    /// The error with the expression and a caret under the column, for the terminal.
    pub fn render(&self, expr: &str) -> String {
        format!("column {}: {}\n  {expr}\n  {}^", self.column, self.message, " ".repeat(self.column.saturating_sub(1)))
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ExprError {}

/// The names a field may take, for messages about one that matches nothing.
pub const FIELDS: &str = "axes by name, param.NAME, metric.NAME, key, stage, pipeline, kind, done_at, run";

/// What an expression reads of a row. The filter states it rather than
/// naming the store's row type, so it sits below the store (which implements
/// it for `HistoryRow`).
pub trait Row {
    fn axes(&self) -> &Map<String, Value>;
    fn params(&self) -> &Map<String, Value>;
    fn metric(&self, name: &str) -> Option<f64>;
    fn pipeline(&self) -> &str;
    fn stage(&self) -> &str;
    fn kind(&self) -> &str;
    fn key(&self) -> &str;
    fn done_at(&self) -> Option<&str>;
    fn run(&self) -> i64;
}

/// What a name in an expression or a sort key refers to.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// An axis if the row has one by that name, else a parameter, else one of
    /// the row's own fields (`pipeline`, `stage`, `kind`, `key`, `done_at`, `run`).
    Bare(String),
    Param(String),
    Axis(String),
    Metric(String),
}

impl Field {
    /// Reads `param.X`, `axis.X`, `metric.X` or a bare name.
    pub fn parse(text: &str) -> Field {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("param.") {
            Field::Param(rest.to_owned())
        } else if let Some(rest) = text.strip_prefix("axis.") {
            Field::Axis(rest.to_owned())
        } else if let Some(rest) = text.strip_prefix("metric.") {
            Field::Metric(rest.to_owned())
        } else {
            Field::Bare(text.to_owned())
        }
    }

    /// The field as written (`metric.loss`, `seed`).
    pub fn name(&self) -> String {
        match self {
            Field::Bare(n) => n.clone(),
            Field::Param(n) => format!("param.{n}"),
            Field::Axis(n) => format!("axis.{n}"),
            Field::Metric(n) => format!("metric.{n}"),
        }
    }

    /// The field's value in a row; `None` when the row lacks it.
    pub fn get(&self, row: &impl Row) -> Option<Value> {
        match self {
            Field::Param(name) => row.params().get(name).cloned(),
            Field::Axis(name) => row.axes().get(name).cloned(),
            Field::Metric(name) => row.metric(name).map(Value::from),
            Field::Bare(name) => row.axes().get(name).or_else(|| row.params().get(name)).cloned().or_else(|| match name.as_str() {
                "pipeline" => Some(Value::from(row.pipeline())),
                "stage" => Some(Value::from(row.stage())),
                "kind" => Some(Value::from(row.kind())),
                "key" => Some(Value::from(row.key())),
                "done_at" => row.done_at().map(Value::from),
                "run" => Some(Value::from(row.run())),
                _ => None,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `column`: where the field's name starts (1-based), for errors about it.
    Cmp {
        field: Field,
        op: Op,
        value: Literal,
        column: usize,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Num(f64),
    Op(Op),
    And,
    Or,
    LParen,
    RParen,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Name(n) => format!("name `{n}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Op(_) => "an operator".into(),
            Tok::And => "`and`".into(),
            Tok::Or => "`or`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

/// Tokens with their 1-based starting columns.
fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let (tok, len) = match (c, two.as_str()) {
            (_, "!=") => (Tok::Op(Op::Ne), 2),
            (_, "<=") => (Tok::Op(Op::Le), 2),
            (_, ">=") => (Tok::Op(Op::Ge), 2),
            (_, "==") => (Tok::Op(Op::Eq), 2),
            ('=', _) => (Tok::Op(Op::Eq), 1),
            ('<', _) => (Tok::Op(Op::Lt), 1),
            ('>', _) => (Tok::Op(Op::Gt), 1),
            ('~', _) => (Tok::Op(Op::Contains), 1),
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('"' | '\'', _) => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(ExprError { column, message: format!("unterminated string (missing closing {c})") }),
                        Some('\\') if matches!(chars.get(j + 1), Some(&n) if n == c || n == '\\') => {
                            s.push(chars[j + 1]);
                            j += 2;
                        }
                        Some(&q) if q == c => break,
                        Some(&other) => {
                            s.push(other);
                            j += 1;
                        }
                    }
                }
                (Tok::Str(s), j + 1 - i)
            }
            _ if c.is_ascii_digit()
                || (matches!(c, '-' | '+' | '.') && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit() || *n == '.')) =>
            {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric()
                        || chars[j] == '.'
                        || ((chars[j] == '-' || chars[j] == '+') && matches!(chars[j - 1], 'e' | 'E')))
                {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                match text.parse::<f64>() {
                    Ok(n) if n.is_finite() => (Tok::Num(n), j - i),
                    _ => return Err(ExprError { column, message: format!("`{text}` is not a number") }),
                }
            }
            _ if c.is_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || matches!(chars[j], '_' | '.' | '-' | '/')) {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                let tok = match word.to_ascii_lowercase().as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    _ => Tok::Name(word),
                };
                (tok, j - i)
            }
            _ => return Err(ExprError { column, message: format!("unexpected character `{c}`") }),
        };
        out.push((tok, column));
        i += len;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &(Tok, usize) {
        &self.toks[self.pos]
    }
    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ExprError> {
        if depth > 64 {
            return Err(ExprError { column: self.peek().1, message: "parentheses nested deeper than 64 levels".into() });
        }
        let mut left = self.and_expr(depth)?;
        while self.peek().0 == Tok::Or {
            self.next();
            left = Expr::Or(Box::new(left), Box::new(self.and_expr(depth)?));
        }
        Ok(left)
    }

    fn and_expr(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.primary(depth)?;
        while self.peek().0 == Tok::And {
            self.next();
            left = Expr::And(Box::new(left), Box::new(self.primary(depth)?));
        }
        Ok(left)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let (tok, column) = self.next();
        match tok {
            Tok::LParen => {
                let inner = self.expr(depth + 1)?;
                let (close, c) = self.next();
                if close != Tok::RParen {
                    return Err(ExprError {
                        column: c,
                        message: format!("expected `)` to close the `(` at column {column}, found {}", close.describe()),
                    });
                }
                Ok(inner)
            }
            Tok::Name(name) => {
                let field = Field::parse(&name);
                if let Field::Param(n) | Field::Axis(n) | Field::Metric(n) = &field
                    && n.is_empty()
                {
                    return Err(ExprError { column, message: format!("`{name}` needs a name after the dot") });
                }
                let (op, c) = self.next();
                let Tok::Op(op) = op else {
                    return Err(ExprError {
                        column: c,
                        message: format!("expected an operator (=, !=, <, <=, >, >=, ~) after `{name}`, found {}", op.describe()),
                    });
                };
                let (value, c) = self.next();
                let value = match value {
                    Tok::Str(s) => Literal::Str(s),
                    Tok::Num(n) => Literal::Num(n),
                    Tok::Name(w) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
                    Tok::Name(w) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
                    Tok::Name(w) => {
                        return Err(ExprError { column: c, message: format!("expected a value, found name `{w}` (quote text: \"{w}\")") });
                    }
                    other => {
                        return Err(ExprError {
                            column: c,
                            message: format!("expected a value (a \"string\" or a number), found {}", other.describe()),
                        });
                    }
                };
                Ok(Expr::Cmp { field, op, value, column })
            }
            other => Err(ExprError {
                column,
                message: format!("expected a comparison such as `loss = \"cosine\"` or `(`, found {}", other.describe()),
            }),
        }
    }
}

/// Parses an expression; the error names the column where it went wrong.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let toks = tokenize(text)?;
    let mut parser = Parser { toks, pos: 0 };
    let expr = parser.expr(0)?;
    let (tok, column) = parser.next();
    if tok != Tok::End {
        let hint = if matches!(tok, Tok::Name(_) | Tok::LParen) { " (join comparisons with `and` or `or`)" } else { "" };
        return Err(ExprError { column, message: format!("unexpected {}{hint}", tok.describe()) });
    }
    Ok(expr)
}

/// A JSON value as text (strings without quotes).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn compare(value: &Value, op: Op, lit: &Literal) -> bool {
    if op == Op::Contains {
        let needle = match lit {
            Literal::Str(s) => s.clone(),
            Literal::Num(n) => n.to_string(),
            Literal::Bool(b) => b.to_string(),
        };
        return value_text(value).contains(&needle);
    }
    // A boolean equals only a boolean: not 1, not "true".
    let ordering = match lit {
        Literal::Num(n) => as_number(value).and_then(|v| v.partial_cmp(n)),
        Literal::Bool(b) => value.as_bool().map(|v| v.cmp(b)),
        Literal::Str(_) if value.is_boolean() => None,
        // Numbers compare numerically with numeric text ("0.1" = 0.10).
        Literal::Str(s) => match (value, s.trim().parse::<f64>()) {
            (Value::Number(n), Ok(x)) => n.as_f64().and_then(|v| v.partial_cmp(&x)),
            _ => Some(value_text(value).as_str().cmp(s.as_str())),
        },
    };
    let Some(ordering) = ordering else { return false };
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
        Op::Contains => unreachable!("handled above"),
    }
}

impl Expr {
    /// Whether a row matches. A comparison on a field the row lacks is false
    /// whatever the operator, so `metric.x != 1` selects rows that have `x`.
    pub fn matches(&self, row: &impl Row) -> bool {
        match self {
            Expr::Cmp { field, op, value, .. } => field.get(row).is_some_and(|v| !v.is_null() && compare(&v, *op, value)),
            Expr::And(a, b) => a.matches(row) && b.matches(row),
            Expr::Or(a, b) => a.matches(row) || b.matches(row),
        }
    }
}

impl Expr {
    /// The first comparison that would silently select nothing: on a field
    /// none of `rows` has (most likely a misspelling), or of a field that is
    /// true/false in every row with anything but `true` or `false` (or the
    /// other way round). `None` when there are no rows to judge by.
    pub fn unusable_comparison<R: Row>(&self, rows: &[R]) -> Option<ExprError> {
        match self {
            Expr::Cmp { field, op, value, column } => {
                let values: Vec<Value> = rows.iter().filter_map(|r| field.get(r)).filter(|v| !v.is_null()).collect();
                let error = |message| Some(ExprError { column: *column, message });
                let name = field.name();
                if rows.is_empty() {
                    None
                } else if rows.iter().all(|r| field.get(r).is_none()) {
                    error(format!("no row has the field `{name}` ({FIELDS})"))
                } else if *op == Op::Contains {
                    None // compares text, of any value
                } else if !values.is_empty() && values.iter().all(Value::is_boolean) && !matches!(value, Literal::Bool(_)) {
                    error(format!("`{name}` is true or false in every row that has it: compare it with true or false"))
                } else if matches!(value, Literal::Bool(_)) && !values.iter().any(Value::is_boolean) {
                    error(format!("`{name}` is never true or false: compare it with a number or a \"string\""))
                } else {
                    None
                }
            }
            Expr::And(a, b) | Expr::Or(a, b) => a.unusable_comparison(rows).or_else(|| b.unusable_comparison(rows)),
        }
    }
}

/// Orders two optional values: numbers numerically, else as text; missing last.
pub fn order_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p.partial_cmp(&q).unwrap_or(Ordering::Equal),
            _ => value_text(x).cmp(&value_text(y)),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A row as JSON: `{"axes": {…}, "params": {…}, "metrics": {…}}`.
    struct TestRow(Value);

    impl Row for TestRow {
        fn axes(&self) -> &Map<String, Value> {
            self.0["axes"].as_object().unwrap()
        }
        fn params(&self) -> &Map<String, Value> {
            self.0["params"].as_object().unwrap()
        }
        fn metric(&self, name: &str) -> Option<f64> {
            self.0["metrics"].get(name)?.as_f64()
        }
        fn pipeline(&self) -> &str {
            "p"
        }
        fn stage(&self) -> &str {
            "train"
        }
        fn kind(&self) -> &str {
            "command"
        }
        fn key(&self) -> &str {
            "abcd"
        }
        fn done_at(&self) -> Option<&str> {
            None
        }
        fn run(&self) -> i64 {
            1
        }
    }

    fn row(axes: Value, params: Value, metrics: &[(&str, f64)]) -> TestRow {
        let metrics: Map<String, Value> = metrics.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
        TestRow(json!({"axes": axes, "params": params, "metrics": metrics}))
    }

    #[test]
    fn precedence_parentheses_and_metric_names_with_dots() {
        let e = parse(r#"loss = "cosine" and (captions = "long" or metric.sugarcrepe.mean > 0.7)"#).unwrap();
        let long = row(json!({"loss": "cosine", "captions": "long"}), json!({}), &[]);
        let short_good = row(json!({"loss": "cosine", "captions": "short"}), json!({}), &[("sugarcrepe.mean", 0.8)]);
        let short_bad = row(json!({"loss": "cosine", "captions": "short"}), json!({}), &[("sugarcrepe.mean", 0.6)]);
        let infonce = row(json!({"loss": "infonce", "captions": "long"}), json!({}), &[]);
        assert!(e.matches(&long) && e.matches(&short_good));
        assert!(!e.matches(&short_bad) && !e.matches(&infonce));
        // `and` binds tighter than `or`.
        let e = parse(r#"loss = "infonce" or captions = "short" and metric.sugarcrepe.mean >= 0.8"#).unwrap();
        assert!(e.matches(&infonce) && e.matches(&short_good) && !e.matches(&short_bad) && !e.matches(&long));
    }

    #[test]
    fn operators_and_fields() {
        let r = row(json!({"seed": 1}), json!({"lr": 0.001, "run": "python train.py"}), &[("loss", 0.25)]);
        for (text, expected) in [
            ("seed = 1", true),
            ("axis.seed != 1", false),
            ("seed = \"1\"", true),
            ("param.lr < 1e-2", true),
            ("lr >= 0.001", true),
            ("run ~ 'train'", true),
            ("run ~ \"eval\"", false),
            ("metric.loss <= 0.25", true),
            ("metric.loss > 0.25", false),
            ("metric.missing != 1", false),
            ("stage = \"train\" AND kind == 'command'", true),
        ] {
            assert_eq!(parse(text).unwrap().matches(&r), expected, "{text}");
        }
    }

    #[test]
    fn a_field_no_row_has_is_named_at_its_column() {
        let rows = [row(json!({"loss": "cosine"}), json!({"lr": 0.1}), &[("top1", 0.5)]), row(json!({}), json!({}), &[])];
        let e = parse("loss = 'a' or (lr > 0 and metric.top5 > 1)").unwrap();
        let err = e.unusable_comparison(&rows).unwrap();
        assert_eq!((err.column, err.message.starts_with("no row has the field `metric.top5`")), (27, true), "{err}");
        // One row having the field is enough, and no rows judge nothing.
        assert_eq!(parse("metric.top1 > 0 and stage = 'x'").unwrap().unusable_comparison(&rows), None);
        assert_eq!(e.unusable_comparison::<TestRow>(&[]), None);
    }

    /// A boolean equals only `true` or `false`: `flip = 1` and `flip = "true"`
    /// used to select the rows where `flip` is true.
    #[test]
    fn booleans_compare_only_with_booleans() {
        let on = row(json!({"flip": true, "n": 1}), json!({}), &[]);
        let off = row(json!({"flip": false, "n": 0}), json!({}), &[]);
        for (text, on_matches, off_matches) in [
            ("flip = true", true, false),
            ("flip != true", false, true),
            ("flip = false", false, true),
            ("flip = 1", false, false),
            ("flip = 'true'", false, false),
            ("n = true", false, false),
            ("n = 1", true, false),
        ] {
            let e = parse(text).unwrap();
            assert_eq!((e.matches(&on), e.matches(&off)), (on_matches, off_matches), "{text}");
        }
        let rows = [on, off];
        for (text, says) in [
            ("flip = 1", "is true or false in every row that has it"),
            ("flip > 'a'", "is true or false"),
            ("n = true", "is never true or false"),
        ] {
            let err = parse(text).unwrap().unusable_comparison(&rows).unwrap_or_else(|| panic!("{text} is accepted"));
            assert!(err.message.contains(says) && err.column == 1, "{text}: {err}");
        }
        for text in ["flip = false", "flip ~ 'ru'", "n >= 0"] {
            assert_eq!(parse(text).unwrap().unusable_comparison(&rows), None, "{text}");
        }
    }

    #[test]
    fn errors_point_at_the_column() {
        let cases = [
            ("loss = ", 8, "expected a value"),
            ("loss = cosine", 8, "quote text"),
            ("(loss = \"a\"", 12, "expected `)`"),
            ("loss \"a\"", 6, "expected an operator"),
            ("loss = \"a\" captions = \"b\"", 12, "join comparisons"),
            ("loss = \"a", 8, "unterminated string"),
            ("loss # 1", 6, "unexpected character"),
            ("and x = 1", 1, "expected a comparison"),
            ("metric. > 1", 1, "needs a name"),
        ];
        for (text, column, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
        assert_eq!(
            parse("x = ").unwrap_err().render("x = "),
            "column 5: expected a value (a \"string\" or a number), found the end of the expression\n  x = \n      ^"
        );
    }
}
