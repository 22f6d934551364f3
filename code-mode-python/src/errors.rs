//! The package's exceptions, and how a session's errors become them. Python re-exports
//! them from `code_mode`; `CellError` and `LimitExceeded` are raised by
//! `Result.raise_for_error` there, from a response's failure.

use code_mode_host::HostError;
use code_mode_protocol::SessionError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _native,
    CodeModeError,
    PyException,
    "Every error of `code_mode`."
);
create_exception!(
    _native,
    RuntimeUnavailable,
    CodeModeError,
    "No runtime could run the call: the message names the cause and its fix (e.g. the runtime executable is missing)."
);
create_exception!(
    _native,
    RuntimeLost,
    CodeModeError,
    "The runtime process was lost while the call was in flight; the session goes on at its next call."
);
create_exception!(
    _native,
    SessionClosed,
    CodeModeError,
    "The session was closed, or is shutting down."
);
create_exception!(
    _native,
    CellError,
    CodeModeError,
    "A cell failed: the message is the text the model reads."
);
create_exception!(
    _native,
    LimitExceeded,
    CellError,
    "A cell reached one of its limits (heap, CPU time) and was stopped."
);

/// How to fix a runtime that could not start, for Python's user.
const RUNTIME_FIX: &str = "to fix it, reinstall code-mode-runtime (its wheel ships the runtime as code_mode/bin/code-mode-bin), or pass runtime= (or set $CODE_MODE_BIN) to a code-mode-bin executable";

/// The exception's name and message for `error`.
pub(crate) fn describe(error: &SessionError) -> (&'static str, String) {
    let kind = match error {
        SessionError::ShuttingDown => "SessionClosed",
        SessionError::RuntimeLost(_) => "RuntimeLost",
        SessionError::Runtime(_)
            if error
                .runtime_cause()
                .is_some_and(|cause| cause.is::<HostError>()) =>
        {
            "RuntimeUnavailable"
        }
        SessionError::Runtime(_)
        | SessionError::BusyObserver(_)
        | SessionError::AlreadyTerminating(_) => "CodeModeError",
    };
    let message = match kind {
        "RuntimeUnavailable" => format!("{error}; {RUNTIME_FIX}"),
        _ => error.to_string(),
    };
    (kind, message)
}

/// The exception for `error`.
pub(crate) fn raise(error: &SessionError) -> PyErr {
    let (kind, message) = describe(error);
    match kind {
        "SessionClosed" => SessionClosed::new_err(message),
        "RuntimeLost" => RuntimeLost::new_err(message),
        "RuntimeUnavailable" => RuntimeUnavailable::new_err(message),
        _ => CodeModeError::new_err(message),
    }
}

/// Adds the exceptions to the module.
pub(crate) fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add("CodeModeError", py.get_type::<CodeModeError>())?;
    module.add("RuntimeUnavailable", py.get_type::<RuntimeUnavailable>())?;
    module.add("RuntimeLost", py.get_type::<RuntimeLost>())?;
    module.add("SessionClosed", py.get_type::<SessionClosed>())?;
    module.add("CellError", py.get_type::<CellError>())?;
    module.add("LimitExceeded", py.get_type::<LimitExceeded>())?;
    Ok(())
}
