#!/usr/bin/env node
// Runs the TypeScript CLI through tsx, so `npx roost` works straight from a checkout without a build step.
// On one CPU a serving command starts again with the V8 flags for one CPU (bin/launcher.mjs): they can only
// be given when Node starts. This process then only passes signals on and exits as the server did.
import { spawn } from 'node:child_process'
import { url as inspectorUrl } from 'node:inspector'
import { constants } from 'node:os'
import { cpuBudget, LAUNCHER_ENV, missingNodeFlags } from './launcher.mjs'

const SERVING = new Set(['start', 'broker', 'api', 'bridge'])
const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP']

// under a debugger (--inspect) this process is the one being debugged, so it stays the server
const add = SERVING.has(process.argv[2] ?? '') && inspectorUrl() === undefined ? missingNodeFlags(cpuBudget(), process.execArgv) : []
if (add.length === 0) {
  const { register } = await import('tsx/esm/api')
  register()
  await import('../cli.ts')
} else {
  const server = spawn(process.execPath, [...process.execArgv, ...add, ...process.argv.slice(1)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, [LAUNCHER_ENV]: String(process.pid) },
  })
  for (const signal of FORWARDED) process.on(signal, () => server.kill(signal))
  server.on('error', err => {
    process.stderr.write(`roost: could not start ${process.execPath} ${add.join(' ')}: ${err.message}\n`)
    process.exit(1)
  })
  server.on('exit', (code, signal) => {
    process.exit(code ?? 128 + (signal === null ? 0 : constants.signals[signal] ?? 0))
  })
}
