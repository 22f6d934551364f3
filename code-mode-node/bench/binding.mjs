// What the Node binding adds to the Rust API: the same three cells through the package's
// `Session` (a warm session, its runtime process started) and through the Rust API over
// IPC (`benches/python_peer.rs`, the process provider, as the package runs cells),
// round by round in one run: a trivial cell, one nested call, 50 nested calls in one
// `Promise.all`, each call to a tool that answers with its argument at once.
//   node code-mode-node/bench/binding.mjs --peer PATH_TO_python_peer [--rounds 8] [--iterations 60]
// (scripts/node-bench.sh builds the release package and the peer, then runs this). Prints
// p50, p95 and mean per cell and side in microseconds, and the binding ÷ Rust API at p50.
import { execFileSync } from 'node:child_process'
import { Session } from 'code-mode-runtime'

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at >= 0 ? args[at + 1] : fallback
}
const peer = option('--peer')
if (!peer) throw new Error('binding.mjs: --peer PATH_TO_python_peer is required')
const rounds = Number(option('--rounds', 8))
const iterations = Number(option('--iterations', 60))

// The cells python_peer runs under the same names, and what each prints.
const CELLS = {
  trivial: { source: 'text(1)', expect: '1' },
  tool: { source: 'text(await tools.echo({n: 1}))', expect: '{"n":1}' },
  fifty: {
    source: 'const all = await Promise.all(Array.from({length: 50}, (_, n) => tools.echo({n}))); text(all.length)',
    expect: '50',
  },
}

const session = new Session({ tools: { echo: (input) => input } })

async function nodeRound(cell, count) {
  const { source, expect } = CELLS[cell]
  const times = []
  for (let i = 0; i < count; i++) {
    const started = process.hrtime.bigint()
    const result = await session.exec(source)
    const elapsed = Number(process.hrtime.bigint() - started) / 1000
    if (result.error || result.text !== expect) {
      throw new Error(`${cell}: ${JSON.stringify(result.error ?? result.text)}`)
    }
    times.push(elapsed)
  }
  return times
}

function peerRound(cell, count) {
  const out = execFileSync(peer, ['--transport', 'ipc', '--cell', cell, '--iterations', String(count)], {
    encoding: 'utf8',
  })
  return JSON.parse(out.trim().split('\n').at(-1))
}

function stats(times) {
  const sorted = [...times].sort((a, b) => a - b)
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2
  const p95 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))]
  const mean = times.reduce((a, b) => a + b, 0) / times.length
  return { p50: median, p95, mean }
}

const figures = {}
const add = (name, times) => (figures[name] ??= []).push(...times)
for (const cell of Object.keys(CELLS)) await nodeRound(cell, 5) // warm-up
for (let round = 0; round < rounds; round++) {
  for (const cell of Object.keys(CELLS)) {
    // Alternate which side goes first, so neither always runs on a machine just woken.
    if (round % 2 === 0) {
      add(`node ${cell}`, await nodeRound(cell, iterations))
      add(`rust ipc ${cell}`, peerRound(cell, iterations))
    } else {
      add(`rust ipc ${cell}`, peerRound(cell, iterations))
      add(`node ${cell}`, await nodeRound(cell, iterations))
    }
  }
}
await session.close()

console.log(`node ${process.version}, ${rounds} rounds of ${iterations}, µs per exec`)
for (const [name, times] of Object.entries(figures)) {
  const { p50, p95, mean } = stats(times)
  console.log(`${name.padEnd(16)} p50 ${p50.toFixed(0).padStart(7)}  p95 ${p95.toFixed(0).padStart(7)}  mean ${mean.toFixed(0).padStart(7)}  (n=${times.length})`)
}
for (const cell of Object.keys(CELLS)) {
  const ratio = stats(figures[`node ${cell}`]).p50 / stats(figures[`rust ipc ${cell}`]).p50
  console.log(`${cell}: node binding ÷ Rust API over IPC, p50 = ${ratio.toFixed(2)}×`)
}
