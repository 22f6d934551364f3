//! Types that cross every boundary of code-mode: between a cell and its owner, between the
//! runtime process and the host, and between the host and the agent core.
//!
//! This crate is the API: the vocabulary, the session and provider traits
//! ([`CodeModeSession`], [`CodeModeProvider`]), requests and responses, ids, errors,
//! limits and the contract's texts. The wire between host and runtime process is the
//! internal `code-mode-wire` crate; what the model sees (tool specs, descriptions, the
//! formatter) is `code-mode-surface`. It never links V8 and never spawns processes, so an
//! agent core can depend on it (through `code-mode-host`) without paying for either.
//!
//! "Contract" references (`contract 3.2`, "contract section 6") are to the project's
//! `docs/CONTRACT.md`.

#![forbid(unsafe_code)]

pub mod approval;
pub mod durable;
pub mod ids;
pub mod journal;
pub mod json_text;
pub mod model;
pub mod search;
pub mod session;
pub mod stored;
/// The contract's fixed texts, shared by the workspace's crates; an agent core reads them
/// through the errors and responses that display them.
#[doc(hidden)]
pub mod texts;

pub use approval::ApprovalNeed;
pub use ids::{CallId, CellId, NotACallId, ToolError};
pub use json_text::JsonText;
pub use model::{ContentItem, ImageDetail, ToolDefinition, ToolKind, js_tool_name};
pub use session::{
    AdmittedHook, BoxFuture, CellFailure, CellLimits, CellResponse, CodeModeProvider,
    CodeModeSession, CodeModeSessionDelegate, DelegateLayer, ExecHooks, ExecRequest, FailureKind,
    NestedToolCall, PendingOutcome, RuntimeFailure, SessionError, SessionOptions, StartedCell,
    StartedPendingCell, Surface, WaitRequest,
};
pub use stored::StoredValues;
