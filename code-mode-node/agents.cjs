'use strict'
// Code mode for the OpenAI Agents SDK for JavaScript (`@openai/agents`): `exec` and
// `wait` as function tools of an Agent, over the app's own tools.

const { Session } = require('./index.cjs')

/**
 * `[exec, wait]`: function tools for an Agent whose cells call `tools`, in one Session
 * (`options.session`, else one opened with the other options). The array also has (not
 * enumerable) `session` and `close()`.
 */
function codeModeTools(tools = {}, options = {}) {
  const { tool } = require('@openai/agents')
  const { session: given, ...sessionOptions } = options
  const session = given ?? new Session({ ...sessionOptions, tools })
  const specs = Object.fromEntries(session.toolSpecs().map((spec) => [spec.name, spec]))
  const exec = tool({
    name: 'exec',
    description: specs.exec.description,
    parameters: {
      type: 'object',
      properties: {
        code: { type: 'string', description: 'The JavaScript source of the cell (raw source, not a fenced block).' },
      },
      required: ['code'],
      additionalProperties: false,
    },
    strict: true,
    execute: async ({ code }, _context, details) => (await session.exec(code, { signal: details?.signal })).modelText,
  })
  const wait = tool({
    name: 'wait',
    description: specs.wait.description,
    parameters: specs.wait.parameters,
    strict: false,
    execute: async ({ cell_id: cellId, yield_time_ms: yieldTimeMs, terminate }, _context, details) => {
      const answer = terminate
        ? await session.terminate(cellId)
        : await session.wait(cellId, { yieldTimeMs, signal: details?.signal })
      return answer.modelText
    },
  })
  const result = [exec, wait]
  Object.defineProperty(result, 'session', { value: session, enumerable: false })
  Object.defineProperty(result, 'close', { value: () => session.close(), enumerable: false })
  return result
}

module.exports = { codeModeTools }
