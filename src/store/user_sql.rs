//! User SQL: arbitrary read-only queries (`ablate sql`, dashboard panels),
//! their `:name` parameters, and their cells as JSON. Runs only on a
//! read-only store, under a time limit the engine enforces.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use sqlx::any::{AnyRow, AnyTypeInfoKind};
use sqlx::{Column as _, Row as _, ValueRef as _};

use super::{Backend, Store};

/// The result of an arbitrary read-only query: column names and JSON cells.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

fn sql_error(engine: &str, e: sqlx::Error, limit: Option<Duration>) -> anyhow::Error {
    if let sqlx::Error::Database(db) = &e {
        let message = db.message();
        // SQLite's SQLITE_INTERRUPT (from the progress handler), PostgreSQL's
        // query_canceled (from statement_timeout).
        if let Some(limit) = limit
            && matches!(db.code().as_deref(), Some("9" | "57014"))
        {
            return anyhow::anyhow!("the query ran longer than {} s and was stopped ({engine}: {message})", limit.as_secs_f64());
        }
        if message.contains("readonly") || message.contains("read-only") || message.contains("query_only") {
            return anyhow::anyhow!("refused: the store is opened read-only, so queries cannot change it ({engine}: {message})");
        }
        return anyhow::anyhow!("SQL error: {message}");
    }
    anyhow::Error::new(e).context("running the query")
}

/// A cell as JSON, whatever type it holds (on SQLite, columns of views and
/// expressions have no declared type, so the value's own type decides).
fn cell(row: &AnyRow, i: usize) -> Value {
    let Ok(raw) = row.try_get_raw(i) else { return Value::Null };
    if raw.is_null() {
        return Value::Null;
    }
    let kind = raw.type_info().kind();
    match kind {
        AnyTypeInfoKind::Bool => row.try_get::<bool, _>(i).map(Value::from).unwrap_or(Value::Null),
        AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
            row.try_get::<i64, _>(i).map(Value::from).unwrap_or(Value::Null)
        }
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => {
            row.try_get::<f64, _>(i).map(|v| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)).unwrap_or(Value::Null)
        }
        AnyTypeInfoKind::Blob => row.try_get::<Vec<u8>, _>(i).map(|b| Value::from(format!("<{} bytes>", b.len()))).unwrap_or(Value::Null),
        AnyTypeInfoKind::Text => row.try_get::<String, _>(i).map(Value::from).unwrap_or(Value::Null),
        AnyTypeInfoKind::Null => Value::Null,
    }
}

/// A row that came back as one JSON object (see `Dialect::user_query_as_json`),
/// with its columns in their order: serde_json's maps would sort them.
struct OrderedRow(Vec<(String, Value)>);

/// A cell's JSON text as a value, a number keeping what the server wrote:
/// integers stay integers up to u64, `-0` stays a negative zero, a double
/// is read exactly, and a `numeric` too large for a double comes back as
/// its digits (serde_json would fail the whole row on it).
fn json_cell(raw: &serde_json::value::RawValue) -> serde_json::Result<Value> {
    let text = raw.get();
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        let integer = !text.contains(['.', 'e', 'E']) && text != "-0";
        let number = if integer {
            text.parse::<i64>().map(serde_json::Number::from).or_else(|_| text.parse::<u64>().map(serde_json::Number::from)).ok()
        } else {
            None
        };
        if let Some(n) = number {
            return Ok(Value::Number(n));
        }
        if let Ok(double) = text.parse::<f64>() {
            // A `numeric` beyond doubles keeps its digits.
            return Ok(serde_json::Number::from_f64(double).map_or_else(|| Value::String(text.to_owned()), Value::Number));
        }
    }
    serde_json::from_str(text)
}

impl<'de> serde::Deserialize<'de> for OrderedRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Columns;
        impl<'de> serde::de::Visitor<'de> for Columns {
            type Value = OrderedRow;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedRow, A::Error> {
                let mut columns = Vec::new();
                while let Some((name, raw)) = map.next_entry::<String, Box<serde_json::value::RawValue>>()? {
                    columns.push((name, json_cell(&raw).map_err(serde::de::Error::custom)?));
                }
                Ok(OrderedRow(columns))
            }
        }
        deserializer.deserialize_map(Columns)
    }
}

/// SQL prepared for a read-only run: `:name` parameters rewritten to sqlx's
/// numbered `?N` form (values are always bound, never spliced into the text),
/// and the bare words of the statement, upper-cased.
pub struct PreparedSql {
    pub sql: String,
    /// Parameter names in number order.
    pub names: Vec<String>,
    words: Vec<String>,
    /// The bare words, quoted names and strings (without their quotes), and
    /// the `=`, `(` and `.` between them, upper-cased, in order.
    tokens: Vec<String>,
    /// Something other than blanks and comments follows a `;`.
    several_statements: bool,
}

/// Statements that write outside the store even on a read-only connection
/// (`VACUUM INTO` creates a file, `ATTACH` may create one).
const REFUSED: &[&str] = &["ATTACH", "VACUUM"];

/// SQLite pragmas that take an argument and only read (`PRAGMA
/// table_info(runs)`); any other pragma given a value sets it.
const READING_PRAGMAS: &[&str] = &[
    "TABLE_INFO",
    "TABLE_XINFO",
    "TABLE_LIST",
    "INDEX_INFO",
    "INDEX_XINFO",
    "INDEX_LIST",
    "FOREIGN_KEY_LIST",
    "FOREIGN_KEY_CHECK",
    "INTEGRITY_CHECK",
    "QUICK_CHECK",
];

impl PreparedSql {
    /// The pragma a `PRAGMA [schema.]name = value` or `name(value)` statement
    /// would set (names quoted or not). Refused before it runs: on the
    /// read-only store SQLite fails some (`journal_mode`) with "database is
    /// locked", and others would change a pooled connection for the queries
    /// after it. A pragma without a value, or one that reads, passes.
    fn pragma_set(&self) -> Option<&str> {
        let t: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
        let rest = t.strip_prefix(&["PRAGMA"])?;
        let rest = match rest {
            [_, ".", name @ ..] => name,
            _ => rest,
        };
        match rest {
            [] | [_] => None,
            [name, ..] if READING_PRAGMAS.contains(name) => None,
            [name, ..] => Some(name),
        }
    }
}

/// Scans SQL, skipping string literals, quoted identifiers and comments.
pub fn prepare_sql(sql: &str) -> PreparedSql {
    prepare_sql_for(sql, '?')
}

/// [`prepare_sql`] numbering parameters with `prefix` (`?` or `$`).
fn prepare_sql_for(sql: &str, prefix: char) -> PreparedSql {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    let (mut ended, mut several_statements) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let comment = (c == '-' && chars.get(i + 1) == Some(&'-')) || (c == '/' && chars.get(i + 1) == Some(&'*'));
        several_statements |= ended && !c.is_whitespace() && !comment;
        ended |= c == ';';
        let closing = match c {
            '\'' => Some('\''),
            '"' => Some('"'),
            '`' => Some('`'),
            '[' => Some(']'),
            _ => None,
        };
        if let Some(close) = closing {
            out.push(c);
            i += 1;
            let start = i;
            while i < chars.len() {
                out.push(chars[i]);
                i += 1;
                if chars[i - 1] == close {
                    break;
                }
            }
            let end = if chars.get(i - 1) == Some(&close) && i > start { i - 1 } else { i };
            tokens.push(chars[start..end].iter().collect::<String>().to_uppercase());
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(chars[i]);
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            out.push_str("/*");
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                out.push(chars[i]);
                i += 1;
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            // PostgreSQL's cast (`x::int`), not a parameter.
            out.push_str("::");
            i += 2;
        } else if c == ':' && chars.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic() || *n == '_') {
            let start = i + 1;
            i = start;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let n = match names.iter().position(|x| *x == name) {
                Some(p) => p + 1,
                None => {
                    names.push(name);
                    names.len()
                }
            };
            out.push(prefix);
            out.push_str(&n.to_string());
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push_str(&word);
            words.push(word.to_ascii_uppercase());
            tokens.push(word.to_ascii_uppercase());
        } else {
            if matches!(c, '=' | '(' | '.') {
                tokens.push(c.to_string());
            }
            out.push(c);
            i += 1;
        }
    }
    PreparedSql { sql: out, names, words, tokens, several_statements }
}

impl Store {
    /// Runs an arbitrary query on a read-only store, binding `:name` parameters
    /// from `params` (a name without a value binds NULL), and stops it after
    /// `limit`. Refuses to run on a writable store: arbitrary SQL must never
    /// be able to change history.
    pub async fn read_only_query(
        &self,
        sql: &str,
        params: &HashMap<String, String>,
        limit: Option<Duration>,
    ) -> anyhow::Result<QueryResult> {
        anyhow::ensure!(self.read_only, "arbitrary SQL runs only on a store opened read-only");
        anyhow::ensure!(!sql.trim().trim_matches(';').trim().is_empty(), "the query is empty");
        let prepared = prepare_sql_for(sql, self.sql.param_prefix);
        if let Some(pragma) = prepared.pragma_set() {
            anyhow::bail!("refused: PRAGMA {} sets a value, and queries on the store are read-only", pragma.to_ascii_lowercase());
        }
        let PreparedSql { sql, names, words, several_statements, .. } = prepared;
        anyhow::ensure!(!several_statements, "give one statement at a time (the results of several would be mixed in one table)");
        if let Some(word) = words.iter().find(|w| REFUSED.contains(&w.as_str())) {
            anyhow::bail!("refused: {word} can write files, and queries on the store are read-only");
        }
        if self.sql.user_query_as_json.is_some()
            && !words.first().is_some_and(|w| ["SELECT", "WITH", "VALUES", "TABLE"].contains(&w.as_str()))
        {
            anyhow::bail!(
                "refused: on {} the store answers one read-only query (SELECT, WITH, VALUES or TABLE), and this is not one",
                self.sql.name
            );
        }
        let wrapped = self.sql.user_query_as_json.map(|w| w.replace("{query}", sql.trim().trim_end_matches(';')));
        let text = wrapped.as_deref().unwrap_or(&sql);
        let binds: Vec<Option<String>> = names.iter().map(|name| params.get(name).cloned()).collect();
        let mut conn = self.pool.acquire().await?;
        let fetched = match self.workspace.backend() {
            Backend::Sqlite => super::sqlite::interruptible_query(&self.workspace.db_path(), text, &binds, limit).await,
            Backend::Postgres => super::postgres::limited_query(&mut conn, text, &binds, limit).await,
        }
        .map_err(|e| sql_error(self.sql.name, e, limit))?;
        use sqlx::Executor as _;
        let (mut columns, rows): (Vec<String>, Vec<Vec<Value>>) = if wrapped.is_some() {
            // One JSON object per row: names from the first, values in order.
            // JSON writes 9.0 as 9: the statement's column types (where the
            // driver can name them) keep floats floats, as on SQLite.
            let floats: Vec<bool> = match conn.describe(&sql).await {
                Ok(d) => {
                    d.columns().iter().map(|c| matches!(c.type_info().kind(), AnyTypeInfoKind::Real | AnyTypeInfoKind::Double)).collect()
                }
                Err(_) => Vec::new(),
            };
            let mut columns = Vec::new();
            let mut rows = Vec::with_capacity(fetched.len());
            for r in &fetched {
                let OrderedRow(cells) = serde_json::from_str(&r.try_get::<String, _>(0)?).context("reading a row of the result")?;
                if columns.is_empty() {
                    columns = cells.iter().map(|(name, _)| name.clone()).collect();
                }
                let values = cells.into_iter().enumerate().map(|(i, (_, v))| match v.as_i64() {
                    Some(n) if floats.get(i) == Some(&true) => serde_json::Number::from_f64(n as f64).map_or(v, Value::Number),
                    _ => v,
                });
                rows.push(values.collect());
            }
            (columns, rows)
        } else {
            let columns = fetched.first().map(|r| r.columns().iter().map(|c| c.name().to_owned()).collect()).unwrap_or_default();
            (columns, fetched.iter().map(|r| (0..r.columns().len()).map(|i| cell(r, i)).collect()).collect())
        };
        if fetched.is_empty() {
            // No rows: ask the engine for the column names of the statement.
            columns = match conn.describe(&sql).await {
                Ok(d) => d.columns().iter().map(|c| c.name().to_owned()).collect(),
                Err(_) => Vec::new(),
            };
        }
        // Several statements may yield rows of different widths: fit each to the first's columns.
        let rows = rows
            .into_iter()
            .map(|mut r| {
                r.resize(columns.len(), Value::Null);
                r
            })
            .collect();
        Ok(QueryResult { columns, rows })
    }
}

#[cfg(test)]
mod json_cell_tests {
    use super::json_cell;

    #[test]
    fn numbers_keep_their_kind_and_every_bit() {
        let cell = |text: &str| json_cell(&serde_json::value::RawValue::from_string(text.to_owned()).unwrap()).unwrap();
        assert_eq!(cell("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(cell("-9223372036854775808").as_i64(), Some(i64::MIN));
        assert!(cell("-0").as_f64().is_some_and(|z| z == 0.0 && z.is_sign_negative()));
        assert_eq!(cell("22.535182651462346").as_f64(), Some(22.535182651462346));
        assert_eq!(cell("1e400"), serde_json::json!("1e400"), "a numeric beyond doubles keeps its digits");
        assert_eq!(cell("\"x\""), serde_json::json!("x"));
        assert_eq!(cell("[1, 2]"), serde_json::json!([1, 2]));
    }
}

#[cfg(test)]
mod tests {
    use super::{prepare_sql, prepare_sql_for};

    #[test]
    fn named_params_become_numbered_outside_literals() {
        let p = prepare_sql("SELECT ':x', \"a:b\" FROM t WHERE a = :pipe AND b = :m OR c = :pipe -- :no\n/* :no */");
        assert_eq!(p.sql, "SELECT ':x', \"a:b\" FROM t WHERE a = ?1 AND b = ?2 OR c = ?1 -- :no\n/* :no */");
        assert_eq!(p.names, vec!["pipe", "m"]);
        assert_eq!(p.words, vec!["SELECT", "FROM", "T", "WHERE", "A", "AND", "B", "OR", "C"]);
        let p = prepare_sql("SELECT strftime('%H:%M', 'now'), [a:b] -- vacuum");
        assert_eq!(p.sql, "SELECT strftime('%H:%M', 'now'), [a:b] -- vacuum");
        assert!(p.names.is_empty());
        assert_eq!(p.words, vec!["SELECT", "STRFTIME"]);
        // PostgreSQL casts stay casts.
        let p = prepare_sql_for("SELECT json_extract(axes, '$.seed')::int, x::text FROM t WHERE s = :stage", '$');
        assert_eq!(p.sql, "SELECT json_extract(axes, '$.seed')::int, x::text FROM t WHERE s = $1");
        assert_eq!(p.names, vec!["stage"]);
    }
}
