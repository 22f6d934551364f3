// Traces out of the Node process: configureTracing sends the spans of a call, its cell and
// its nested calls over OTLP/HTTP (JSON here, to a receiver this test runs), each call
// hanging under the traceparent it was given.
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { test } from 'node:test'
import { Session, configureTracing, shutdownTracing } from 'code-mode-runtime'

test("a call's spans, its cell's and its nested call's, hang under the caller's traceparent", async () => {
  const bodies = []
  const server = createServer((request, response) => {
    let body = ''
    request.on('data', (chunk) => (body += chunk))
    request.on('end', () => {
      if (request.url === '/v1/traces') bodies.push(JSON.parse(body))
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  const parent = '00f067aa0ba902b7'
  try {
    assert.equal(configureTracing({ endpoint: `http://127.0.0.1:${server.address().port}`, protocol: 'http/json', serviceName: 'node-test' }), true)
    const session = new Session({ tools: { ping: () => 'pong' } })
    const result = await session.exec('text(await tools.ping())', { traceparent: `00-${traceId}-${parent}-01` })
    assert.equal(result.text, 'pong')
    await session.close()
    await shutdownTracing()
  } finally {
    server.close()
  }
  const spans = bodies.flatMap((body) => body.resourceSpans.flatMap((resource) => resource.scopeSpans.flatMap((scope) => scope.spans)))
  const ours = spans.filter((span) => span.traceId.toLowerCase() === traceId)
  assert.ok(ours.length >= 2, `spans of the trace: ${JSON.stringify(spans.map((span) => [span.name, span.traceId]))}`)
  const call = ours.find((span) => span.name === 'code_mode.node.call')
  assert.ok(call, `a call span among ${ours.map((span) => span.name).join(', ')}`)
  assert.equal(call.parentSpanId.toLowerCase(), parent)
  const names = ours.map((span) => span.name)
  for (const name of ['code_mode.cell', 'code_mode.tool_call']) assert.ok(names.includes(name), `${name} among ${names.join(', ')}`)
})
