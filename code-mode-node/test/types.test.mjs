// The TypeScript declarations (native.d.ts, written by napi-rs from the Rust side, and
// the JavaScript layer's index.d.ts, ai.d.ts, agents.d.ts) type-check an app's use of the
// package (fixtures/types.mts) with TypeScript (pinned in package-lock.json), strictly.
// Declaration files are parsed, not checked within (--skipLibCheck: the SDKs' own have
// errors against this @types/node, and checking them all took 30 s).
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'
import { packageDir } from './helpers.mjs'

test("the package's declarations type-check an app's use of it, strictly", async () => {
  const tsc = path.join(packageDir, 'node_modules', 'typescript', 'bin', 'tsc')
  const args = ['--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--lib', 'es2022,esnext.disposable,dom', '--types', 'node', 'test/fixtures/types.mts']
  assert.ok(fs.existsSync(tsc), `tsc is installed (${tsc})`)
  const { code, output } = await new Promise((resolve) =>
    execFile(process.execPath, [tsc, ...args], { cwd: packageDir }, (error, stdout, stderr) =>
      resolve({ code: error ? (error.code ?? 1) : 0, output: stdout + stderr })),
  )
  assert.equal(output.trim(), '', 'tsc reported errors')
  assert.equal(code, 0, 'tsc exited with an error')
})
