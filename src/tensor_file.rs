//! safetensors files: the one format every stage writes tensors in (numpy and
//! PyTorch read it as is). Writing goes through a temporary file and a rename,
//! so a crash never leaves half a file under the final name (checkpoints rely
//! on that); reading checks dtype and rank and names the file in every error.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use safetensors::{Dtype, SafeTensors};

/// One tensor to write: dtype, shape and little-endian bytes.
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> RawTensor {
        RawTensor { dtype: Dtype::F32, shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// Rows of equal width as a `[rows, dim]` f32 tensor.
    pub fn f32_rows(rows: &[Vec<f32>], dim: usize) -> RawTensor {
        let bytes = rows.iter().flat_map(|r| r.iter().flat_map(|v| v.to_le_bytes())).collect();
        RawTensor { dtype: Dtype::F32, shape: vec![rows.len(), dim], bytes }
    }

    pub fn i64(values: &[i64]) -> RawTensor {
        RawTensor { dtype: Dtype::I64, shape: vec![values.len()], bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
}

/// Writes `tensors` (name, tensor) with string metadata to `path`, atomically.
/// The bytes are a function of the contents alone (header keys sorted), so
/// equal weights give equal files and equal hashes: the safetensors crate's
/// writer orders metadata by `HashMap` iteration, which differs per process.
pub fn write(path: &Path, tensors: &[(String, RawTensor)], metadata: HashMap<String, String>) -> anyhow::Result<()> {
    let mut order: Vec<&(String, RawTensor)> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let sorted: std::collections::BTreeMap<String, String> = metadata.into_iter().collect();
        header.insert("__metadata__".into(), serde_json::to_value(sorted)?);
    }
    let mut offset = 0usize;
    for (name, t) in &order {
        let expected = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        if expected != t.bytes.len() {
            bail!("tensor `{name}`: {} bytes for shape {:?}", t.bytes.len(), t.shape);
        }
        let entry = serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]});
        header.insert(name.clone(), entry);
        offset += t.bytes.len();
    }
    // serde_json's Map is a BTreeMap here: keys come out sorted.
    let mut header = serde_json::to_vec(&header)?;
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let tmp = path.with_extension("partial");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for (_, t) in &order {
            out.write_all(&t.bytes)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// A safetensors file read into memory; its header is parsed once.
pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
    /// Where the data starts (after the 8-byte length and the header).
    data_start: usize,
    header: safetensors::tensor::Metadata,
}

impl TensorFile {
    pub fn open(path: &Path) -> anyhow::Result<TensorFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        // `deserialize` also checks that every tensor's bytes are in the file.
        SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let (header_len, header) = SafeTensors::read_metadata(&bytes).expect("checked by deserialize");
        Ok(TensorFile { path: path.display().to_string(), bytes, data_start: 8 + header_len, header })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.tensors().into_keys().collect();
        names.sort();
        names
    }

    pub fn metadata(&self) -> HashMap<String, String> {
        self.header.metadata().clone().unwrap_or_default()
    }

    /// A tensor's dtype, shape and bytes.
    fn raw(&self, name: &str) -> anyhow::Result<(Dtype, &[usize], &[u8])> {
        let info = self.header.info(name).with_context(|| format!("{} has no tensor `{name}`", self.path))?;
        let (start, end) = info.data_offsets;
        Ok((info.dtype, &info.shape, &self.bytes[self.data_start + start..self.data_start + end]))
    }

    /// An f32 tensor: its shape and values.
    pub fn f32(&self, name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, data) = self.raw(name)?;
        if dtype != Dtype::F32 {
            bail!("{}: tensor `{name}` is {dtype:?}, expected F32", self.path);
        }
        let values = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok((shape.to_vec(), values))
    }

    /// A `[rows, dim]` f32 tensor as rows.
    pub fn f32_rows(&self, name: &str) -> anyhow::Result<Vec<Vec<f32>>> {
        let (shape, values) = self.f32(name)?;
        if shape.len() != 2 {
            bail!("{}: tensor `{name}` has shape {shape:?}, expected [rows, dim]", self.path);
        }
        Ok(if shape[1] == 0 { vec![Vec::new(); shape[0]] } else { values.chunks_exact(shape[1]).map(<[f32]>::to_vec).collect() })
    }

    /// A 1-D i64 tensor.
    pub fn i64(&self, name: &str) -> anyhow::Result<Vec<i64>> {
        let (dtype, shape, data) = self.raw(name)?;
        if dtype != Dtype::I64 || shape.len() != 1 {
            bail!("{}: tensor `{name}` is {dtype:?} {shape:?}, expected a 1-D I64", self.path);
        }
        Ok(data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_valid_safetensors_with_stable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = vec![
            ("b.weight".to_owned(), RawTensor::f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            ("a.rows".to_owned(), RawTensor::i64(&[7, -1])),
        ];
        let meta = || HashMap::from([("x".to_owned(), "1".to_owned()), ("y".to_owned(), "2".to_owned()), ("z".to_owned(), "3".to_owned())]);
        let (p1, p2) = (dir.path().join("1.safetensors"), dir.path().join("2.safetensors"));
        write(&p1, &tensors, meta()).unwrap();
        write(&p2, &tensors, meta()).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        let file = TensorFile::open(&p1).unwrap();
        assert_eq!(file.f32("b.weight").unwrap(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(file.i64("a.rows").unwrap(), vec![7, -1]);
        assert_eq!(file.metadata().get("y").map(String::as_str), Some("2"));
        assert!(file.f32("a.rows").is_err());
    }
}
