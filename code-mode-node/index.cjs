'use strict'
// code-mode-runtime: run a model's JavaScript cells in a sandboxed V8 runtime process, with
// the app's JavaScript functions as their tools. The native half (native.cjs, napi-rs)
// drives the runtime process over IPC; this file is the API over it: tools and their
// schemas, the dispatcher that runs nested calls on this event loop, sessions, typed
// errors, calls that wait on a person's approval (issue 86), and where the addon and the
// runtime executable are found (the platform package code-mode-runtime-<platform>, never
// PATH). Nothing is loaded or started until an API is used.

const fs = require('node:fs')
const path = require('node:path')

/** Every error of code-mode-runtime. */
class CodeModeError extends Error {
  constructor(message, options) {
    super(message, options)
    this.name = new.target.name
  }
}
/** No runtime could run the call: the message names the cause and its fix. */
class RuntimeUnavailable extends CodeModeError {}
/** The runtime process was lost while the call was in flight; the session goes on. */
class RuntimeLost extends CodeModeError {}
/** The session was closed, or is shutting down. */
class SessionClosed extends CodeModeError {}
/** A bad argument: an unknown option, a tool without a name, a schema that does not convert. */
class InvalidArgument extends CodeModeError {}
/** A cell failed (`throwOnError`): the message is the text the model reads. */
class CellError extends CodeModeError {
  constructor(message, result) {
    super(message)
    this.result = result
  }
}
/** A cell reached one of its limits (heap, CPU time) and was stopped. */
class LimitExceeded extends CellError {}
/** No such call waits on a person: it was decided already, its cell ended, it expired, or it is another session's. */
class ApprovalNotWaiting extends CodeModeError {}

const ERRORS = { CodeModeError, RuntimeUnavailable, RuntimeLost, SessionClosed, InvalidArgument, ApprovalNotWaiting }
const LIMITS = new Set(['out_of_memory', 'cpu_budget'])

let platform = null
/** The platform package of this machine, e.g. code-mode-runtime-linux-x64-gnu (found once: a report takes milliseconds). */
function platformPackage() {
  if (platform) return platform
  const libc = process.platform === 'linux' ? (isMusl() ? '-musl' : '-gnu') : ''
  platform = `code-mode-runtime-${process.platform}-${process.arch}${libc}`
  return platform
}

function isMusl() {
  const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null
  return !!report && !report.header?.glibcVersionRuntime
}

const INSTALL_FIX = () =>
  `install the platform package (npm install ${platformPackage()}; it is an optional dependency of code-mode-runtime, so an install with --omit=optional or --no-optional leaves it out), or build it from the repository with scripts/node-package.sh`

/** The installed platform package's directory, or null; one of another version is a RuntimeUnavailable (its addon and runtime speak to this API's version only). */
function platformDir() {
  let manifest
  try {
    manifest = require.resolve(`${platformPackage()}/package.json`)
  } catch {
    return null
  }
  let found
  try {
    found = JSON.parse(fs.readFileSync(manifest, 'utf8')).version
  } catch (error) {
    throw new RuntimeUnavailable(`the platform package ${platformPackage()} is damaged (its package.json does not read): reinstall it`, { cause: error })
  }
  const wanted = require('./package.json').version
  if (found !== wanted) {
    throw new RuntimeUnavailable(
      `the platform package ${platformPackage()} is version ${found}, but code-mode-runtime is ${wanted}: install the same version of both (npm install ${platformPackage()}@${wanted})`,
    )
  }
  return path.dirname(manifest)
}

let loaded = null
/** The native half, loaded at the first use (its failure is a RuntimeUnavailable). */
function native() {
  if (loaded) return loaded
  platformDir()
  try {
    loaded = require('./native.cjs')
  } catch (error) {
    throw new RuntimeUnavailable(
      `the native part of code-mode-runtime for ${process.platform}-${process.arch} is not installed: ${INSTALL_FIX()}`,
      { cause: error },
    )
  }
  return loaded
}

/** The runtime executable: `explicit`, else $CODE_MODE_BIN, else the one the platform package ships. A name is a path (a bare one from the working directory), never looked up on PATH. */
function findRuntime(explicit) {
  if (explicit) return { path: path.resolve(String(explicit)) }
  if (process.env.CODE_MODE_BIN) return { path: path.resolve(process.env.CODE_MODE_BIN) }
  const looked = []
  const dir = platformDir()
  if (dir) {
    const bin = path.join(dir, 'bin', 'code-mode-bin')
    if (fs.existsSync(bin)) return { path: bin }
    looked.push(bin)
  } else {
    looked.push(`the package ${platformPackage()} (not installed)`)
  }
  return {
    path: null,
    missing: `the code-mode runtime executable was not found (looked in ${looked.join(', ')}; $CODE_MODE_BIN is unset): ${INSTALL_FIX()}, or pass \`runtime\` (or set $CODE_MODE_BIN) to a code-mode-bin executable`,
  }
}

// ---- tools -------------------------------------------------------------------------

/** The JSON Schema of `schema`: a Zod schema (4, or any Standard Schema with JSON), an AI SDK `jsonSchema()`, or a JSON Schema. */
function toJsonSchema(schema, name) {
  if (schema == null) return undefined
  if (typeof schema !== 'object' && typeof schema !== 'function') {
    throw new InvalidArgument(`tool ${name}: its schema must be an object, not ${typeof schema}`)
  }
  const standard = schema['~standard']
  if (standard?.jsonSchema?.input) return standard.jsonSchema.input({ target: 'draft-07' })
  if (schema._zod) {
    try {
      return require('zod').toJSONSchema(schema, { io: 'input' })
    } catch (error) {
      throw new InvalidArgument(`tool ${name}: its Zod schema could not be converted to JSON Schema (${error.message})`)
    }
  }
  if (schema._def) {
    throw new InvalidArgument(`tool ${name}: Zod 3 schemas are not supported; use Zod 4 (or zod/v4), or a JSON Schema`)
  }
  if (schema.jsonSchema && typeof schema.jsonSchema === 'object') return schema.jsonSchema // ai's jsonSchema()
  return schema
}

/** A checker of a tool's argument: Zod's (or a Standard Schema's) own, else none. */
function validator(schema) {
  if (schema && typeof schema.safeParseAsync === 'function') {
    return async (value) => {
      const parsed = await schema.safeParseAsync(value)
      if (parsed.success) return parsed.data
      const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(argument)'}: ${issue.message}`)
      throw new Error(`invalid argument: ${issues.join('; ')}`)
    }
  }
  const standard = schema?.['~standard']
  if (standard && typeof standard.validate === 'function') {
    return async (value) => {
      const parsed = await standard.validate(value)
      if (!parsed.issues) return parsed.value
      throw new Error(`invalid argument: ${parsed.issues.map((issue) => issue.message).join('; ')}`)
    }
  }
  return (value) => value
}

/**
 * Whether every call of tool `name` waits on a person's approval, and why: `needsApproval`
 * is `true` or `false` (the AI SDK's and the Agents SDK's name). A function deciding per
 * call is refused, never ignored: whether a call waits is decided in the native half when
 * the call leaves its cell, where no JS runs (the call must wait at no cost and outlive
 * this process), so a predicate could only be skipped, letting calls it would have held
 * run unapproved.
 */
function approvalOf(name, tool) {
  const { needsApproval, approvalReason } = tool
  if (typeof needsApproval === 'function') {
    throw new InvalidArgument(
      `tool ${name}: needsApproval must be true or false, not a function: whether a call waits on a person is decided as the call leaves its cell, where no JavaScript runs; give true, and decide each call when you approve or deny it`,
    )
  }
  if (needsApproval !== undefined && typeof needsApproval !== 'boolean') {
    throw new InvalidArgument(`tool ${name}: needsApproval must be true or false`)
  }
  if (approvalReason !== undefined && typeof approvalReason !== 'string') {
    throw new InvalidArgument(`tool ${name}: approvalReason must be a string`)
  }
  return { needsApproval: needsApproval === true, approvalReason: needsApproval === true ? approvalReason : undefined }
}

/**
 * One tool from what the app gives: a function (its name, no description, any
 * argument), or `{ description, inputSchema | parameters, outputSchema, execute,
 * deferred, needsApproval, approvalReason }` (an AI SDK tool is one), named by its key or
 * its `name`.
 */
function asTool(name, tool) {
  if (typeof tool === 'function') {
    return { name: name || tool.name, description: '', execute: tool, check: (value) => value, needsApproval: false }
  }
  if (!tool || typeof tool !== 'object') throw new InvalidArgument(`tool ${name}: expected a function or a tool object`)
  const execute = tool.execute ?? tool.fn ?? tool.invoke
  const toolName = tool.name ?? name
  if (typeof execute !== 'function') throw new InvalidArgument(`tool ${toolName}: it has no execute function`)
  const schema = tool.inputSchema ?? tool.parameters
  return {
    name: toolName,
    description: tool.description ?? '',
    inputSchema: toJsonSchema(schema, toolName),
    outputSchema: toJsonSchema(tool.outputSchema, toolName),
    deferred: !!tool.deferred,
    ...approvalOf(toolName, tool),
    execute,
    check: validator(schema),
  }
}

/** The tools of `tools`: an object of name → tool, or an array of named tools. */
function asTools(tools) {
  const list = []
  if (Array.isArray(tools)) {
    for (const tool of tools) list.push(asTool(typeof tool === 'function' ? tool.name : tool?.name, tool))
  } else if (tools && typeof tools === 'object') {
    for (const [name, tool] of Object.entries(tools)) list.push(asTool(name, tool))
  } else if (tools != null) {
    throw new InvalidArgument('tools: expected an object of name → tool, or an array of tools')
  }
  const byName = new Map()
  for (const tool of list) {
    if (!tool.name) throw new InvalidArgument('tools: a tool needs a name (a named function, or a key)')
    if (byName.has(tool.name)) throw new InvalidArgument(`tools: two tools are named ${tool.name}`)
    byName.set(tool.name, tool)
  }
  return byName
}

function toolsJson(tools) {
  return JSON.stringify(
    [...tools.values()].map(({ name, description, inputSchema, outputSchema, deferred, needsApproval, approvalReason }) => ({
      name,
      description,
      inputSchema,
      outputSchema,
      deferred,
      needsApproval,
      approvalReason,
    })),
  )
}

/** A thrown value's text for the cell; never throws itself (a value with a hostile
 * `toString`, or none, gets a fixed text). */
function message(error) {
  try {
    if (error instanceof Error) return String(error.message || error.name)
    return String(error)
  } catch {
    return 'the tool failed (its error could not be read as text)'
  }
}

/**
 * Runs the session's tools for its nested calls, on this event loop: the native half
 * hands each call over through a threadsafe function, and takes the answer by token.
 */
class Dispatcher {
  constructor(tools) {
    this.tools = tools
    this.native = null
    this.running = new Map()
    // Answers of calls made before a kept session's native half reached JS (its cells may
    // call tools while it is taken back): given once it has.
    this.early = []
    this.dispatch = this.dispatch.bind(this)
  }

  attach(native) {
    this.native = native
    for (const [token, ok, text] of this.early.splice(0)) native.answer(token, ok, text)
  }

  answer(token, ok, text) {
    this.running.delete(token)
    if (this.native) this.native.answer(token, ok, text)
    else this.early.push([token, ok, text])
  }

  dispatch(call) {
    let running
    const done = (ok, text) => {
      if (this.running.get(call.token) !== running) return
      try {
        this.answer(call.token, ok, text)
      } catch {
        // The native half is gone (the session closed): nobody waits for the answer.
      }
    }
    const succeed = (value) => {
      let text
      try {
        text = value === undefined ? 'null' : JSON.stringify(value)
      } catch (error) {
        return done(false, `the tool's result is not JSON: ${message(error)}`)
      }
      done(true, text ?? 'null')
    }
    const fail = (error) => done(false, message(error))
    try {
      if (call.cancelled) {
        const given = this.running.get(call.token)
        this.running.delete(call.token)
        given?.abort(new DOMException('the cell gave the call up (it was terminated)', 'AbortError'))
        return
      }
      const tool = this.tools.get(call.name)
      if (!tool) return this.answer(call.token, false, `no tool named ${call.name}`)
      running = new RunningCall()
      this.running.set(call.token, running)
      // Accessors where a tool reads them; a tool that sets one gets a plain value, as before.
      const options = {
        get signal() {
          return running.signal
        },
        set signal(value) {
          Object.defineProperty(this, 'signal', { value, writable: true, enumerable: true, configurable: true })
        },
        get abortSignal() {
          return running.signal
        },
        set abortSignal(value) {
          Object.defineProperty(this, 'abortSignal', { value, writable: true, enumerable: true, configurable: true })
        },
        cellId: call.cellId,
        toolCallId: `code-mode-${call.cellId}-${call.token}`,
        messages: [],
      }
      // The tool runs now, in this callback of the event loop; only a promise (an async
      // tool, an async schema) makes the answer wait for later.
      const checked = tool.check(call.input === undefined || call.input === null ? undefined : JSON.parse(call.input))
      const value = isThenable(checked)
        ? Promise.resolve(checked).then((input) => tool.execute(input, options))
        : tool.execute(checked, options)
      if (isThenable(value)) Promise.resolve(value).then(succeed, fail)
      else succeed(value)
    } catch (error) {
      fail(error)
    }
  }
}

/** Whether `value` is a promise (or like one): its answer comes later. */
function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function'
}

/**
 * A call a tool runs: its `AbortSignal`, made when the tool first reads it (making one
 * for every call cost more than the rest of the dispatch together); a call given up
 * before that reads an aborted one.
 */
class RunningCall {
  #controller = null
  #reason = undefined
  #aborted = false

  get signal() {
    if (!this.#controller) {
      this.#controller = new AbortController()
      if (this.#aborted) this.#controller.abort(this.#reason)
    }
    return this.#controller.signal
  }

  abort(reason) {
    this.#aborted = true
    this.#reason = reason
    this.#controller?.abort(reason)
  }
}

// ---- sessions ----------------------------------------------------------------------

const OPTIONS = [
  'heapMb', 'cpuMs', 'outputBytes', 'maxToolPayloadBytes', 'maxInFlightToolCalls',
  'maxStoredBytes', 'surface', 'hibernateAfterMs', 'hibernate', 'reuseIsolates',
]
const SESSION_KEYS = new Set([...OPTIONS, 'tools', 'storedValues', 'runtime', 'stateDir', 'sessionId', 'onInterrupt', 'toolsFile', 'builtins'])

function nativeOptions(options) {
  const unknown = Object.keys(options).filter((key) => !SESSION_KEYS.has(key))
  if (unknown.length) throw new InvalidArgument(`unknown session options: ${unknown.join(', ')}`)
  const picked = {}
  for (const key of OPTIONS) if (options[key] !== undefined) picked[key] = options[key]
  return picked
}

function settle(outcome, throwOnError) {
  if (outcome.error) throw new (ERRORS[outcome.error.kind] ?? CodeModeError)(outcome.error.message)
  const result = outcome.result
  if (throwOnError && result.error) {
    throw LIMITS.has(result.failure) ? new LimitExceeded(result.error, result) : new CellError(result.error, result)
  }
  return result
}

// ---- approvals ---------------------------------------------------------------------

/** Whether a session's tools wait on a person (for `ai.cjs` and `agents.cjs`: they read the book only then). */
const NEEDS_APPROVALS = Symbol.for('code-mode-runtime.needsApprovals')

/** An approval as the app reads it: the native half's, its input a JSON value. */
function asApproval(found) {
  return {
    id: found.id,
    tool: found.tool,
    input: found.input == null ? undefined : JSON.parse(found.input),
    reason: found.reason ?? undefined,
    sessionId: found.sessionId,
    cellId: found.cellId,
    callId: found.callId,
    front: found.front,
    requestedAt: new Date(found.requestedAtMs),
    ageMs: found.ageMs,
    state: found.state,
    waitingLine: found.waitingLine,
  }
}

function settleApprovals(outcome) {
  if (outcome.error) throw new (ERRORS[outcome.error.kind] ?? CodeModeError)(outcome.error.message)
  return outcome.approvals.map(asApproval)
}

/** An edited input as the JSON text sent in place of the call's own (`undefined`: not edited). */
function editedInput(input) {
  if (input === undefined) return undefined
  let text
  try {
    text = JSON.stringify(input)
  } catch (error) {
    throw new InvalidArgument(`approve: the edited input is not JSON (${message(error)})`)
  }
  if (text === undefined) throw new InvalidArgument('approve: the edited input is not JSON')
  return text
}

/** A denial's message, which the model reads. */
function denial(text) {
  if (typeof text !== 'string') throw new InvalidArgument('deny: the message must be a string (the model reads it)')
  return text
}

/** The id of an approval (or an approval). */
function approvalId(id) {
  const value = typeof id === 'object' && id !== null ? id.id : id
  if (typeof value !== 'string' || !value) throw new InvalidArgument('the approval id must be a non-empty string (an Approval\'s id)')
  return value
}

function abortReason(signal) {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError')
}

let otel
/** The W3C traceparent of the OpenTelemetry span active here, when @opentelemetry/api is installed and a span records: the call hangs under it. */
function currentTraceparent() {
  if (otel === undefined) {
    try {
      otel = require('@opentelemetry/api')
    } catch {
      otel = null
    }
  }
  const context = otel?.trace.getActiveSpan()?.spanContext()
  if (!context || !otel.isSpanContextValid(context)) return undefined
  return `00-${context.traceId}-${context.spanId}-${(context.traceFlags & 0xff).toString(16).padStart(2, '0')}`
}

/**
 * Exports the spans of cells and nested calls over OTLP/HTTP: to `endpoint` (a base URL,
 * `/v1/traces` is added) with `protocol` (`http/protobuf`, the default, or `http/json`),
 * else as the standard OTEL_EXPORTER_OTLP_* variables say. `false` when there is nowhere
 * to send spans. Once per process; `shutdownTracing()` sends what is left.
 */
function configureTracing({ endpoint, protocol, serviceName } = {}) {
  return wrapNativeSync(() => native().configureTracing(endpoint, protocol, serviceName))
}

/** Sends the spans not sent yet and stops exporting. */
function shutdownTracing() {
  return native().shutdownTracing()
}

let cancelTokens = 0
const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')

/**
 * A session: cells that share stored values, with the tools every cell may call. Its
 * cells run in the runtime process (started at the first cell, shared by the process's
 * sessions); every call is a promise and never blocks the event loop.
 */
class Session {
  #native = null
  #ready = null
  #dispatcher
  #tools
  #missing
  /** Its catalog waits on the opening: a tools file's tools, or the built-ins, join the JS tools. */
  #deferred = false
  #closed = false

  constructor(options = {}) {
    const { tools, storedValues, runtime, stateDir, sessionId, onInterrupt = 'fail', toolsFile, builtins } = options
    const native_ = native()
    const limits = nativeOptions(options)
    this.#tools = asTools(tools)
    this.#dispatcher = new Dispatcher(this.#tools)
    const found = findRuntime(runtime)
    this.#missing = found.missing
    const binary = found.path ?? '/nonexistent/code-mode-bin'
    const stored = storedValues === undefined ? undefined : JSON.stringify(storedValues)
    const json = toolsJson(this.#tools)
    if (builtins !== undefined && (!Array.isArray(builtins) || builtins.some((name) => typeof name !== 'string'))) {
      throw new InvalidArgument('builtins: expected an array of names ("fs", "shell")')
    }
    let state
    if (stateDir !== undefined) {
      if (typeof sessionId !== 'string' || !sessionId) {
        throw new InvalidArgument('a session kept in a stateDir needs a sessionId (a non-empty string)')
      }
      if (onInterrupt !== 'fail' && onInterrupt !== 'retry') {
        throw new InvalidArgument(`onInterrupt must be "fail" or "retry", not ${JSON.stringify(onInterrupt)}`)
      }
      state = { dir: String(stateDir), sessionId, retry: onInterrupt === 'retry' }
    } else if (sessionId !== undefined) {
      throw new InvalidArgument('sessionId names a session kept in a stateDir: give stateDir too')
    }
    if (state || toolsFile !== undefined || builtins?.length) {
      // Opened off the event loop: MCP servers start, a kept session is taken back.
      this.#deferred = toolsFile !== undefined || !!builtins?.length
      const opening = { stored, state, toolsFile: toolsFile === undefined ? undefined : String(toolsFile), builtins }
      this.#ready = this.#missing
        ? Promise.reject(new RuntimeUnavailable(this.#missing))
        : wrapNative(() => native_.openSession(json, limits, binary, this.#dispatcher.dispatch, opening)).then((session) => {
            this.#native = session
            this.#dispatcher.attach(session)
          })
      this.#ready.catch(() => {}) // told at the first call
    } else {
      this.#native = wrapNativeSync(() => new native_.NativeSession(json, limits, binary, this.#dispatcher.dispatch, stored))
      this.#dispatcher.attach(this.#native)
    }
  }

  /** Opens a session and waits until it is ready (a kept session is taken back). */
  static async open(options = {}) {
    const session = new Session(options)
    await session.#ready
    return session
  }

  async #session() {
    if (this.#closed) throw new SessionClosed('the session is closed')
    if (this.#ready) await this.#ready
    if (this.#missing) throw new RuntimeUnavailable(this.#missing)
    return this.#native
  }

  /**
   * Runs a cell until it completes or yields (its first line may be the `// @exec:`
   * pragma). `signal` terminates the cell: the promise then rejects with its reason,
   * once the cell is gone (an abort after the cell completed leaves its result). `throwOnError` throws `CellError`/`LimitExceeded` for a failed cell.
   */
  async exec(source, { yieldTimeMs, signal, throwOnError = false, traceparent } = {}) {
    if (typeof source !== 'string') throw new InvalidArgument('exec: the source must be a string')
    signal?.throwIfAborted()
    const session = await this.#session()
    signal?.throwIfAborted()
    const token = (cancelTokens = (cancelTokens + 1) >>> 0)
    const onAbort = () => session.cancel(token)
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      const outcome = await session.exec(source, yieldTimeMs, token, traceparent ?? currentTraceparent())
      // Only an abort that ended the cell throws: one that landed after it completed
      // leaves its result, as `wait`'s does.
      if (outcome.error?.kind === 'Aborted' && signal?.aborted) throw abortReason(signal)
      return settle(outcome, throwOnError)
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
  }

  /**
   * Waits on a running cell until it completes or yields again. `signal` ends the wait:
   * the call rejects with its reason, the cell goes on, and its output is kept for the next wait.
   */
  async wait(cellId, { yieldTimeMs, signal, throwOnError = false, traceparent } = {}) {
    signal?.throwIfAborted()
    const session = await this.#session()
    signal?.throwIfAborted()
    const token = (cancelTokens = (cancelTokens + 1) >>> 0)
    const onAbort = () => session.cancel(token)
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      const outcome = await session.wait(String(cellId), yieldTimeMs, token, traceparent ?? currentTraceparent())
      if (outcome.error?.kind === 'Aborted' && signal?.aborted) throw abortReason(signal)
      return settle(outcome, throwOnError)
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
  }

  /** Stops a running cell; the result holds what it output and had not returned. */
  async terminate(cellId, { traceparent } = {}) {
    const session = await this.#session()
    return settle(await session.terminate(String(cellId), traceparent ?? currentTraceparent()), false)
  }

  /**
   * This session's calls that wait on a person (a tool's `needsApproval`, a tools file's
   * `approval = "always"`), oldest first; none for a session without a `stateDir`.
   */
  async pendingApprovals() {
    const session = await this.#session()
    return settleApprovals(await session.pendingApprovals())
  }

  /**
   * Approves this session's waiting call `id`, once: it runs with its own input, or with
   * `input` (a JSON value) instead when given; the cell goes on with its answer. Rejects
   * with `ApprovalNotWaiting` when no such call of this session waits. Resolves with the
   * approval as decided.
   */
  async approve(id, input) {
    const key = approvalId(id)
    const edited = editedInput(input)
    const session = await this.#session()
    return settleApprovals(await session.decide(key, edited, undefined))[0]
  }

  /**
   * Denies this session's waiting call `id`, once: it never runs, and the cell's call
   * rejects with a text that carries `message` (the model reads it).
   */
  async deny(id, message) {
    const key = approvalId(id)
    const text = denial(message)
    const session = await this.#session()
    return settleApprovals(await session.decide(key, undefined, text))[0]
  }

  async [NEEDS_APPROVALS]() {
    return (await this.#session()).needsApprovals()
  }

  /** The values committed cells stored (`store`), as JSON values. */
  get storedValues() {
    if (!this.#native) return {}
    return JSON.parse(this.#native.storedValues())
  }

  /** The `exec` and `wait` tools to give a model, with Codex's descriptions: `exec`'s declares this session's tools in TypeScript. */
  toolSpecs() {
    if (this.#native) return JSON.parse(this.#native.toolSpecs())
    if (this.#deferred) {
      throw new InvalidArgument('this session is still opening (its tools file, or its built-ins): `await Session.open(options)` gives it ready')
    }
    return JSON.parse(native().toolSpecs(toolsJson(this.#tools)))
  }

  /** Where the session's cells run now (e.g. `pid 1234`), once one ran. */
  get runtime() {
    return this.#native?.runtime() ?? null
  }

  get closed() {
    return this.#closed
  }

  /** Shuts the session down (running cells stop). Idempotent. A kept session stays in its stateDir. */
  async close() {
    if (this.#closed) return
    this.#closed = true
    await this.#ready?.catch(() => {})
    if (this.#native) await this.#native.close(false)
  }

  /** Shuts the session down and deletes it from its stateDir: no later process takes it back. */
  async delete() {
    this.#closed = true
    await this.#ready?.catch(() => {})
    if (this.#native) await this.#native.close(true)
  }

  async [asyncDispose]() {
    await this.close()
  }
}

function wrapNativeSync(make) {
  try {
    return make()
  } catch (error) {
    if (error?.code === 'InvalidArg') throw new InvalidArgument(error.message)
    throw error
  }
}

async function wrapNative(make) {
  try {
    return await wrapNativeSync(make)
  } catch (error) {
    if (error instanceof CodeModeError) throw error
    if (error?.code === 'InvalidArg') throw new InvalidArgument(error.message)
    throw new CodeModeError(message(error), { cause: error })
  }
}

const FOREVER_MS = 2 ** 31 - 1
/** How often `run` looks whether a person decided the calls its cell waits on. */
const DECISIONS_EVERY_MS = 50

/**
 * Until no call of cell `cellId` waits on a person: its observation would end at once
 * (saying again that it waits), so `run` looks at the book instead of observing the cell.
 */
async function decisions(session, cellId, signal) {
  if (!(await session[NEEDS_APPROVALS]())) return
  while ((await session.pendingApprovals()).some((approval) => approval.cellId === cellId)) {
    signal?.throwIfAborted()
    await new Promise((resolve) => setTimeout(resolve, DECISIONS_EVERY_MS))
  }
}

/**
 * Runs one cell to its end in a fresh session and returns its result (output of every
 * observation, in order); the session is closed after. Options: the session's, and
 * `signal`, `throwOnError`. A call that waits on a person (a tool with `needsApproval`,
 * with a `stateDir`) is waited for until it is decided, from this process or another.
 */
async function run(source, options = {}) {
  const { signal, throwOnError, ...sessionOptions } = options
  const session = new Session(sessionOptions)
  try {
    let result = await session.exec(source, { yieldTimeMs: FOREVER_MS, signal, throwOnError })
    const items = [...result.items]
    while (result.status === 'running') {
      await decisions(session, result.cellId, signal)
      result = await session.wait(result.cellId, { yieldTimeMs: FOREVER_MS, signal, throwOnError })
      items.push(...result.items)
    }
    const text = items.filter((item) => item.type === 'text').map((item) => item.text).join('\n')
    return { ...result, items, text }
  } finally {
    await session.close()
  }
}

/** The `exec` and `wait` tool specs for `tools`, without a session (nothing starts). */
function toolSpecs(tools) {
  return JSON.parse(native().toolSpecs(toolsJson(asTools(tools))))
}

/** The ids of the sessions an earlier process kept in `stateDir` that no session of this process took back yet. */
function keptSessions(stateDir, { runtime } = {}) {
  const found = findRuntime(runtime)
  if (found.missing) throw new RuntimeUnavailable(found.missing)
  return native().keptSessions(String(stateDir), found.path)
}

/**
 * The calls waiting on a person in `stateDir`, oldest first: every session's, or
 * `sessionId`'s, or those kept by `front` (`"node"` for this package's sessions; the
 * directory may be shared with code-mode-python's and the CLI's). Any process may list
 * them, whether or not it holds the sessions.
 */
async function pendingApprovals(stateDir, { sessionId, front } = {}) {
  return settleApprovals(await native().pendingApprovals(String(stateDir), sessionId, front))
}

/**
 * Approves waiting call `id` of `stateDir`, once, from any process: it runs with its own
 * input, or with `input` (a JSON value) instead when given. The process whose session
 * holds the call sends it at once if it is this one, within a moment if it is another,
 * and when it takes the session back if none holds it now.
 */
async function approve(stateDir, id, input) {
  const key = approvalId(id)
  const edited = editedInput(input)
  return settleApprovals(await native().decideApproval(String(stateDir), key, edited, undefined))[0]
}

/** Denies waiting call `id` of `stateDir`, once, from any process: it never runs, and its cell's call rejects with `message`. */
async function deny(stateDir, id, message) {
  const key = approvalId(id)
  const text = denial(message)
  return settleApprovals(await native().decideApproval(String(stateDir), key, undefined, text))[0]
}

module.exports = {
  run,
  Session,
  toolSpecs,
  keptSessions,
  pendingApprovals,
  approve,
  deny,
  configureTracing,
  shutdownTracing,
  CodeModeError,
  RuntimeUnavailable,
  RuntimeLost,
  SessionClosed,
  InvalidArgument,
  CellError,
  LimitExceeded,
  ApprovalNotWaiting,
}
