// The launcher (bin/roost.mjs) on one CPU: it starts the server again with --single-threaded-gc, passes
// signals on, exits as the server did, and a launcher killed outright takes its server with it. The real
// command, pinned to one core with taskset as a one-CPU machine would run it.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { cpuBudget, gcMode, missingNodeFlags, parseCpuMax } from '../bin/launcher.mjs'
import { eventually, freshDataDir, testEnv } from './harness.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const TASKSET = '/usr/bin/taskset'
// starting on one core while the rest of the suite runs on both takes a while
const READY_MS = 90_000

describe('one-CPU flags', () => {
  it('reads a cgroup v2 cpu.max as CPUs, unlimited or unreadable as no limit', () => {
    expect(parseCpuMax('max 100000\n')).toBeUndefined()
    expect(parseCpuMax('150000 100000\n')).toBe(1.5)
    expect(parseCpuMax('garbage')).toBeUndefined()
    expect(parseCpuMax(undefined)).toBeUndefined()
    expect(cpuBudget('50000 100000')).toBe(1) // half a CPU is still one CPU's worth of threads
    expect(cpuBudget('max 100000')).toBe(availableParallelism())
    expect(cpuBudget('100000000 100000')).toBe(availableParallelism()) // a limit above the CPUs there are
  })
  it('adds --single-threaded-gc on one CPU only, and never over a choice made either way', () => {
    expect(missingNodeFlags(1, [])).toEqual(['--single-threaded-gc'])
    expect(missingNodeFlags(2, [])).toEqual([])
    expect(missingNodeFlags(1, ['--single-threaded-gc'])).toEqual([])
    expect(missingNodeFlags(1, ['--no-single-threaded-gc'])).toEqual([])
    expect(gcMode(['--single-threaded-gc'])).toBe('single-threaded')
    expect(gcMode([])).toBe('concurrent')
  })
})

interface Launched {
  readonly launcher: ChildProcess
  readonly ready: Record<string, unknown>
  readonly serverPid: number
  readonly exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  output (): string
}

const dirs: string[] = []
const running: ChildProcess[] = []
afterAll(() => {
  for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL')
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
})

/** `taskset -c 0 node [nodeArgs] bin/roost.mjs start`, until its "roost is ready" line. */
async function launchOnOneCore (nodeArgs: readonly string[] = []): Promise<Launched> {
  const dataDir = freshDataDir()
  dirs.push(dataDir)
  const launcher = spawn(TASKSET, ['-c', '0', process.execPath, ...nodeArgs, 'bin/roost.mjs', 'start'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...testEnv(dataDir, { ROOST_LOG_LEVEL: 'info' }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.push(launcher)
  let out = ''
  launcher.stdout!.on('data', (b: Buffer) => { out += b.toString() })
  launcher.stderr!.on('data', (b: Buffer) => { out += b.toString() })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => launcher.once('exit', (code, signal) => resolve({ code, signal })))
  const ready = await eventually(() => {
    if (launcher.exitCode !== null) throw new Error(`roost exited before it was ready:\n${out}`)
    const line = out.split('\n').find(l => l.includes('"roost is ready"'))
    return line === undefined ? undefined : JSON.parse(line) as Record<string, unknown>
  }, READY_MS, 'roost is ready')
  return { launcher, ready, serverPid: serverUnder(launcher.pid as number), exited, output: () => out }
}

/** The launcher's Node child running bin/roost.mjs (taskset execs node, so the launcher's pid is Node's), or its own pid when there is none. */
function serverUnder (launcherPid: number): number {
  const children = readFileSync(`/proc/${launcherPid}/task/${launcherPid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
  return children.find(pid => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('bin/roost.mjs')) ?? launcherPid
}

describe.skipIf(!existsSync(TASKSET))('roost start on one CPU', () => {
  if (!existsSync(TASKSET)) console.log(`launcher test skipped: ${TASKSET} is missing (util-linux)`)

  it('runs the server with --single-threaded-gc, passes SIGTERM on and exits as the server did', async () => {
    const run = await launchOnOneCore()
    expect(run.serverPid).not.toBe(run.launcher.pid)
    expect(run.ready.cpus).toBe(1)
    expect(run.ready.gc).toBe('single-threaded')
    expect(readFileSync(`/proc/${run.serverPid}/cmdline`, 'utf8').split('\0')).toContain('--single-threaded-gc')
    const health = await fetch(`http://127.0.0.1:${String(run.ready.http)}/health`)
    expect(health.status).toBe(200)
    run.launcher.kill('SIGTERM')
    expect(await run.exited).toEqual({ code: 0, signal: null })
    expect(run.output()).toContain('"signal":"SIGTERM"')
    expect(existsSync(`/proc/${run.serverPid}`)).toBe(false)
  }, READY_MS + 30_000)

  it('a launcher killed with SIGKILL takes its server with it', async () => {
    const run = await launchOnOneCore()
    run.launcher.kill('SIGKILL')
    await run.exited
    await eventually(() => existsSync(`/proc/${run.serverPid}`) ? undefined : true, 20_000, 'the server to stop')
    // the ports are free again: nothing answers on the server's HTTP port
    await expect(fetch(`http://127.0.0.1:${String(run.ready.http)}/health`)).rejects.toThrow()
  }, READY_MS + 30_000)

  it('under a debugger (--inspect) the launcher stays the server, with V8\'s default GC', async () => {
    const run = await launchOnOneCore(['--inspect=127.0.0.1:0'])
    expect(run.serverPid).toBe(run.launcher.pid)
    expect(run.ready.gc).toBe('concurrent')
    run.launcher.kill('SIGTERM')
    expect(await run.exited).toEqual({ code: 0, signal: null })
  }, READY_MS + 30_000)

  it('on more than one CPU the launcher is the server itself', () => {
    if (availableParallelism() < 2) {
      console.log('launcher test: this machine has one CPU, so there is no unpinned case to check')
      return
    }
    const r = spawnSync(process.execPath, ['--input-type=module', '-e',
      "import { cpuBudget, missingNodeFlags } from './bin/launcher.mjs'; console.log(JSON.stringify(missingNodeFlags(cpuBudget(), process.execArgv)))"],
    { cwd: ROOT, encoding: 'utf8' })
    expect(r.stderr).toBe('')
    expect(JSON.parse(r.stdout)).toEqual([])
  })
})
