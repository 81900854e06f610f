//! One copy of each weight tensor that several ONNX Runtime sessions use.
//!
//! Left to itself, every session reads its graph file and keeps its own copy
//! of every initializer: the int8 graph's parallel single-threaded sessions
//! each held all its weights, and the int8 graph held a second copy of the
//! word embeddings the exact graph already had (all-MiniLM-L6-v2: 47 of its
//! 58 MB). [`SharedWeights::plan`] reads the initializer tables of the graphs
//! a process is about to open, finds each tensor that more than one session
//! will hold (every tensor of a graph with several sessions; a tensor with the
//! same name, type, shape and bytes in two graphs), loads it once and hands it
//! to each of those sessions (`AddInitializer`), with one container for their
//! pre-packed forms. A tensor that one session alone uses is left to ONNX
//! Runtime, which can free the original once it has packed it: giving it in
//! would keep both.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use ort::session::builder::PrepackedWeights;
use ort::value::{DynValue, Tensor};
use sha2::{Digest, Sha256};

/// Tensors smaller than this are not worth a shared entry.
pub const MIN_SHARED_BYTES: u64 = 16 * 1024;

/// The weights shared by the sessions of the graphs in one plan.
pub struct SharedWeights {
    graphs: HashMap<PathBuf, Vec<(String, Arc<DynValue>)>>,
    /// Made with the first shared tensor (it needs ONNX Runtime loaded).
    prepacked: Option<PrepackedWeights>,
    /// Bytes held once here that the sessions would otherwise have held each.
    pub bytes: u64,
    /// Bytes the sessions would have held without the plan, for the log.
    pub bytes_unshared: u64,
}

impl SharedWeights {
    /// Nothing shared: every session keeps its own copy (one session alone, or
    /// a device that copies the weights to its own memory anyway).
    pub fn none() -> SharedWeights {
        SharedWeights { graphs: HashMap::new(), prepacked: None, bytes: 0, bytes_unshared: 0 }
    }

    /// Plans the sharing for `graphs`, each a graph file with the number of
    /// sessions that will open it, and loads the shared tensors (ONNX Runtime
    /// must be loaded: `model::ort_environment`).
    pub fn plan(graphs: &[(PathBuf, usize)]) -> anyhow::Result<SharedWeights> {
        let mut tables = Vec::new();
        for (path, sessions) in graphs {
            if tables.iter().any(|(p, _, _): &(PathBuf, usize, Vec<Initializer>)| p == path) {
                bail!("{} is planned twice", path.display());
            }
            let table = initializers(path)?.into_iter().filter(|t| t.raw_len >= MIN_SHARED_BYTES).collect();
            tables.push((path.clone(), *sessions, table));
        }
        // A tensor with the same name, type and shape in another graph may be
        // the same tensor: its bytes decide.
        let mut by_shape: HashMap<(&str, i32, &[i64]), usize> = HashMap::new();
        for (_, _, table) in &tables {
            for t in table {
                *by_shape.entry((t.name.as_str(), t.data_type, t.dims.as_slice())).or_default() += 1;
            }
        }
        let mut keyed: Vec<Vec<(Key, &Initializer)>> = Vec::new();
        let mut uses: HashMap<Key, usize> = HashMap::new();
        for (path, sessions, table) in &tables {
            let mut file = BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
            let mut graph = Vec::new();
            for t in table {
                let digest = if by_shape[&(t.name.as_str(), t.data_type, t.dims.as_slice())] > 1 {
                    Some(digest_of(&mut file, t).with_context(|| format!("cannot read {}", path.display()))?)
                } else {
                    None
                };
                let key = Key { path: digest.is_none().then(|| path.clone()), name: t.name.clone(), digest };
                *uses.entry(key.clone()).or_default() += sessions;
                graph.push((key, t));
            }
            keyed.push(graph);
        }
        let mut loaded: HashMap<Key, Arc<DynValue>> = HashMap::new();
        let mut shared = SharedWeights::none();
        for ((path, sessions, _), graph) in tables.iter().zip(keyed) {
            let mut file = BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
            let mut values = Vec::new();
            for (key, t) in graph {
                if uses[&key] < 2 {
                    continue;
                }
                shared.bytes_unshared += t.raw_len * *sessions as u64;
                let value = match loaded.get(&key) {
                    Some(value) => value.clone(),
                    None => {
                        let Some(value) =
                            tensor_of(&mut file, t).with_context(|| format!("cannot read {}", path.display()))?
                        else {
                            continue;
                        };
                        shared.bytes += t.raw_len;
                        loaded.insert(key, value.clone());
                        value
                    }
                };
                values.push((t.name.clone(), value));
            }
            if !values.is_empty() && shared.prepacked.is_none() {
                shared.prepacked = Some(PrepackedWeights::new());
            }
            shared.graphs.insert(path.clone(), values);
        }
        Ok(shared)
    }

    /// The shared tensors of the graph at `path`, by initializer name.
    pub fn of(&self, path: &Path) -> &[(String, Arc<DynValue>)] {
        self.graphs.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The container that keeps one pre-packed form of each shared tensor
    /// (`None` where nothing is shared).
    pub fn prepacked(&self) -> Option<&PrepackedWeights> {
        self.prepacked.as_ref()
    }
}

/// Which tensors are the same one: a tensor found in one graph only is known
/// by its graph and name; one whose name, type and shape recur by its bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    path: Option<PathBuf>,
    name: String,
    digest: Option<[u8; 32]>,
}

/// ONNX `TensorProto.DataType` values of the tensors shared.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;
const INT64: i32 = 7;

/// Where one initializer's bytes lie in the graph file.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub name: String,
    /// ONNX `TensorProto.DataType` (1 float, 2 uint8, 3 int8, 6 int32, 7 int64, ...).
    pub data_type: i32,
    pub dims: Vec<i64>,
    /// Offset and length of `raw_data` in the file (0 length: the values are
    /// in typed fields or in an external file, and are not shared).
    pub raw_offset: u64,
    pub raw_len: u64,
}

impl Initializer {
    /// Bytes per element of a type this module shares; `None` for another.
    fn element_bytes(&self) -> Option<u64> {
        match self.data_type {
            FLOAT | INT32 => Some(4),
            UINT8 | INT8 => Some(1),
            INT64 => Some(8),
            _ => None,
        }
    }

    /// A quantised weight (8-bit integers).
    pub fn is_quantised(&self) -> bool {
        matches!(self.data_type, UINT8 | INT8)
    }
}

fn digest_of(file: &mut BufReader<File>, t: &Initializer) -> std::io::Result<[u8; 32]> {
    file.seek(SeekFrom::Start(t.raw_offset))?;
    let mut hasher = Sha256::new();
    let mut left = t.raw_len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        file.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

/// The initializer as an ONNX Runtime tensor; `None` for an element type not
/// shared (it stays in the graph, loaded by each session).
fn tensor_of(file: &mut BufReader<File>, t: &Initializer) -> anyhow::Result<Option<Arc<DynValue>>> {
    let Some(width) = t.element_bytes() else { return Ok(None) };
    let elements: i64 = t.dims.iter().product();
    if t.dims.iter().any(|&d| d < 0) || elements as u64 * width != t.raw_len {
        bail!("initializer {} holds {} bytes for shape {:?}", t.name, t.raw_len, t.dims);
    }
    file.seek(SeekFrom::Start(t.raw_offset))?;
    let shape = t.dims.clone();
    let value: DynValue = match t.data_type {
        FLOAT => Tensor::from_array((shape, read_words(file, t.raw_len, f32::from_le_bytes)?))?.into_dyn(),
        INT32 => Tensor::from_array((shape, read_words(file, t.raw_len, i32::from_le_bytes)?))?.into_dyn(),
        INT64 => Tensor::from_array((shape, read_words(file, t.raw_len, i64::from_le_bytes)?))?.into_dyn(),
        UINT8 => Tensor::from_array((shape, read_words(file, t.raw_len, u8::from_le_bytes)?))?.into_dyn(),
        _ => Tensor::from_array((shape, read_words(file, t.raw_len, i8::from_le_bytes)?))?.into_dyn(),
    };
    Ok(Some(Arc::new(value)))
}

/// `len` bytes of little-endian words, read a block at a time: the tensor is
/// the only copy in memory (a 47 MB embedding would otherwise pass through a
/// second buffer that the allocator keeps for a while).
fn read_words<T, const N: usize>(file: &mut impl Read, len: u64, from: fn([u8; N]) -> T) -> std::io::Result<Vec<T>> {
    let mut words = Vec::with_capacity(len as usize / N);
    let mut block = vec![0u8; N * 8192];
    let mut left = len as usize;
    while left > 0 {
        let n = block.len().min(left);
        file.read_exact(&mut block[..n])?;
        words.extend(block[..n].chunks_exact(N).map(|c| from(c.try_into().expect("chunks of N"))));
        left -= n;
    }
    Ok(words)
}

/// The top-level initializers of an ONNX file (`ModelProto.graph.initializer`),
/// read without loading the file: only the fields this needs are parsed; the
/// tensors' bytes are skipped.
pub fn initializers(path: &Path) -> anyhow::Result<Vec<Initializer>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut wire = Wire { inner: BufReader::new(file), pos: 0 };
    read_model(&mut wire, len).with_context(|| format!("{} is not an ONNX model", path.display()))
}

/// A protobuf stream with its position.
struct Wire<R> {
    inner: R,
    pos: u64,
}

impl<R: Read + Seek> Wire<R> {
    fn byte(&mut self) -> anyhow::Result<u8> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b).context("ends inside a field")?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> anyhow::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("a varint longer than 10 bytes")
    }

    /// Skips `n` bytes that must end by `end` (a seek past the end of the
    /// file would not fail by itself).
    fn skip(&mut self, n: u64, end: u64) -> anyhow::Result<()> {
        if self.pos.checked_add(n).is_none_or(|to| to > end) {
            bail!("a field runs past its message");
        }
        self.inner.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }

    fn bytes(&mut self, n: u64, end: u64) -> anyhow::Result<Vec<u8>> {
        if self.pos.checked_add(n).is_none_or(|to| to > end) {
            bail!("a field runs past its message");
        }
        let mut buf = vec![0u8; usize::try_from(n)?];
        self.inner.read_exact(&mut buf).context("ends inside a field")?;
        self.pos += n;
        Ok(buf)
    }

    /// The next field's number and wire type, or `None` at `end`.
    fn field(&mut self, end: u64) -> anyhow::Result<Option<(u64, u8)>> {
        if self.pos >= end {
            return Ok(None);
        }
        let tag = self.varint()?;
        Ok(Some((tag >> 3, (tag & 7) as u8)))
    }

    /// Skips a field's value of wire type `wire` in a message that ends at `end`.
    fn skip_value(&mut self, wire: u8, end: u64) -> anyhow::Result<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.skip(8, end),
            2 => {
                let n = self.varint()?;
                self.skip(n, end)
            }
            5 => self.skip(4, end),
            other => bail!("unknown wire type {other}"),
        }
    }

    /// The end of a length-delimited field that starts here, checked against its parent's.
    fn nested_end(&mut self, parent_end: u64) -> anyhow::Result<u64> {
        let n = self.varint()?;
        let end = self.pos.checked_add(n).filter(|&e| e <= parent_end);
        end.context("a field runs past its message")
    }
}

const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_NAME: u64 = 8;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_DATA_LOCATION: u64 = 14;

fn read_model<R: Read + Seek>(wire: &mut Wire<R>, end: u64) -> anyhow::Result<Vec<Initializer>> {
    let mut found = Vec::new();
    while let Some((field, kind)) = wire.field(end)? {
        if field == MODEL_GRAPH && kind == 2 {
            let graph_end = wire.nested_end(end)?;
            while let Some((field, kind)) = wire.field(graph_end)? {
                if field == GRAPH_INITIALIZER && kind == 2 {
                    let tensor_end = wire.nested_end(graph_end)?;
                    found.push(read_tensor(wire, tensor_end)?);
                } else {
                    wire.skip_value(kind, graph_end)?;
                }
            }
        } else {
            wire.skip_value(kind, end)?;
        }
    }
    Ok(found)
}

fn read_tensor<R: Read + Seek>(wire: &mut Wire<R>, end: u64) -> anyhow::Result<Initializer> {
    let mut t = Initializer { name: String::new(), data_type: 0, dims: Vec::new(), raw_offset: 0, raw_len: 0 };
    let mut external = false;
    while let Some((field, kind)) = wire.field(end)? {
        match (field, kind) {
            (TENSOR_DIMS, 0) => t.dims.push(wire.varint()? as i64),
            (TENSOR_DIMS, 2) => {
                let dims_end = wire.nested_end(end)?;
                while wire.pos < dims_end {
                    t.dims.push(wire.varint()? as i64);
                }
            }
            (TENSOR_DATA_TYPE, 0) => t.data_type = wire.varint()? as i32,
            (TENSOR_NAME, 2) => {
                let n = wire.varint()?;
                t.name = String::from_utf8(wire.bytes(n, end)?).context("an initializer's name is not UTF-8")?;
            }
            (TENSOR_RAW_DATA, 2) => {
                t.raw_len = wire.varint()?;
                t.raw_offset = wire.pos;
                wire.skip(t.raw_len, end)?;
            }
            (TENSOR_DATA_LOCATION, 0) => external = wire.varint()? == 1,
            (_, kind) => wire.skip_value(kind, end)?,
        }
        if wire.pos > end {
            bail!("initializer {} runs past its message", t.name);
        }
    }
    if external {
        t.raw_len = 0;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(number: u64, wire: u64, out: &mut Vec<u8>) {
        varint(number << 3 | wire, out);
    }

    fn bytes(number: u64, data: &[u8], out: &mut Vec<u8>) {
        field(number, 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    /// A model with fields before and after the graph, an unpacked and a
    /// packed `dims`, typed (non-raw) data, and fields this reader skips.
    fn model() -> (Vec<u8>, Vec<u8>) {
        let raw: Vec<u8> = (0..24u8).collect();
        let mut first = Vec::new();
        field(TENSOR_DIMS, 0, &mut first);
        varint(2, &mut first);
        field(TENSOR_DIMS, 0, &mut first);
        varint(3, &mut first);
        field(TENSOR_DATA_TYPE, 0, &mut first);
        varint(1, &mut first);
        bytes(TENSOR_NAME, b"w", &mut first);
        bytes(12, b"a doc string", &mut first);
        bytes(TENSOR_RAW_DATA, &raw, &mut first);
        let mut second = Vec::new();
        let mut packed = Vec::new();
        varint(300, &mut packed);
        varint(1, &mut packed);
        bytes(TENSOR_DIMS, &packed, &mut second);
        field(TENSOR_DATA_TYPE, 0, &mut second);
        varint(7, &mut second);
        bytes(TENSOR_NAME, b"typed", &mut second);
        field(7, 0, &mut second); // int64_data, unpacked
        varint(5, &mut second);
        let mut graph = Vec::new();
        bytes(1, b"a node we skip", &mut graph);
        bytes(GRAPH_INITIALIZER, &first, &mut graph);
        field(2, 5, &mut graph); // a fixed32 we skip
        graph.extend_from_slice(&[1, 2, 3, 4]);
        bytes(GRAPH_INITIALIZER, &second, &mut graph);
        let mut model = Vec::new();
        field(1, 0, &mut model); // ir_version
        varint(8, &mut model);
        bytes(2, b"producer", &mut model);
        bytes(MODEL_GRAPH, &graph, &mut model);
        field(5, 1, &mut model); // a fixed64 we skip
        model.extend_from_slice(&[0; 8]);
        (model, raw)
    }

    #[test]
    fn reads_initializers_and_where_their_bytes_lie() {
        let (model, raw) = model();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, &model).unwrap();
        let found = initializers(&path).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].name.as_str(), found[0].data_type, found[0].dims.as_slice()), ("w", 1, &[2i64, 3][..]));
        let at = found[0].raw_offset as usize;
        assert_eq!(&model[at..at + found[0].raw_len as usize], &raw[..]);
        assert_eq!(
            (found[1].name.as_str(), found[1].dims.as_slice(), found[1].raw_len),
            ("typed", &[300i64, 1][..], 0)
        );
    }

    #[test]
    fn a_cut_file_is_an_error_not_a_panic() {
        let (model, _) = model();
        let dir = tempfile::tempdir().unwrap();
        for cut in [3, model.len() / 2, model.len() - 5] {
            let path = dir.path().join(format!("cut{cut}.onnx"));
            std::fs::write(&path, &model[..cut]).unwrap();
            let err = initializers(&path).expect_err("a cut file");
            assert!(format!("{err:#}").contains("is not an ONNX model"), "{err:#}");
        }
    }

    #[test]
    fn the_fixture_graphs_tables_match_their_sizes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert/model.onnx");
        let found = initializers(&path).unwrap();
        assert!(found.len() > 10, "{} initializers", found.len());
        let len = std::fs::metadata(&path).unwrap().len();
        for t in found.iter().filter(|t| t.raw_len > 0) {
            let width = t.element_bytes().expect("the fixture's types are shared ones");
            assert_eq!(t.dims.iter().product::<i64>() as u64 * width, t.raw_len, "{}", t.name);
            assert!(t.raw_offset + t.raw_len <= len);
        }
    }
}
