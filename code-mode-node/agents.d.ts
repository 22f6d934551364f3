import type { FunctionTool } from '@openai/agents'
import type { Session, SessionOptions, Tools } from './index'

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
