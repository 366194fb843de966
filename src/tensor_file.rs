//! safetensors files: the one format every stage writes tensors in (numpy and
//! PyTorch read it as is). Writing goes through a temporary file and a rename,
//! so a crash never leaves half a file under the final name (checkpoints rely
//! on that); reading checks dtype and rank and names the file in every error.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use safetensors::Dtype;
use safetensors::tensor::Metadata;

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
    let shapes: Vec<TensorShape> =
        order.iter().map(|(name, t)| TensorShape { name: name.clone(), dtype: t.dtype, shape: t.shape.clone() }).collect();
    for ((name, t), declared) in order.iter().zip(&shapes) {
        if t.bytes.len() != declared.bytes() {
            bail!("tensor `{name}`: {} bytes for shape {:?}", t.bytes.len(), t.shape);
        }
    }
    let mut out = TensorWriter::create(path, &shapes, metadata)?;
    for (_, t) in order {
        out.append(&t.bytes)?;
    }
    out.finish()
}

/// A tensor's name, dtype and shape, declared before its data is written.
#[derive(Debug, Clone)]
pub struct TensorShape {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorShape {
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// A safetensors file written as a stream, for tensors too large to hold:
/// the header (every shape) first, then the data of the tensors in name
/// order, in pieces of any size. Same bytes as [`write`], same atomicity:
/// nothing appears under the final name until [`TensorWriter::finish`].
/// Tensors are declared in name order, the order their data follows.
pub struct TensorWriter {
    out: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    remaining: usize,
}

impl TensorWriter {
    pub fn create(path: &Path, tensors: &[TensorShape], metadata: HashMap<String, String>) -> anyhow::Result<TensorWriter> {
        if let Some(w) = tensors.windows(2).find(|w| w[0].name >= w[1].name) {
            bail!("{}: tensors declared out of name order (`{}` before `{}`)", path.display(), w[0].name, w[1].name);
        }
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            let sorted: std::collections::BTreeMap<String, String> = metadata.into_iter().collect();
            header.insert("__metadata__".into(), serde_json::to_value(sorted)?);
        }
        let mut offset = 0usize;
        for t in tensors {
            let entry = serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes()]});
            header.insert(t.name.clone(), entry);
            offset += t.bytes();
        }
        // serde_json's Map is a BTreeMap here: keys come out sorted.
        let mut header = serde_json::to_vec(&header)?;
        header.resize(header.len().div_ceil(8) * 8, b' ');
        let tmp = path.with_extension("partial");
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        Ok(TensorWriter { out, tmp, path: path.to_owned(), remaining: offset })
    }

    /// Appends the next bytes of data (tensors in name order, back to back).
    pub fn append(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if bytes.len() > self.remaining {
            bail!("{}: {} bytes more than the declared tensors hold", self.path.display(), bytes.len() - self.remaining);
        }
        self.remaining -= bytes.len();
        self.out.write_all(bytes).with_context(|| format!("writing {}", self.tmp.display()))
    }

    /// Appends f32 values, little-endian.
    pub fn append_f32(&mut self, values: &[f32]) -> anyhow::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.append(&bytes)
    }

    /// Checks that every declared byte was written, syncs, and renames the
    /// file into place.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.remaining != 0 {
            bail!("{}: {} declared bytes were never written", self.path.display(), self.remaining);
        }
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().with_context(|| format!("writing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("renaming {} to {}", self.tmp.display(), self.path.display()))?;
        Ok(())
    }
}

/// A safetensors file: its header parsed once, tensor data read on demand by
/// positioned reads, so a cache of millions of rows is never held whole.
pub struct TensorFile {
    path: String,
    file: File,
    /// Where the data starts (after the 8-byte length and the header).
    data_start: u64,
    header: Metadata,
}

/// Headers beyond this are not safetensors (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

impl TensorFile {
    pub fn open(path: &Path) -> anyhow::Result<TensorFile> {
        let not_safetensors = || format!("{} is not a safetensors file", path.display());
        let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let size = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).with_context(not_safetensors)?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER || 8 + header_len > size {
            bail!("{} (header of {header_len} bytes in a file of {size})", not_safetensors());
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).with_context(not_safetensors)?;
        let header: Metadata = serde_json::from_slice(&header).with_context(not_safetensors)?;
        let data_len = size - 8 - header_len;
        for (name, info) in header.tensors() {
            let (start, end) = info.data_offsets;
            let want = (info.shape.iter().product::<usize>() * info.dtype.bitsize()).div_ceil(8);
            if end < start || end - start != want || end as u64 > data_len {
                bail!("{}: tensor `{name}` does not fit the file (truncated?)", path.display());
            }
        }
        Ok(TensorFile { path: path.display().to_string(), file, data_start: 8 + header_len, header })
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

    /// A tensor's dtype, shape and where its bytes start in the file.
    pub fn locate(&self, name: &str) -> anyhow::Result<(Dtype, &[usize], u64)> {
        let info = self.header.info(name).with_context(|| format!("{} has no tensor `{name}`", self.path))?;
        Ok((info.dtype, &info.shape, self.data_start + info.data_offsets.0 as u64))
    }

    /// `len` bytes at `at`.
    fn read(&self, at: u64, len: usize) -> anyhow::Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, at).with_context(|| format!("reading {}", self.path))?;
        Ok(bytes)
    }

    /// An f32 tensor: its shape and values.
    pub fn f32(&self, name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, at) = self.locate(name)?;
        if dtype != Dtype::F32 {
            bail!("{}: tensor `{name}` is {dtype:?}, expected F32", self.path);
        }
        let values = f32s(&self.read(at, shape.iter().product::<usize>() * 4)?);
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

    /// Row `row` of a `[rows, dim]` f32 tensor, reading only that row.
    pub fn f32_row(&self, name: &str, row: usize) -> anyhow::Result<Vec<f32>> {
        self.f32_table(name)?.gather(&[row])
    }

    /// A `[rows, dim]` f32 tensor whose rows are read as they are asked for.
    pub fn f32_table(&self, name: &str) -> anyhow::Result<F32Rows> {
        let (dtype, shape, at) = self.locate(name)?;
        if dtype != Dtype::F32 || shape.len() != 2 {
            bail!("{}: tensor `{name}` is {dtype:?} {shape:?}, expected F32 [rows, dim]", self.path);
        }
        let file = self.file.try_clone().with_context(|| format!("reading {}", self.path))?;
        Ok(F32Rows { n: shape[0], dim: shape[1], source: RowSource::File { file, path: self.path.clone(), at } })
    }

    /// A 1-D i64 tensor.
    pub fn i64(&self, name: &str) -> anyhow::Result<Vec<i64>> {
        let (dtype, shape, at) = self.locate(name)?;
        if dtype != Dtype::I64 || shape.len() != 1 {
            bail!("{}: tensor `{name}` is {dtype:?} {shape:?}, expected a 1-D I64", self.path);
        }
        Ok(self.read(at, shape[0] * 8)?.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The rows of a `[n, dim]` f32 table, gathered a batch at a time: from
/// memory, or by positioned reads of a file (a frozen text cache), so a
/// training holds one batch of embeddings, not the cache.
pub struct F32Rows {
    n: usize,
    dim: usize,
    source: RowSource,
}

enum RowSource {
    Memory(Vec<f32>),
    File {
        file: File,
        path: String,
        at: u64,
    },
    /// Tables one after another (a sharded cache): `starts[i]` is the first
    /// row of `parts[i]`.
    Parts {
        parts: Vec<F32Rows>,
        starts: Vec<usize>,
    },
}

impl F32Rows {
    pub fn in_memory(dim: usize, values: Vec<f32>) -> F32Rows {
        F32Rows { n: values.len().checked_div(dim).unwrap_or(0), dim, source: RowSource::Memory(values) }
    }

    /// The rows of `parts`, one table after another, read where they lie.
    pub fn concat(dim: usize, parts: Vec<F32Rows>) -> anyhow::Result<F32Rows> {
        if let Some(p) = parts.iter().find(|p| p.dim != dim) {
            bail!("a part of {} columns in a table of {dim}", p.dim);
        }
        let starts: Vec<usize> = parts.iter().scan(0, |n, p| Some(std::mem::replace(n, *n + p.n))).collect();
        Ok(F32Rows { n: parts.iter().map(|p| p.n).sum(), dim, source: RowSource::Parts { parts, starts } })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The rows `rows`, in that order, as one row-major `[rows.len(), dim]` buffer.
    pub fn gather(&self, rows: &[usize]) -> anyhow::Result<Vec<f32>> {
        if let Some(r) = rows.iter().find(|&&r| r >= self.n) {
            bail!("row {r} asked of a table of {} rows", self.n);
        }
        let row_bytes = self.dim * 4;
        match &self.source {
            RowSource::Memory(values) => Ok(rows.iter().flat_map(|&r| &values[r * self.dim..(r + 1) * self.dim]).copied().collect()),
            RowSource::File { file, path, at } => {
                let mut bytes = vec![0u8; rows.len() * row_bytes];
                for (out, &r) in bytes.chunks_exact_mut(row_bytes.max(1)).zip(rows) {
                    file.read_exact_at(out, at + (r * row_bytes) as u64).with_context(|| format!("reading row {r} of {path}"))?;
                }
                Ok(f32s(&bytes))
            }
            RowSource::Parts { parts, starts } => {
                let mut out = Vec::with_capacity(rows.len() * self.dim);
                for &r in rows {
                    // The last part starting at or before r (empty parts share a start).
                    let i = starts.partition_point(|&s| s <= r) - 1;
                    out.extend(parts[i].gather(&[r - starts[i]])?);
                }
                Ok(out)
            }
        }
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

    #[test]
    fn a_streamed_file_has_the_bytes_of_a_written_one_and_its_declared_size() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let whole = dir.path().join("whole.safetensors");
        let tensors = vec![("b".to_owned(), RawTensor::f32(vec![4, 3], &rows)), ("a".to_owned(), RawTensor::i64(&[1, 2, 3, 4]))];
        write(&whole, &tensors, HashMap::new()).unwrap();
        let shapes = [
            TensorShape { name: "a".into(), dtype: Dtype::I64, shape: vec![4] },
            TensorShape { name: "b".into(), dtype: Dtype::F32, shape: vec![4, 3] },
        ];
        let streamed = dir.path().join("streamed.safetensors");
        let mut out = TensorWriter::create(&streamed, &shapes, HashMap::new()).unwrap();
        out.append(&RawTensor::i64(&[1, 2, 3, 4]).bytes).unwrap();
        for row in rows.chunks(3) {
            out.append_f32(row).unwrap();
        }
        assert!(!streamed.exists(), "nothing under the final name before finish");
        out.finish().unwrap();
        assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&streamed).unwrap());

        let short = dir.path().join("short.safetensors");
        let mut out = TensorWriter::create(&short, &shapes, HashMap::new()).unwrap();
        out.append_f32(&rows[..3]).unwrap();
        assert!(out.finish().unwrap_err().to_string().contains("never written"));
        assert!(!short.exists());
        let mut out = TensorWriter::create(&short, &shapes, HashMap::new()).unwrap();
        assert!(out.append(&[0; 81]).unwrap_err().to_string().contains("more than the declared"));
        let reversed = [shapes[1].clone(), shapes[0].clone()];
        let Err(e) = TensorWriter::create(&short, &reversed, HashMap::new()) else { panic!("out-of-order declaration accepted") };
        assert!(e.to_string().contains("out of name order"), "{e}");
    }

    #[test]
    fn rows_are_read_from_the_file_as_asked_and_a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..20).map(|i| i as f32 - 3.5).collect();
        let path = dir.path().join("t.safetensors");
        write(&path, &[("rows".to_owned(), RawTensor::f32(vec![5, 4], &values))], HashMap::new()).unwrap();
        let file = TensorFile::open(&path).unwrap();
        let table = file.f32_table("rows").unwrap();
        let memory = F32Rows::in_memory(4, values.clone());
        for rows in [vec![4, 0, 4], vec![], vec![2]] {
            let want: Vec<f32> = rows.iter().flat_map(|&r| values[r * 4..(r + 1) * 4].to_vec()).collect();
            assert_eq!(table.gather(&rows).unwrap(), want);
            assert_eq!(memory.gather(&rows).unwrap(), want);
        }
        assert_eq!(file.f32_row("rows", 3).unwrap(), values[12..16]);
        assert!(table.gather(&[5]).unwrap_err().to_string().contains("row 5"));
        // The same rows split into parts, an empty one among them.
        let part = |a: usize, b: usize| F32Rows::in_memory(4, values[a * 4..b * 4].to_vec());
        let parts = F32Rows::concat(4, vec![part(0, 2), part(2, 2), file.f32_table("rows").unwrap()]).unwrap();
        assert_eq!(parts.len(), 7);
        assert_eq!(parts.gather(&[6, 1, 2, 0]).unwrap(), [&values[16..20], &values[4..8], &values[0..4], &values[0..4]].concat());
        assert!(parts.gather(&[7]).is_err());
        assert!(F32Rows::concat(3, vec![part(0, 1)]).is_err());

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let Err(e) = TensorFile::open(&path) else { panic!("a truncated file opened") };
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
