// The message router Aedes publishes through (mqemitter), with one defect guarded: when its queue has a
// backlog and the messages' last listener is gone (a viewer that stopped reading a busy feed, then left),
// mqemitter drains the queue by recursion, one stack frame per message, and overflows the stack, which
// kills the process. Upstream: mcollina/mqemitter#204 (open), moscajs/aedes#193.

import mqemitter from 'mqemitter'

// Aedes' default: messages routed at once before later ones queue
const CONCURRENCY = 100
// a drain this many messages deep continues on a fresh stack; far below the ~10,000 frames that overflow
const MAX_SYNC_DEPTH = 500

interface Internals {
  current: number
  _do (message: unknown, callback: unknown): unknown
}

export function createMq (): ReturnType<typeof mqemitter> {
  const mq = mqemitter({ concurrency: CONCURRENCY, matchEmptyLevels: true }) // [MQTT-4.7.1-3] as Aedes sets it
  const internals = mq as unknown as Internals
  const route = internals._do.bind(mq)
  let depth = 0
  internals._do = function guardedDo (message: unknown, callback: unknown): unknown {
    if (depth >= MAX_SYNC_DEPTH) {
      // hold the routing slot now, as _do would, so later messages keep queuing behind this one (order kept)
      internals.current++
      setImmediate(() => {
        internals.current--
        route(message, callback)
      })
      return mq
    }
    depth++
    try {
      return route(message, callback)
    } finally {
      depth--
    }
  }
  return mq
}
