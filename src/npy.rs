//! NumPy `.npy` (format 1.0) writing and reading, for float32 and int64 arrays:
//! what `numpy.load` reads and `numpy.save` writes for C-ordered arrays.

use std::fmt::Write as _;

const MAGIC: &[u8] = b"\x93NUMPY";
/// The media type `/embed` answers `.npy` with.
pub const MEDIA_TYPE: &str = "application/x-npy";

/// Element types we write.
pub trait Element: Copy {
    const DESCR: &'static str;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(bytes: &[u8]) -> Self;
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(b: &[u8]) -> Self {
        f32::from_le_bytes(b.try_into().expect("4 bytes"))
    }
}

impl Element for i64 {
    const DESCR: &'static str = "<i8";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(b: &[u8]) -> Self {
        i64::from_le_bytes(b.try_into().expect("8 bytes"))
    }
}

fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let mut dims = String::new();
    for d in shape {
        let _ = write!(dims, "{d}, ");
    }
    let dims = match shape.len() {
        0 => String::new(),
        1 => dims.trim_end().to_string(), // "(3,)"
        _ => dims.trim_end_matches(", ").to_string(),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    // magic (6) + version (2) + header length (2) + dict + padding + '\n' is a multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

/// Encodes a C-ordered array; `data.len()` must equal the product of `shape`.
pub fn encode<T: Element>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy shape does not match the data");
    let mut out = Writer::new(shape);
    out.extend(data);
    out.finish()
}

/// Writes an array in place, element by element, into one buffer sized once:
/// no second copy of a large answer.
pub struct Writer<T: Element> {
    out: Vec<u8>,
    remaining: usize,
    _element: std::marker::PhantomData<T>,
}

impl<T: Element> Writer<T> {
    pub fn new(shape: &[usize]) -> Self {
        let count: usize = shape.iter().product();
        let mut out = header(T::DESCR, shape);
        out.reserve_exact(count * std::mem::size_of::<T>());
        Writer { out, remaining: count, _element: std::marker::PhantomData }
    }

    pub fn extend(&mut self, values: &[T]) {
        assert!(values.len() <= self.remaining, "more data than the npy shape holds");
        self.remaining -= values.len();
        values.iter().for_each(|&v| v.write_le(&mut self.out));
    }

    pub fn zeros(&mut self, n: usize) {
        assert!(n <= self.remaining, "more data than the npy shape holds");
        self.remaining -= n;
        self.out.resize(self.out.len() + n * std::mem::size_of::<T>(), 0);
    }

    /// The encoded array; the data written must fill the shape.
    pub fn finish(self) -> Vec<u8> {
        assert_eq!(self.remaining, 0, "npy data shorter than its shape");
        self.out
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("not a valid .npy array: {0}")]
pub struct NpyError(pub String);

/// Decodes an array written by [`encode`] (or by `numpy.save` for a C-ordered
/// array of that type). Returns the shape and the data.
pub fn decode<T: Element>(bytes: &[u8]) -> Result<(Vec<usize>, Vec<T>), NpyError> {
    let err = |m: &str| NpyError(m.to_string());
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("missing magic string"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(NpyError(format!("unsupported version {v}"))),
    };
    let dict = bytes.get(start..start + header_len).ok_or_else(|| err("truncated header"))?;
    let dict = std::str::from_utf8(dict).map_err(|_| err("header is not text"))?;
    if !dict.contains(&format!("'descr': '{}'", T::DESCR)) {
        return Err(NpyError(format!("expected dtype {} in header {dict:?}", T::DESCR)));
    }
    if !dict.contains("'fortran_order': False") {
        return Err(err("Fortran-ordered arrays are not supported"));
    }
    let shape_text = dict
        .split("'shape': (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| err("no shape in header"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| NpyError(format!("bad dimension {s:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let size = std::mem::size_of::<T>();
    // Checked: a hostile header can claim a shape whose size overflows.
    let expected = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError(format!("shape {shape:?} is too large")))?;
    let body = &bytes[start + header_len..];
    if body.len() != expected {
        return Err(NpyError(format!("expected {expected} data bytes for shape {shape:?}, found {}", body.len())));
    }
    Ok((shape, body.chunks_exact(size).map(T::read_le).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_round_trips() {
        for shape in [vec![2usize, 3], vec![4], vec![1, 2, 2], vec![0, 384]] {
            let n = shape.iter().product::<usize>();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let bytes = encode(&shape, &data);
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0);
            assert_eq!(decode::<f32>(&bytes).unwrap(), (shape, data));
        }
        let bytes = encode(&[3], &[1i64, -2, 3]);
        assert!(String::from_utf8_lossy(&bytes).contains("'shape': (3,)"));
        assert_eq!(decode::<i64>(&bytes).unwrap(), (vec![3], vec![1, -2, 3]));
    }

    #[test]
    fn the_writer_matches_encode() {
        let data = [1.0f32, 2.0, 0.0, 3.0, 0.0, 0.0];
        let mut w = Writer::<f32>::new(&[2, 3]);
        w.extend(&data[..2]);
        w.zeros(1);
        w.extend(&[3.0]);
        w.zeros(2);
        assert_eq!(w.finish(), encode(&[2, 3], &data));
    }

    #[test]
    fn decode_rejects_wrong_type_and_truncation() {
        let bytes = encode(&[2], &[1.0f32, 2.0]);
        assert!(decode::<i64>(&bytes).is_err());
        assert!(decode::<f32>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode::<f32>(b"not numpy").is_err());
    }
}
