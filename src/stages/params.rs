//! Declared parameters of a stage kind: their types, defaults and docs.
//!
//! A kind declares its parameters once; the pipeline compiler uses the
//! declaration to reject unknown keys and wrong types (with a located error)
//! and to fill in defaults before the stage key is computed, so writing a
//! default explicitly never changes a key.

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
#[derive(Debug, Clone, Default)]
pub struct Params(pub Map<String, Value>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
    /// The [`PRECISION`] parameter.
    pub fn precision(&self) -> Precision {
        Precision::from_name(self.str(PRECISION.name)).expect("the parameter's type is Precision's names")
    }
    pub fn str(&self, name: &str) -> &str {
        self.opt_str(name).unwrap_or_else(|| panic!("parameter {name} is not a declared string"))
    }
    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }
    pub fn int(&self, name: &str) -> i64 {
        self.0.get(name).and_then(Value::as_i64).unwrap_or_else(|| panic!("parameter {name} is not a declared integer"))
    }
    pub fn opt_int(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(Value::as_i64)
    }
    pub fn float(&self, name: &str) -> f64 {
        self.0.get(name).and_then(Value::as_f64).unwrap_or_else(|| panic!("parameter {name} is not a declared float"))
    }
    pub fn bool(&self, name: &str) -> bool {
        self.0.get(name).and_then(Value::as_bool).unwrap_or_else(|| panic!("parameter {name} is not a declared bool"))
    }
    pub fn str_list(&self, name: &str) -> Vec<String> {
        match self.0.get(name) {
            Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        }
    }
}
