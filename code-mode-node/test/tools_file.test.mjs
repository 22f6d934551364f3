// A tools file's tools beside the JS functions: a command tool and an MCP server (the
// deterministic fixture server of the CLI's tests, over stdio), as the `code-mode` CLI
// reads the same file; and the built-ins on request.
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import { InvalidArgument, Session } from 'code-mode-runtime'
import { repo } from './helpers.mjs'

const fixture = path.join(repo, 'target', 'debug', 'examples', 'mcp-fixture')
const scratch = mkdtempSync(path.join(tmpdir(), 'code-mode-node-tools-'))
after(() => rmSync(scratch, { recursive: true, force: true }))

function toolsFile() {
  assert.ok(existsSync(fixture), `${fixture} is missing: scripts/node-tests.sh builds it`)
  const file = path.join(scratch, 'tools.toml')
  writeFileSync(
    file,
    `[[tool]]
name = "shout"
description = "Upper-cases the text it is given."
command = ["python3", "-c", "import json, sys; print(json.dumps(json.load(sys.stdin)['text'].upper()))"]
[tool.input_schema]
type = "object"
required = ["text"]
[tool.input_schema.properties.text]
type = "string"

[[mcp_server]]
name = "fx"
command = [${JSON.stringify(fixture)}]
`,
  )
  return file
}

test('command tools and MCP servers run beside JS tools', async () => {
  const session = await Session.open({ tools: { add: ({ a, b }) => a + b }, toolsFile: toolsFile() })
  try {
    const description = session.toolSpecs()[0].description
    for (const name of ['shout', 'mcp__fx__echo', 'add']) assert.match(description, new RegExp(name))
    const result = await session.exec(`
      text(await tools.shout({text: 'hi'}));
      text(JSON.stringify(await tools.mcp__fx__echo({text: 'from mcp'})));
      text(await tools.add({a: 1, b: 2}));`)
    const [shout, echo, add] = result.text.split('\n')
    assert.equal(shout, 'HI')
    assert.match(echo, /from mcp/)
    assert.equal(add, '3')
  } finally {
    await session.close()
  }
})

test('a bad tools file and a name clash are refused, naming them', async () => {
  const bad = path.join(scratch, 'bad.toml')
  writeFileSync(bad, "[[tool]]\nname = 'x'\ncommand = 3\n")
  await assert.rejects(Session.open({ toolsFile: bad }), (error) => error instanceof InvalidArgument && /bad\.toml/.test(error.message))
  await assert.rejects(
    Session.open({ tools: { shout: (text) => text }, toolsFile: toolsFile() }),
    (error) => error instanceof InvalidArgument && /shout/.test(error.message),
  )
})

test('the built-ins are offered on request', async () => {
  const note = path.join(scratch, 'note.txt')
  writeFileSync(note, 'one\ntwo\n')
  const session = await Session.open({ builtins: ['fs'] })
  try {
    const result = await session.exec(`const r = await tools.read_file({path: ${JSON.stringify(note)}}); text(JSON.stringify(r))`)
    assert.match(result.text, /two/)
  } finally {
    await session.close()
  }
})
