// Mosquitto as a reference broker, when installed: a temporary config on a free loopback port.

import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ChildProcess } from 'node:child_process'
import { cleanUpOnInterrupt, forget, freePort, killOnExit, sleep, spawnWrapped } from './process.ts'

export const MOSQUITTO = '/usr/sbin/mosquitto'

// Debian's 2.0.11 stalls QoS 1 many-to-one delivery with its default inflight window (20); 0 = unlimited.
// Queued messages: a benchmark keeps thousands in the pipeline, more than the default 1000 per client.
const MOSQUITTO_CONFIG = (port: number): string => `
listener ${port} 127.0.0.1
allow_anonymous true
max_inflight_messages 0
max_queued_messages 1000000
set_tcp_nodelay true
persistence false
log_dest stderr
log_type error
log_type warning
`
const READY_TIMEOUT_MS = 10_000
const READY_POLL_MS = 50

export function mosquittoMissing (): string | undefined {
  return existsSync(MOSQUITTO) ? undefined : `${MOSQUITTO} not found (apt-get install mosquitto)`
}

export interface Mosquitto {
  readonly port: number
  readonly pid: number
  stop (): Promise<void>
}

export async function startMosquitto (opts: { core: string | undefined, fdLimit: number }): Promise<Mosquitto> {
  const dir = mkdtempSync(join(tmpdir(), 'roost-bench-mosquitto-'))
  const port = await freePort()
  const file = join(dir, 'mosquitto.conf')
  writeFileSync(file, MOSQUITTO_CONFIG(port))
  const proc: ChildProcess = spawnWrapped({ command: MOSQUITTO, args: ['-c', file], core: opts.core, fdLimit: opts.fdLimit })
  const handle = { kill: () => { proc.kill('SIGKILL') } }
  killOnExit(handle)
  const registered = cleanUpOnInterrupt(async () => { rmSync(dir, { recursive: true, force: true }) })
  const deadline = Date.now() + READY_TIMEOUT_MS
  while (!await canConnect(port)) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL')
      forget(handle)
      rmSync(dir, { recursive: true, force: true })
      registered()
      throw new Error(proc.exitCode !== null ? `mosquitto exited with code ${proc.exitCode}` : `mosquitto did not listen on ${port} within ${READY_TIMEOUT_MS} ms`)
    }
    await sleep(READY_POLL_MS)
  }
  return {
    port,
    pid: proc.pid as number,
    async stop () {
      const exited = new Promise<void>(resolve => proc.exitCode !== null ? resolve() : proc.once('exit', () => resolve()))
      proc.kill('SIGTERM')
      await exited
      forget(handle)
      rmSync(dir, { recursive: true, force: true })
      registered()
    },
  }
}

function canConnect (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const s = connect({ port, host: '127.0.0.1' })
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}
