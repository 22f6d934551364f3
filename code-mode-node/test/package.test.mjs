// The package as it ships: both tarballs of scripts/node-package.sh installed into a fresh
// directory, CommonJS and ESM; the platform package missing or of another version; a bare
// runtime name; `npm pack` alone; no
// runtime before the first cell; sessions kept in a state directory across processes.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import { children, node, nodeFile, packageDir } from './helpers.mjs'

const scratch = mkdtempSync(path.join(tmpdir(), 'code-mode-node-'))
after(() => rmSync(scratch, { recursive: true, force: true }))

function npm(args, cwd) {
  return new Promise((resolve) => {
    execFile('npm', args, { cwd }, (error, stdout, stderr) => resolve({ code: error ? error.code : 0, stdout, stderr }))
  })
}

test('the packed tarballs install offline into a fresh directory and run a cell, from CommonJS and ESM', async () => {
  const app = path.join(scratch, 'app')
  cpSync(path.join(packageDir, 'test', 'fixtures', 'app'), app, { recursive: true })
  const dist = path.join(packageDir, 'dist')
  const tarballs = readdirSync(dist).filter((name) => name.endsWith('.tgz')).map((name) => path.join(dist, name))
  assert.equal(tarballs.length, 2, 'scripts/node-package.sh packs two packages')
  const installed = await npm(['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], app)
  assert.equal(installed.code, 0, installed.stderr)
  const manifest = JSON.parse(readFileSync(path.join(app, 'node_modules', 'code-mode-runtime', 'package.json'), 'utf8'))
  assert.deepEqual(manifest.optionalDependencies, { 'code-mode-runtime-linux-x64-gnu': manifest.version })
  assert.equal(manifest.scripts, undefined, 'what users install runs no script of its own')
  // The installed platform package's runtime, not one the environment names.
  const inApp = { cwd: app, env: { CODE_MODE_BIN: '' } }
  const cjs = await node("import { createRequire } from 'node:module'; const { run } = createRequire(process.cwd() + '/')('code-mode-runtime'); console.log((await run('text(await tools.twice({n: 21}))', { tools: { twice: ({ n }) => n * 2 } })).text)", inApp)
  assert.equal(cjs.stdout.trim(), '42', cjs.stderr)
  const esm = await node("import { run } from 'code-mode-runtime'; console.log((await run('text(\"esm\")')).text)", inApp)
  assert.equal(esm.stdout.trim(), 'esm', esm.stderr)
  // A 20-line AI SDK agent with the mock model: the SDK from the repository's pinned install.
  symlinkSync(path.join(packageDir, 'node_modules', 'ai'), path.join(app, 'node_modules', 'ai'))
  const agent = await nodeFile(path.join(app, 'agent.mjs'), { cwd: app })
  assert.equal(agent.stdout.trim(), 'pear: 5; no stock data for pear', agent.stderr)
})

test('without its platform package the first use is a RuntimeUnavailable that says what to install', async () => {
  const bare = path.join(scratch, 'bare')
  for (const file of ['package.json', 'index.cjs', 'index.mjs', 'native.cjs']) cpSync(path.join(packageDir, file), path.join(bare, file))
  const loaded = await node(
    `import * as api from ${JSON.stringify(path.join(bare, 'index.mjs'))}
     console.log('imported')
     try { new api.Session() } catch (error) { console.log(error instanceof api.RuntimeUnavailable, error.message) }`,
    { cwd: bare, env: { CODE_MODE_BIN: '' } },
  )
  const [imported, thrown] = loaded.stdout.trim().split('\n')
  assert.equal(imported, 'imported', loaded.stderr)
  assert.match(thrown, /^true /)
  assert.match(thrown, /npm install code-mode-runtime-linux-x64-gnu/)
})

test('a platform package of another version is a RuntimeUnavailable that names both versions', async () => {
  const app = path.join(scratch, 'mismatch')
  for (const file of ['package.json', 'index.cjs', 'index.mjs', 'native.cjs']) cpSync(path.join(packageDir, file), path.join(app, file))
  const shipped = path.join(packageDir, 'npm', 'linux-x64-gnu')
  const installed = path.join(app, 'node_modules', 'code-mode-runtime-linux-x64-gnu')
  mkdirSync(installed, { recursive: true })
  const manifest = JSON.parse(readFileSync(path.join(shipped, 'package.json'), 'utf8'))
  writeFileSync(path.join(installed, 'package.json'), JSON.stringify({ ...manifest, version: '0.0.9' }))
  for (const entry of ['code-mode-runtime.linux-x64-gnu.node', 'bin']) symlinkSync(path.join(shipped, entry), path.join(installed, entry))
  const loaded = await node(
    `import * as api from ${JSON.stringify(path.join(app, 'index.mjs'))}
     try { new api.Session(); console.log('opened') } catch (error) { console.log(error instanceof api.RuntimeUnavailable, error.message) }`,
    { cwd: app, env: { CODE_MODE_BIN: '' } },
  )
  const version = JSON.parse(readFileSync(path.join(packageDir, 'package.json'), 'utf8')).version
  assert.equal(
    loaded.stdout.trim(),
    `true the platform package code-mode-runtime-linux-x64-gnu is version 0.0.9, but code-mode-runtime is ${version}: install the same version of both (npm install code-mode-runtime-linux-x64-gnu@${version})`,
    loaded.stderr,
  )
})

test('a bare runtime name is a path from the working directory, never looked up on PATH', async () => {
  // A runtime on PATH under the bare name; the working directory has none.
  const onPath = path.join(scratch, 'on-path')
  const elsewhere = path.join(scratch, 'elsewhere')
  mkdirSync(onPath)
  mkdirSync(elsewhere)
  symlinkSync(path.join(packageDir, 'npm', 'linux-x64-gnu', 'bin', 'code-mode-bin'), path.join(onPath, 'code-mode-bin'))
  const out = await node(
    `import { Session, RuntimeUnavailable } from ${JSON.stringify(path.join(packageDir, 'index.mjs'))}
     const session = new Session({ runtime: 'code-mode-bin' })
     try { await session.exec('text(1)'); console.log('ran') } catch (error) { console.log(error instanceof RuntimeUnavailable, error.message) }
     await session.close()`,
    { cwd: elsewhere, env: { PATH: `${onPath}:${process.env.PATH}`, CODE_MODE_BIN: '' } },
  )
  assert.match(out.stdout, /^true /, out.stderr)
  assert.ok(out.stdout.includes(path.join(elsewhere, 'code-mode-bin')), out.stdout)
})

test('npm pack in the package directory stops and says to run scripts/node-package.sh', async () => {
  const packed = await npm(['pack', '--pack-destination', scratch], packageDir)
  assert.notEqual(packed.code, 0)
  assert.match(packed.stderr, /scripts\/node-package\.sh/)
  assert.deepEqual(readdirSync(scratch).filter((name) => name.endsWith('.tgz')), [])
})

test('a process that only loads the package and opens a session starts no runtime; its first cell does', async () => {
  const helpers = JSON.stringify(path.join(packageDir, 'test', 'helpers.mjs'))
  const out = await node(`
    import { Session, toolSpecs } from 'code-mode-runtime'
    import { children } from ${helpers}
    toolSpecs({})
    const session = new Session()
    await new Promise((resolve) => setTimeout(resolve, 300)) // time enough for a runtime to start
    console.log(JSON.stringify(children()))
    await session.exec('text(1)')
    console.log(JSON.stringify(children()))
    await session.close()`)
  const [before, afterCell] = out.stdout.trim().split('\n').map((line) => JSON.parse(line))
  assert.deepEqual(before, [], out.stderr)
  assert.deepEqual(afterCell, ['code-mode-bin'])
  assert.deepEqual(children(), [], 'the test process itself started none')
})

test('a session kept in a stateDir is taken back by another process with its stored values', async () => {
  const dir = path.join(scratch, 'state')
  const first = await node(`
    import { Session } from 'code-mode-runtime'
    const session = await Session.open({ stateDir: ${JSON.stringify(dir)}, sessionId: 'agent-1' })
    await session.exec('store("plan", ["read", "write"])')
    await session.close()
    console.log('kept')`)
  assert.equal(first.stdout.trim(), 'kept', first.stderr)
  const second = await node(`
    import { Session, keptSessions } from 'code-mode-runtime'
    console.log(JSON.stringify(keptSessions(${JSON.stringify(dir)})))
    const session = await Session.open({ stateDir: ${JSON.stringify(dir)}, sessionId: 'agent-1' })
    console.log((await session.exec('text(load("plan").join(","))')).text)
    await session.delete()`)
  assert.deepEqual(second.stdout.trim().split('\n'), ['["agent-1"]', 'read,write'], second.stderr)
})
