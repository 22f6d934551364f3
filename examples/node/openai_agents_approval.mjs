// An OpenAI Agents SDK agent in code mode whose tool needs a person's approval, with a
// scripted model (the SDK's Model interface, no network). The model writes one cell that
// emails two customers; each email waits on a person in the session's state directory
// (nothing is sent before) and surfaces as a run interruption. The app's person approves
// Ada's through RunState with an edited subject (`approveWithInput`) and rejects Bob's
// (`state.reject`: the call is denied and never runs); the model reads the cell's report.
//   node examples/node/openai_agents_approval.mjs
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Agent, Runner, Usage, setTracingDisabled } from '@openai/agents'
import { approveWithInput, codeModeTools, waitingCall } from 'code-mode-runtime/agents'

setTracingDisabled(true)
const stateDir = mkdtempSync(path.join(tmpdir(), 'code-mode-agents-approval-'))
const outbox = []
const tools = codeModeTools(
  {
    send_email: {
      description: 'Sends an email.',
      inputSchema: { type: 'object', properties: { to: { type: 'string' }, subject: { type: 'string' } }, required: ['to', 'subject'] },
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

/** A model that plays a script: exec the cell, `wait` on it until it completes, then say what it reported. */
class ScriptedModel {
  turn = 0
  cellId = undefined
  async getResponse(request) {
    this.turn += 1
    const call = (name, args) => ({ type: 'function_call', callId: `call-${this.turn}`, name, arguments: JSON.stringify(args), status: 'completed' })
    const last = request.input.at(-1)
    if (last?.type !== 'function_call_result') return { usage: new Usage(), output: [call('exec', { code: cell })] }
    const output = typeof last.output === 'string' ? last.output : (last.output?.text ?? '')
    this.cellId ??= /cell ID (\S+)/.exec(output)?.[1]
    if (!output.startsWith('Script completed')) return { usage: new Usage(), output: [call('wait', { cell_id: this.cellId, yield_time_ms: 10000 })] }
    const message = { type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: `The cell said: ${output.split('\n').at(-1)}` }] }
    return { usage: new Usage(), output: [message] }
  }
  async *getStreamedResponse() {
    throw new Error('not used')
  }
}

const agent = new Agent({ name: 'billing', instructions: 'Send the invoices.', tools, model: new ScriptedModel() })
const runner = new Runner()
try {
  let result = await runner.run(agent, "Email this month's invoice to Ada and Bob.")
  while (result.interruptions.length) {
    for (const item of result.interruptions) {
      // The person: reads the call the cell waits on, its input and why, and decides.
      const call = waitingCall(item)
      console.log(`Waiting: ${call.tool} ${JSON.stringify(call.input)} (${call.reason}); ${outbox.length} sent so far`)
      if (call.input.to === 'ada@example.com') approveWithInput(result.state, item, { ...call.input, subject: 'Your invoice for November' })
      else result.state.reject(item, { message: 'Bob paid already' })
    }
    result = await runner.run(agent, result.state)
  }
  console.log(result.finalOutput)
  console.log(`Sent: ${outbox.join(', ')}`)
} finally {
  await tools.close()
  rmSync(stateDir, { recursive: true, force: true })
}
