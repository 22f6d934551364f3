// An OpenAI Agents SDK agent in code mode, with a scripted model (the SDK's Model
// interface, no network): the model yields a cell that starts two slow tools, yields,
// and awaits them; the model then calls `wait` and answers with the cell's output.
//   node examples/node/openai_agents.mjs
import { Agent, Runner, Usage, setTracingDisabled } from '@openai/agents'
import { codeModeTools } from 'code-mode-runtime/agents'

setTracingDisabled(true)
const calls = { search: 0, fetch: 0 }
const slow = (value) => new Promise((resolve) => setTimeout(() => resolve(value), 100))
const tools = codeModeTools(
  {
    search: { description: 'Searches the docs.', inputSchema: { type: 'object', properties: { q: { type: 'string' } } }, execute: async ({ q }) => { calls.search += 1; return slow([`${q}.md`]) } },
    fetch: { description: 'Fetches a page.', inputSchema: { type: 'object', properties: { page: { type: 'string' } } }, execute: async ({ page }) => { calls.fetch += 1; return slow(`contents of ${page}`) } },
  },
  { hibernate: false },
)

const cell = `
const hits = tools.search({q: "limits"});
const page = tools.fetch({page: "intro.md"});
text("started");
yield_control();
text((await hits)[0] + " / " + (await page));
`

/** A model that plays a script: exec the cell, wait on it, answer with its output. */
class ScriptedModel {
  turn = 0
  async getResponse(request) {
    this.turn += 1
    const call = (name, args) => ({ type: 'function_call', callId: `call-${this.turn}`, name, arguments: JSON.stringify(args), status: 'completed' })
    const last = request.input.at(-1)
    const output = typeof last?.output === 'string' ? last.output : (last?.output?.text ?? '')
    if (this.turn === 1) return { usage: new Usage(), output: [call('exec', { code: cell })] }
    if (this.turn === 2) {
      const cellId = /cell ID (\S+)/.exec(output)?.[1]
      return { usage: new Usage(), output: [call('wait', { cell_id: cellId, yield_time_ms: 5000 })] }
    }
    const message = { type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: `Found: ${output.split('\n').at(-1)}` }] }
    return { usage: new Usage(), output: [message] }
  }
  async *getStreamedResponse() {
    throw new Error('not used')
  }
}

const agent = new Agent({ name: 'docs', instructions: 'Answer from the docs.', tools, model: new ScriptedModel() })
try {
  const result = await new Runner().run(agent, 'What are the limits?')
  console.log(result.finalOutput)
  console.log(`search ran ${calls.search} time(s), fetch ${calls.fetch} time(s)`)
} finally {
  await tools.close()
}
