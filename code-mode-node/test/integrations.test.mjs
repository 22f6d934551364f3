// The examples of examples/node, run as a user runs them: the AI SDK with its mock model
// (ai/test) and the OpenAI Agents SDK with a scripted Model, each in code mode, and each
// with a tool whose calls wait on a person's approval.
import assert from 'node:assert/strict'
import path from 'node:path'
import { test } from 'node:test'
import { nodeFile, repo } from './helpers.mjs'

const examples = path.join(repo, 'examples', 'node')

test('the AI SDK example: one cell calls two async tools, one throws, and the model answers with its output', async () => {
  const out = await nodeFile(path.join(examples, 'ai_sdk_agent.mjs'), { cwd: examples })
  assert.equal(out.code, 0, out.stderr)
  const lines = out.stdout.trim().split('\n')
  assert.equal(lines[0], 'The cell said: Script completed')
  assert.match(lines[1], /^Wall time \d+\.\d seconds$/)
  assert.deepEqual(lines.slice(2), [
    'Output:',
    'Paris 18°C, Oslo 11°C; alerts: unavailable (no alert service for Oslo)',
    'get_weather was called for Oslo and Paris',
  ])
})

test('the OpenAI Agents SDK example: a cell yields, the model waits on it, each slow tool runs once', async () => {
  const out = await nodeFile(path.join(examples, 'openai_agents.mjs'), { cwd: examples })
  assert.equal(out.code, 0, out.stderr)
  assert.deepEqual(out.stdout.trim().split('\n'), ['Found: limits.md / contents of intro.md', 'search ran 1 time(s), fetch 1 time(s)'])
})

/** What both approval examples print: each call waits with nothing sent before its approval; Ada's is sent as edited, Bob's denied. */
const APPROVALS = [
  'Waiting: send_email {"to":"ada@example.com","subject":"Your invoice"} (it emails a customer); 0 sent so far',
  'Waiting: send_email {"to":"bob@example.com","subject":"Your invoice"} (it emails a customer); 1 sent so far',
  'The cell said: ada@example.com: sent; bob@example.com: denied: the call of `send_email` was not approved, so it did not run: Bob paid already',
  'Sent: ada@example.com (Your invoice for November)',
]

test("the AI SDK approval example: each email waits on a person, the generation ends there, the app's decisions hold", async () => {
  const out = await nodeFile(path.join(examples, 'ai_sdk_approval.mjs'), { cwd: examples })
  assert.equal(out.code, 0, out.stderr)
  assert.deepEqual(out.stdout.trim().split('\n'), APPROVALS)
})

test('the OpenAI Agents SDK approval example: each email is a run interruption, approved (edited) or rejected through RunState', async () => {
  const out = await nodeFile(path.join(examples, 'openai_agents_approval.mjs'), { cwd: examples })
  assert.equal(out.code, 0, out.stderr)
  assert.deepEqual(out.stdout.trim().split('\n'), APPROVALS)
})
