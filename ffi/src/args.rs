//! Checked conversions of C arguments: pointers with lengths into slices, output
//! pointers, enumerations passed as integers.

use std::mem::{align_of, size_of};

use crate::error::Failure;

/// A caller's input buffer as a slice, after checking NULL, alignment and size.
///
/// # Safety
/// When `p` is non-null it must point to `len` readable, initialized `T`s that
/// stay valid and unmodified for `'a`.
pub(crate) unsafe fn input<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T], Failure> {
    check(p, len, what)?;
    // SAFETY: non-null, aligned and not too large (checked above); the caller
    // guarantees `len` valid elements.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A caller's output buffer as a mutable slice, after checking NULL, alignment and
/// size.
///
/// # Safety
/// When `p` is non-null it must point to `len` writable `T`s, valid for `'a` and not
/// accessed by anything else meanwhile.
pub(crate) unsafe fn output<'a, T>(
    p: *mut T,
    len: usize,
    what: &str,
) -> Result<&'a mut [T], Failure> {
    check(p, len, what)?;
    // SAFETY: as for `input`, with exclusive access guaranteed by the caller.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// Like [`output`], but NULL gives `None` (an optional output).
///
/// # Safety
/// As for [`output`].
pub(crate) unsafe fn optional_output<'a, T>(
    p: *mut T,
    len: usize,
    what: &str,
) -> Result<Option<&'a mut [T]>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { output(p, len, what) }.map(Some)
}

fn check<T>(p: *const T, len: usize, what: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(Failure::null_pointer(what));
    }
    if (p as usize) % align_of::<T>() != 0 {
        return Err(Failure::invalid(format!(
            "{what} is not aligned to {} bytes",
            align_of::<T>()
        )));
    }
    if len > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(Failure::length(
            what,
            len,
            isize::MAX as usize / size_of::<T>().max(1),
        ));
    }
    Ok(())
}

/// Fails when an input and an output buffer overlap (the output would be written
/// while the input is read).
pub(crate) fn disjoint<A, B>(a: &[A], b: &[B], what: &str) -> Result<(), Failure> {
    let (a0, a1) = (
        a.as_ptr() as usize,
        a.as_ptr() as usize + std::mem::size_of_val(a),
    );
    let (b0, b1) = (
        b.as_ptr() as usize,
        b.as_ptr() as usize + std::mem::size_of_val(b),
    );
    if a0 < b1 && b0 < a1 {
        return Err(Failure::invalid(format!("{what} overlap")));
    }
    Ok(())
}

/// Writes `value` through an output pointer, after checking it for NULL and
/// alignment.
///
/// # Safety
/// When `p` is non-null it must be valid for a write of one `T`.
pub(crate) unsafe fn write<T>(p: *mut T, value: T, what: &str) -> Result<(), Failure> {
    check(p, 1, what)?;
    // SAFETY: non-null and aligned (checked); valid for a write by the contract.
    unsafe { p.write(value) };
    Ok(())
}

/// `a × b` for buffer sizes, as a length error on overflow.
pub(crate) fn product(what: &str, factors: &[usize]) -> Result<usize, Failure> {
    factors
        .iter()
        .try_fold(1usize, |acc, f| acc.checked_mul(*f))
        .ok_or_else(|| Failure::invalid(format!("{what}: size overflows")))
}
