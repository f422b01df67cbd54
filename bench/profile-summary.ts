// Summarises a V8 .cpuprofile (BENCH_PROFILE=1 writes them under bench/results/profiles/): self and total
// time per function, and self time per package or Roost file, to see where a broker spends a message.
// Usage: npx tsx bench/profile-summary.ts <file.cpuprofile> [rows] [from-s to-s]
// With no window it prints a per-second busy timeline first, to find a benchmark case's window; with
// one (seconds since the profile started) it counts only the samples inside it.

import { readFileSync } from 'node:fs'

interface CallFrame { readonly functionName: string, readonly url: string, readonly lineNumber: number }
interface ProfileNode { readonly id: number, readonly callFrame: CallFrame, readonly hitCount?: number, readonly children?: readonly number[] }
interface Profile { readonly nodes: readonly ProfileNode[], readonly samples: readonly number[], readonly timeDeltas: readonly number[], readonly startTime: number }

const DEFAULT_ROWS = 30

function where (f: CallFrame): string {
  const url = f.url.replace(/^file:\/\//, '')
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (pkg !== null) return pkg[1] as string
  const roost = /\/work\/main\/(.*)$/.exec(url)
  if (roost !== null) return roost[1] as string
  if (url === '') return f.functionName.startsWith('(') ? f.functionName : '(native)'
  return url.startsWith('node:') ? 'node:' + url.slice(5).split('/')[0] : url
}

function label (f: CallFrame): string {
  return `${f.functionName === '' ? '(anonymous)' : f.functionName} ${where(f)}:${f.lineNumber + 1}`
}

const [file, rowsArg, fromArg, toArg] = process.argv.slice(2)
if (file === undefined) {
  console.error('usage: npx tsx bench/profile-summary.ts <file.cpuprofile> [rows] [from-s to-s]')
  process.exit(2)
}
const rows = Number(rowsArg ?? DEFAULT_ROWS)
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile

const byId = new Map(profile.nodes.map(n => [n.id, n]))
const isIdle = (id: number): boolean => byId.get(id)?.callFrame.functionName === '(idle)'
const US_PER_S = 1e6
const fromUs = fromArg === undefined ? 0 : Number(fromArg) * US_PER_S
const toUs = toArg === undefined ? Number.POSITIVE_INFINITY : Number(toArg) * US_PER_S

// sample time per node: each sample's delta belongs to the node sampled
const selfUs = new Map<number, number>()
const busyPerSecond: number[] = []
let t = 0
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i] as number
  const dt = profile.timeDeltas[i] ?? 0
  t += dt
  if (!isIdle(id)) busyPerSecond[Math.floor(t / US_PER_S)] = (busyPerSecond[Math.floor(t / US_PER_S)] ?? 0) + dt
  if (t < fromUs || t > toUs) continue
  selfUs.set(id, (selfUs.get(id) ?? 0) + dt)
}
if (fromArg === undefined) {
  console.log('busy fraction per second since the profile started:')
  console.log(Array.from(busyPerSecond, (us, s) => `${s}:${((us ?? 0) / US_PER_S).toFixed(2)}`).join(' '))
}
const parent = new Map<number, number>()
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)

const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0)
const idleUs = profile.nodes.filter(n => n.callFrame.functionName === '(idle)').reduce((a, n) => a + (selfUs.get(n.id) ?? 0), 0)
const busyUs = totalUs - idleUs

const selfByFn = new Map<string, number>()
const totalByFn = new Map<string, number>()
const selfByWhere = new Map<string, number>()
for (const [id, us] of selfUs) {
  const n = byId.get(id) as ProfileNode
  if (n.callFrame.functionName === '(idle)') continue
  const l = label(n.callFrame)
  selfByFn.set(l, (selfByFn.get(l) ?? 0) + us)
  selfByWhere.set(where(n.callFrame), (selfByWhere.get(where(n.callFrame)) ?? 0) + us)
  // inclusive time: credit every distinct function on the stack once (recursion is not double counted)
  const seen = new Set<string>()
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const fl = label((byId.get(cur) as ProfileNode).callFrame)
    if (seen.has(fl)) continue
    seen.add(fl)
    totalByFn.set(fl, (totalByFn.get(fl) ?? 0) + us)
  }
}

const pct = (us: number): string => (100 * us / busyUs).toFixed(1).padStart(5) + '%'
const top = (m: Map<string, number>, n: number): Array<[string, number]> => [...m].sort((a, b) => b[1] - a[1]).slice(0, n)

console.log(`${file}: ${(busyUs / 1e6).toFixed(2)} s busy of ${(totalUs / 1e6).toFixed(2)} s sampled (percentages are of busy time)`)
console.log('\nself time by package / Roost file')
for (const [w, us] of top(selfByWhere, rows)) console.log(`${pct(us)}  ${w}`)
console.log('\nself time by function')
for (const [l, us] of top(selfByFn, rows)) console.log(`${pct(us)}  ${l}`)
console.log('\ntotal (inclusive) time by function')
for (const [l, us] of top(totalByFn, rows)) console.log(`${pct(us)}  ${l}`)
