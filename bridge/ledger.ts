// What the bridge keeps in the database: who owns each device's session (a renewed lease, so a second bridge
// hearing the same hello leaves it alone), the device's settings and daily budget, and each conversation
// with its transcript and usage. Writes never hold up audio: they run behind the session, one after another
// per conversation, and a failed write is logged, not fatal.

import { hostname } from 'node:os'
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { RealtimeResponseUsage } from 'openai/resources/realtime/realtime'
import type { Database } from '../db/open.ts'
import { addTranscript, addUsage, claimLease, endConversation, getVoiceSettings, nextUtcMidnight, releaseLease, renewLeases, startConversation, usageOn, utcDay } from '../db/voice.ts'
import type { ErrorCode } from '../schemas/errors.ts'
import type { HelloMessage, VoiceSettings } from '../schemas/voice.ts'
import type { EndReason, VoiceSession } from './session.ts'

// A crashed bridge's devices wait at most this long before another bridge may take them (a device repeats
// an unanswered hello); renewed every third of it, so a renewal can fail twice before the lease lapses.
export const LEASE_MS = 15_000
const MINUTE_MS = 60_000

export type GateDecision =
  | { readonly ok: true, readonly settings: VoiceSettings, readonly budget?: { readonly remainingMs: number, readonly resetAt: number }, readonly record?: SessionRecord }
  // another bridge owns this device's live session: say nothing, it answers
  | { readonly ok: false, readonly silent: true }
  | { readonly ok: false, readonly silent?: false, readonly code: ErrorCode, readonly params?: Record<string, string | number>, readonly limit?: { readonly reason: 'daily_minutes', readonly resetAt: number } }

/** Decides whether a hello may open a session here, and with what. */
export interface SessionGate {
  open (deviceId: string, hello: HelloMessage, sessionId: string): Promise<GateDecision>
  close (): Promise<void>
}

/** What happens to one session, for its history. */
export interface SessionRecord {
  ready (session: VoiceSession): void
  usage (session: VoiceSession, usage: RealtimeResponseUsage | undefined): void
  transcript (session: VoiceSession, role: 'user' | 'assistant', text: string): void
  ended (session: VoiceSession, reason: EndReason): Promise<void>
}

export interface LedgerOptions {
  readonly model: string
  readonly log: Logger
  readonly now?: () => number
  readonly leaseMs?: number
  // this bridge lost a device's lease (the database was away longer than the lease): its session must end
  readonly onLeaseLost: (deviceId: string) => void
}

interface Live {
  readonly deviceId: string
  readonly sessionId: string
  session: VoiceSession | undefined
  flushedAudioMs: number
  started: boolean
  seq: number
  chain: Promise<void>
}

/** The database-backed gate; one per bridge process, which it names as the lease owner. */
export function openLedger (db: Database, opts: LedgerOptions): SessionGate & { readonly owner: string } {
  const owner = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`
  const now = opts.now ?? Date.now
  const leaseMs = opts.leaseMs ?? LEASE_MS
  const log = opts.log
  const live = new Map<string, Live>() // by device id

  const write = (l: Live, what: string, step: () => Promise<void>): Promise<void> => {
    l.chain = l.chain.then(step).catch(err => log.warn({ err: (err as Error).message, deviceId: l.deviceId, what }, 'voice ledger write failed'))
    return l.chain
  }

  // audio used since the last flush goes to the conversation and the device's day
  const flushUsage = (l: Live, responses: number, usage: RealtimeResponseUsage | undefined): void => {
    const audioMs = l.session === undefined ? 0 : l.session.audioMs - l.flushedAudioMs
    if (audioMs <= 0 && responses === 0) return
    l.flushedAudioMs += audioMs
    const at = now()
    void write(l, 'usage', () => addUsage(db, {
      conversationId: l.sessionId,
      deviceId: l.deviceId,
      day: utcDay(at),
      audioMs,
      responses,
      inputTokens: usage?.input_tokens ?? 0,
      outputTokens: usage?.output_tokens ?? 0,
    }))
  }

  const tickMs = Math.max(1000, Math.floor(leaseMs / 3))
  const tick = async (): Promise<void> => {
    // the sessions' usage writes are spread over the tick: twenty at once stalled every session's audio
    const started = [...live.values()].filter(l => l.started)
    started.forEach((l, i) => { setTimeout(() => flushUsage(l, 0, undefined), Math.floor(i * tickMs / started.length)).unref() })
    const lost = await renewLeases(db, owner, [...live.keys()], now() + leaseMs).catch(err => {
      log.warn({ err: (err as Error).message }, 'voice leases not renewed')
      return [] as string[]
    })
    for (const id of lost) {
      log.warn({ deviceId: id }, 'voice session lease lost to another bridge')
      live.delete(id)
      opts.onLeaseLost(id)
    }
  }
  const timer = setInterval(() => { void tick() }, tickMs)
  timer.unref()

  const record: SessionRecord = {
    ready (session) {
      const l = live.get(session.deviceId)
      if (l === undefined || l.sessionId !== session.id) return
      l.session = session
      l.started = true
      void write(l, 'start', () => startConversation(db, { id: session.id, deviceId: session.deviceId, model: opts.model, startedAt: session.startedAt }))
    },
    usage (session, usage) {
      const l = live.get(session.deviceId)
      if (l?.sessionId === session.id && l.started) flushUsage(l, 1, usage)
    },
    transcript (session, role, text) {
      const l = live.get(session.deviceId)
      if (l?.sessionId !== session.id || !l.started) return
      const row = { conversationId: session.id, seq: l.seq++, role, text, at: now() }
      void write(l, 'transcript', () => addTranscript(db, row))
    },
    async ended (session, reason) {
      const l = live.get(session.deviceId)
      if (l?.sessionId !== session.id) return
      live.delete(session.deviceId)
      if (l.started) {
        flushUsage(l, 0, undefined)
        void write(l, 'end', () => endConversation(db, session.id, now(), reason))
      }
      // a session replaced by the device's new hello keeps the lease for the next one: released here, the
      // lease could go to another bridge hearing the same hello before this one claims it again
      if (reason !== 'replaced') await write(l, 'release', () => releaseLease(db, l.deviceId, owner, l.sessionId))
      else await l.chain
    },
  }

  return {
    owner,
    async open (deviceId, _hello, sessionId) {
      const { settings } = await getVoiceSettings(db, deviceId)
      if (settings.dailyMinutes === 0) return { ok: false, code: 'VOICE_DISABLED' }
      const at = now()
      const resetAt = nextUtcMidnight(at)
      const budgetMs = settings.dailyMinutes * MINUTE_MS
      const used = await usageOn(db, deviceId, utcDay(at))
      if (used >= budgetMs) {
        return { ok: false, code: 'VOICE_LIMIT_REACHED', params: { minutes: settings.dailyMinutes, resetAt: new Date(resetAt).toISOString() }, limit: { reason: 'daily_minutes', resetAt } }
      }
      if (!await claimLease(db, deviceId, owner, sessionId, at, at + leaseMs)) return { ok: false, silent: true }
      const previous = live.get(deviceId)
      live.set(deviceId, { deviceId, sessionId, session: undefined, flushedAudioMs: 0, started: false, seq: 0, chain: previous?.chain ?? Promise.resolve() })
      return { ok: true, settings, budget: { remainingMs: budgetMs - used, resetAt }, record }
    },
    async close () {
      clearInterval(timer)
      await Promise.all([...live.values()].map(l => l.chain))
    },
  }
}
