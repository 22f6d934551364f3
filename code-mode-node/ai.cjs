'use strict'
// Code mode for the AI SDK (`ai`): `exec` and `wait` as AI SDK tools over the app's own
// tools, for generateText/streamText. The model writes a cell; the cell runs in the
// sandboxed runtime and calls the app's tools (AI SDK tools work as they are).

const { Session } = require('./index.cjs')

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
 * so not taken for tools) `session` and `close()`.
 */
function codeModeTools(tools = {}, options = {}) {
  const { tool, jsonSchema } = require('ai')
  const { session: given, ...sessionOptions } = options
  const session = given ?? new Session({ ...sessionOptions, tools })
  const specs = Object.fromEntries(session.toolSpecs().map((spec) => [spec.name, spec]))
  const result = {
    exec: tool({
      description: specs.exec.description,
      inputSchema: jsonSchema(execSchema(EXEC_CODE)),
      execute: async ({ code }, { abortSignal } = {}) =>
        (await session.exec(code, { signal: abortSignal })).modelText,
    }),
    wait: tool({
      description: specs.wait.description,
      inputSchema: jsonSchema(specs.wait.parameters),
      execute: async ({ cell_id: cellId, yield_time_ms: yieldTimeMs, terminate }, { abortSignal } = {}) => {
        const answer = terminate
          ? await session.terminate(cellId)
          : await session.wait(cellId, { yieldTimeMs, signal: abortSignal })
        return answer.modelText
      },
    }),
  }
  Object.defineProperty(result, 'session', { value: session, enumerable: false })
  Object.defineProperty(result, 'close', { value: () => session.close(), enumerable: false })
  return result
}

module.exports = { codeModeTools }
