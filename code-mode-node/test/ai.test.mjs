// The AI SDK tools beyond the example: streamText with the mock model's streams, the
// abort signal of a generation reaching the cell, and AI SDK tools passed as they are.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { jsonSchema, streamText, generateText, stepCountIs, tool } from 'ai'
import { MockLanguageModelV2, convertArrayToReadableStream } from 'ai/test'
import { z } from 'zod'
import { codeModeTools } from 'code-mode-runtime/ai'

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
