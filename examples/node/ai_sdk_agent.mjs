// An AI SDK agent in code mode, with the SDK's offline mock model (ai/test): the model
// writes one cell that calls two async JS tools, one of which throws; the cell catches
// the error, and the model answers with what the cell printed.
//   node examples/node/ai_sdk_agent.mjs
import { generateText, stepCountIs } from 'ai'
import { MockLanguageModelV2 } from 'ai/test'
import { z } from 'zod'
import { codeModeTools } from 'code-mode-runtime/ai'

const calls = []
const tools = codeModeTools({
  get_weather: {
    description: 'The weather in a city.',
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      calls.push(city)
      await new Promise((resolve) => setTimeout(resolve, 20))
      return { city, celsius: city === 'Paris' ? 18 : 11 }
    },
  },
  get_alerts: {
    description: 'Weather alerts for a city.',
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      throw new Error(`no alert service for ${city}`)
    },
  },
})

const cell = `
const [paris, oslo] = await Promise.all([tools.get_weather({city: "Paris"}), tools.get_weather({city: "Oslo"})]);
let alerts;
try { alerts = await tools.get_alerts({city: "Oslo"}); } catch (error) { alerts = "unavailable (" + error + ")"; }
text(\`Paris \${paris.celsius}°C, Oslo \${oslo.celsius}°C; alerts: \${alerts}\`);
`
const usage = { inputTokens: 10, outputTokens: 10, totalTokens: 20 }
let step = 0
const model = new MockLanguageModelV2({
  doGenerate: async ({ prompt }) => {
    step += 1
    if (step === 1) {
      return {
        content: [{ type: 'tool-call', toolCallId: 'call-1', toolName: 'exec', input: JSON.stringify({ code: cell }) }],
        finishReason: 'tool-calls',
        usage,
        warnings: [],
      }
    }
    const output = prompt.at(-1).content[0].output // the exec tool's result: what the model reads
    return { content: [{ type: 'text', text: `The cell said: ${output.value}` }], finishReason: 'stop', usage, warnings: [] }
  },
})

try {
  const { text } = await generateText({ model, tools, stopWhen: stepCountIs(3), prompt: 'Weather in Paris and Oslo?' })
  console.log(text)
  console.log(`get_weather was called for ${calls.sort().join(' and ')}`)
} finally {
  await tools.close()
}
