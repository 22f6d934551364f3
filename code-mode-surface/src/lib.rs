//! The model-facing surface of code mode, independent of V8: the `exec` and `wait` tool
//! specs, `exec`'s description with a TypeScript declaration per nested tool, the pragma
//! parser, the formatter that turns a cell response into the tool output the model sees
//! (contract section 1), and the JSON forms of responses every JSON front end shares.

pub mod declarations;
pub mod describe;
pub mod format;
pub mod json;
pub mod pragma;
pub mod specs;

pub use declarations::schema_to_typescript;
pub use describe::{
    Catalog, ToolDescription, UnavailableSource, exec_code_argument_description,
    exec_code_argument_description_of, exec_description, exec_description_of,
};
pub use format::{BYTES_PER_TOKEN, format_response, format_response_omitting, status_line};
pub use pragma::{DEFAULT_MAX_OUTPUT_TOKENS, ExecParseError, ParsedExec, parse_exec_source};
pub use specs::{
    EXEC_TOOL_NAME, ToolSpec, WAIT_TOOL_NAME, WaitArguments, WaitArgumentsError, exec_tool_spec,
    exec_tool_spec_of, parse_wait_arguments, wait_tool_spec,
};
