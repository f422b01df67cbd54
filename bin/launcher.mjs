// For the launcher (bin/roost.mjs): how many CPUs Roost may use, and the V8 flags that follow from it.
//
// V8 runs parts of garbage collection (marking, sweeping, scavenging) and of compilation on helper
// threads; Node starts four. With more than one CPU they run beside the event loop. With one CPU (a
// one-vCPU VM, a container limited to one CPU, a process pinned with taskset) they take turns with the
// event loop on that CPU instead, and a collection cycle holds every message waiting: in the voice
// benchmark, Roost pinned to one core, the event loop's worst delay in a 40 s window was 33–63 ms, all
// of it waiting on the run queue behind those threads (/proc/thread-self/schedstat). With
// --single-threaded-gc, V8 does the same work on the main thread in its own small incremental steps:
// worst delay 12–23 ms, and the first-reply p99 from 324–346 ms to 318–321 ms, over three runs each.
// The flag must be given when Node starts, so the launcher (bin/roost.mjs) starts Roost again with it.
// Plain JavaScript (types in launcher.d.mts) so that the launcher can decide before it loads tsx.

import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'

export const ONE_CPU_NODE_FLAGS = Object.freeze(['--single-threaded-gc'])
// Set by the launcher for the server it starts again: the server stops when the launcher's IPC channel
// closes, so a launcher killed outright (SIGKILL) does not leave a server holding the ports.
export const LAUNCHER_ENV = 'ROOST_LAUNCHER_PID'

/**
 * CPUs this process may use: the CPUs it may be scheduled on (taskset, cpusets; Node's
 * availableParallelism) and, inside a cgroup v2 with a CPU limit (docker --cpus, a Kubernetes limit),
 * that limit rounded up. The libuv of Node 20 reads affinity only, so the limit is read here.
 */
export function cpuBudget (cgroupCpuMax = readCgroupCpuMax()) {
  const schedulable = availableParallelism()
  const limit = parseCpuMax(cgroupCpuMax)
  return limit === undefined ? schedulable : Math.max(1, Math.min(schedulable, Math.ceil(limit)))
}

/** A cgroup v2 `cpu.max` ("max 100000", "150000 100000") as CPUs, undefined when unlimited or unreadable. */
export function parseCpuMax (text) {
  if (text === undefined) return undefined
  const [quota, period] = text.trim().split(/\s+/)
  const q = Number(quota)
  const p = Number(period)
  if (quota === 'max' || !Number.isFinite(q) || !Number.isFinite(p) || q <= 0 || p <= 0) return undefined
  return q / p
}

function readCgroupCpuMax () {
  try {
    return readFileSync('/sys/fs/cgroup/cpu.max', 'utf8')
  } catch {
    return undefined
  }
}

/**
 * The flags from ONE_CPU_NODE_FLAGS that a process on `cpus` CPUs should add to its own `execArgv`; a
 * flag given either way already (`--single-threaded-gc`, `--no-single-threaded-gc`) is left as given.
 */
export function missingNodeFlags (cpus, execArgv) {
  if (cpus > 1) return []
  return ONE_CPU_NODE_FLAGS.filter(f => !execArgv.includes(f) && !execArgv.includes(`--no-${f.slice(2)}`))
}

/** How V8 collects garbage in this process, for the start-up log line. */
export function gcMode (execArgv = process.execArgv) {
  return execArgv.includes('--single-threaded-gc') ? 'single-threaded' : 'concurrent'
}
