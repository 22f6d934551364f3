'use strict'
// Code mode for the AI SDK (`ai`): `exec` and `wait` as AI SDK tools over the app's own
// tools, for generateText/streamText. The model writes a cell; the cell runs in the
// sandboxed runtime and calls the app's tools (AI SDK tools work as they are).
//
// A cell's call of a tool that needs a person's approval (`needsApproval: true`, or a
// tools file's `approval = "always"`, in a session with a `stateDir`) waits in the store:
// the `exec` (or `wait`) answers at once with the line that says so, and
// `stopWhen: tools.awaitingApproval` ends the generation there. The app decides with
// `tools.session.pendingApprovals()`, `approve(id, input?)` and `deny(id, message)` (or
// from any process, on the stateDir); the model's next `wait` reads on. The AI SDK's own
// tool approval (`needsApproval`, `tool-approval-request` parts) is AI SDK 6's: `ai` 5,
// which this package is tested with, has neither.

const { Session } = require('./index.cjs')

/** Whether a session's tools wait on a person (index.cjs's key). */
const NEEDS_APPROVALS = Symbol.for('code-mode-runtime.needsApprovals')

/** The `code` argument of `exec`: the AI SDK has no freeform tools, so the cell is a string argument. */
function execSchema(description) {
  return {
    type: 'object',
    properties: { code: { type: 'string', description } },
    required: ['code'],
    additionalProperties: false,
  }
}

const EXEC_CODE = 'The JavaScript source of the cell (raw source, not a fenced block).'

/**
 * `{ exec, wait }`: AI SDK tools whose cells call `tools`, in one Session (`options.session`,
 * else one opened with the other options). The returned object also has (not enumerable,
 * so not taken for tools) `session`, `close()` and `awaitingApproval`, a stop condition
 * (`stopWhen`) true once a step's `exec` or `wait` left its cell waiting on a person.
 */
function codeModeTools(tools = {}, options = {}) {
  const { tool, jsonSchema } = require('ai')
  const { session: given, ...sessionOptions } = options
  const session = given ?? new Session({ ...sessionOptions, tools })
  const specs = Object.fromEntries(session.toolSpecs().map((spec) => [spec.name, spec]))
  // The tool calls whose cell was left waiting on a person, by the AI SDK's call id.
  const waiting = new Set()
  const answer = async (result, toolCallId) => {
    if (result.status === 'running' && toolCallId !== undefined && (await session[NEEDS_APPROVALS]())) {
      const pending = await session.pendingApprovals()
      if (pending.some((approval) => approval.cellId === result.cellId)) waiting.add(toolCallId)
    }
    return result.modelText
  }
  const result = {
    exec: tool({
      description: specs.exec.description,
      inputSchema: jsonSchema(execSchema(EXEC_CODE)),
      execute: async ({ code }, { abortSignal, toolCallId } = {}) =>
        answer(await session.exec(code, { signal: abortSignal }), toolCallId),
    }),
    wait: tool({
      description: specs.wait.description,
      inputSchema: jsonSchema(specs.wait.parameters),
      execute: async ({ cell_id: cellId, yield_time_ms: yieldTimeMs, terminate }, { abortSignal, toolCallId } = {}) => {
        const observed = terminate
          ? await session.terminate(cellId)
          : await session.wait(cellId, { yieldTimeMs, signal: abortSignal })
        return answer(observed, toolCallId)
      },
    }),
  }
  const awaitingApproval = ({ steps }) => (steps.at(-1)?.toolResults ?? []).some((part) => waiting.has(part.toolCallId))
  Object.defineProperty(result, 'session', { value: session, enumerable: false })
  Object.defineProperty(result, 'close', { value: () => session.close(), enumerable: false })
  Object.defineProperty(result, 'awaitingApproval', { value: awaitingApproval, enumerable: false })
  return result
}

module.exports = { codeModeTools }
