// The AI SDK tools beyond the example: streamText with the mock model's streams, the
// abort signal of a generation reaching the cell, AI SDK tools passed as they are, and a
// call that waits on a person ending the generation (`awaitingApproval`), decided by the
// app and read by the model's next `wait`.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import { jsonSchema, streamText, generateText, stepCountIs, tool } from 'ai'
import { MockLanguageModelV2, convertArrayToReadableStream } from 'ai/test'
import { z } from 'zod'
import { codeModeTools } from 'code-mode-runtime/ai'
import { deny } from 'code-mode-runtime'

const usage = { inputTokens: 1, outputTokens: 1, totalTokens: 2 }
const callExec = (code) => ({ type: 'tool-call', toolCallId: 'c1', toolName: 'exec', input: JSON.stringify({ code }) })

test('streamText: the model streams an exec call, the cell runs, the model streams its answer', async () => {
  const tools = codeModeTools({ double: tool({ description: 'Doubles n.', inputSchema: z.object({ n: z.number() }), execute: async ({ n }) => n * 2 }) })
  let step = 0
  const model = new MockLanguageModelV2({
    doStream: async ({ prompt }) => {
      step += 1
      const parts =
        step === 1
          ? [{ type: 'stream-start', warnings: [] }, callExec('text(await tools.double({n: 21}))'), { type: 'finish', finishReason: 'tool-calls', usage }]
          : [
              { type: 'stream-start', warnings: [] },
              { type: 'text-start', id: 't' },
              { type: 'text-delta', id: 't', delta: prompt.at(-1).content[0].output.value.split('\n').at(-1) },
              { type: 'text-end', id: 't' },
              { type: 'finish', finishReason: 'stop', usage },
            ]
      return { stream: convertArrayToReadableStream(parts) }
    },
  })
  try {
    const result = streamText({ model, tools, stopWhen: stepCountIs(3), prompt: 'double 21' })
    assert.equal(await result.text, '42')
  } finally {
    await tools.close()
  }
})

test("exec's description is code mode's, declaring the app's tools; wait takes the cell's id", async () => {
  const tools = codeModeTools({ lookup: { description: 'Looks a user up.', inputSchema: jsonSchema({ type: 'object', properties: { id: { type: 'integer' } } }), execute: () => null } })
  try {
    const description = tools.exec.description
    assert.match(description, /lookup/)
    assert.match(description, /Looks a user up\./)
    assert.equal(Object.keys(tools).join(','), 'exec,wait')
    const result = await tools.wait.execute({ cell_id: 'nope' }, { toolCallId: 'w', messages: [] })
    assert.match(result, /nope/)
  } finally {
    await tools.close()
  }
})

test("the generation's abort signal terminates the running cell and aborts its tool", { timeout: 10000 }, async () => {
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
  const controller = new AbortController()
  const model = new MockLanguageModelV2({
    doGenerate: async () => ({ content: [callExec('text(await tools.hang())')], finishReason: 'tool-calls', usage, warnings: [] }),
  })
  try {
    const generating = generateText({ model, tools, stopWhen: stepCountIs(1), prompt: 'hang', abortSignal: controller.signal })
    await running
    controller.abort()
    const result = await generating
    // The AI SDK reports a tool that rejected as a tool error of its step.
    const failed = result.content.find((part) => part.type === 'tool-error')
    assert.equal(failed?.error?.name, 'AbortError')
    // The tool's abort comes from the native half by its own way: awaited, not assumed.
    const deadline = Date.now() + 10_000
    while (!toolAborted && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5))
    assert.equal(toolAborted, true)
    assert.equal((await tools.session.exec('text("after")')).text, 'after')
  } finally {
    await tools.close()
  }
})

const scratch = mkdtempSync(path.join(tmpdir(), 'code-mode-node-ai-'))
after(() => rmSync(scratch, { recursive: true, force: true }))

/** A session's tools with `send`, an AI SDK tool that needs approval (every address it sent to is in `sent`). */
function mailTools(sessionId) {
  const sent = []
  const send = tool({
    description: 'Sends mail.',
    inputSchema: z.object({ to: z.string() }),
    needsApproval: true,
    approvalReason: 'it sends mail',
    execute: async ({ to }) => {
      sent.push(to)
      return `sent to ${to}`
    },
  })
  const tools = codeModeTools({ send }, { stateDir: path.join(scratch, sessionId), sessionId })
  return { sent, tools }
}

/** A model that execs a cell mailing ada, then (next generation) waits on that cell, then answers with what it read. */
function mailingModel() {
  let step = 0
  return new MockLanguageModelV2({
    doGenerate: async ({ prompt }) => {
      step += 1
      const outputs = prompt.filter((message) => message.role === 'tool').map((message) => message.content[0].output.value)
      if (step === 1) {
        const code = "try { text(await tools.send({ to: 'ada' })) } catch (error) { text('failed: ' + error) }"
        return { content: [callExec(code)], finishReason: 'tool-calls', usage, warnings: [] }
      }
      if (step === 2) {
        const cellId = /cell ID (\S+)/.exec(outputs[0])[1]
        const wait = { type: 'tool-call', toolCallId: 'w1', toolName: 'wait', input: JSON.stringify({ cell_id: cellId, yield_time_ms: 10000 }) }
        return { content: [wait], finishReason: 'tool-calls', usage, warnings: [] }
      }
      return { content: [{ type: 'text', text: outputs.at(-1).split('\n').at(-1) }], finishReason: 'stop', usage, warnings: [] }
    },
  })
}

test('a call waiting on a person ends the generation; approved with an edit, the next generation reads its result', async () => {
  const { sent, tools } = mailTools('ai-approve')
  const model = mailingModel()
  try {
    const first = await generateText({ model, tools, stopWhen: [stepCountIs(5), tools.awaitingApproval], prompt: 'mail ada' })
    assert.equal(first.steps.length, 1, 'the generation ended at the step whose cell waits')
    assert.match(first.toolResults[0].output, /Waiting for approval: `send` \(call tool-1\), because: it sends mail\./)
    assert.deepEqual(sent, [], "the tool's own count: nothing sent without an approval")
    const [waiting] = await tools.session.pendingApprovals()
    assert.deepEqual([waiting.tool, waiting.input], ['send', { to: 'ada' }])
    await tools.session.approve(waiting.id, { to: 'bob' })
    const messages = [{ role: 'user', content: 'mail ada' }, ...first.response.messages]
    const second = await generateText({ model, tools, stopWhen: [stepCountIs(5), tools.awaitingApproval], messages })
    assert.equal(second.text, 'sent to bob')
    assert.deepEqual(sent, ['bob'])
  } finally {
    await tools.close()
  }
})

test('a call denied from the store is read by the next generation as denied, and never runs', async () => {
  const { sent, tools } = mailTools('ai-deny')
  const model = mailingModel()
  try {
    const first = await generateText({ model, tools, stopWhen: [stepCountIs(5), tools.awaitingApproval], prompt: 'mail ada' })
    assert.equal(first.steps.length, 1)
    const [waiting] = await tools.session.pendingApprovals()
    await deny(path.join(scratch, 'ai-deny'), waiting.id, 'not her')
    const messages = [{ role: 'user', content: 'mail ada' }, ...first.response.messages]
    const second = await generateText({ model, tools, stopWhen: [stepCountIs(5), tools.awaitingApproval], messages })
    assert.equal(second.text, 'failed: denied: the call of `send` was not approved, so it did not run: not her')
    assert.deepEqual(sent, [])
  } finally {
    await tools.close()
  }
})
