// The API: run, Session and its calls, tools as functions with their schemas, errors,
// AbortSignal, the event loop, limits. Against the package built by
// scripts/node-package.sh, found by its name (code-mode-runtime) as an app finds it.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { isMainThread } from 'node:worker_threads'
import path from 'node:path'
import { test } from 'node:test'
import { z } from 'zod'
import {
  CellError,
  InvalidArgument,
  LimitExceeded,
  RuntimeUnavailable,
  Session,
  SessionClosed,
  run,
  toolSpecs,
} from 'code-mode-runtime'
import { repo, sleep } from './helpers.mjs'

test('run: a cell calls sync and async JS tools and prints their results', async () => {
  const result = await run('text(await tools.add({a: 1, b: 2})); text(await tools.greet({name: "Ada"}))', {
    tools: {
      add: ({ a, b }) => a + b,
      greet: async ({ name }) => {
        await sleep(10)
        return `hello ${name}`
      },
    },
  })
  assert.equal(result.status, 'completed')
  assert.equal(result.error, undefined)
  assert.equal(result.text, '3\nhello Ada')
  assert.match(result.modelText, /Script completed/)
})

test("a tool's thrown error rejects the cell's call with its message", async () => {
  const result = await run('try { await tools.boom() } catch (error) { text("caught: " + error) }', {
    tools: {
      boom: async () => {
        throw new Error('the disk is full')
      },
    },
  })
  assert.equal(result.text, 'caught: the disk is full')
})

test('a tool that throws a value with no text, or a hostile one, rejects the call; the process goes on', async () => {
  const result = await run(
    'for (const name of ["bare", "hostile"]) { try { await tools[name]() } catch (error) { text(name + ": " + error) } }',
    {
      tools: {
        bare: async () => {
          throw Object.create(null)
        },
        hostile: async () => {
          throw { toString: 0, valueOf: 0 }
        },
      },
    },
  )
  const failed = 'the tool failed (its error could not be read as text)'
  assert.equal(result.text, `bare: ${failed}\nhostile: ${failed}`)
})

test('a closed session is let go: it and its tools are collected', async () => {
  const v8 = await import('node:v8')
  const vm = await import('node:vm')
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc')
  let collected = 0
  const registry = new FinalizationRegistry(() => {
    collected += 1
  })
  // Each session lives only inside this function: nothing of the test holds it after.
  const useAndClose = async (i) => {
    const echo = (x) => x
    const session = new Session({ tools: { echo } })
    // The tool stands for what the app's tools hold (clients, caches): the dispatcher keeps
    // it while the session may call it.
    registry.register(echo, `tool ${i}`)
    registry.register(session, `session ${i}`)
    assert.equal((await session.exec('text(await tools.echo(7))')).text, '7')
    await session.close()
  }
  const count = 5
  for (let i = 0; i < count; i++) await useAndClose(i)
  const expected = 2 * count
  await sleep(50)
  for (let round = 0; round < 100 && collected < expected; round++) {
    gc()
    await sleep(20)
  }
  assert.equal(collected, expected, 'closed sessions, or their tools, left uncollected')
})

test('a Zod schema declares the tool to the model and checks its argument', async () => {
  const tools = {
    get_weather: {
      description: 'The weather in a city.',
      inputSchema: z.object({ city: z.string(), days: z.number().int().optional() }),
      execute: ({ city, days }) => ({ city, days: days ?? 1 }),
    },
  }
  const exec = toolSpecs(tools).find((spec) => spec.name === 'exec')
  assert.match(exec.description, /get_weather/)
  assert.match(exec.description, /The weather in a city\./)
  assert.match(exec.description, /city: string/)
  const result = await run(
    'text(JSON.stringify(await tools.get_weather({city: "Oslo"}))); try { await tools.get_weather({city: 3}) } catch (e) { text(String(e)) }',
    { tools },
  )
  const [ok, refused] = result.text.split('\n')
  assert.deepEqual(JSON.parse(ok), { city: 'Oslo', days: 1 })
  assert.match(refused, /invalid argument: city: /)
})

test('a JSON Schema declares the tool to the model', () => {
  const exec = toolSpecs([
    { name: 'lookup', description: 'Looks a user up.', inputSchema: { type: 'object', properties: { id: { type: 'integer' } }, required: ['id'] }, execute: () => null },
  ]).find((spec) => spec.name === 'exec')
  assert.match(exec.description, /lookup/)
  assert.match(exec.description, /id: number/)
})

test("toolSpecs gives exec and wait with the descriptions the code-mode CLI gives (Codex's)", () => {
  const cli = path.join(repo, 'target', 'debug', 'code-mode')
  const expected = JSON.parse(execFileSync(cli, ['describe', '--json'], { encoding: 'utf8' }))
  assert.deepEqual(toolSpecs({}), expected)
  assert.deepEqual(new Session().toolSpecs(), expected)
})

test('a session keeps stored values across cells, yields and is waited on, and terminates a cell', async () => {
  const session = new Session({ storedValues: { start: 40 } })
  try {
    await session.exec('store("n", load("start") + 2)')
    assert.deepEqual(session.storedValues, { start: 40, n: 42 })
    const started = await session.exec('text("first"); yield_control(); text("second: " + load("n"))')
    assert.equal(started.status, 'running')
    assert.equal(started.text, 'first')
    const done = await session.wait(started.cellId)
    assert.equal(done.status, 'completed')
    assert.equal(done.text, 'second: 42')
    const endless = await session.exec('text("looping"); yield_control(); await new Promise((r) => setTimeout(r, 60000))')
    assert.equal(endless.status, 'running')
    const stopped = await session.terminate(endless.cellId)
    assert.equal(stopped.status, 'terminated')
    assert.match(session.runtime, /^pid \d+$/)
  } finally {
    await session.close()
  }
  assert.equal(session.closed, true)
  await assert.rejects(session.exec('text(1)'), SessionClosed)
})

test('Symbol.asyncDispose closes the session (await using)', async () => {
  const session = new Session()
  await session.exec('text(1)')
  await session[Symbol.asyncDispose]()
  assert.equal(session.closed, true)
  await assert.rejects(session.exec('text(1)'), SessionClosed)
})

test("an AbortSignal terminates the cell and aborts its tool's signal; the session goes on", async () => {
  let toolSignal
  const session = new Session({
    tools: {
      hang: (_, { signal }) => {
        toolSignal = signal
        return new Promise(() => {})
      },
    },
  })
  try {
    const controller = new AbortController()
    const started = session.exec('text("before"); await tools.hang(); text("never")', { signal: controller.signal })
    while (!toolSignal) await sleep(5)
    controller.abort()
    await assert.rejects(started, { name: 'AbortError' })
    // The tool's abort comes from the native half by its own way: awaited, not assumed.
    const deadline = Date.now() + 10_000
    while (!toolSignal.aborted && Date.now() < deadline) await sleep(5)
    assert.equal(toolSignal.aborted, true)
    const next = await session.exec('text("next")')
    assert.equal(next.text, 'next')
  } finally {
    await session.close()
  }
})

test("a tool that reads its signal only after its call was given up finds it aborted", async () => {
  let options
  const session = new Session({
    tools: {
      later: (_, given) => {
        options = given // the signal is not read here: it is made when first read
        return new Promise(() => {})
      },
    },
  })
  try {
    const controller = new AbortController()
    const started = session.exec('await tools.later(); text("never")', { signal: controller.signal })
    const called = Date.now() + 10_000
    while (!options && Date.now() < called) await sleep(5)
    assert.ok(options, 'the tool was called')
    controller.abort()
    await assert.rejects(started, { name: 'AbortError' })
    // The give-up reaches this event loop on its own way; let it land before the first
    // read (were it later, the read would make a live signal that the give-up then aborts,
    // and the test would not tell the two apart: it can only pass wrongly, never fail so).
    assert.equal((await session.exec('text("next")')).text, 'next')
    await sleep(200)
    const deadline = Date.now() + 10_000
    while (!options.signal.aborted && Date.now() < deadline) await sleep(5)
    assert.equal(options.signal.aborted, true)
    assert.equal(options.signal.reason?.name, 'AbortError')
    assert.equal(options.abortSignal, options.signal, 'the AI SDK name reads the same signal')
  } finally {
    await session.close()
  }
})

test('an abort that lands after the cell completed leaves exec its result, as it leaves wait its', async () => {
  const controller = new AbortController()
  const session = new Session({
    tools: {
      // Answers, then holds the event loop while the cell completes and the exec's
      // answer waits for it, and only then aborts: the abort lands after completion.
      last: () => {
        setImmediate(() => {
          const until = Date.now() + 300
          while (Date.now() < until) {}
          controller.abort()
        })
        return 'ok'
      },
    },
  })
  try {
    const result = await session.exec('text(await tools.last())', { signal: controller.signal })
    assert.equal(controller.signal.aborted, true, 'the abort landed before exec returned')
    assert.equal(result.status, 'completed')
    assert.equal(result.text, 'ok')
  } finally {
    await session.close()
  }
})

test('the event loop runs while a cell computes, and tools run on the main thread', async () => {
  let ticks = 0
  const timer = setInterval(() => (ticks += 1), 10)
  let onMain
  try {
    const result = await run('const t = Date.now(); while (Date.now() - t < 400) {} text("done")')
    assert.equal(result.text, 'done')
  } finally {
    clearInterval(timer)
  }
  assert.ok(ticks >= 10, `the interval ticked ${ticks} times during a 400 ms cell`)
  const called = await run('text(await tools.where())', { tools: { where: () => ((onMain = isMainThread), 'main') } })
  assert.equal(called.text, 'main')
  assert.equal(onMain, true)
})

test('a heap bomb and an endless loop end at their limits; the next cell runs', async () => {
  const session = new Session({ heapMb: 32, cpuMs: 300 })
  try {
    const bomb = await session.exec('const a = []; while (true) a.push(new Array(100000).fill(1))')
    assert.equal(bomb.failure, 'out_of_memory')
    await assert.rejects(session.exec('while (true) {}', { throwOnError: true }), (error) => {
      assert.ok(error instanceof LimitExceeded)
      assert.ok(error instanceof CellError)
      assert.equal(error.result.failure, 'cpu_budget')
      return true
    })
    await assert.rejects(session.exec('throw new Error("plain")', { throwOnError: true }), (error) => !(error instanceof LimitExceeded) && error instanceof CellError && /plain/.test(error.message))
    assert.equal((await session.exec('text("alive")')).text, 'alive')
  } finally {
    await session.close()
  }
})

test('bad arguments are InvalidArgument errors that name what is wrong', () => {
  assert.throws(() => new Session({ heapMB: 1 }), (error) => error instanceof InvalidArgument && /heapMB/.test(error.message))
  assert.throws(() => new Session({ surface: 'bogus' }), (error) => error instanceof InvalidArgument && /surface/.test(error.message))
  assert.throws(() => new Session({ tools: [() => 1] }), (error) => error instanceof InvalidArgument && /needs a name/.test(error.message))
  assert.throws(() => new Session({ sessionId: 'a' }), InvalidArgument)
})

test('a runtime executable that does not exist is a RuntimeUnavailable at the first cell', async () => {
  const session = new Session({ runtime: '/nonexistent/code-mode-bin' })
  await assert.rejects(session.exec('text(1)'), (error) => error instanceof RuntimeUnavailable && /nonexistent/.test(error.message))
  await session.close()
})

test('a killed runtime process loses no stored value: the next cell runs on a fresh one', async () => {
  const session = new Session()
  try {
    await session.exec('store("kept", "yes")')
    const pid = Number(/pid (\d+)/.exec(session.runtime)[1])
    process.kill(pid, 'SIGKILL')
    await sleep(100)
    const after = await session.exec('text(load("kept"))')
    assert.equal(after.text, 'yes')
    assert.notEqual(session.runtime, `pid ${pid}`)
  } finally {
    await session.close()
  }
})

test("a wait's AbortSignal stops waiting and leaves the cell running", async () => {
  const session = new Session()
  try {
    const started = await session.exec('text("a"); yield_control(); await new Promise((r) => setTimeout(r, 300)); text("b")')
    assert.equal(started.status, 'running')
    await assert.rejects(session.wait(started.cellId, { signal: AbortSignal.timeout(20) }), { name: 'TimeoutError' })
    const done = await session.wait(started.cellId)
    assert.equal(done.status, 'completed')
    assert.equal(done.text, 'b')
  } finally {
    await session.close()
  }
})

test('run waits through yields and gathers every observation; throwOnError throws the failure', async () => {
  const result = await run('text("one"); yield_control(); await new Promise((r) => setTimeout(r, 50)); text("two")')
  assert.equal(result.status, 'completed')
  assert.equal(result.text, 'one\ntwo')
  await assert.rejects(run('throw new Error("broken")', { throwOnError: true }), (error) => error instanceof CellError && /broken/.test(error.message))
  const failed = await run('throw new Error("broken")')
  assert.match(failed.error, /broken/)
})
