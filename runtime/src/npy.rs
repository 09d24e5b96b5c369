//! Minimal NumPy `.npy` files: 1-D and 2-D little-endian f32/f64 arrays in C order.
//!
//! The CLI writes samples with [`write_npy`]; the trainer reads user data with
//! [`read_npy_f64`]. Files are what `numpy.save` writes and `numpy.load` reads
//! (format 1.0; 2.0 and 3.0 are read too). Reading checks the magic, the header
//! dictionary (`descr` `<f4` or `<f8`, `fortran_order` False, a 1-D or 2-D `shape`) and
//! that the data is exactly as long as the shape says; it never panics on any bytes.
//! Values are returned as stored: NaN and infinity pass through (check them where they
//! matter).

use std::path::Path;

use crate::{Error, Real, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// numpy pads the header so that the data starts at a multiple of 64 bytes.
const ALIGN: usize = 64;

/// Largest number of dimensions [`to_npy_bytes`] writes (trajectories are 3-D).
pub const MAX_WRITE_DIMS: usize = 8;

/// Encodes an array of 1 to [`MAX_WRITE_DIMS`] dimensions (row-major `data` of length
/// Π shape) as `.npy` bytes, `<f4` for f32 data and `<f8` for f64 data.
pub fn to_npy_bytes<T: Real>(shape: &[usize], data: &[T]) -> Result<Vec<u8>> {
    if shape.is_empty() || shape.len() > MAX_WRITE_DIMS {
        return Err(Error::InvalidArgument(format!(
            "npy: shape {shape:?} has {} dimensions (1 to {MAX_WRITE_DIMS} can be written)",
            shape.len()
        )));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| Error::Limit(format!("npy: shape {shape:?} overflows")))?;
    crate::error::check_len("npy data", data.len(), n)?;
    let wide = T::NAME == "f64";
    let descr = if wide { "<f8" } else { "<f4" };
    let shape_str = match shape {
        [a] => format!("({a},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces, ends in '\n'.
    let total = (10 + header.len() + 1).next_multiple_of(ALIGN);
    header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
    header.push('\n');
    let header_len = u16::try_from(header.len())
        .map_err(|_| Error::Limit(format!("npy: header of {} bytes", header.len())))?;

    let item = if wide { 8 } else { 4 };
    let mut out = Vec::with_capacity(total + n * item);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        if wide {
            out.extend_from_slice(&x.f64().to_le_bytes());
        } else {
            // Exact: the value is an f32 widened to f64.
            out.extend_from_slice(&(x.f64() as f32).to_le_bytes());
        }
    }
    Ok(out)
}

/// Writes an array (see [`to_npy_bytes`]) to `path` atomically (temporary file, fsync, rename).
pub fn write_npy<T: Real>(path: impl AsRef<Path>, shape: &[usize], data: &[T]) -> Result<()> {
    let bytes = to_npy_bytes(shape, data)?;
    crate::artifact::write_atomically(path.as_ref(), &bytes)
}

/// Decodes `.npy` bytes holding a 1-D or 2-D `<f4` or `<f8` C-order array; returns the
/// shape and the values (row-major) widened to f64.
///
/// Errors: [`Error::Format`] for a malformed file (bad magic, header, or data length),
/// [`Error::Unsupported`] for a valid file this reader does not handle (another dtype,
/// big-endian, Fortran order, 0-D or more than 2-D), [`Error::Limit`] for a shape whose
/// size overflows.
pub fn from_npy_bytes(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f64>)> {
    let bad = |msg: String| Error::Format(format!("npy: {msg}"));
    let Some((magic, rest)) = bytes.split_first_chunk::<6>() else {
        return Err(bad(format!("{} bytes is too short", bytes.len())));
    };
    if magic != MAGIC {
        return Err(bad("not a .npy file (bad magic)".into()));
    }
    let Some(([major, minor], rest)) = rest.split_first_chunk::<2>() else {
        return Err(bad("truncated version".into()));
    };
    let (header_len, rest) = match (major, minor) {
        (1, 0) => match rest.split_first_chunk::<2>() {
            Some((l, rest)) => (usize::from(u16::from_le_bytes(*l)), rest),
            None => return Err(bad("truncated header length".into())),
        },
        (2, 0) | (3, 0) => match rest.split_first_chunk::<4>() {
            Some((l, rest)) => (
                usize::try_from(u32::from_le_bytes(*l))
                    .map_err(|_| Error::Limit("npy: header length".into()))?,
                rest,
            ),
            None => return Err(bad("truncated header length".into())),
        },
        _ => {
            return Err(Error::Unsupported(format!(
                "npy format version {major}.{minor}"
            )))
        }
    };
    if header_len > rest.len() {
        return Err(bad(format!(
            "header of {header_len} bytes runs past the end of the file"
        )));
    }
    let (header, data) = rest.split_at(header_len);
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let h = parse_header(header).map_err(bad)?;

    let wide = match h.descr.as_str() {
        "<f8" => true,
        "<f4" => false,
        other => {
            return Err(Error::Unsupported(format!(
                "npy dtype '{other}' (only little-endian float32 '<f4' and float64 '<f8')"
            )))
        }
    };
    if h.fortran_order {
        return Err(Error::Unsupported(
            "npy array in Fortran order (save a C-order array)".into(),
        ));
    }
    if h.shape.is_empty() || h.shape.len() > 2 {
        return Err(Error::Unsupported(format!(
            "npy array of {} dimensions (only 1-D and 2-D)",
            h.shape.len()
        )));
    }
    let item = if wide { 8 } else { 4 };
    let n = h
        .shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .filter(|n| n.checked_mul(item).is_some())
        .ok_or_else(|| Error::Limit(format!("npy: shape {:?} overflows", h.shape)))?;
    if data.len() != n * item {
        return Err(bad(format!(
            "data has {} bytes, shape {:?} of '{}' needs {}",
            data.len(),
            h.shape,
            h.descr,
            n * item
        )));
    }
    let values = if wide {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    } else {
        data.chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    };
    Ok((h.shape, values))
}

/// Reads a 1-D or 2-D `<f4`/`<f8` `.npy` file; see [`from_npy_bytes`].
pub fn read_npy_f64(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f64>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_npy_bytes(&bytes).map_err(|e| match e {
        Error::Format(msg) => Error::Format(format!("{}: {msg}", path.display())),
        Error::Unsupported(msg) => Error::Unsupported(format!("{}: {msg}", path.display())),
        other => other,
    })
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the header dictionary, a Python literal such as
/// `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }`.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        let dup = match key.as_str() {
            "descr" => descr.replace(p.string()?).is_some(),
            "fortran_order" => fortran.replace(p.boolean()?).is_some(),
            "shape" => shape.replace(p.tuple()?).is_some(),
            other => return Err(format!("unknown header key '{other}'")),
        };
        if dup {
            return Err(format!("header repeats key '{key}'"));
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters after the header dictionary".into());
    }
    Ok(Header {
        descr: descr.ok_or("header lacks 'descr'")?,
        fortran_order: fortran.ok_or("header lacks 'fortran_order'")?,
        shape: shape.ok_or("header lacks 'shape'")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "header: expected '{}' at byte {}",
                char::from(c),
                self.i
            ))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("header: expected a string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == quote {
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(s);
            }
            if c == b'\\' {
                return Err("header: escapes in strings are not supported".into());
            }
            self.i += 1;
        }
        Err("header: unterminated string".into())
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(value);
            }
        }
        Err(format!("header: expected True or False at byte {}", self.i))
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
            let dim: usize = digits
                .parse()
                .map_err(|_| format!("header: bad dimension at byte {start}"))?;
            self.eat(b'L'); // Python 2 long literal, e.g. (3L, 2L)
            dims.push(dim);
            if dims.len() > 32 {
                return Err("header: too many dimensions".into());
            }
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                if dims.len() == 1 {
                    // `(3)` is the integer 3 in Python, not a tuple.
                    return Err("header: shape is not a tuple (a 1-tuple needs a comma)".into());
                }
                return Ok(dims);
            }
        }
    }
}
