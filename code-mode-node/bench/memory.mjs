// 100 idle sessions: each ran one cell that stored a value and is kept open; then the
// resident memory of this process and of its children (our runtime process), in MB.
//   node code-mode-node/bench/memory.mjs <code-mode-runtime[:no-reuse] | isolated-vm | quickjs-emscripten>
// One engine per process (compare.mjs's docs say where the figures go).
import { readFileSync, readdirSync } from 'node:fs'

const engine = process.argv[2]
const COUNT = 100
const cell = 'const data = Array.from({length: 1000}, (_, i) => ({i, s: "v" + i})); text(data.length)'

function rssMb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024
}

function childPids() {
  const pids = []
  for (const task of readdirSync(`/proc/${process.pid}/task`)) {
    const list = readFileSync(`/proc/${process.pid}/task/${task}/children`, 'utf8').trim()
    if (list) pids.push(...list.split(' '))
  }
  return pids
}

const kept = []
const before = rssMb(process.pid)
if (engine.startsWith('code-mode-runtime')) {
  const { Session } = await import('code-mode-runtime')
  // code-mode-runtime:no-reuse: sessions keep no isolate between cells (reuseIsolates: false)
  const options = engine.endsWith(':no-reuse') ? { reuseIsolates: false } : {}
  for (let i = 0; i < COUNT; i++) {
    const session = new Session(options)
    await session.exec(cell)
    kept.push(session)
  }
} else if (engine === 'isolated-vm') {
  const { default: ivm } = await import('isolated-vm')
  for (let i = 0; i < COUNT; i++) {
    const isolate = new ivm.Isolate({ memoryLimit: 128 })
    const context = await isolate.createContext()
    await context.eval(`const data = Array.from({length: 1000}, (_, i) => ({i, s: "v" + i})); data.length`)
    kept.push([isolate, context])
  }
} else if (engine === 'quickjs-emscripten') {
  const { getQuickJS } = await import('quickjs-emscripten')
  const QuickJS = await getQuickJS()
  for (let i = 0; i < COUNT; i++) {
    const runtime = QuickJS.newRuntime()
    runtime.setMemoryLimit(128 * 1024 * 1024)
    const vm = runtime.newContext()
    vm.unwrapResult(vm.evalCode(`const data = Array.from({length: 1000}, (_, i) => ({i, s: "v" + i})); data.length`)).dispose()
    kept.push([runtime, vm])
  }
} else {
  throw new Error(`unknown engine ${engine}`)
}
await new Promise((resolve) => setTimeout(resolve, 1000))
const own = rssMb(process.pid)
const children = childPids().reduce((total, pid) => total + rssMb(pid), 0)
console.log(`${engine}: ${COUNT} idle sessions; this process ${own.toFixed(0)} MB (${(own - before).toFixed(0)} MB more than before them), its children ${children.toFixed(0)} MB, together ${(own + children).toFixed(0)} MB`)
process.exit(0)
