// Child processes of the benchmark: the broker under test and the load generator each run in their own
// process, pinned to their own core, and answer the orchestrator over Node's IPC channel.

import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { missingNodeFlags } from '../bin/launcher.mjs'

/** A request from the orchestrator to a child, and the child's answer. */
export interface Request { readonly id: number, readonly op: string, readonly arg?: unknown }
export type Reply = { readonly id: number, readonly ok: true, readonly result: unknown } | { readonly id: number, readonly ok: false, readonly error: string }
/** Sent once by a child when it is ready to take requests. */
export interface Hello { readonly hello: unknown }

// How long a child may take to start (PGlite opening a data dir and rebuilding presence for 10k
// devices is the slow case) and to answer one request (an idle benchmark opens 10k connections).
const START_TIMEOUT_MS = 120_000
const STOP_GRACE_MS = 10_000

const TSX_IMPORT = ['--import', 'tsx']

/** Cores to pin to: the broker gets one and the load generator another, when there are two. */
export interface Placement { readonly broker: string | undefined, readonly load: string | undefined }

export function placement (): Placement {
  const n = cpus().length
  if (n < 2 || !existsSync('/usr/bin/taskset')) return { broker: undefined, load: undefined }
  // core 0 for the broker, core 1 for the load generator; anything else (Postgres, the orchestrator) floats
  return { broker: '0', load: '1' }
}

export interface SpawnSpec {
  readonly command: string
  readonly args: readonly string[]
  readonly core?: string | undefined
  // open files wanted (10k sockets need more than the common 1024); raised with `ulimit -n` in a shell
  readonly fdLimit?: number
  readonly env?: Readonly<Record<string, string>>
  readonly ipc?: boolean
}

export function spawnWrapped (spec: SpawnSpec): ChildProcess {
  const argv: string[] = []
  if (spec.core !== undefined) argv.push('taskset', '-c', spec.core)
  argv.push(spec.command, ...spec.args)
  // `exec` keeps one pid from the shell to the broker, so /proc/<pid> is the broker's own
  const script = spec.fdLimit === undefined
    ? 'exec "$@"'
    : 'ulimit -n "$0" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"'
  const shellArgs = ['-c', script, String(spec.fdLimit ?? 'sh'), ...argv]
  return spawn('/bin/sh', shellArgs, {
    stdio: spec.ipc === true ? ['ignore', 'inherit', 'inherit', 'ipc'] : ['ignore', 'inherit', 'inherit'],
    env: spec.env ?? process.env,
  })
}

/** The parent's handle on a Node child that speaks the Request/Reply protocol. */
export class NodeChild {
  private nextId = 1
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void }>()
  private exited = false

  private constructor (readonly proc: ChildProcess, readonly name: string) {
    proc.on('message', (msg: Reply | Hello) => {
      if ('hello' in msg) return
      const w = this.waiting.get(msg.id)
      if (w === undefined) return
      this.waiting.delete(msg.id)
      if (msg.ok) w.resolve(msg.result)
      else w.reject(new Error(`${name}: ${msg.error}`))
    })
    proc.once('exit', (code, signal) => {
      this.exited = true
      for (const w of this.waiting.values()) w.reject(new Error(`${name} exited (code ${code}, signal ${signal})`))
      this.waiting.clear()
    })
    children.add(this)
  }

  /** Starts `bench/<script>` under tsx and resolves with the child and its hello once it is ready. */
  static async start<H> (script: string, opts: { name: string, core?: string | undefined, fdLimit?: number, env?: Readonly<Record<string, string>>, nodeArgs?: readonly string[] }): Promise<{ child: NodeChild, hello: H }> {
    const path = fileURLToPath(new URL(script, import.meta.url))
    // pinned to one core, a Node child gets the flags `roost` itself takes on one CPU (bin/launcher.mjs), so
    // Roost, bare Aedes and the load generator all run as they would there
    const pinned = opts.core === undefined ? [] : missingNodeFlags(opts.core.split(',').length, opts.nodeArgs ?? [])
    const proc = spawnWrapped({
      command: process.execPath,
      args: [...TSX_IMPORT, ...pinned, ...(opts.nodeArgs ?? []), path],
      core: opts.core,
      ...(opts.fdLimit !== undefined ? { fdLimit: opts.fdLimit } : {}),
      ...(opts.env !== undefined ? { env: opts.env } : {}),
      ipc: true,
    })
    const child = new NodeChild(proc, opts.name)
    const hello = await new Promise<H>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${opts.name} did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS)
      const onMessage = (msg: Reply | Hello): void => {
        if (!('hello' in msg)) return
        clearTimeout(timer)
        proc.off('message', onMessage)
        proc.off('exit', onExit)
        resolve(msg.hello as H)
      }
      const onExit = (code: number | null): void => {
        clearTimeout(timer)
        reject(new Error(`${opts.name} exited with code ${code} before it was ready`))
      }
      proc.on('message', onMessage)
      proc.once('exit', onExit)
    }).catch(err => { child.kill(); throw err })
    return { child, hello }
  }

  get pid (): number {
    return this.proc.pid as number
  }

  call<T> (op: string, arg?: unknown): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} has exited`))
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: v => resolve(v as T), reject })
      this.proc.send({ id, op, arg } satisfies Request)
    })
  }

  /** Asks the child to stop (it closes what it opened), then kills it if it lingers. */
  async stop (): Promise<void> {
    if (this.exited) { children.delete(this); return }
    const exited = new Promise<void>(resolve => this.proc.once('exit', () => resolve()))
    await this.call('stop').catch(() => {})
    // the child exits when its channel closes (serveParent), which also flushes a --cpu-prof profile
    if (this.proc.connected) this.proc.disconnect()
    const timer = setTimeout(() => this.kill(), STOP_GRACE_MS)
    await exited
    clearTimeout(timer)
    children.delete(this)
  }

  kill (): void {
    if (!this.exited) this.proc.kill('SIGKILL')
    children.delete(this)
  }
}

// Everything the orchestrator started is undone if it stops early: children are killed when it exits
// (an error), and on ^C or SIGTERM the async cleanups (a Postgres server, data dirs) run first.
const children = new Set<{ kill (): void }>()
const cleanups = new Set<() => Promise<void>>()
export function killOnExit (c: { kill (): void }): void { children.add(c) }
export function forget (c: { kill (): void }): void { children.delete(c) }
process.once('exit', () => { for (const c of children) c.kill() })

/** Registers a cleanup for an interruption; returns the function that unregisters it once done normally. */
export function cleanUpOnInterrupt (cleanup: () => Promise<void>): () => void {
  cleanups.add(cleanup)
  return () => { cleanups.delete(cleanup) }
}

export async function cleanUpAll (): Promise<void> {
  for (const c of children) c.kill()
  await Promise.allSettled([...cleanups].map(f => f()))
}

/** Child side: answers requests with `handlers`, then says hello. Exits when the orchestrator goes away. */
export function serveParent (handlers: Readonly<Record<string, (arg: unknown) => unknown>>, hello: unknown): void {
  const send = process.send?.bind(process)
  if (send === undefined) throw new Error('a benchmark child must be started with an IPC channel (bench/run.ts does this)')
  process.on('message', (msg: Request) => {
    const handler = handlers[msg.op]
    if (handler === undefined) { send({ id: msg.id, ok: false, error: `unknown op ${msg.op}` } satisfies Reply); return }
    Promise.resolve().then(() => handler(msg.arg)).then(
      result => send({ id: msg.id, ok: true, result: result ?? null } satisfies Reply),
      (err: unknown) => send({ id: msg.id, ok: false, error: err instanceof Error ? err.stack ?? err.message : String(err) } satisfies Reply),
    )
  })
  process.once('disconnect', () => process.exit(0))
  send({ hello } satisfies Hello)
}

// USER_HZ: the unit of utime/stime in /proc/<pid>/stat on Linux
const CLOCK_TICKS_PER_SECOND = 100

/** CPU seconds (user + system) a process has used so far, from /proc. */
export function processCpuSeconds (pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // fields after the parenthesised command name; utime and stime are the 14th and 15th of the whole line
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND
}

/** Cores a broker and this load process kept busy on average, from /proc and process.cpuUsage(). */
export interface CpuShares { readonly broker: number, readonly load: number }

/** Measures CpuShares from its construction to each read(). */
export class CpuMeter {
  private readonly brokerStart: number
  private readonly loadStart = process.cpuUsage()
  private readonly t0 = performance.now()
  constructor (private readonly brokerPid: number) { this.brokerStart = processCpuSeconds(brokerPid) }
  read (): CpuShares {
    const seconds = (performance.now() - this.t0) / 1000
    const load = process.cpuUsage(this.loadStart)
    const round = (x: number): number => Math.round(x * 100) / 100
    return { broker: round((processCpuSeconds(this.brokerPid) - this.brokerStart) / seconds), load: round((load.user + load.system) / 1e6 / seconds) }
  }
}

/** How late this process's event loop ran ready work (timers, sockets) over a window, in ms. */
export interface LoopDelay { readonly p50: number, readonly p99: number, readonly max: number }

// the sampling timer's period: stalls much shorter than this are not seen, and it costs ~100 wake-ups/s
const LOOP_DELAY_RESOLUTION_MS = 10

/** Measures this process's event-loop delay from start() to read() (off in between, so it costs nothing then). */
export function loopDelayMeter (): { start (): void, read (): LoopDelay } {
  const h = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS })
  // the histogram holds the sampling timer's whole period; its lateness is what is beyond the resolution
  const ms = (ns: number): number => Math.max(0, Math.round(ns / 1e4 - LOOP_DELAY_RESOLUTION_MS * 100) / 100)
  return {
    start () { h.reset(); h.enable() },
    read () {
      h.disable()
      return { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) }
    },
  }
}

/** Resident set size of a process, from /proc (the same measure for Node brokers and Mosquitto). */
export function rssBytes (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(status)
  if (m === null) throw new Error(`no VmRSS for pid ${pid}`)
  return Number(m[1]) * 1024
}

// one port picker for tests and benchmarks (see its comment: ports below the ephemeral range)
export { freePort } from '../test/postgres.ts'

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** The load generator (bench/load.ts) on its own core; `nodeArgs` e.g. to profile it too. */
export async function startLoadGenerator (placement: Placement, opts: { fdLimit?: number, nodeArgs?: readonly string[] } = {}): Promise<NodeChild> {
  const { child } = await NodeChild.start<{ pid: number }>('./load.ts', { name: 'load generator', core: placement.load, ...opts })
  return child
}
