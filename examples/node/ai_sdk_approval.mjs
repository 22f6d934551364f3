// An AI SDK agent in code mode whose tool needs a person's approval, with the SDK's
// offline mock model (ai/test). The model writes one cell that emails two customers;
// each email waits on a person in the session's state directory (nothing is sent before),
// and the generation ends there (`stopWhen: tools.awaitingApproval`). The app's person
// approves Ada's (with an edited subject) and denies Bob's; each next generation's `wait`
// reads on, and the model answers with what the cell reported.
//   node examples/node/ai_sdk_approval.mjs
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { generateText, stepCountIs } from 'ai'
import { MockLanguageModelV2 } from 'ai/test'
import { z } from 'zod'
import { codeModeTools } from 'code-mode-runtime/ai'

const stateDir = mkdtempSync(path.join(tmpdir(), 'code-mode-ai-approval-'))
const outbox = []
const tools = codeModeTools(
  {
    send_email: {
      description: 'Sends an email.',
      inputSchema: z.object({ to: z.string(), subject: z.string() }),
      needsApproval: true,
      approvalReason: 'it emails a customer',
      execute: async ({ to, subject }) => {
        outbox.push(`${to} (${subject})`)
        return 'sent'
      },
    },
  },
  { stateDir, sessionId: 'billing' },
)

const cell = `
const report = [];
for (const to of ["ada@example.com", "bob@example.com"]) {
  try { report.push(to + ": " + await tools.send_email({ to, subject: "Your invoice" })); }
  catch (error) { report.push(to + ": " + error); }
}
text(report.join("; "));
`
const usage = { inputTokens: 10, outputTokens: 10, totalTokens: 20 }
let cellId
let calls = 0
/** The model: exec the cell, `wait` on it until it completes, then say what it reported. */
const model = new MockLanguageModelV2({
  doGenerate: async ({ prompt }) => {
    calls += 1
    const last = prompt.at(-1)
    if (last.role === 'user') {
      return { content: [{ type: 'tool-call', toolCallId: `call-${calls}`, toolName: 'exec', input: JSON.stringify({ code: cell }) }], finishReason: 'tool-calls', usage, warnings: [] }
    }
    const output = last.content[0].output.value
    cellId ??= /cell ID (\S+)/.exec(output)?.[1]
    if (!output.startsWith('Script completed')) {
      const wait = { type: 'tool-call', toolCallId: `call-${calls}`, toolName: 'wait', input: JSON.stringify({ cell_id: cellId, yield_time_ms: 10000 }) }
      return { content: [wait], finishReason: 'tool-calls', usage, warnings: [] }
    }
    return { content: [{ type: 'text', text: `The cell said: ${output.split('\n').at(-1)}` }], finishReason: 'stop', usage, warnings: [] }
  },
})

const messages = [{ role: 'user', content: 'Email this month\'s invoice to Ada and Bob.' }]
try {
  for (;;) {
    const result = await generateText({ model, tools, messages, stopWhen: [stepCountIs(10), tools.awaitingApproval] })
    messages.push(...result.response.messages)
    const waiting = await tools.session.pendingApprovals()
    if (!waiting.length) {
      console.log(result.text)
      break
    }
    for (const call of waiting) {
      // The person: reads the call, its input and why it waits, and decides.
      console.log(`Waiting: ${call.tool} ${JSON.stringify(call.input)} (${call.reason}); ${outbox.length} sent so far`)
      if (call.input.to === 'ada@example.com') await tools.session.approve(call.id, { ...call.input, subject: 'Your invoice for November' })
      else await tools.session.deny(call.id, 'Bob paid already')
    }
  }
  console.log(`Sent: ${outbox.join(', ')}`)
} finally {
  await tools.close()
  rmSync(stateDir, { recursive: true, force: true })
}
