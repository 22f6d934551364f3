// The ESM entry point of code-mode-runtime/agents.
import api from './agents.cjs'

export const { codeModeTools } = api
export default api
