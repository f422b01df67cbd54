// Voice REST routes: a device's voice settings (persona, voice, language, mode, daily budget) and its
// conversations with their transcripts. The bridge reads the settings at each hello.

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Conversation, ConversationList, ConversationQuery, DeviceParams, VoiceSettingsBody, VoiceSettingsView, errorResponses } from '../schemas/rest.ts'
import { RoostError } from '../schemas/errors.ts'
import { DEFAULT_VOICE_SETTINGS, type VoiceSettings } from '../schemas/voice.ts'
import { getDevice } from '../db/devices.ts'
import { getVoiceSettings, listConversations, nextUtcMidnight, putVoiceSettings, usageOn, utcDay } from '../db/voice.ts'
import type { ConversationWithTranscript } from '../db/voice.ts'
import { authErrors } from './auth.ts'
import type { ApiContext } from './index.ts'

const MINUTE_MS = 60_000

function conversationView (c: ConversationWithTranscript): typeof Conversation.static {
  return {
    id: c.id,
    model: c.model,
    startedAt: c.startedAt,
    endedAt: c.endedAt,
    endReason: c.endReason,
    audioMs: c.audioMs,
    responses: c.responses,
    inputTokens: c.inputTokens,
    outputTokens: c.outputTokens,
    transcript: c.transcript.map(t => ({ role: t.role, text: t.text, at: t.at })),
  }
}

export const voiceRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, now } = ctx

  async function mustExist (id: string): Promise<void> {
    if (await getDevice(db, id) === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id })
  }

  async function view (id: string): Promise<typeof VoiceSettingsView.static> {
    const { settings, updatedAt } = await getVoiceSettings(db, id)
    const at = now()
    const usedMs = await usageOn(db, id, utcDay(at))
    return {
      deviceId: id,
      instructions: settings.instructions,
      voice: settings.voice,
      language: settings.language ?? null,
      mode: settings.mode,
      dailyMinutes: settings.dailyMinutes,
      updatedAt,
      today: { usedMs, remainingMs: Math.max(0, settings.dailyMinutes * MINUTE_MS - usedMs), resetAt: nextUtcMidnight(at) },
    }
  }

  app.get('/v1/devices/:id/voice', {
    config: { auth: 'device' },
    schema: {
      summary: 'The device\'s voice settings and today\'s use of its daily budget',
      tags: ['voice'],
      params: DeviceParams,
      response: { 200: VoiceSettingsView, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    await mustExist(request.params.id)
    return await view(request.params.id)
  })

  app.put('/v1/devices/:id/voice', {
    config: { auth: 'owner' },
    schema: {
      summary: 'Replace the device\'s voice settings; they apply from its next hello',
      tags: ['voice'],
      params: DeviceParams,
      body: VoiceSettingsBody,
      response: { 200: VoiceSettingsView, ...errorResponses([...authErrors('owner'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    const id = request.params.id
    await mustExist(id)
    const b = request.body
    const d = DEFAULT_VOICE_SETTINGS
    const settings: VoiceSettings = {
      instructions: b.instructions ?? d.instructions,
      voice: b.voice ?? d.voice,
      language: b.language ?? d.language,
      mode: b.mode ?? d.mode,
      dailyMinutes: b.dailyMinutes ?? d.dailyMinutes,
    }
    await putVoiceSettings(db, id, settings, now())
    request.log.info({ deviceId: id, voice: settings.voice, mode: settings.mode, dailyMinutes: settings.dailyMinutes }, 'voice settings changed')
    return await view(id)
  })

  app.get('/v1/devices/:id/conversations', {
    config: { auth: 'device' },
    schema: {
      summary: 'The device\'s voice conversations, newest first, each with its final transcript and usage',
      tags: ['voice'],
      params: DeviceParams,
      querystring: ConversationQuery,
      response: { 200: ConversationList, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    const id = request.params.id
    await mustExist(id)
    const limit = request.query.limit ?? 20
    const rows = await listConversations(db, id, limit, request.query.before)
    const last = rows.at(-1)
    return { items: rows.map(conversationView), ...(rows.length === limit && last !== undefined ? { next: last.startedAt } : {}) }
  })
}
