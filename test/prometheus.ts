// Reads samples out of Prometheus text exposition (format 0.0.4), for tests of /metrics.

import type { TestRoost } from './harness.ts'

export interface Sample { readonly name: string, readonly labels: Readonly<Record<string, string>>, readonly value: number }

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

export function parseSamples (text: string): Sample[] {
  const out: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = SAMPLE.exec(line)
    if (m === null) throw new Error(`not a Prometheus sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(LABEL)) labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_all, c: string) => (c === 'n' ? '\n' : c))
    out.push({ name: m[1] as string, labels, value: Number(m[3]) })
  }
  return out
}

/** The value of the sample `name` whose labels include `labels`; undefined when there is none. */
export function sampleValue (samples: readonly Sample[], name: string, labels: Readonly<Record<string, string>> = {}): number | undefined {
  const s = samples.find(s => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  return s?.value
}

/** Scrapes /metrics with the admin token. */
export async function scrape (roost: TestRoost): Promise<Sample[]> {
  const res = await roost.request('GET', '/metrics')
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`)
  return parseSamples(res.body as string)
}
