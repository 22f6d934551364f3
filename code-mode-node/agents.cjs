'use strict'
// Code mode for the OpenAI Agents SDK for JavaScript (`@openai/agents`): `exec` and
// `wait` as function tools of an Agent, over the app's own tools.
//
// A cell's call of a tool that needs a person's approval (`needsApproval: true`, or a
// tools file's `approval = "always"`, in a session with a `stateDir`) is the SDK's own
// human-in-the-loop approval: the `exec` (or `wait`) whose cell waits is a run
// interruption (`result.interruptions`, a RunToolApprovalItem of `exec`), and
// `waitingCall(item)` says which call of the cell waits (its tool, input and reason).
// `result.state.approve(item)` runs it with its input, `approveWithInput(state, item,
// input)` with that input instead, and `result.state.reject(item, { message })` denies it
// (it never runs; its cell's call rejects with the message); then `run(agent,
// result.state)`. An approved `exec` answers with everything its cell output, before and
// after its call waited.
//
// To know whether a call needs an approval, `exec` and `wait` run their cell while the
// SDK asks (`needsApproval`): a cell whose call waits on a person is the one that does,
// and `execute` then answers with what the cell did. This happens only in a session
// whose tools wait on a person; any other runs its cell in `execute`, under the run's
// abort signal (the SDK gives `needsApproval` none). The link between an interruption
// and its cell is kept in this process: a process started again decides the call from
// the store (`approve(stateDir, id)` of code-mode-runtime), and the model reads on with
// `wait`.

const { Session, ApprovalNotWaiting } = require('./index.cjs')

/** Whether a session's tools wait on a person (index.cjs's key). */
const NEEDS_APPROVALS = Symbol.for('code-mode-runtime.needsApprovals')
/** The SDK's own answer to a call rejected without a message (its TOOL_APPROVAL_REJECTION_MESSAGE). */
const REJECTED = 'Tool execution was not approved.'

const EXEC_PARAMETERS = {
  type: 'object',
  properties: {
    code: { type: 'string', description: 'The JavaScript source of the cell (raw source, not a fenced block).' },
  },
  required: ['code'],
  additionalProperties: false,
}

/**
 * What `exec` and `wait` share: the session, the answers of the SDK's calls whose cell
 * ran while the SDK asked whether they need an approval, and those whose cell waits on a
 * person (by the SDK's call id).
 */
class Calls {
  constructor(session) {
    this.session = session
    this.answered = new Map()
    this.waiting = new Map()
  }

  /** The calls the run's state rejected are denied in the store too (the SDK answers a
   * rejected call itself, without the tool). */
  async denyRejected(runContext) {
    for (const [callId, waiting] of [...this.waiting]) {
      if (runContext?.isToolApproved?.({ toolName: waiting.tool, callId }) !== false) continue
      this.waiting.delete(callId)
      const message = runContext.getRejectionMessage?.(waiting.tool, callId) ?? REJECTED
      await decided(this.session.deny(waiting.approval.id, message))
    }
  }

  /** Runs the call's observation once: whether its cell waits on a person. */
  async needsApproval(tool, callId, observe) {
    if (!callId || !(await this.session[NEEDS_APPROVALS]())) return false
    if (this.waiting.has(callId)) return true
    if (this.answered.has(callId)) return false
    let result
    try {
      result = await observe()
    } catch (error) {
      // The call fails with it when the SDK invokes the tool.
      this.answered.set(callId, { error })
      return false
    }
    if (result.status === 'running') {
      const approval = (await this.session.pendingApprovals()).find((found) => found.cellId === result.cellId)
      if (approval) {
        this.waiting.set(callId, { tool, approval, output: `${result.modelText}\n\n`, edited: undefined })
        return true
      }
    }
    this.answered.set(callId, { text: result.modelText })
    return false
  }

  /** The call's answer: the one its approval check kept, or (approved) its waiting call
   * approved and the cell observed again, or (never asked) the observation now. */
  async invoke(runContext, callId, observe, signal) {
    await this.denyRejected(runContext)
    const answered = this.answered.get(callId)
    if (answered) {
      this.answered.delete(callId)
      if ('error' in answered) throw answered.error
      return answered.text
    }
    const waiting = this.waiting.get(callId)
    if (!waiting) return (await observe(signal)).modelText
    this.waiting.delete(callId)
    await decided(this.session.approve(waiting.approval.id, waiting.edited))
    const result = await this.session.wait(waiting.approval.cellId, { signal })
    // A cell that waits on another call says so; the model's `wait` then asks for it.
    return waiting.output + result.modelText
  }
}

/** A decision taken, or already taken elsewhere (the cell goes on as decided there). */
async function decided(decision) {
  try {
    await decision
  } catch (error) {
    if (!(error instanceof ApprovalNotWaiting)) throw error
  }
}

/** Every `Calls` of this process, weakly: an interruption finds its cell's call in them. */
const REGISTRY = new Set()

function find(item) {
  const callId = item?.rawItem?.callId
  for (const ref of REGISTRY) {
    const calls = ref.deref()
    if (!calls) REGISTRY.delete(ref)
    else if (calls.waiting.has(callId)) return calls.waiting.get(callId)
  }
  return undefined
}

/**
 * The call of a cell an interruption (a RunToolApprovalItem of `exec` or `wait`) waits
 * on: its `tool`, `input`, `reason` and `id` (an Approval); `undefined` for another
 * interruption.
 */
function waitingCall(item) {
  return find(item)?.approval
}

/**
 * Approves interruption `item` of `state` (`state.approve(item)`) with `input` (a JSON
 * value) sent instead of the waiting call's own: the edited input.
 */
function approveWithInput(state, item, input) {
  const waiting = find(item)
  if (!waiting) throw new TypeError('the interruption is not a code-mode call waiting on a person')
  waiting.edited = input
  state.approve(item)
}

/**
 * `[exec, wait]`: function tools for an Agent whose cells call `tools`, in one Session
 * (`options.session`, else one opened with the other options). The array also has (not
 * enumerable) `session` and `close()`.
 */
function codeModeTools(tools = {}, options = {}) {
  const { tool } = require('@openai/agents')
  const { session: given, ...sessionOptions } = options
  const session = given ?? new Session({ ...sessionOptions, tools })
  const specs = Object.fromEntries(session.toolSpecs().map((spec) => [spec.name, spec]))
  const calls = new Calls(session)
  REGISTRY.add(new WeakRef(calls))
  const observeExec = ({ code }) => (signal) => session.exec(code, { signal })
  const observeWait = ({ cell_id: cellId, yield_time_ms: yieldTimeMs, terminate }) => (signal) =>
    terminate ? session.terminate(cellId) : session.wait(cellId, { yieldTimeMs, signal })
  const codeModeTool = (name, observeOf, spec) =>
    tool({
      name,
      description: specs[name].description,
      ...spec,
      needsApproval: async (runContext, input, callId) => {
        await calls.denyRejected(runContext)
        return calls.needsApproval(name, callId, observeOf(input))
      },
      isEnabled: async ({ runContext }) => {
        await calls.denyRejected(runContext)
        return true
      },
      execute: async (input, runContext, details) =>
        calls.invoke(runContext, details?.toolCall?.callId, observeOf(input), details?.signal),
    })
  const result = [
    codeModeTool('exec', observeExec, { parameters: EXEC_PARAMETERS, strict: true }),
    codeModeTool('wait', observeWait, { parameters: specs.wait.parameters, strict: false }),
  ]
  Object.defineProperty(result, 'session', { value: session, enumerable: false })
  Object.defineProperty(result, 'close', { value: () => session.close(), enumerable: false })
  return result
}

module.exports = { codeModeTools, waitingCall, approveWithInput }
