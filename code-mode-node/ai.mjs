// The ESM entry point of code-mode-runtime/ai.
import api from './ai.cjs'

export const { codeModeTools } = api
export default api
