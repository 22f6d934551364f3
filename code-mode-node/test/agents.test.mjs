// The OpenAI Agents SDK tools beyond the example: a run's abort signal reaches the cell
// (it is terminated and its tool's signal aborts), the tools carry code mode's specs, and
// a cell's call that waits on a person is a run interruption, approved (as it is, or
// edited) or rejected through RunState.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import { Agent, Runner, Usage, setTracingDisabled } from '@openai/agents'
import { approveWithInput, codeModeTools, waitingCall } from 'code-mode-runtime/agents'

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

const scratch = mkdtempSync(path.join(tmpdir(), 'code-mode-node-agents-'))
after(() => rmSync(scratch, { recursive: true, force: true }))

/** An agent whose model execs a cell that mails ada, then answers with the last line of what it read. */
function mailingAgent(sessionId) {
  const sent = []
  const tools = codeModeTools(
    {
      send: {
        description: 'Sends mail.',
        inputSchema: { type: 'object', properties: { to: { type: 'string' } }, required: ['to'] },
        needsApproval: true,
        approvalReason: 'it sends mail',
        execute: ({ to }) => {
          sent.push(to)
          return `sent to ${to}`
        },
      },
    },
    { stateDir: path.join(scratch, sessionId), sessionId },
  )
  const model = {
    async getResponse(request) {
      const outputs = request.input.filter((item) => item.type === 'function_call_result')
      if (!outputs.length) {
        const code = "try { text(await tools.send({ to: 'ada' })) } catch (error) { text('failed: ' + error) }"
        const call = { type: 'function_call', callId: 'c1', name: 'exec', arguments: JSON.stringify({ code }), status: 'completed' }
        return { usage: new Usage(), output: [call] }
      }
      const last = outputs.at(-1).output
      const text = (typeof last === 'string' ? last : last.text).split('\n').at(-1)
      return { usage: new Usage(), output: [{ type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text }] }] }
    },
    async *getStreamedResponse() {
      throw new Error('not used')
    },
  }
  return { sent, tools, agent: new Agent({ name: 'mailer', tools, model }) }
}

/** Runs the agent to its interruption: the one item, and which call of the cell waits. */
async function interrupted(runner, agent, sent) {
  const result = await runner.run(agent, 'mail ada')
  assert.equal(result.interruptions.length, 1)
  const [item] = result.interruptions
  assert.equal(item.name, 'exec')
  const waiting = waitingCall(item)
  assert.deepEqual([waiting.tool, waiting.input, waiting.reason], ['send', { to: 'ada' }, 'it sends mail'])
  assert.deepEqual(sent, [], "the tool's own count: nothing sent without an approval")
  return { result, item }
}

test('a call waiting on a person is a run interruption; approved through RunState, the exec answers with its result', async () => {
  const { sent, tools, agent } = mailingAgent('agents-approve')
  const runner = new Runner()
  try {
    const { result, item } = await interrupted(runner, agent, sent)
    result.state.approve(item)
    const resumed = await runner.run(agent, result.state)
    assert.equal(resumed.finalOutput, 'sent to ada')
    assert.deepEqual(sent, ['ada'])
    assert.deepEqual(await tools.session.pendingApprovals(), [])
  } finally {
    await tools.close()
  }
})

test('approveWithInput sends the edited input', async () => {
  const { sent, tools, agent } = mailingAgent('agents-edit')
  const runner = new Runner()
  try {
    const { result, item } = await interrupted(runner, agent, sent)
    approveWithInput(result.state, item, { to: 'bob' })
    const resumed = await runner.run(agent, result.state)
    assert.equal(resumed.finalOutput, 'sent to bob')
    assert.deepEqual(sent, ['bob'])
  } finally {
    await tools.close()
  }
})

test("a rejected interruption denies the waiting call in the store: it never runs, and its cell's call rejects with the message", async () => {
  const { sent, tools, agent } = mailingAgent('agents-reject')
  const runner = new Runner()
  try {
    const { result, item } = await interrupted(runner, agent, sent)
    const cellId = waitingCall(item).cellId
    result.state.reject(item, { message: 'not her' })
    const resumed = await runner.run(agent, result.state)
    assert.equal(resumed.finalOutput, 'not her', "the model reads the SDK's rejection")
    assert.deepEqual(await tools.session.pendingApprovals(), [], 'denied in the store before the next model turn')
    const rest = await tools.session.wait(cellId, { yieldTimeMs: 10000 })
    assert.equal(rest.text, 'failed: denied: the call of `send` was not approved, so it did not run: not her')
    assert.deepEqual(sent, [])
  } finally {
    await tools.close()
  }
})
