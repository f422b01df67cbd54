// Voice: each device's settings, the lease that gives one bridge its session, conversations with their
// transcripts, and the audio used per device and day (the daily budget).
//
// Every table references the device with ON DELETE CASCADE, so deleting a device deletes its voice data in
// the same statement without db/devices.ts knowing about voice.

import { bigint, index, integer, pgTable, primaryKey, text } from 'drizzle-orm/pg-core'
import type { ListenMode } from '../voice.ts'
import { devices } from './devices.ts'

const device = () => text('device_id').notNull().references(() => devices.id, { onDelete: 'cascade' })

// set with PUT /v1/devices/{id}/voice; a device without a row has the defaults (schemas/voice.ts)
export const voiceSettings = pgTable('voice_settings', {
  deviceId: device().primaryKey(),
  instructions: text('instructions').notNull(),
  voice: text('voice').notNull(),
  language: text('language'),
  mode: text('mode').$type<ListenMode>().notNull(),
  dailyMinutes: integer('daily_minutes').notNull(),
  updatedAt: bigint('updated_at', { mode: 'number' }).notNull(),
})

// One row per device with a live session: the bridge instance that owns it until `lease_until`, renewed
// while the session lives. Another bridge hearing the same hello leaves a live lease alone.
export const voiceLeases = pgTable('voice_sessions', {
  deviceId: device().primaryKey(),
  owner: text('owner').notNull(),
  sessionId: text('session_id').notNull(),
  leaseUntil: bigint('lease_until', { mode: 'number' }).notNull(),
})

// one conversation = one session, from the upstream being ready to its end
export const voiceConversations = pgTable('voice_conversations', {
  id: text('id').primaryKey(), // the session id the device got in its hello
  deviceId: device(),
  model: text('model').notNull(),
  startedAt: bigint('started_at', { mode: 'number' }).notNull(),
  endedAt: bigint('ended_at', { mode: 'number' }),
  endReason: text('end_reason'),
  // audio heard from the device plus audio spoken to it, in ms: what the daily budget counts
  audioMs: integer('audio_ms').notNull().default(0),
  responses: integer('responses').notNull().default(0),
  inputTokens: integer('input_tokens').notNull().default(0),
  outputTokens: integer('output_tokens').notNull().default(0),
}, t => [
  // a device's conversations, newest first
  index('voice_conversations_device_started_idx').on(t.deviceId, t.startedAt),
])

// final captions, in order within the conversation
export const voiceTranscripts = pgTable('voice_transcripts', {
  conversationId: text('conversation_id').notNull().references(() => voiceConversations.id, { onDelete: 'cascade' }),
  seq: integer('seq').notNull(),
  role: text('role').$type<'user' | 'assistant'>().notNull(),
  text: text('text').notNull(),
  at: bigint('at', { mode: 'number' }).notNull(),
}, t => [
  primaryKey({ columns: [t.conversationId, t.seq] }),
])

// audio ms and tokens per device and UTC day; the daily budget is checked against audio_ms
export const voiceUsage = pgTable('voice_usage', {
  deviceId: device(),
  day: text('day').notNull(), // YYYY-MM-DD, UTC
  audioMs: bigint('audio_ms', { mode: 'number' }).notNull().default(0),
  inputTokens: bigint('input_tokens', { mode: 'number' }).notNull().default(0),
  outputTokens: bigint('output_tokens', { mode: 'number' }).notNull().default(0),
}, t => [
  primaryKey({ columns: [t.deviceId, t.day] }),
])

export type VoiceSettingsRow = typeof voiceSettings.$inferSelect
export type VoiceConversationRow = typeof voiceConversations.$inferSelect
export type VoiceTranscriptRow = typeof voiceTranscripts.$inferSelect
