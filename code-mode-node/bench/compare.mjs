// code-mode-runtime against isolated-vm and quickjs-emscripten, running the same cells
// with the same tools in this Node process, interleaved (one sample of each engine in
// turn), each cell in a fresh context: ours in a warm session (its runtime process
// started), isolated-vm in a warm isolate, QuickJS in a warm runtime; 128 MB heap limits.
//   node code-mode-node/bench/compare.mjs [samples]     (docs/BENCHMARKS.md, "Node")
// Prints p50, p95 and mean per scenario and engine, in milliseconds.
import ivm from 'isolated-vm'
import { getQuickJS } from 'quickjs-emscripten'
import { Session } from 'code-mode-runtime'

const samples = Number(process.argv[2] ?? 30)
const tools = { x: async () => 1 }

// ---- the three engines: run(source) → the cell's text lines --------------------------

async function ours() {
  const session = new Session({ tools })
  await session.exec('text(0)')
  return {
    run: async (source) => {
      const result = await session.exec(source)
      if (result.error) throw new Error(result.error)
      return result.text
    },
    close: () => session.close(),
  }
}

const PRELUDE = `const tools = new Proxy({}, { get: (_, name) => (arg) => __tool(String(name), JSON.stringify(arg ?? null)).then(JSON.parse) });`

async function isolatedVm() {
  const isolate = new ivm.Isolate({ memoryLimit: 128 })
  return {
    run: async (source) => {
      const context = await isolate.createContext()
      const out = []
      try {
        await context.global.set('__text', new ivm.Callback((line) => void out.push(String(line))))
        await context.global.set(
          '__call',
          new ivm.Reference(async (name, arg) => JSON.stringify(await tools[name](JSON.parse(arg)))),
        )
        const wrapped = `const text = __text; const __tool = (name, arg) => __call.apply(undefined, [name, arg], { result: { promise: true } });
          ${PRELUDE} (async () => { ${source} })()`
        await context.eval(wrapped, { promise: true, timeout: 30000 })
      } finally {
        context.release()
      }
      return out.join('\n')
    },
    close: () => isolate.dispose(),
  }
}

async function quickjs() {
  const QuickJS = await getQuickJS()
  const runtime = QuickJS.newRuntime()
  runtime.setMemoryLimit(128 * 1024 * 1024)
  return {
    run: async (source) => {
      const vm = runtime.newContext()
      const out = []
      try {
        vm.newFunction('text', (line) => void out.push(String(vm.dump(line)))).consume((fn) => vm.setProp(vm.global, 'text', fn))
        vm.newFunction('__tool', (nameHandle, argHandle) => {
          const name = vm.getString(nameHandle)
          const arg = vm.getString(argHandle)
          const promise = vm.newPromise()
          Promise.resolve(tools[name](JSON.parse(arg))).then((value) => {
            vm.newString(JSON.stringify(value)).consume((handle) => promise.resolve(handle))
          })
          promise.settled.then(() => runtime.executePendingJobs())
          return promise.handle
        }).consume((fn) => vm.setProp(vm.global, '__tool', fn))
        const promise = vm.unwrapResult(vm.evalCode(`${PRELUDE} (async () => { ${source} })()`))
        const settled = vm.resolvePromise(promise)
        promise.dispose()
        runtime.executePendingJobs()
        vm.unwrapResult(await settled).dispose()
      } finally {
        vm.dispose()
      }
      return out.join('\n')
    },
    close: () => runtime.dispose(),
  }
}

// ---- the scenarios -----------------------------------------------------------------

const COMPUTE = `const records = [];
for (let i = 0; i < 200000; i++) records.push({ id: i, name: "item" + i, value: (i * 7919) % 1000 });
const parsed = JSON.parse(JSON.stringify(records));
parsed.sort((a, b) => a.value - b.value || a.id - b.id);
let sum = 0; for (const r of parsed) sum += r.value;
text(sum)`

const scenarios = [
  { name: 'a trivial cell', source: 'text(1)', expect: '1' },
  { name: 'one nested call', source: 'text(await tools.x())', expect: '1' },
  {
    name: '50 nested calls in Promise.all',
    source: 'const all = await Promise.all(Array.from({length: 50}, () => tools.x())); text(all.length)',
    expect: '50',
  },
  { name: 'build, parse, sort and sum 200 000 JSON records', source: COMPUTE, expect: '99900000', samples: 10 },
]

function stats(times) {
  const sorted = [...times].sort((a, b) => a - b)
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
  const mean = times.reduce((a, b) => a + b, 0) / times.length
  return { p50: at(0.5), p95: at(0.95), mean }
}

const engines = { 'code-mode-runtime': await ours(), 'isolated-vm': await isolatedVm(), 'quickjs-emscripten': await quickjs() }
console.log(`node ${process.version}, ${samples} samples after 20 warm-up rounds (the compute-heavy cell: 10 after 3), interleaved; ms`)
for (const scenario of scenarios) {
  const times = Object.fromEntries(Object.keys(engines).map((name) => [name, []]))
  const count = scenario.samples ?? samples
  // Warm-up rounds, the same for every engine: with three, the first scenario (the trivial
  // cell) still measured each engine's warm-up more than its cells.
  const warmUp = scenario.samples ? 3 : 20
  for (let i = 0; i < count + warmUp; i++) {
    for (const [name, engine] of Object.entries(engines)) {
      const start = performance.now()
      const text = await engine.run(scenario.source)
      const elapsed = performance.now() - start
      if (text !== scenario.expect) throw new Error(`${name}: ${scenario.name} printed ${JSON.stringify(text)}`)
      if (i >= warmUp) times[name].push(elapsed)
    }
  }
  console.log(`\n${scenario.name}`)
  for (const [name, list] of Object.entries(times)) {
    const { p50, p95, mean } = stats(list)
    console.log(`  ${name.padEnd(20)} p50 ${p50.toFixed(2).padStart(8)}  p95 ${p95.toFixed(2).padStart(8)}  mean ${mean.toFixed(2).padStart(8)}`)
  }
}
for (const engine of Object.values(engines)) await engine.close()

// Hostile cells, ours only (the issue has isolated-vm's and QuickJS's): each ends at its
// limit with a clear error, this process keeps its memory, and the next cell runs.
const hostile = new Session({ tools, heapMb: 128, cpuMs: 2000 })
await hostile.exec('text(0)')
const rss = () => (process.memoryUsage().rss / 1048576).toFixed(0)
console.log(`\nhostile cells (heap 128 MB, CPU 2 s); this process ${rss()} MB before`)
for (const [name, source] of [
  ['heap bomb', 'const a = []; while (true) a.push(new Array(1e5).fill(Math.random()))'],
  ['while (true) {} before an await', 'while (true) {}'],
  ['await tools.x(); while (true) {}', 'await tools.x(); while (true) {}'],
]) {
  const start = performance.now()
  const result = await hostile.exec(source)
  const elapsed = ((performance.now() - start) / 1000).toFixed(2)
  const next = await hostile.exec('text("next")')
  console.log(`  ${name.padEnd(34)} ${result.failure} after ${elapsed} s: ${JSON.stringify(result.error?.split('\n')[0])}; next cell: ${next.text}; this process ${rss()} MB`)
}
await hostile.close()
