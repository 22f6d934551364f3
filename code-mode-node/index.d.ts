// The API of code-mode-runtime. The shapes of results, content items and options are
// the ones napi-rs generates from the Rust side (native.d.ts); this file declares the
// JavaScript layer over them (index.cjs).
import type { CellResult, ContentItem, NativeOptions } from './native'

export type { CellResult, ContentItem }

/** Every error of code-mode-runtime. */
export declare class CodeModeError extends Error {}
/** No runtime could run the call (the platform package or the runtime executable is missing): the message names the fix. */
export declare class RuntimeUnavailable extends CodeModeError {}
/** The runtime process was lost while the call was in flight; the session goes on at its next call. */
export declare class RuntimeLost extends CodeModeError {}
/** The session was closed, or is shutting down. */
export declare class SessionClosed extends CodeModeError {}
/** A bad argument: an unknown option, a tool without a name, a schema that does not convert. */
export declare class InvalidArgument extends CodeModeError {}
/** A cell failed (with `throwOnError`): the message is the text the model reads. */
export declare class CellError extends CodeModeError {
  readonly result: CellResult
}
/** A cell reached one of its limits (heap, CPU time) and was stopped. */
export declare class LimitExceeded extends CellError {}
/** No such call waits on a person: it was decided already, its cell ended, it expired, or it is another session's. */
export declare class ApprovalNotWaiting extends CodeModeError {}

/** What a tool's function gets beside its argument. */
export interface ToolCallOptions {
  /** Aborted when the cell gives the call up (it was terminated, or its exec's signal fired). */
  signal: AbortSignal
  /** The same signal, under the AI SDK's name. */
  abortSignal: AbortSignal
  /** The cell that made the call. */
  cellId: string
  /** An id of the call, unique in the process. */
  toolCallId: string
  /** Always empty: a cell's call has no conversation (there for AI SDK tools, which get one). */
  messages: any[]
}

/** A tool's function: sync or async; its result is sent to the cell as JSON; a throw rejects the cell's call with its message. */
export type ToolFunction = (input: any, options: ToolCallOptions) => unknown

/**
 * A tool: a function, or an object with a description and a schema of its argument — a
 * JSON Schema, a Zod 4 schema, or an AI SDK `jsonSchema()`. An AI SDK `tool({...})` is one.
 */
export type Tool =
  | ToolFunction
  | {
      name?: string
      description?: string
      inputSchema?: unknown
      parameters?: unknown
      outputSchema?: unknown
      /** Kept out of `exec`'s description: cells find it with `tools.tool_search`. */
      deferred?: boolean
      /**
       * Every call waits on a person's approval before it runs (the session needs a
       * `stateDir`): `approve` runs it (with edited input if given), `deny` refuses it.
       * `true` or `false` only: a function deciding per call is refused (InvalidArgument),
       * since whether a call waits is decided where no JavaScript runs.
       */
      needsApproval?: boolean
      /** Why the tool needs an approval, as the approver and the model read it. */
      approvalReason?: string
      /**
       * Runs the tool (required: a tool without it is an InvalidArgument; optional here as
       * in the AI SDK's own type). A method, so that AI SDK tools' `execute` fits.
       */
      execute?(input: any, options: ToolCallOptions): unknown
    }

/** Tools by name, or an array of named tools (named functions, or objects with `name`). */
export type Tools = Record<string, Tool> | Tool[]

export interface SessionOptions extends NativeOptions {
  /** The tools every cell may call, as `tools.<name>(arg)`. */
  tools?: Tools
  /** The stored values the session starts with (`load(key)` in a cell). */
  storedValues?: Record<string, unknown>
  /** The runtime executable (default: $CODE_MODE_BIN, else the platform package's): a path; a bare name is taken from the working directory, never looked up on PATH. */
  runtime?: string
  /**
   * A directory where the session keeps itself (SQLite): a process started again takes it
   * back by `sessionId`. Tools with `needsApproval` need one: their calls wait there.
   */
  stateDir?: string
  sessionId?: string
  /** A call in flight at a crash runs again (`retry`) or fails (`fail`, the default) when the session is taken back. */
  onInterrupt?: 'fail' | 'retry'
  /** A `code-mode` tools file (TOML): its command tools and MCP servers, beside the JS tools. */
  toolsFile?: string
  /** Built-ins: `"fs"` (read_file, list_dir, write_file), `"shell"` (exec_command). */
  builtins?: string[]
}

export interface ExecOptions {
  /** How long the call waits before it returns a running cell's output so far. */
  yieldTimeMs?: number
  /** Terminates the cell; the call then rejects with the signal's reason once the cell is gone (an abort after the cell completed leaves its result). */
  signal?: AbortSignal
  /** Throw `CellError` (or `LimitExceeded`) when the cell failed, instead of returning its result. */
  throwOnError?: boolean
  /** The W3C traceparent the call's span hangs under (default: the active OpenTelemetry span, if any). */
  traceparent?: string
}

/** A call of a cell that waits on a person (or waited: an approval as decided). */
export interface Approval {
  /** What `approve` and `deny` take. */
  id: string
  /** The tool the cell called. */
  tool: string
  /** The call's input as the cell passed it (a JSON value; `undefined` when it passed none). */
  input: unknown
  /** Why the tool needs an approval (its `approvalReason`, a tools file's `approval_reason`). */
  reason?: string
  /** The session's id in its state directory. */
  sessionId: string
  /** The cell that made the call. */
  cellId: string
  /** The call's id in its cell (`tool-2`), as the model's line names it. */
  callId: string
  /** What keeps the session: `node` for this package's sessions (`python`, `serve`, `mcp` for others sharing the directory). */
  front: string
  /** When the call began to wait. */
  requestedAt: Date
  /** How long it had waited when it was read, in milliseconds. */
  ageMs: number
  state: 'pending' | 'approved' | 'sending' | 'denied' | 'told'
  /** The line the model read in the cell's observation while the call waited. */
  waitingLine: string
}

/** The `exec` (freeform) and `wait` (function) tools to give a model, with Codex's descriptions. */
export type ToolSpec =
  | { type: 'custom'; name: 'exec'; description: string }
  | { type: 'function'; name: 'wait'; description: string; strict: false; parameters: Record<string, unknown> }

/**
 * A session: cells that share stored values, with the tools every cell may call. Cells
 * run in the sandboxed runtime process (started at the first cell); no call blocks the
 * event loop. `await using session = new Session({...})` closes it at the end of the scope.
 */
export declare class Session implements AsyncDisposable {
  constructor(options?: SessionOptions)
  /** Opens a session and waits until it is ready (a session kept in a stateDir is taken back). */
  static open(options?: SessionOptions): Promise<Session>
  /** Runs a cell until it completes or yields; its first line may be the `// @exec:` pragma. */
  exec(source: string, options?: ExecOptions): Promise<CellResult>
  /** Waits on a running cell until it completes or yields again; `signal` ends the wait (the cell goes on, its output kept for the next wait). */
  wait(cellId: string, options?: ExecOptions): Promise<CellResult>
  /** Stops a running cell; the result holds what it output and had not returned. */
  terminate(cellId: string, options?: { traceparent?: string }): Promise<CellResult>
  /** This session's calls that wait on a person, oldest first (none without a `stateDir`). */
  pendingApprovals(): Promise<Approval[]>
  /**
   * Approves this session's waiting call, once: it runs with its own input, or with
   * `input` (a JSON value) instead when given. Rejects with `ApprovalNotWaiting` when no
   * such call of this session waits. Resolves with the approval as decided.
   */
  approve(id: string | Approval, input?: unknown): Promise<Approval>
  /** Denies this session's waiting call, once: it never runs, and the cell's call rejects with a text carrying `message`. */
  deny(id: string | Approval, message: string): Promise<Approval>
  /** The values committed cells stored (`store(key, value)`). */
  readonly storedValues: Record<string, unknown>
  /** The `exec` and `wait` tool specs; `exec`'s description declares this session's tools in TypeScript. */
  toolSpecs(): ToolSpec[]
  /** Where the session's cells run now (e.g. `pid 1234`), once one ran. */
  readonly runtime: string | null
  readonly closed: boolean
  /** Shuts the session down (running cells stop). Idempotent; a kept session stays in its stateDir. */
  close(): Promise<void>
  /** Shuts the session down and deletes it from its stateDir. */
  delete(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/** Runs one cell to its end in a fresh session (closed after) and returns its result: the output of every observation. */
export declare function run(source: string, options?: SessionOptions & Omit<ExecOptions, 'yieldTimeMs'>): Promise<CellResult>

/** The `exec` and `wait` tool specs for `tools`, without a session (nothing starts). */
export declare function toolSpecs(tools?: Tools): ToolSpec[]

/** The ids of the sessions an earlier process kept in `stateDir` that no session of this process took back yet. */
export declare function keptSessions(stateDir: string, options?: { runtime?: string }): string[]

/**
 * The calls waiting on a person in `stateDir`, oldest first, from any process: every
 * session's, or `sessionId`'s, or those kept by `front` (`"node"` for this package's sessions).
 */
export declare function pendingApprovals(stateDir: string, options?: { sessionId?: string; front?: string }): Promise<Approval[]>

/**
 * Approves waiting call `id` of `stateDir`, once, from any process (with `input` sent
 * instead of the call's own when given); the process holding the session sends it.
 */
export declare function approve(stateDir: string, id: string | Approval, input?: unknown): Promise<Approval>

/** Denies waiting call `id` of `stateDir`, once, from any process: it never runs; its cell's call rejects with `message`. */
export declare function deny(stateDir: string, id: string | Approval, message: string): Promise<Approval>

/**
 * Exports the spans of cells and nested calls over OTLP/HTTP (`protocol`: `http/protobuf`,
 * the default, or `http/json`), else as the OTEL_EXPORTER_OTLP_* variables say; `false`
 * when there is nowhere to send them. Once per process.
 */
export declare function configureTracing(options?: { endpoint?: string; protocol?: 'http/protobuf' | 'http/json'; serviceName?: string }): boolean

/** Sends the spans not sent yet and stops exporting. */
export declare function shutdownTracing(): Promise<void>
