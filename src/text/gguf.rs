//! A reader for GGUF v3 files (llama.cpp's model format): metadata, tensor
//! directory, and dequantization of the tensor types our encoders meet.
//!
//! Only what a frozen encoder needs: the whole file is read into memory once
//! (models here are ~100 MB), and every tensor is dequantized to f32 on request.
//! Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1 — enough for the
//! SmolLM2 Q4_1 file and the common small quantizations; anything else is a
//! clear error naming the tensor and its type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail, ensure};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// ggml tensor types (the subset we can dequantize, plus the name of any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// (elements per block, bytes per block), or `None` for unsupported types.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml order: `dims[0]` is the fastest-varying (a row's length). A PyTorch
    /// `[out, in]` weight is stored with `dims = [in, out]`.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

impl GgufFile {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read GGUF file {}", path.display()))?;
        Self::parse(path.to_owned(), bytes).with_context(|| format!("{} is not a readable GGUF file", path.display()))
    }

    pub fn parse(path: PathBuf, bytes: Vec<u8>) -> anyhow::Result<Self> {
        let mut r = Reader { bytes: &bytes, pos: 0 };
        ensure!(r.take(4)? == b"GGUF", "bad magic (expected \"GGUF\")");
        let version = r.u32()?;
        ensure!(version == 2 || version == 3, "GGUF version {version} is not supported (2 or 3 are)");
        let n_tensors = r.u64()? as usize;
        let n_kv = r.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty).with_context(|| format!("metadata key '{key}'"))?;
            metadata.insert(key, value);
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            ensure!(n_dims <= 4, "tensor '{name}' has {n_dims} dimensions");
            let dims = (0..n_dims).map(|_| r.u64().map(|d| d as usize)).collect::<anyhow::Result<Vec<_>>>()?;
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| anyhow!("tensor '{name}' has an impossible size {dims:?}"))?;
            let ty = GgmlType::from_id(r.u32()?);
            let offset = r.u64()? as usize;
            tensors.insert(name, TensorInfo { dims, ty, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        ensure!(alignment > 0, "general.alignment is 0");
        let data_start = r.pos.div_ceil(alignment) * alignment;
        ensure!(data_start <= bytes.len(), "file ends before its tensor data");
        let file = GgufFile { path, version, metadata, tensors, bytes, data_start };
        for (name, info) in &file.tensors {
            if let Some((block, size)) = info.ty.block() {
                let end =
                    info.len().div_ceil(block).checked_mul(size).and_then(|n| n.checked_add(file.data_start)?.checked_add(info.offset));
                ensure!(end.is_some_and(|end| end <= file.bytes.len()), "tensor '{name}' extends past the end of the file");
            }
        }
        Ok(file)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned metadata value.
    pub fn u64(&self, key: &str) -> anyhow::Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("{}: metadata '{key}' is missing or not an integer", self.path.display()))
    }

    /// A required string metadata value.
    pub fn str(&self, key: &str) -> anyhow::Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| anyhow!("{}: metadata '{key}' is missing or not a string", self.path.display()))
    }

    /// A required array of strings (tokenizer vocabulary, merges).
    pub fn strings(&self, key: &str) -> anyhow::Result<Vec<&str>> {
        let arr = self.get(key).and_then(Value::as_array).ok_or_else(|| anyhow!("{}: metadata '{key}' is missing", self.path.display()))?;
        arr.iter().map(|v| v.as_str().ok_or_else(|| anyhow!("{}: metadata '{key}' holds a non-string", self.path.display()))).collect()
    }

    pub fn info(&self, name: &str) -> anyhow::Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| anyhow!("{}: tensor '{name}' not found", self.path.display()))
    }

    /// Dequantizes a tensor to f32, in ggml order (row-major over `dims` reversed).
    pub fn dequantize(&self, name: &str) -> anyhow::Result<Vec<f32>> {
        let info = self.info(name)?;
        let n = info.len();
        let (block, size) = info.ty.block().ok_or_else(|| {
            anyhow!("{}: tensor '{name}' has ggml type {:?}, which this reader cannot dequantize", self.path.display(), info.ty)
        })?;
        ensure!(n % block == 0, "{}: tensor '{name}' has {n} elements, not a multiple of its block size {block}", self.path.display());
        let start = self.data_start + info.offset;
        let raw = &self.bytes[start..start + n / block * size];
        Ok(dequantize(info.ty, raw, n))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// IEEE half → f32 (exact, subnormals included).
pub fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mant * 2^-24; renormalise.
            let shift = mant.leading_zeros() - 21; // bring the top set bit to bit 10
            let m = (mant << shift) & 0x3ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (m << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Dequantizes `n` elements of type `ty` from `raw` (llama.cpp's block layouts).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        GgmlType::BF16 => out.extend(raw.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))),
        // Q8_0: f16 scale d, then 32 signed bytes; x = d * q.
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        // Q4_0: f16 d, 16 bytes of nibbles; low nibbles are elements 0..16, high 16..32; x = d * (q - 8).
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        // Q4_1: f16 d, f16 m, 16 bytes of nibbles (same order as Q4_0); x = d * q + m.
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Other(_) => unreachable!("callers check block() first"),
    }
    debug_assert_eq!(out.len(), n);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| anyhow!("truncated header"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self) -> anyhow::Result<String> {
        let len = self.u64()? as usize;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| anyhow!("a metadata string is not UTF-8"))
    }
    fn value(&mut self, ty: u32) -> anyhow::Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.arr::<1>()?[0] as u64),
            1 => Value::I64(self.arr::<1>()?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.arr()?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.arr()?) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(i32::from_le_bytes(self.arr()?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.arr()?) as f64),
            7 => Value::Bool(self.arr::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let item_ty = self.u32()?;
                let len = self.u64()? as usize;
                // Guard against absurd lengths before allocating.
                ensure!(len <= self.bytes.len(), "array length {len} exceeds the file size");
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value(item_ty)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_str(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }

    /// A hand-built GGUF v3 file: two metadata keys and one Q4_1 and one F32 tensor.
    fn tiny_file() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes()); // tensors
        b.extend(2u64.to_le_bytes()); // kv
        push_str(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        push_str(&mut b, "llama");
        push_str(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        push_str(&mut b, "a");
        push_str(&mut b, "b");
        // tensor "q": 32 elements Q4_1 at offset 0
        push_str(&mut b, "q");
        b.extend(1u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        // tensor "f": 2x2 f32 at offset 32
        push_str(&mut b, "f");
        b.extend(2u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        // Q4_1 block: d = 0.5 (0x3800), m = -1.0 (0xBC00), nibbles j -> low = j % 16, high = 15 - j % 16
        b.extend(0x3800u16.to_le_bytes());
        b.extend(0xBC00u16.to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        b.extend([0u8; 12]); // pad to offset 32
        for v in [1.0f32, -2.0, 3.5, 0.25] {
            b.extend(v.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_metadata_and_dequantizes() {
        let f = GgufFile::parse("tiny.gguf".into(), tiny_file()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.str("general.architecture").unwrap(), "llama");
        assert_eq!(f.strings("tokenizer.ggml.tokens").unwrap(), ["a", "b"]);
        let q = f.dequantize("q").unwrap();
        let want: Vec<f32> = (0..16).map(|j| 0.5 * j as f32 - 1.0).chain((0..16).map(|j| 0.5 * (15 - j) as f32 - 1.0)).collect();
        assert_eq!(q, want);
        assert_eq!(f.dequantize("f").unwrap(), [1.0, -2.0, 3.5, 0.25]);
        let err = f.dequantize("missing").unwrap_err().to_string();
        assert!(err.contains("'missing'"), "{err}");
    }

    #[test]
    fn truncated_file_is_an_error() {
        let bytes = tiny_file();
        assert!(GgufFile::parse("t".into(), bytes[..bytes.len() - 8].to_vec()).is_err());
        assert!(GgufFile::parse("t".into(), bytes[..40].to_vec()).is_err());
        assert!(GgufFile::parse("t".into(), b"GGML\x03\0\0\0".to_vec()).is_err());
    }

    #[test]
    fn half_conversion() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(half_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(half_to_f32(0x7bff), 65504.0);
        assert!(half_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn q8_0_block() {
        let mut raw = 0x3400u16.to_le_bytes().to_vec(); // 0.25
        raw.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &raw, 32);
        assert_eq!(x[0], -4.0);
        assert_eq!(x[31], 3.75);
    }
}
