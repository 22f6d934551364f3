//! `code_mode._native`, the native half of the Python package `code_mode`
//! (`python/code_mode/`): sessions of the host crate, whose cells run in the sandboxed
//! runtime process the wheel ships (or, built with the `in-process` feature and asked
//! for, on V8 in the Python process), driven from Python.
//!
//! `session` is the session and its blocking and callback forms; `response` the typed
//! answer of a cell it returns (`Response`, `Item`); `delegate` hands nested calls to the
//! Python dispatcher and takes their answers back (and says which wait on a person);
//! `approvals` lists and decides the calls that wait on a person in a state directory;
//! `options` reads what Python passes (the options typed, tools and values as JSON);
//! `runtime` holds the tokio runtime and the shared providers; `tracing_setup` exports
//! spans; `errors` the exceptions. Everything a Python user sees of the API is written in
//! Python over these.

mod approvals;
mod delegate;
mod errors;
mod options;
mod response;
mod runtime;
mod session;
mod tracing_setup;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<session::NativeSession>()?;
    module.add_class::<session::ExecHandle>()?;
    module.add_class::<options::NativeOptions>()?;
    module.add_class::<response::NativeResponse>()?;
    module.add_class::<response::NativeItem>()?;
    module.add_function(wrap_pyfunction!(runtime::kept_sessions, module)?)?;
    module.add_function(wrap_pyfunction!(approvals::pending_approvals, module)?)?;
    module.add_function(wrap_pyfunction!(approvals::decide_approval, module)?)?;
    module.add_function(wrap_pyfunction!(tracing_setup::configure_tracing, module)?)?;
    module.add_function(wrap_pyfunction!(tracing_setup::shutdown_tracing, module)?)?;
    errors::register(module)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add("IN_PROCESS", runtime::IN_PROCESS)?;
    Ok(())
}
