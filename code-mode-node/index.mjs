// The ESM entry point of code-mode-runtime: the same API as index.cjs.
import api from './index.cjs'

export const {
  run,
  Session,
  toolSpecs,
  keptSessions,
  pendingApprovals,
  approve,
  deny,
  configureTracing,
  shutdownTracing,
  CodeModeError,
  RuntimeUnavailable,
  RuntimeLost,
  SessionClosed,
  InvalidArgument,
  CellError,
  LimitExceeded,
  ApprovalNotWaiting,
} = api
export default api
