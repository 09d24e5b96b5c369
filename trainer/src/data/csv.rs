//! Numeric CSV files: one sample per line, comma-separated coordinates.
//!
//! The format read is the one `numpy.savetxt(path, x, delimiter=",")` and most
//! spreadsheet exports write:
//!
//! - fields are separated by `,` and trimmed of spaces and tabs; lines end in `\n` or
//!   `\r\n`;
//! - blank lines and lines whose first non-blank character is `#` (numpy's header and
//!   comments) are skipped;
//! - the first remaining line is a header when *none* of its fields is a number; it
//!   then fixes the number of columns. A first line with some numeric and some
//!   non-numeric fields is an error, not a header;
//! - every data field is a decimal floating-point number as Rust's `f64::from_str`
//!   reads it; NaN and infinity are rejected, as are empty fields and rows whose
//!   field count differs from the first row's (or the header's).
//!
//! Errors name the file, the line (from 1) and the field (from 1).

use std::path::Path;

use super::Dataset;
use crate::error::{Error, Result};

/// Reads a numeric CSV file (see the module docs) into a [`Dataset`].
///
/// Errors: [`Error::Io`] when the file cannot be read; [`Error::Parse`] for a line
/// that is not valid UTF-8, a field that is not a number, empty, NaN or infinite, or
/// a ragged row; [`Error::Data`] when the file holds no data row.
pub fn read_csv(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Error::Parse {
            path: path.to_path_buf(),
            line,
            message: "not valid UTF-8 text".into(),
        }
    })?;
    parse_csv(text, path)
}

/// Parses numeric CSV text (see the module docs); `path` only names the source in
/// errors. Same errors as [`read_csv`], I/O aside.
pub fn parse_csv(text: &str, path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let err = |line: usize, message: String| Error::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut x = Vec::new();
    // (columns, line that fixed them, whether that line is the header)
    let mut width: Option<(usize, usize, bool)> = None;
    let mut first = true;
    let mut rows = 0usize;
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = content.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(|f| f.trim()).collect();
        if first {
            first = false;
            let numeric = fields.iter().filter(|f| f.parse::<f64>().is_ok()).count();
            if numeric == 0 {
                width = Some((fields.len(), line, true));
                continue;
            }
        }
        if let Some((w, from, header)) = width {
            if fields.len() != w {
                let what = if header {
                    "the header"
                } else {
                    "the first row"
                };
                return Err(err(
                    line,
                    format!(
                        "{} fields, expected {w} as in {what} (line {from})",
                        fields.len()
                    ),
                ));
            }
        } else {
            width = Some((fields.len(), line, false));
        }
        for (k, field) in fields.iter().enumerate() {
            let column = k + 1;
            if field.is_empty() {
                return Err(err(line, format!("field {column} is empty")));
            }
            let v: f64 = field.parse().map_err(|_| {
                err(
                    line,
                    format!("field {column} `{}` is not a number", shorten(field)),
                )
            })?;
            if !v.is_finite() {
                return Err(err(
                    line,
                    format!("field {column} is `{field}`: NaN and infinity are not data"),
                ));
            }
            x.push(v);
        }
        rows += 1;
    }
    let d = match width {
        Some((w, _, _)) if rows > 0 => w,
        _ => {
            return Err(Error::Data(format!(
                "{}: no data rows (a CSV data file needs at least one line of numbers)",
                path.display()
            )))
        }
    };
    Dataset::new(rows, d, x)
}

/// A field for an error message: at most 40 characters.
fn shorten(field: &str) -> String {
    match field.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &field[..cut]),
        None => field.to_string(),
    }
}
