// A per-client bound on the QoS 1/2 messages the broker keeps for persistent sessions, so one sleeping
// (or vanished) client cannot grow the broker's memory without end.

interface Sub { readonly clientId: string }
interface Persistence {
  outgoingEnqueue (sub: Sub, packet: unknown): Promise<void>
  outgoingEnqueueCombi (subs: Sub[], packet: unknown): Promise<void>
  outgoingUpdate (client: { id: string }, packet: unknown): Promise<unknown>
  outgoingClearMessageId (client: { id: string }, packet: unknown): Promise<unknown>
}

/**
 * Wraps a persistence's outgoing queue: a client with `limit` messages waiting gets no more; each
 * message refused so is reported to `onDrop` (counted and logged by the caller). Counts fall as the
 * client acknowledges (or a clean session discards) what was queued.
 */
export function boundOfflineQueue<P extends Persistence> (persistence: P, limit: number, onDrop: (clientId: string) => void): P {
  const queued = new Map<string, number>()
  const admit = (sub: Sub): boolean => {
    const n = queued.get(sub.clientId) ?? 0
    if (n >= limit) {
      onDrop(sub.clientId)
      return false
    }
    queued.set(sub.clientId, n + 1)
    return true
  }
  const enqueue = persistence.outgoingEnqueue.bind(persistence)
  const enqueueCombi = persistence.outgoingEnqueueCombi.bind(persistence)
  const update = persistence.outgoingUpdate.bind(persistence)
  const clear = persistence.outgoingClearMessageId.bind(persistence)
  persistence.outgoingEnqueue = async (sub, packet) => {
    if (admit(sub)) await enqueue(sub, packet)
  }
  persistence.outgoingEnqueueCombi = async (subs, packet) => {
    const kept = subs.filter(admit)
    if (kept.length > 0) await enqueueCombi(kept, packet)
  }
  // A connected client still gets, live, a message the bound kept out of its queue. Aedes then looks the
  // message up in the queue to record its packet id, and would take "no such packet" as a client error and
  // cut the connection (a device back online draining a full queue would be cut by any new command). Such a
  // message goes out unstored instead, at most once, as it would to a clean session.
  persistence.outgoingUpdate = async (client, packet) => {
    try {
      return await update(client, packet)
    } catch {
      return undefined
    }
  }
  persistence.outgoingClearMessageId = async (client, packet) => {
    const removed = await clear(client, packet)
    if (removed !== undefined && removed !== null) {
      const n = (queued.get(client.id) ?? 1) - 1
      if (n <= 0) queued.delete(client.id)
      else queued.set(client.id, n)
    }
    return removed
  }
  return persistence
}
