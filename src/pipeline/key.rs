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
        KeyPrefix::new(kind, params).key(version, upstream)
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

/// A key's hash after its kind and parameters: instances that differ only
/// in their upstream keys (an evaluation of each of 50,000 trainings) hash
/// those once.
#[derive(Clone)]
pub struct KeyPrefix(HashWriter);

impl KeyPrefix {
    /// `params` must serialise as a JSON object with sorted keys, as
    /// serde_json's `Map` does.
    pub fn new(kind: &str, params: &(impl serde::Serialize + ?Sized)) -> KeyPrefix {
        // The canonical JSON object {"kind","params","upstream","version"} (keys
        // sorted), streamed into the hash. serde_json's Map is a BTreeMap (no
        // `preserve_order`), so nested objects serialise with sorted keys too.
        let mut hasher = HashWriter(Sha256::new());
        hasher.0.update(b"{\"kind\":");
        write(&mut hasher, &kind);
        hasher.0.update(b",\"params\":");
        write(&mut hasher, params);
        KeyPrefix(hasher)
    }

    pub fn key(&self, version: u32, upstream: &[&StageKey]) -> StageKey {
        let mut upstream: Vec<&str> = upstream.iter().map(|k| k.0.as_str()).collect();
        upstream.sort_unstable();
        let mut hasher = self.0.clone();
        hasher.0.update(b",\"upstream\":");
        write(&mut hasher, &upstream);
        hasher.0.update(b",\"version\":");
        write(&mut hasher, &version);
        hasher.0.update(b"}");
        StageKey(hex::encode(hasher.0.finalize()))
    }
}

#[derive(Clone)]
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write<T: serde::Serialize + ?Sized>(hasher: &mut HashWriter, value: &T) {
    serde_json::to_writer(hasher, value).expect("serialising into a hash cannot fail");
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
        // The key is the SHA-256 of exactly this canonical text.
        let canonical = r#"{"kind":"k","params":{"x":1,"y":"b"},"upstream":["aa","bb"],"version":1}"#;
        assert_eq!(StageKey::compute("k", 1, &a, &[&u2, &u1]).as_str(), hex::encode(Sha256::digest(canonical)));
    }
}
