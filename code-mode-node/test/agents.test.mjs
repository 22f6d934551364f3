// The OpenAI Agents SDK tools beyond the example: a run's abort signal reaches the cell
// (it is terminated and its tool's signal aborts), and the tools carry code mode's specs.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Agent, Runner, Usage, setTracingDisabled } from '@openai/agents'
import { codeModeTools } from 'code-mode-runtime/agents'

setTracingDisabled(true)

test('exec and wait carry code mode\'s descriptions and schemas', async () => {
  const tools = codeModeTools({ lookup: { description: 'Looks a user up.', execute: () => null } })
  try {
    const [exec, wait] = tools
    assert.equal(exec.name, 'exec')
    assert.match(exec.description, /Looks a user up\./)
    assert.deepEqual(exec.parameters.required, ['code'])
    assert.equal(wait.name, 'wait')
    assert.deepEqual(wait.parameters, tools.session.toolSpecs()[1].parameters)
  } finally {
    await tools.close()
  }
})

test("a run's abort signal terminates the running cell and aborts its tool", { timeout: 10000 }, async () => {
  let started
  const running = new Promise((resolve) => (started = resolve))
  let toolAborted = false
  const tools = codeModeTools({
    hang: (_, { signal }) =>
      new Promise((resolve) => {
        started()
        signal.addEventListener('abort', () => resolve((toolAborted = true)))
      }),
  })
  const model = {
    async getResponse() {
      const call = { type: 'function_call', callId: 'c1', name: 'exec', arguments: JSON.stringify({ code: 'text(await tools.hang())' }), status: 'completed' }
      return { usage: new Usage(), output: [call] }
    },
    async *getStreamedResponse() {
      throw new Error('not used')
    },
  }
  const agent = new Agent({ name: 'hanging', tools, model })
  const controller = new AbortController()
  try {
    const run = new Runner().run(agent, 'hang', { signal: controller.signal, maxTurns: 2 })
    run.catch(() => {}) // how the SDK ends an aborted run is its own
    await running
    controller.abort()
    await run.catch(() => {})
    while (!toolAborted) await new Promise((resolve) => setTimeout(resolve, 10))
    assert.equal((await tools.session.exec('text("after")')).text, 'after')
  } finally {
    await tools.close()
  }
})
