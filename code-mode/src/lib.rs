//! The code-mode runtime: runs a model-written JavaScript *cell* in a fresh V8 isolate on a
//! thread of its own, and reports what it does as typed events.
//!
//! Who calls it: the cell actor (sessions) in this crate and, through it, `code-mode-bin`.
//! What it owns: V8 initialisation ([`platform`]), the cell thread and its isolate
//! ([`runtime`]). It never touches the file system or the network, and it never decides
//! a cell's fate on its own: it reports completion or termination, and the owner decides
//! what that means for stored values and observers.
//!
//! "Contract" references (`contract 3.5`, "contract section 2") are to the project's
//! `docs/CONTRACT.md`.

pub mod platform;
pub mod runtime;
pub mod session;

pub use code_mode_protocol as protocol;
pub use code_mode_protocol::ToolDefinition;
pub use runtime::{
    CONTEXT_SNAPSHOT_ENV, CellCommand, CellConfig, CellEvent, CellHandle, CellLimits, CellOutcome,
    ContextSource, IsolateShelf, SpawnError, StoredValues, ToolCallRequest, TypeScriptRefused,
    prewarm, prewarm_for, spawn_cell, spawn_cell_from, spawn_cell_on, strip_typescript,
};
pub use session::{
    Handed, Held, InProcessConfig, InProcessProvider, InProcessSession, Offer, OfferSink,
};
