// The ESM entry point of code-mode-runtime/agents.
import api from './agents.cjs'

export const { codeModeTools, waitingCall, approveWithInput } = api
export default api
