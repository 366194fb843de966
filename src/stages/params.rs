//! Declared parameters of a stage kind: their types, defaults and docs.
//!
//! A kind declares its parameters once; the pipeline compiler uses the
//! declaration to reject unknown keys and wrong types (with a located error)
//! and to fill in defaults before the stage key is computed, so writing a
//! default explicitly never changes a key.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::precision::Precision;

/// `precision`, shared by every kind with a forward pass (train, text_embed,
/// text_similarity); added after their keys were in stores.
pub const PRECISION: ParamSpec = ParamSpec::new(
    "precision",
    ParamType::OneOf(Precision::NAMES),
    ParamDefault::Str("f32"),
    "f32, or bf16 matmuls and activations with f32 weights, statistics and loss (as torch.autocast)",
)
.unkeyed_at_default();

/// The value type a parameter accepts.
#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    Str,
    Int,
    /// A float; integers are accepted and widened.
    Float,
    Bool,
    /// A string that must be one of the listed values.
    OneOf(&'static [&'static str]),
    /// A list of strings.
    StrList,
    /// A list of strings, each one of the listed values.
    ListOf(&'static [&'static str]),
}

impl ParamType {
    /// The values a `OneOf` or `ListOf` parameter takes (for `ablate kinds`).
    pub fn choices(self) -> Option<&'static [&'static str]> {
        match self {
            ParamType::OneOf(choices) | ParamType::ListOf(choices) => Some(choices),
            _ => None,
        }
    }
}

/// What happens when the pipeline file leaves a parameter out.
#[derive(Debug, Clone, Copy)]
pub enum ParamDefault {
    Required,
    /// Absent from the resolved parameters (and so from the key).
    Absent,
    Str(&'static str),
    Int(i64),
    Float(f64),
    Bool(bool),
    StrList(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: ParamDefault,
    pub doc: &'static str,
    /// False for a parameter added after the kind's keys were in use: see
    /// [`ParamSpec::unkeyed_at_default`].
    keyed_at_default: bool,
}

impl ParamSpec {
    pub const fn new(name: &'static str, ty: ParamType, default: ParamDefault, doc: &'static str) -> Self {
        ParamSpec { name, ty, default, doc, keyed_at_default: true }
    }

    /// A parameter added to a kind whose keys are already in stores: at its
    /// default it is left out of the stage key, so every key computed before
    /// it existed still names the same work (its default must be what the
    /// kind did before). Any other value is keyed as usual.
    pub const fn unkeyed_at_default(self) -> Self {
        ParamSpec { keyed_at_default: false, ..self }
    }

    /// Whether this parameter, resolved to `value`, stays out of the key.
    pub fn left_out_of_key(&self, value: &Value) -> bool {
        !self.keyed_at_default && self.default_value().as_ref() == Some(value)
    }

    /// The default as a JSON value, or `None` when required or absent.
    pub fn default_value(&self) -> Option<Value> {
        match self.default {
            ParamDefault::Required | ParamDefault::Absent => None,
            ParamDefault::Str(s) => Some(Value::from(s)),
            ParamDefault::Int(i) => Some(Value::from(i)),
            ParamDefault::Float(f) => Some(Value::from(f)),
            ParamDefault::Bool(b) => Some(Value::from(b)),
            ParamDefault::StrList(l) => Some(Value::from(l.to_vec())),
        }
    }

    /// Checks (and normalises: int → float) a value against the declared type.
    /// The error is a sentence fragment such as `expected an integer, found "abc"`.
    pub fn coerce(&self, value: &Value) -> Result<Value, String> {
        let found = || describe(value);
        match self.ty {
            ParamType::Str => value.as_str().map(|_| value.clone()).ok_or_else(|| format!("expected a string, found {}", found())),
            ParamType::Int => match value.as_i64() {
                Some(_) => Ok(value.clone()),
                None => Err(format!("expected an integer, found {}", found())),
            },
            ParamType::Float => match value {
                Value::Number(n) => Ok(Value::from(n.as_f64().unwrap_or(f64::NAN))),
                _ => Err(format!("expected a number, found {}", found())),
            },
            ParamType::Bool => value.as_bool().map(|_| value.clone()).ok_or_else(|| format!("expected true or false, found {}", found())),
            ParamType::OneOf(choices) => match value.as_str() {
                Some(s) if choices.contains(&s) => Ok(value.clone()),
                _ => Err(format!("expected one of {}, found {}", quote_all(choices), found())),
            },
            ParamType::StrList => match value.as_array() {
                Some(items) if items.iter().all(Value::is_string) => Ok(value.clone()),
                _ => Err(format!("expected a list of strings, found {}", found())),
            },
            ParamType::ListOf(choices) => match value.as_array() {
                Some(items) => match items.iter().find(|v| !v.as_str().is_some_and(|s| choices.contains(&s))) {
                    None => Ok(value.clone()),
                    Some(item) => Err(format!("expected a list drawn from {}, found {} in the list", quote_all(choices), describe(item))),
                },
                None => Err(format!("expected a list drawn from {}, found {}", quote_all(choices), found())),
            },
        }
    }
}

fn quote_all(choices: &[&str]) -> String {
    choices.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
}

/// A short description of a value for error messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string \"{}\"", crate::echo::shorten(s, crate::echo::ECHOED)),
        Value::Number(n) if n.is_i64() || n.is_u64() => format!("integer {n}"),
        Value::Number(n) => format!("float {n}"),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "a table".into(),
        Value::Null => "nothing".into(),
    }
}

/// Resolved parameters of one stage instance, with typed accessors.
///
/// Accessors panic only on a programming error (asking for a parameter the kind
/// did not declare with that type): user input was validated at compile time.
///
/// Stored as the differences from a map shared by the instances of a stage,
/// so 50,000 trainings that differ in a seed hold one map of 20 entries and
/// one entry each ([`Params::relative_to`]).
#[derive(Clone, Default)]
pub struct Params {
    shared: Arc<Map<String, Value>>,
    /// Where these differ from `shared`, sorted by name: another value, or
    /// `None` for an entry they lack.
    own: Box<[(String, Option<Value>)]>,
}

impl From<Map<String, Value>> for Params {
    fn from(map: Map<String, Value>) -> Params {
        Params { shared: Arc::new(map), own: Box::default() }
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self.own.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.own[i].1.as_ref(),
            Err(_) => self.shared.get(name),
        }
    }

    /// Every entry, sorted by name (as a serde_json `Map` iterates).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        let mut shared = self.shared.iter().map(|(n, v)| (n.as_str(), Some(v))).peekable();
        let mut own = self.own.iter().map(|(n, v)| (n.as_str(), v.as_ref())).peekable();
        std::iter::from_fn(move || {
            loop {
                let (name, value) = match (shared.peek(), own.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => shared.next()?,
                    (None, Some(_)) => own.next()?,
                    (Some(s), Some(o)) => match s.0.cmp(o.0) {
                        std::cmp::Ordering::Less => shared.next()?,
                        std::cmp::Ordering::Greater => own.next()?,
                        std::cmp::Ordering::Equal => {
                            shared.next();
                            own.next()?
                        }
                    },
                };
                if let Some(value) = value {
                    return Some((name, value));
                }
            }
        })
    }

    /// Sets one entry (copying the shared map first if others hold it).
    pub fn insert(&mut self, name: String, value: Value) {
        match self.own.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(i) => self.own[i].1 = Some(value),
            Err(_) if self.own.is_empty() => {
                Arc::make_mut(&mut self.shared).insert(name, value);
            }
            Err(i) => {
                let mut own = std::mem::take(&mut self.own).into_vec();
                own.insert(i, (name, Some(value)));
                self.own = own.into_boxed_slice();
            }
        }
    }

    /// The same parameters, kept as their differences from `base`.
    pub fn relative_to(self, base: &Arc<Map<String, Value>>) -> Params {
        let mut map = self.into_map();
        let mut own: Vec<(String, Option<Value>)> =
            base.keys().filter(|name| !map.contains_key(*name)).map(|name| (name.clone(), None)).collect();
        let same: Vec<String> = map.iter().filter(|&(name, value)| base.get(name) == Some(value)).map(|(name, _)| name.clone()).collect();
        for name in same {
            map.remove(&name);
        }
        own.extend(map.into_iter().map(|(name, value)| (name, Some(value))));
        own.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Params { shared: Arc::clone(base), own: own.into_boxed_slice() }
    }

    /// The map these differences are taken from.
    pub fn shared(&self) -> &Arc<Map<String, Value>> {
        &self.shared
    }

    /// Every entry as one map.
    pub fn into_map(self) -> Map<String, Value> {
        if self.own.is_empty() {
            return Arc::try_unwrap(self.shared).unwrap_or_else(|shared| (*shared).clone());
        }
        self.iter().map(|(n, v)| (n.to_owned(), v.clone())).collect()
    }
    /// The [`PRECISION`] parameter.
    pub fn precision(&self) -> Precision {
        Precision::from_name(self.str(PRECISION.name)).expect("the parameter's type is Precision's names")
    }
    pub fn str(&self, name: &str) -> &str {
        self.opt_str(name).unwrap_or_else(|| panic!("parameter {name} is not a declared string"))
    }
    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
    pub fn int(&self, name: &str) -> i64 {
        self.get(name).and_then(Value::as_i64).unwrap_or_else(|| panic!("parameter {name} is not a declared integer"))
    }
    pub fn opt_int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }
    pub fn float(&self, name: &str) -> f64 {
        self.get(name).and_then(Value::as_f64).unwrap_or_else(|| panic!("parameter {name} is not a declared float"))
    }
    pub fn bool(&self, name: &str) -> bool {
        self.get(name).and_then(Value::as_bool).unwrap_or_else(|| panic!("parameter {name} is not a declared bool"))
    }
    pub fn str_list(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Serialises as the JSON object of every entry, names sorted.
impl serde::Serialize for Params {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn differences_from_a_shared_map_read_as_the_whole_map() {
        let base = Arc::new(map(json!({"a": 1, "b": "x", "c": [1], "d": true})));
        let whole = map(json!({"a": 1, "b": "y", "bb": 2.5, "d": true}));
        let params = Params::from(whole.clone()).relative_to(&base);
        assert_eq!(params.own.len(), 3, "b changed, bb added, c gone: {:?}", params.own);
        assert_eq!(serde_json::to_string(&params).unwrap(), Value::Object(whole.clone()).to_string());
        assert_eq!(params.get("c"), None);
        assert_eq!(params.get("b"), Some(&json!("y")));
        assert_eq!(params.get("a"), Some(&json!(1)));
        assert_eq!(params.clone().into_map(), whole);

        let mut changed = params;
        changed.insert("a".into(), json!(2));
        changed.insert("b".into(), json!("z"));
        assert_eq!(serde_json::to_value(&changed).unwrap(), json!({"a": 2, "b": "z", "bb": 2.5, "d": true}));
        assert_eq!(*base, map(json!({"a": 1, "b": "x", "c": [1], "d": true})), "the shared map is left as it was");
    }
}
