// What the tests share: the repository's paths, a child Node process, the runtime
// processes a process started.
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const packageDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const repo = path.resolve(packageDir, '..')

/** Runs `source` as an ES module in a fresh Node process: its exit code, stdout and stderr. */
export function node(source, { cwd = packageDir, env = {} } = {}) {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--input-type=module', '-e', source], { cwd, env: { ...process.env, ...env } }, (error, stdout, stderr) =>
      resolve({ code: error ? error.code : 0, stdout, stderr }),
    )
  })
}

/** Runs a script file with Node: its exit code, stdout and stderr. */
export function nodeFile(file, { cwd = packageDir } = {}) {
  return new Promise((resolve) => {
    execFile(process.execPath, [file], { cwd }, (error, stdout, stderr) => resolve({ code: error ? error.code : 0, stdout, stderr }))
  })
}

/** The executables of this process's child processes. */
export function children(pid = process.pid) {
  const found = []
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    const list = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim()
    for (const child of list ? list.split(' ') : []) {
      try {
        found.push(path.basename(readFileSync(`/proc/${child}/cmdline`, 'utf8').split('\0')[0]))
      } catch {
        // gone already
      }
    }
  }
  return found
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
