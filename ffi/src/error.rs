//! Status codes, the thread-local last-error message, and the wrapper every exported
//! function runs its body in (no panic crosses the boundary).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use socflow_runtime::Error;

/// The result of every socflow call. `SOCFLOW_OK` is 0; on any other status,
/// `socflow_last_error()` describes what went wrong on the calling thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum socflow_status {
    /// Success.
    SOCFLOW_OK = 0,
    /// A required pointer argument was NULL.
    SOCFLOW_ERROR_NULL_POINTER = 1,
    /// A handle is the null handle, closed (destroyed), or not a handle of that kind.
    SOCFLOW_ERROR_INVALID_HANDLE = 2,
    /// A controller is in use by another thread, or a handle is being destroyed
    /// while in use.
    SOCFLOW_ERROR_BUSY = 3,
    /// A buffer has the wrong length.
    SOCFLOW_ERROR_LENGTH = 4,
    /// An input holds NaN or infinity.
    SOCFLOW_ERROR_NON_FINITE = 5,
    /// An argument is out of range (an unknown solver, zero steps, t1 <= t0, …).
    SOCFLOW_ERROR_INVALID_ARGUMENT = 6,
    /// A file could not be read.
    SOCFLOW_ERROR_IO = 7,
    /// A model file or buffer is malformed, too new, or exceeds the runtime's limits.
    SOCFLOW_ERROR_FORMAT = 8,
    /// The operation is not available for this model (a controller over a model with
    /// no potential, …).
    SOCFLOW_ERROR_UNSUPPORTED = 9,
    /// An integration failed (adaptive step-size underflow, a state that became
    /// non-finite).
    SOCFLOW_ERROR_INTEGRATION = 10,
    /// A caller-supplied callback returned a nonzero status.
    SOCFLOW_ERROR_CALLBACK = 11,
    /// An internal error (a bug in socflow: please report it). The library caught it;
    /// the process can go on, but the object involved may be unusable.
    SOCFLOW_ERROR_INTERNAL = 12,
}

impl socflow_status {
    /// The status's name as the header spells it, NUL-terminated.
    pub(crate) fn c_name(self) -> &'static str {
        use socflow_status::*;
        match self {
            SOCFLOW_OK => "SOCFLOW_OK\0",
            SOCFLOW_ERROR_NULL_POINTER => "SOCFLOW_ERROR_NULL_POINTER\0",
            SOCFLOW_ERROR_INVALID_HANDLE => "SOCFLOW_ERROR_INVALID_HANDLE\0",
            SOCFLOW_ERROR_BUSY => "SOCFLOW_ERROR_BUSY\0",
            SOCFLOW_ERROR_LENGTH => "SOCFLOW_ERROR_LENGTH\0",
            SOCFLOW_ERROR_NON_FINITE => "SOCFLOW_ERROR_NON_FINITE\0",
            SOCFLOW_ERROR_INVALID_ARGUMENT => "SOCFLOW_ERROR_INVALID_ARGUMENT\0",
            SOCFLOW_ERROR_IO => "SOCFLOW_ERROR_IO\0",
            SOCFLOW_ERROR_FORMAT => "SOCFLOW_ERROR_FORMAT\0",
            SOCFLOW_ERROR_UNSUPPORTED => "SOCFLOW_ERROR_UNSUPPORTED\0",
            SOCFLOW_ERROR_INTEGRATION => "SOCFLOW_ERROR_INTEGRATION\0",
            SOCFLOW_ERROR_CALLBACK => "SOCFLOW_ERROR_CALLBACK\0",
            SOCFLOW_ERROR_INTERNAL => "SOCFLOW_ERROR_INTERNAL\0",
        }
    }

    /// Every status, in code order.
    pub(crate) const ALL: [socflow_status; 13] = {
        use socflow_status::*;
        [
            SOCFLOW_OK,
            SOCFLOW_ERROR_NULL_POINTER,
            SOCFLOW_ERROR_INVALID_HANDLE,
            SOCFLOW_ERROR_BUSY,
            SOCFLOW_ERROR_LENGTH,
            SOCFLOW_ERROR_NON_FINITE,
            SOCFLOW_ERROR_INVALID_ARGUMENT,
            SOCFLOW_ERROR_IO,
            SOCFLOW_ERROR_FORMAT,
            SOCFLOW_ERROR_UNSUPPORTED,
            SOCFLOW_ERROR_INTEGRATION,
            SOCFLOW_ERROR_CALLBACK,
            SOCFLOW_ERROR_INTERNAL,
        ]
    };
}

/// A failed call: its status and message (becomes the thread's last error).
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: socflow_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: socflow_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
    pub fn null_pointer(what: &str) -> Self {
        Self::new(
            socflow_status::SOCFLOW_ERROR_NULL_POINTER,
            format!("{what} is NULL"),
        )
    }
    pub fn null_handle(kind: &str) -> Self {
        Self::new(
            socflow_status::SOCFLOW_ERROR_INVALID_HANDLE,
            format!("the {kind} handle is the null handle (not created, or creation failed)"),
        )
    }
    pub fn invalid_handle(message: String) -> Self {
        Self::new(socflow_status::SOCFLOW_ERROR_INVALID_HANDLE, message)
    }
    pub fn busy(kind: &str) -> Self {
        Self::new(
            socflow_status::SOCFLOW_ERROR_BUSY,
            format!(
                "the {kind} is in use by another thread (give each thread its own {kind}, \
                 and destroy a handle only when no call on it is running)"
            ),
        )
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(socflow_status::SOCFLOW_ERROR_INVALID_ARGUMENT, message)
    }
    pub fn length(what: &str, found: usize, expected: usize) -> Self {
        Self::new(
            socflow_status::SOCFLOW_ERROR_LENGTH,
            format!("{what}: length {found}, expected {expected}"),
        )
    }
    /// A failure while loading a model: anything about the bytes, limits included,
    /// is a malformed file.
    pub fn loading(e: Error) -> Self {
        let limit = matches!(e, Error::Limit(_));
        let mut f = Failure::from(e);
        if limit {
            f.status = socflow_status::SOCFLOW_ERROR_FORMAT;
        }
        f
    }
    pub fn limit(message: String) -> Self {
        Self::new(socflow_status::SOCFLOW_ERROR_FORMAT, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        use socflow_status::*;
        let status = match &e {
            Error::Io { .. } => SOCFLOW_ERROR_IO,
            Error::Format(_) | Error::UnsupportedVersion { .. } | Error::Shape { .. } => {
                SOCFLOW_ERROR_FORMAT
            }
            // A size past the runtime's limits: a malformed file while loading (see
            // `Failure::loading`), an out-of-range argument otherwise (a sample index
            // past the generator's 2^48 − 1).
            Error::Limit(_) => SOCFLOW_ERROR_INVALID_ARGUMENT,
            Error::NonFinite(_) => SOCFLOW_ERROR_NON_FINITE,
            Error::Length { .. } => SOCFLOW_ERROR_LENGTH,
            Error::InvalidArgument(_) => SOCFLOW_ERROR_INVALID_ARGUMENT,
            Error::Integration(_) => SOCFLOW_ERROR_INTEGRATION,
            Error::Unsupported(_) => SOCFLOW_ERROR_UNSUPPORTED,
            _ => SOCFLOW_ERROR_INTERNAL,
        };
        Failure::new(status, e.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread (NUL-terminated).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// Set while this thread runs inside an exported function, so the panic hook
    /// stays quiet for panics that `call` turns into a status.
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
    /// Where the last caught panic happened (filled by the hook).
    static PANIC_AT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Sets the calling thread's last error.
pub(crate) fn set_last_error(message: &str) {
    let c =
        CString::new(message.replace('\0', "\u{FFFD}")).expect("interior NUL bytes were replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The calling thread's last error (valid until its next failed call).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Installs (once) a panic hook that is silent for panics inside exported calls and
/// defers to the previous hook elsewhere (a Rust program linking the rlib keeps its
/// own panic output).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CALL.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs the body of an exported function: a `Failure` becomes its status and the
/// thread's last error, and a panic is caught and reported as
/// `SOCFLOW_ERROR_INTERNAL`. Success leaves the last error as it was.
pub(crate) fn call(body: impl FnOnce() -> Result<(), Failure>) -> socflow_status {
    install_panic_hook();
    let outer = IN_CALL.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(body));
    IN_CALL.with(|c| c.set(outer));
    match result {
        Ok(Ok(())) => socflow_status::SOCFLOW_OK,
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            let at = PANIC_AT.with(|p| std::mem::take(&mut *p.borrow_mut()));
            set_last_error(&format!(
                "internal error (a bug in socflow, please report it): {what}{at}"
            ));
            socflow_status::SOCFLOW_ERROR_INTERNAL
        }
    }
}
