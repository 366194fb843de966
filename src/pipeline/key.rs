//! Stage keys: the content address of a stage instance.
//!
//! A key is the SHA-256 of the canonical JSON of (kind, kind code version,
//! resolved parameters, sorted upstream keys). Nothing else goes in: no time,
//! host, run, path of the pipeline file or stage name, so equal work has equal
//! keys across files and runs, and that is how shared upstream work runs once.

use std::fmt;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageKey(String);

impl StageKey {
    pub fn compute(kind: &str, version: u32, params: &Map<String, Value>, upstream: &[&StageKey]) -> StageKey {
        let mut upstream: Vec<&str> = upstream.iter().map(|k| k.0.as_str()).collect();
        upstream.sort_unstable();
        // serde_json's Map is a BTreeMap (no `preserve_order`), so objects
        // serialise with sorted keys at every depth: the form is canonical.
        let canonical = serde_json::json!({
            "kind": kind,
            "version": version,
            "params": params,
            "upstream": upstream,
        });
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        StageKey(hex::encode(digest))
    }

    pub fn from_hex(hex: String) -> StageKey {
        StageKey(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-character prefix shown in tables.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl fmt::Display for StageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_map_order_and_upstream_order() {
        let mut a = Map::new();
        a.insert("x".into(), Value::from(1));
        a.insert("y".into(), Value::from("b"));
        let mut b = Map::new();
        b.insert("y".into(), Value::from("b"));
        b.insert("x".into(), Value::from(1));
        let (u1, u2) = (StageKey::from_hex("aa".into()), StageKey::from_hex("bb".into()));
        assert_eq!(StageKey::compute("k", 1, &a, &[&u1, &u2]), StageKey::compute("k", 1, &b, &[&u2, &u1]));
        assert_ne!(StageKey::compute("k", 1, &a, &[]), StageKey::compute("k", 2, &a, &[]));
        assert_ne!(StageKey::compute("k", 1, &a, &[]), StageKey::compute("j", 1, &a, &[]));
    }
}
