//! The integration tests of `code-mode-tools`: tool sources run as a front end runs them,
//! through `ToolSet`. One binary; each area is a module.

mod environment;
