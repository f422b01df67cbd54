// Memory figures a Node broker child reports about itself after a full garbage collection.

import { setTimeout as delay } from 'node:timers/promises'

export interface MemorySample {
  readonly rss: number
  readonly heapUsed: number
  readonly external: number
  readonly arrayBuffers: number
}

// collections are repeated because finalizers and weak references free more on a second pass
const GC_PASSES = 3

/** Runs full collections when the child was started with --expose-gc (bench/brokers.ts does that). */
export async function collectGarbage (): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) return
  for (let i = 0; i < GC_PASSES; i++) {
    gc()
    await delay(50)
  }
}

export function memorySample (): MemorySample {
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers }
}
