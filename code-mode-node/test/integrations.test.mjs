// The examples of examples/node, run as a user runs them: the AI SDK with its mock model
// (ai/test) and the OpenAI Agents SDK with a scripted Model, each in code mode.
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
