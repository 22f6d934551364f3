import type { FunctionTool, RunState, RunToolApprovalItem } from '@openai/agents'
import type { Approval, Session, SessionOptions, Tools } from './index'

/** The Agent tools `exec` and `wait`, with the session they run cells in. */
export type CodeModeAgentTools = FunctionTool<any, any, string>[] & {
  /** The session every cell of these tools runs in (not enumerable). */
  readonly session: Session
  /** Closes the session. */
  close(): Promise<void>
}

/** `exec` and `wait` as function tools of an OpenAI Agents SDK Agent, whose cells call `tools`. */
export declare function codeModeTools(
  tools?: Tools,
  options?: Omit<SessionOptions, 'tools'> & { session?: Session },
): CodeModeAgentTools

/**
 * The call of a cell an interruption (a `RunToolApprovalItem` of `exec` or `wait`) waits
 * on: its tool, input, reason and id; `undefined` for another interruption.
 */
export declare function waitingCall(item: RunToolApprovalItem): Approval | undefined

/**
 * Approves interruption `item` of `state` (`state.approve(item)`) with `input` (a JSON
 * value) sent instead of the waiting call's own: the edited input.
 */
export declare function approveWithInput(state: RunState<any, any>, item: RunToolApprovalItem, input: unknown): void
