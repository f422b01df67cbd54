// Voice reads and writes: settings, the session lease, conversations with transcripts, daily usage.

import { and, desc, eq, inArray, lt } from 'drizzle-orm'
import { voiceConversations, voiceLeases, voiceSettings, voiceTranscripts, voiceUsage, type VoiceConversationRow, type VoiceTranscriptRow } from '../schemas/db/voice.ts'
import { DEFAULT_VOICE_SETTINGS, type VoiceSettings } from '../schemas/voice.ts'
import type { Database } from './open.ts'

const DAY_MS = 24 * 3600 * 1000

/** The UTC day of `ms` as YYYY-MM-DD: the unit of the daily budget. */
export function utcDay (ms: number): string {
  return new Date(ms).toISOString().slice(0, 10)
}

/** When the UTC day of `ms` ends (the budget's reset). */
export function nextUtcMidnight (ms: number): number {
  return (Math.floor(ms / DAY_MS) + 1) * DAY_MS
}

export async function getVoiceSettings (db: Database, deviceId: string): Promise<{ settings: VoiceSettings, updatedAt: number | null }> {
  const [row] = await db.orm.select().from(voiceSettings).where(eq(voiceSettings.deviceId, deviceId)).limit(1)
  if (row === undefined) return { settings: DEFAULT_VOICE_SETTINGS, updatedAt: null }
  return {
    settings: { instructions: row.instructions, voice: row.voice, language: row.language ?? undefined, mode: row.mode, dailyMinutes: row.dailyMinutes },
    updatedAt: row.updatedAt,
  }
}

export async function putVoiceSettings (db: Database, deviceId: string, s: VoiceSettings, now: number): Promise<void> {
  const values = { instructions: s.instructions, voice: s.voice, language: s.language ?? null, mode: s.mode, dailyMinutes: s.dailyMinutes, updatedAt: now }
  await db.orm.insert(voiceSettings).values({ deviceId, ...values }).onConflictDoUpdate({ target: voiceSettings.deviceId, set: values })
}

/**
 * Takes the device's session lease for `owner` until `until`, unless another owner holds a live one. One
 * statement, so two bridges racing for the same hello cannot both win.
 */
export async function claimLease (db: Database, deviceId: string, owner: string, sessionId: string, now: number, until: number): Promise<boolean> {
  const rows = await db.query<{ owner: string }>(`
    INSERT INTO voice_sessions (device_id, owner, session_id, lease_until) VALUES ($1, $2, $3, $4)
    ON CONFLICT (device_id) DO UPDATE SET owner = excluded.owner, session_id = excluded.session_id, lease_until = excluded.lease_until
      WHERE voice_sessions.owner = excluded.owner OR voice_sessions.lease_until < $5
    RETURNING owner`, [deviceId, owner, sessionId, until, now])
  return rows.length > 0
}

/** Extends the leases `owner` still holds on these devices; returns the devices it lost. */
export async function renewLeases (db: Database, owner: string, deviceIds: readonly string[], until: number): Promise<string[]> {
  if (deviceIds.length === 0) return []
  // raw statements here and below: they run while devices talk, where a prepared one costs a third
  const kept = await db.query<{ device_id: string }>(
    'UPDATE voice_sessions SET lease_until = $1 WHERE owner = $2 AND device_id IN (SELECT jsonb_array_elements_text($3::jsonb)) RETURNING device_id',
    [until, owner, JSON.stringify(deviceIds)])
  const held = new Set(kept.map(k => k.device_id))
  return deviceIds.filter(id => !held.has(id))
}

/** Gives the lease up, if this session still holds it. */
export async function releaseLease (db: Database, deviceId: string, owner: string, sessionId: string): Promise<void> {
  await db.orm.delete(voiceLeases).where(and(eq(voiceLeases.deviceId, deviceId), eq(voiceLeases.owner, owner), eq(voiceLeases.sessionId, sessionId)))
}

/** Audio ms the device used on `day`. */
export async function usageOn (db: Database, deviceId: string, day: string): Promise<number> {
  const [row] = await db.orm.select({ audioMs: voiceUsage.audioMs }).from(voiceUsage).where(and(eq(voiceUsage.deviceId, deviceId), eq(voiceUsage.day, day))).limit(1)
  return row?.audioMs ?? 0
}

export async function startConversation (db: Database, c: { id: string, deviceId: string, model: string, startedAt: number }): Promise<void> {
  await db.query('INSERT INTO voice_conversations (id, device_id, model, started_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING',
    [c.id, c.deviceId, c.model, c.startedAt])
}

export async function endConversation (db: Database, id: string, endedAt: number, reason: string): Promise<void> {
  await db.query('UPDATE voice_conversations SET ended_at = $2, end_reason = $3 WHERE id = $1', [id, endedAt, reason])
}

export async function addTranscript (db: Database, t: VoiceTranscriptRow): Promise<void> {
  await db.query('INSERT INTO voice_transcripts (conversation_id, seq, role, text, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING',
    [t.conversationId, t.seq, t.role, t.text, t.at])
}

/** Adds what a conversation used since the last call to it and to the device's day, in one statement. */
export async function addUsage (db: Database, u: { conversationId: string, deviceId: string, day: string, audioMs: number, responses: number, inputTokens: number, outputTokens: number }): Promise<void> {
  await db.query(`
    WITH c AS (
      UPDATE voice_conversations SET audio_ms = audio_ms + $4, responses = responses + $5,
        input_tokens = input_tokens + $6, output_tokens = output_tokens + $7
      WHERE id = $1)
    INSERT INTO voice_usage (device_id, day, audio_ms, input_tokens, output_tokens) VALUES ($2, $3, $4, $6, $7)
    ON CONFLICT (device_id, day) DO UPDATE SET audio_ms = voice_usage.audio_ms + excluded.audio_ms,
      input_tokens = voice_usage.input_tokens + excluded.input_tokens, output_tokens = voice_usage.output_tokens + excluded.output_tokens`,
  [u.conversationId, u.deviceId, u.day, Math.round(u.audioMs), u.responses, u.inputTokens, u.outputTokens])
}

export interface ConversationWithTranscript extends VoiceConversationRow {
  readonly transcript: ReadonlyArray<Pick<VoiceTranscriptRow, 'role' | 'text' | 'at'>>
}

/** A device's conversations, newest first, each with its transcript; `before` pages by start time. */
export async function listConversations (db: Database, deviceId: string, limit: number, before?: number): Promise<ConversationWithTranscript[]> {
  const where = before === undefined
    ? eq(voiceConversations.deviceId, deviceId)
    : and(eq(voiceConversations.deviceId, deviceId), lt(voiceConversations.startedAt, before))
  const rows = await db.orm.select().from(voiceConversations).where(where).orderBy(desc(voiceConversations.startedAt)).limit(limit)
  if (rows.length === 0) return []
  const lines = await db.orm.select().from(voiceTranscripts)
    .where(inArray(voiceTranscripts.conversationId, rows.map(r => r.id)))
    .orderBy(voiceTranscripts.conversationId, voiceTranscripts.seq)
  const byConversation = new Map<string, Array<Pick<VoiceTranscriptRow, 'role' | 'text' | 'at'>>>()
  for (const l of lines) {
    const list = byConversation.get(l.conversationId) ?? []
    list.push({ role: l.role, text: l.text, at: l.at })
    byConversation.set(l.conversationId, list)
  }
  return rows.map(r => ({ ...r, transcript: byConversation.get(r.id) ?? [] }))
}
