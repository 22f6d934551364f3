// Calls that wait on a person (issue 86), on a real state directory: a JS tool with
// `needsApproval` (and a tools file's `approval = "always"`) never runs before a person
// approves its call, shown by the tool's own count; approved it runs once, with the
// cell's input or the approver's edit; denied it never runs and the cell's call rejects
// with the approver's message; a decision is taken once. The session's own methods, the
// store-level functions, and another process deciding while this one holds the session.
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import {
  ApprovalNotWaiting,
  InvalidArgument,
  Session,
  SessionClosed,
  approve,
  deny,
  pendingApprovals,
  run,
} from 'code-mode-runtime'
import { node, sleep } from './helpers.mjs'

const scratch = mkdtempSync(path.join(tmpdir(), 'code-mode-node-approvals-'))
after(() => rmSync(scratch, { recursive: true, force: true }))
let dirs = 0
const stateDir = () => path.join(scratch, `state-${++dirs}`)

const WAITING = 'Waiting for approval: `send` (call tool-2), because: it sends mail. The cell goes on when a person decides.'
const CELL = `
const free = await tools.free({ a: 1 });
text('free ' + JSON.stringify(free));
try { text('sent ' + JSON.stringify(await tools.send({ to: 'ada' }))) } catch (error) { text('failed ' + String(error)) }`

/** `send` (needs an approval; every input it ran with is in `sent`) and `free` (does not). */
function mail() {
  const sent = []
  const tools = {
    send: {
      description: 'Sends mail.',
      needsApproval: true,
      approvalReason: 'it sends mail',
      inputSchema: { type: 'object', properties: { to: { type: 'string' } }, required: ['to'] },
      execute: ({ to }) => {
        sent.push(to)
        return { sent: to }
      },
    },
    free: (input) => input,
  }
  return { sent, tools }
}

/** A decision's state as read right after it: the waiting call may have taken it already
 * (an approved call taken to be sent, a denial told to its cell). */
const APPROVED = ['approved', 'sending']
const DENIED = ['denied', 'told']

/** Starts the cell under an hour's observation: it ends at once, because `send` waits. */
async function started(session) {
  const begun = Date.now()
  const result = await session.exec(CELL, { yieldTimeMs: 3_600_000 })
  assert.ok(Date.now() - begun < 30_000, 'the observation ended when the call began to wait')
  assert.equal(result.status, 'running')
  assert.deepEqual(result.text.split('\n'), ['free {"a":1}', WAITING])
  assert.match(result.modelText, /Waiting for approval: `send`/)
  return result
}

/** Waits on the cell until it ends: the texts of every observation on the way, but the
 * lines that say a call waits (another process's decision reaches this one within 25 ms). */
async function finished(session, cellId) {
  const texts = []
  for (let tries = 0; tries < 100; tries += 1) {
    const result = await session.wait(cellId, { yieldTimeMs: 10_000 })
    const said = result.items.filter((item) => item.type === 'text').map((item) => item.text)
    texts.push(...said.filter((text) => !text.startsWith('Waiting for approval: ')))
    if (result.status !== 'running') return texts
    await sleep(20)
  }
  assert.fail(`cell ${cellId} did not end`)
}

test('a call that needs approval sends nothing until approved, then runs once with its own input', async () => {
  const { sent, tools } = mail()
  const session = await Session.open({ tools, stateDir: stateDir(), sessionId: 'one' })
  try {
    const cell = await started(session)
    await sleep(300)
    assert.deepEqual(sent, [], "the tool's own count: nothing sent without an approval")
    const [waiting, ...others] = await session.pendingApprovals()
    assert.deepEqual(others, [])
    assert.equal(waiting.tool, 'send')
    assert.deepEqual(waiting.input, { to: 'ada' })
    assert.equal(waiting.reason, 'it sends mail')
    assert.equal(waiting.sessionId, 'one')
    assert.equal(waiting.cellId, cell.cellId)
    assert.equal(waiting.callId, 'tool-2')
    assert.equal(waiting.front, 'node')
    assert.equal(waiting.state, 'pending')
    assert.equal(waiting.waitingLine, WAITING)
    assert.ok(waiting.ageMs >= 300 && waiting.requestedAt instanceof Date)
    // Observing the cell again ends at once too, with the same line.
    const again = await session.wait(cell.cellId, { yieldTimeMs: 3_600_000 })
    assert.deepEqual(again.text, WAITING)
    assert.deepEqual(sent, [])

    const decided = await session.approve(waiting.id)
    assert.ok(APPROVED.includes(decided.state), decided.state)
    assert.deepEqual(await finished(session, cell.cellId), ['sent {"sent":"ada"}'])
    assert.deepEqual(sent, ['ada'])
    await assert.rejects(session.approve(waiting.id), ApprovalNotWaiting, 'a decision is taken once')
    await assert.rejects(session.deny(waiting.id, 'too late'), ApprovalNotWaiting)
    assert.deepEqual(await session.pendingApprovals(), [])
    assert.deepEqual(sent, ['ada'], 'sent once')
  } finally {
    await session.close()
  }
})

test("an approval with edited input sends the approver's input, not the cell's", async () => {
  const { sent, tools } = mail()
  const session = await Session.open({ tools, stateDir: stateDir(), sessionId: 'edit' })
  try {
    const cell = await started(session)
    const [waiting] = await session.pendingApprovals()
    const decided = await session.approve(waiting, { to: 'bob' })
    assert.ok(APPROVED.includes(decided.state), decided.state)
    assert.deepEqual(await finished(session, cell.cellId), ['sent {"sent":"bob"}'])
    assert.deepEqual(sent, ['bob'])
  } finally {
    await session.close()
  }
})

test("a denied call never runs, and the cell's call rejects with the approver's message", async () => {
  const { sent, tools } = mail()
  const session = await Session.open({ tools, stateDir: stateDir(), sessionId: 'deny' })
  try {
    const cell = await started(session)
    const [waiting] = await session.pendingApprovals()
    assert.ok(DENIED.includes((await session.deny(waiting.id, 'not to her')).state))
    assert.deepEqual(await finished(session, cell.cellId), [
      'failed denied: the call of `send` was not approved, so it did not run: not to her',
    ])
    assert.deepEqual(sent, [])
    await assert.rejects(session.approve(waiting.id), ApprovalNotWaiting)
    await sleep(200)
    assert.deepEqual(sent, [], 'never sent')
  } finally {
    await session.close()
  }
})

test('the store-level functions list, approve (edited) and deny any session\'s calls in a state directory', async () => {
  const { sent, tools } = mail()
  const dir = stateDir()
  const one = await Session.open({ tools, stateDir: dir, sessionId: 'store-1' })
  const two = await Session.open({ tools, stateDir: dir, sessionId: 'store-2' })
  try {
    const first = await started(one)
    const second = await started(two)
    const all = await pendingApprovals(dir)
    assert.deepEqual(all.map((approval) => approval.sessionId), ['store-1', 'store-2'])
    assert.deepEqual((await pendingApprovals(dir, { sessionId: 'store-2' })).map((approval) => approval.sessionId), ['store-2'])
    assert.equal((await pendingApprovals(dir, { front: 'node' })).length, 2)
    assert.deepEqual(await pendingApprovals(dir, { front: 'python' }), [])
    assert.deepEqual(sent, [])

    assert.ok(APPROVED.includes((await approve(dir, all[0].id, { to: 'carol' })).state))
    assert.deepEqual(await finished(one, first.cellId), ['sent {"sent":"carol"}'])
    assert.ok(DENIED.includes((await deny(dir, all[1].id, 'no mail today')).state))
    assert.deepEqual(await finished(two, second.cellId), [
      'failed denied: the call of `send` was not approved, so it did not run: no mail today',
    ])
    assert.deepEqual(sent, ['carol'])
    await assert.rejects(approve(dir, all[1].id), ApprovalNotWaiting)
    assert.deepEqual(await pendingApprovals(dir), [])
    // A session's own methods decide only its own calls.
    const third = await started(one)
    const [theirs] = await pendingApprovals(dir, { sessionId: 'store-1' })
    await assert.rejects(two.approve(theirs.id), ApprovalNotWaiting)
    await one.deny(theirs.id, 'done')
    await finished(one, third.cellId)
    assert.deepEqual(sent, ['carol'])
  } finally {
    await one.close()
    await two.close()
  }
})

test('another process lists and approves a call while this one holds the session', async () => {
  const { sent, tools } = mail()
  const dir = stateDir()
  const session = await Session.open({ tools, stateDir: dir, sessionId: 'held' })
  try {
    const cell = await started(session)
    const other = await node(`
      import { pendingApprovals, approve } from 'code-mode-runtime'
      const [waiting] = await pendingApprovals(${JSON.stringify(dir)})
      console.log(JSON.stringify({ tool: waiting.tool, input: waiting.input, session: waiting.sessionId }))
      const decided = await approve(${JSON.stringify(dir)}, waiting.id, { to: 'from another process' })
      console.log('decided', decided.cellId, decided.callId)`)
    assert.equal(other.code, 0, other.stderr)
    const [waiting] = (await session.pendingApprovals()).concat(await pendingApprovals(dir))
    assert.equal(waiting, undefined, 'decided by the other process: no longer pending')
    const [seen, decided] = other.stdout.trim().split('\n')
    assert.equal(seen, '{"tool":"send","input":{"to":"ada"},"session":"held"}')
    assert.equal(decided, `decided ${cell.cellId} tool-2`)
    assert.deepEqual(await finished(session, cell.cellId), ['sent {"sent":"from another process"}'])
    assert.deepEqual(sent, ['from another process'])
  } finally {
    await session.close()
  }
})

test('a call waiting in a process killed with -9 waits still when the next process takes the session back', async () => {
  const dir = stateDir()
  const killed = await node(`
    import { Session } from 'code-mode-runtime'
    const tools = { send: { needsApproval: true, approvalReason: 'it sends mail', execute: () => { throw new Error('the killed process sent it') } }, free: (input) => input }
    const session = await Session.open({ tools, stateDir: ${JSON.stringify(dir)}, sessionId: 'restarted' })
    const result = await session.exec(${JSON.stringify(CELL)}, { yieldTimeMs: 3_600_000 })
    const [waiting] = await session.pendingApprovals()
    console.log(JSON.stringify({ cellId: result.cellId, id: waiting.id }))
    process.kill(process.pid, 'SIGKILL')`)
  assert.equal(killed.code, null, killed.stderr)
  const before = JSON.parse(killed.stdout.trim())
  const listed = await pendingApprovals(dir)
  assert.deepEqual(listed.map((approval) => [approval.id, approval.tool, approval.state]), [[before.id, 'send', 'pending']])
  const { sent, tools } = mail()
  const session = await Session.open({ tools, stateDir: dir, sessionId: 'restarted' })
  try {
    const [waiting] = await session.pendingApprovals()
    assert.equal(waiting.id, before.id)
    await sleep(200)
    assert.deepEqual(sent, [], 'still nothing sent')
    await session.approve(waiting.id, { to: 'after the restart' })
    assert.deepEqual(await finished(session, before.cellId), ['sent {"sent":"after the restart"}'])
    assert.deepEqual(sent, ['after the restart'])
  } finally {
    await session.close()
  }
})

test('run waits for a call to be decided, looking at the store rather than observing the cell again and again', async () => {
  const { sent, tools } = mail()
  const dir = stateDir()
  let decided = null
  const deciding = (async () => {
    for (;;) {
      const [waiting] = await pendingApprovals(dir)
      await sleep(waiting ? 500 : 20) // a person takes a while
      if (waiting) return (decided = await approve(dir, waiting.id))
    }
  })()
  const result = await run(CELL, { tools, stateDir: dir, sessionId: 'run' })
  await deciding
  assert.ok(decided)
  assert.equal(result.status, 'completed')
  assert.deepEqual(result.text.split('\n'), ['free {"a":1}', WAITING, 'sent {"sent":"ada"}'], 'the line that says the call waits, once')
  assert.deepEqual(sent, ['ada'])
})

test('a tools file\'s tool with approval = "always" waits too, and runs once approved', async () => {
  // The command counts its own runs in a file beside it.
  const count = path.join(scratch, 'shout-count')
  writeFileSync(count, '')
  const script = path.join(scratch, 'shout.py')
  writeFileSync(script, `import json, sys\nopen(${JSON.stringify(count)}, 'a').write('x')\nprint(json.dumps(json.load(sys.stdin)['text'].upper()))\n`)
  const file = path.join(scratch, 'approval-tools.toml')
  writeFileSync(
    file,
    `[[tool]]
name = "shout"
description = "Upper-cases the text it is given."
approval = "always"
approval_reason = "it shouts"
command = ["python3", ${JSON.stringify(script)}]
`,
  )
  const session = await Session.open({ toolsFile: file, stateDir: stateDir(), sessionId: 'file' })
  try {
    const result = await session.exec("text(await tools.shout({ text: 'hi' }))", { yieldTimeMs: 3_600_000 })
    assert.equal(result.status, 'running')
    assert.match(result.text, /^Waiting for approval: `shout` \(call tool-1\), because: it shouts\./)
    await sleep(200)
    assert.equal(readFileSync(count, 'utf8'), '', 'the command did not run')
    const [waiting] = await session.pendingApprovals()
    assert.equal(waiting.tool, 'shout')
    await session.approve(waiting.id)
    assert.deepEqual(await finished(session, result.cellId), ['HI'])
    assert.equal(readFileSync(count, 'utf8'), 'x', 'the command ran once')
  } finally {
    await session.close()
  }
})

test('tools that need approval are refused without a stateDir, and a per-call function is refused, not ignored', async () => {
  const { tools } = mail()
  assert.throws(() => new Session({ tools }), (error) => error instanceof InvalidArgument && /stateDir/.test(error.message))
  const file = path.join(scratch, 'approval-only.toml')
  writeFileSync(file, '[[tool]]\nname = "shout"\ndescription = "x"\napproval = "always"\ncommand = ["true"]\n')
  await assert.rejects(Session.open({ toolsFile: file }), (error) => error instanceof InvalidArgument && /stateDir/.test(error.message))
  const predicate = { send: { ...tools.send, needsApproval: (input) => input.to !== 'me' } }
  assert.throws(
    () => new Session({ tools: predicate, stateDir: stateDir(), sessionId: 'fn' }),
    (error) => error instanceof InvalidArgument && /needsApproval must be true or false, not a function/.test(error.message),
  )
  // Approving needs a JSON input, a denial a message; a closed session decides nothing.
  const session = await Session.open({ tools, stateDir: stateDir(), sessionId: 'args' })
  await assert.rejects(session.approve('x', () => 1), InvalidArgument)
  await assert.rejects(session.deny('x'), InvalidArgument)
  await session.close()
  await assert.rejects(session.approve('x'), SessionClosed)
  // A session without tools needing approval keeps none, and has none to decide.
  const plain = new Session({ tools: { free: (input) => input } })
  try {
    assert.deepEqual(await plain.pendingApprovals(), [])
    await assert.rejects(plain.approve('x'), ApprovalNotWaiting)
  } finally {
    await plain.close()
  }
})
