import type { StopCondition, Tool as AiTool } from 'ai'
import type { Session, SessionOptions, Tools } from './index'

/** The AI SDK tools `exec` and `wait`, with the session they run cells in. */
export type CodeModeAiTools = {
  exec: AiTool<{ code: string }, string>
  wait: AiTool<{ cell_id: string; yield_time_ms?: number; max_tokens?: number; terminate?: boolean }, string>
} & {
  /** The session every cell of these tools runs in (not enumerable). */
  readonly session: Session
  /** Closes the session. */
  close(): Promise<void>
  /**
   * A stop condition (`stopWhen`): true once a step's `exec` or `wait` left its cell
   * waiting on a person's approval. Decide with `session.approve`/`deny`; the model's
   * next `wait` reads on.
   */
  readonly awaitingApproval: StopCondition<any>
}

/** `exec` and `wait` as AI SDK tools whose cells call `tools` (AI SDK tools work as they are). */
export declare function codeModeTools(
  tools?: Tools,
  options?: Omit<SessionOptions, 'tools'> & { session?: Session },
): CodeModeAiTools
