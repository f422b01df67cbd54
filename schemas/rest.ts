// REST bodies, parameters and replies (TypeBox → JSON Schema → OpenAPI at /docs). Types derive from these.

import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { DEVICE_ID_PATTERN } from './topics.ts'
import { ERRORS, type ErrorCode } from './errors.ts'
import { TelemetryValue } from './telemetry.ts'
import { StateObject } from './state.ts'
import { COMMAND_NAME_MAX, COMMAND_TTL_DEFAULT_MS, COMMAND_TTL_MAX_MS, COMMAND_TTL_MIN_MS, COMMAND_WAIT_MAX_MS } from './commands.ts'
import { COMMAND_STATUSES } from './db/commands.ts'
import { DELIVERY_STATUSES } from './db/webhooks.ts'
import { API_KEY_SCOPES } from './db/accounts.ts'
import { FIRMWARE_HARDWARE_PATTERN, FIRMWARE_NOTES_MAX, FIRMWARE_VERSION_MAX } from './firmware.ts'
import { VOICE_INSTRUCTIONS_MAX } from './voice.ts'

export const DeviceId = Type.String({ pattern: DEVICE_ID_PATTERN, description: 'letters, digits, _ and -, 1–64 characters', examples: ['kitchen-1'] })
export const EpochMs = Type.Integer({ minimum: 0, description: 'epoch milliseconds' })

export const DeviceParams = Type.Object({ id: DeviceId })

export const Device = Type.Object({
  id: DeviceId,
  name: Type.Union([Type.String(), Type.Null()]),
  ownerId: Type.Union([Type.String(), Type.Null()]),
  tags: Type.Array(Type.String()),
  online: Type.Boolean({ description: 'an MQTT session is open now' }),
  lastSeen: Type.Union([EpochMs, Type.Null()], { description: 'last connect, message or disconnect; written every few seconds' }),
  createdAt: EpochMs,
  updatedAt: EpochMs,
})
export type DeviceView = Static<typeof Device>

// labels rollouts can target (`target.tags`: a device must carry every one)
export const DeviceTags = Type.Array(Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$' }), { maxItems: 32, uniqueItems: true })

export const DeviceCreate = Type.Object({
  id: Type.Optional(DeviceId),
  tags: Type.Optional(DeviceTags),
  name: Type.Optional(Type.String({ maxLength: 200 })),
  ownerId: Type.Optional(Type.String({ maxLength: 200 })),
}, { additionalProperties: false })

export const MqttLogin = Type.Object({
  host: Type.String(),
  port: Type.Integer(),
  username: Type.String({ description: 'the device id; the MQTT client id must be the device id too' }),
})

export const DeviceCreated = Type.Object({
  id: DeviceId,
  token: Type.String({ description: 'the device token; shown once, stored only as a hash' }),
  mqtt: MqttLogin,
})

export const DeviceToken = Type.Object({
  id: DeviceId,
  token: Type.String({ description: 'the new device token; the old one stops working and open sessions are closed' }),
})

export const DevicePatch = Type.Object({
  name: Type.Optional(Type.Union([Type.String({ maxLength: 200 }), Type.Null()])),
  tags: Type.Optional(DeviceTags),
  ownerId: Type.Optional(Type.Union([Type.String({ maxLength: 200 }), Type.Null()])),
}, { additionalProperties: false, minProperties: 1 })

export const DeviceListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  after: Type.Optional(DeviceId),
})

export const DeviceList = Type.Object({
  items: Type.Array(Device),
  next: Type.Optional(Type.String({ description: 'pass as `after` for the next page' })),
})

export const TelemetryLatest = Type.Object({
  deviceId: DeviceId,
  values: Type.Record(Type.String(), Type.Object({ ts: EpochMs, value: TelemetryValue }), { description: 'key → its latest value' }),
})

export const TelemetryLatestQuery = Type.Object({
  keys: Type.Optional(Type.String({ description: 'comma-separated keys; all keys when absent' })),
})

export const TelemetryRangeQuery = Type.Object({
  from: Type.Optional(Type.String({ description: 'epoch ms or ISO 8601; default `to` minus 24 h' })),
  to: Type.Optional(Type.String({ description: 'epoch ms or ISO 8601, exclusive; default now' })),
  keys: Type.Optional(Type.String({ description: 'comma-separated keys; all keys when absent' })),
  interval: Type.Optional(Type.String({ description: 'aggregate per interval: ms, or a duration like 30s, 5m, 1h, 1d' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000, default: 1000, description: 'rows (raw) or buckets (aggregated) per page' })),
  cursor: Type.Optional(Type.String({ description: '`next` of the previous page' })),
})

export const TelemetryRow = Type.Object({ key: Type.String(), ts: EpochMs, value: TelemetryValue })
export const TelemetryBucket = Type.Object({
  key: Type.String(),
  ts: Type.Integer({ description: 'start of the interval' }),
  min: Type.Union([Type.Number(), Type.Null()]),
  max: Type.Union([Type.Number(), Type.Null()]),
  avg: Type.Union([Type.Number(), Type.Null()]),
  count: Type.Integer({ description: 'readings in the interval, of any type' }),
})

export const TelemetryRange = Type.Object({
  deviceId: DeviceId,
  from: EpochMs,
  to: EpochMs,
  interval: Type.Optional(Type.Integer()),
  rows: Type.Optional(Type.Array(TelemetryRow)),
  buckets: Type.Optional(Type.Array(TelemetryBucket)),
  next: Type.Optional(Type.String({ description: 'pass as `cursor` for the next page; absent on the last page' })),
})

export const TelemetryStored = Type.Object({ stored: Type.Integer({ description: 'rows committed' }) })

export const StateSide = Type.Object({
  version: Type.Integer({ description: 'bumped by every change; 0 before the first' }),
  state: StateObject,
  updatedAt: Type.Union([EpochMs, Type.Null()]),
})

export const DeviceStateView = Type.Object({
  deviceId: DeviceId,
  desired: StateSide,
  reported: StateSide,
  delta: Type.Record(Type.String(), Type.Unknown(), { description: 'desired keys whose value differs from reported: what the device has still to apply' }),
})

export const StatePatch = Type.Object({
  state: Type.Record(Type.String(), Type.Unknown(), { description: 'a JSON merge patch (RFC 7396) of the desired document: objects merge, null deletes a key' }),
  version: Type.Optional(Type.Integer({ minimum: 0, description: 'the desired version this patch was made against; a different stored version answers 409' })),
}, { additionalProperties: false })

export const CommandParams = Type.Object({ id: DeviceId, cmdId: Type.String({ pattern: DEVICE_ID_PATTERN }) })

export const CommandCreate = Type.Object({
  name: Type.String({ minLength: 1, maxLength: COMMAND_NAME_MAX, examples: ['reboot'] }),
  params: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  ttlMs: Type.Optional(Type.Integer({ minimum: COMMAND_TTL_MIN_MS, maximum: COMMAND_TTL_MAX_MS, description: `how long the command may wait for an offline device; default ${COMMAND_TTL_DEFAULT_MS / 3600_000} h` })),
  waitMs: Type.Optional(Type.Integer({ minimum: 0, maximum: COMMAND_WAIT_MAX_MS, description: 'wait up to this long for the device\'s result before answering (synchronous RPC); default 0' })),
}, { additionalProperties: false })

export const Command = Type.Object({
  id: Type.String(),
  deviceId: DeviceId,
  name: Type.String(),
  params: Type.Record(Type.String(), Type.Unknown()),
  status: Type.Union(COMMAND_STATUSES.map(s => Type.Literal(s)), { description: 'queued → sent → succeeded | failed | expired' }),
  createdAt: EpochMs,
  expiresAt: EpochMs,
  sentAt: Type.Union([EpochMs, Type.Null()]),
  finishedAt: Type.Union([EpochMs, Type.Null()]),
  result: Type.Optional(Type.Unknown()),
  error: Type.Union([Type.String(), Type.Null()]),
})

export const CommandList = Type.Object({ items: Type.Array(Command) })

export const CommandListQuery = Type.Object({
  status: Type.Optional(Type.Union([...COMMAND_STATUSES.map(s => Type.Literal(s)), Type.Literal('pending')], { description: '`pending`: queued or sent and not expired, oldest first (a device polling over HTTP receives them so)' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
})

// the kinds of event /v1/events streams and webhooks receive
export const EVENT_TYPES = ['presence', 'state', 'command', 'telemetry'] as const
export type EventType = typeof EVENT_TYPES[number]

export const WebhookEventType = Type.Union(EVENT_TYPES.map(t => Type.Literal(t)))

export const WebhookCreate = Type.Object({
  url: Type.String({ pattern: '^https?://', maxLength: 2048, description: 'where deliveries are POSTed' }),
  events: Type.Array(WebhookEventType, { minItems: 1, uniqueItems: true, description: 'event types, as in /v1/events' }),
  deviceIds: Type.Optional(Type.Array(DeviceId, { minItems: 1, uniqueItems: true, description: 'only these devices; every device when absent' })),
}, { additionalProperties: false })

export const Webhook = Type.Object({
  id: Type.String(),
  url: Type.String(),
  events: Type.Array(Type.String()),
  deviceIds: Type.Union([Type.Array(Type.String()), Type.Null()]),
  createdAt: EpochMs,
})

export const WebhookCreated = Type.Composite([Webhook, Type.Object({
  secret: Type.String({ description: 'shown once: each delivery carries x-roost-signature: sha256=HMAC-SHA256(secret, body) in hex' }),
})])

export const WebhookParams = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) })

export const Delivery = Type.Object({
  id: Type.String(),
  event: Type.String(),
  deviceId: Type.String(),
  status: Type.Union(DELIVERY_STATUSES.map(t => Type.Literal(t))),
  attempts: Type.Integer(),
  lastStatus: Type.Union([Type.Integer(), Type.Null()], { description: 'HTTP status of the last attempt' }),
  lastError: Type.Union([Type.String(), Type.Null()]),
  createdAt: EpochMs,
  nextAttemptAt: Type.Union([EpochMs, Type.Null()], { description: 'when a pending delivery is tried next' }),
  finishedAt: Type.Union([EpochMs, Type.Null()]),
  body: Type.String({ description: 'the JSON sent' }),
})

export const DeliveryQuery = Type.Object({
  status: Type.Optional(Type.Union(DELIVERY_STATUSES.map(t => Type.Literal(t)))),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
})

const FIRMWARE_SIGNED = 'base64 Ed25519 signature (RFC 8032, pure Ed25519) made with the key of GET /v1/firmware/signing-key over exactly the 32 raw bytes of the image\'s SHA-256 digest (not its hex text); a device verifies it against the digest it computed while downloading'

export const Firmware = Type.Object({
  id: Type.String(),
  version: Type.String({ description: 'semantic version (semver.org 2.0.0)' }),
  hardware: Type.String({ description: 'the board family the image is for' }),
  notes: Type.Union([Type.String(), Type.Null()]),
  size: Type.Integer({ description: 'bytes' }),
  sha256: Type.String({ description: 'SHA-256 of the image, lower-case hex' }),
  signature: Type.String({ description: FIRMWARE_SIGNED }),
  createdAt: EpochMs,
  downloads: Type.Integer({ description: 'completed downloads: full ones, and ranged ones that reached the last byte' }),
})

export const FirmwareDetail = Type.Composite([Firmware, Type.Object({
  url: Type.String({ description: 'a download link signed just now, valid for one hour; it needs no credential' }),
})])

export const FirmwareParams = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) })

export const FirmwareListQuery = Type.Object({
  hardware: Type.Optional(Type.String({ maxLength: 64, description: 'only this hardware' })),
  version: Type.Optional(Type.String({ maxLength: FIRMWARE_VERSION_MAX, description: 'only this version' })),
})

// checked by the route, not by the schema, so that multipart fields and query parameters answer the same codes
export const FirmwareUploadFields = {
  version: Type.String({ description: 'semantic version (semver.org 2.0.0), e.g. 1.4.2 or 2.0.0-rc.1', examples: ['1.4.2'] }),
  hardware: Type.String({ description: `board family, ${FIRMWARE_HARDWARE_PATTERN}`, examples: ['esp32-s3'] }),
  notes: Type.String({ description: `release notes, at most ${FIRMWARE_NOTES_MAX} characters` }),
}

export const FirmwareUploadQuery = Type.Object({
  version: Type.Optional(FirmwareUploadFields.version),
  hardware: Type.Optional(FirmwareUploadFields.hardware),
  notes: Type.Optional(FirmwareUploadFields.notes),
}, { description: 'with an application/octet-stream body only' })

export const FirmwareDownloadQuery = Type.Object({
  exp: Type.Integer({ minimum: 0, description: 'expiry, epoch seconds' }),
  sig: Type.String({ pattern: '^[A-Za-z0-9_-]{1,128}$', description: 'HMAC-SHA256 of "{id}:{exp}" under a key derived from the data dir\'s link secret, base64url (hex is accepted too)' }),
})

export const FirmwareSigningKey = Type.Object({
  algorithm: Type.Literal('Ed25519'),
  pem: Type.String({ description: 'the public key, SPKI PEM' }),
  raw: Type.String({ description: 'the 32-byte public key (RFC 8032), base64' }),
  signs: Type.String({ description: 'what each firmware signature covers' }),
})

export const Health = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('degraded')]),
  db: Type.Union([Type.Literal('ok'), Type.Literal('down')]),
  broker: Type.Union([Type.Literal('ok'), Type.Literal('down')]),
})

/** The error reply of a route, listing exactly the codes that route can answer with. */
export function errorReply (codes: readonly ErrorCode[]): TSchema {
  return Type.Object({
    statusCode: Type.Integer(),
    // an enum on a string documents the codes; the serializer does not re-check them
    code: Type.Unsafe<ErrorCode>({ type: 'string', enum: [...codes] }),
    message: Type.String(),
  }, { description: codes.map(c => `\`${c}\`: ${ERRORS[c].message}`).join('; ') })
}

/** Error replies grouped by HTTP status, from a list of codes. */
// ---- accounts --------------------------------------------------------------------------------------

const Email = Type.String({ format: 'email', maxLength: 254 })
const Password = Type.String({ minLength: 1, maxLength: 1024, description: 'at least 8 characters' })
export const UserCreate = Type.Object({ email: Email, password: Password }, { additionalProperties: false })
export const User = Type.Object({ id: Type.String(), email: Type.String(), createdAt: Type.Integer() })
export const Login = Type.Object({ email: Email, password: Password }, { additionalProperties: false })
export const Tokens = Type.Object({
  accessToken: Type.String({ description: 'signed, short-lived; send as `Authorization: Bearer`, or as the MQTT password with username `app`' }),
  refreshToken: Type.String({ description: 'works once: POST /v1/auth/refresh answers a new pair' }),
  expiresIn: Type.Integer({ description: 'seconds until the access token expires' }),
  userId: Type.String(),
})
export const RefreshBody = Type.Object({ refreshToken: Type.String({ minLength: 1, maxLength: 512 }) }, { additionalProperties: false })
export const PasswordChange = Type.Object({ currentPassword: Password, newPassword: Password }, { additionalProperties: false })
export const ApiKeyScopeSchema = Type.Union(API_KEY_SCOPES.map(s => Type.Literal(s)))
export const ApiKeyCreate = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 100 }),
  scopes: Type.Optional(Type.Array(ApiKeyScopeSchema, { minItems: 1, uniqueItems: true, description: 'default ["read"]; read: GET routes, write: changes to owned devices, admin: the account itself (API keys, password)' })),
  expiresAt: Type.Optional(Type.Integer({ minimum: 0, description: 'epoch ms; omitted: never expires' })),
}, { additionalProperties: false })
export const ApiKey = Type.Object({
  id: Type.String(),
  name: Type.String(),
  scopes: Type.Array(ApiKeyScopeSchema),
  createdAt: Type.Integer(),
  expiresAt: Type.Union([Type.Integer(), Type.Null()]),
  revokedAt: Type.Union([Type.Integer(), Type.Null()]),
})
export const ApiKeyCreated = Type.Composite([ApiKey, Type.Object({ key: Type.String({ description: 'shown once; only its hash is stored' }) })])
export const ApiKeyList = Type.Object({ items: Type.Array(ApiKey) })
export const ApiKeyParams = Type.Object({ keyId: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) })
export const ClaimBody = Type.Object({ code: Type.String({ minLength: 1, maxLength: 64 }) }, { additionalProperties: false })
export const ClaimCode = Type.Object({ deviceId: Type.String(), code: Type.String({ description: 'one-time; only its hash is stored' }), expiresAt: Type.Integer() })
export const ProvisionBody = Type.Object({
  deviceId: Type.String({ pattern: DEVICE_ID_PATTERN }),
  nonce: Type.String({ minLength: 8, maxLength: 128 }),
  ts: Type.Integer({ description: 'epoch ms on the device; within 5 minutes of the server clock' }),
  hmac: Type.String({ pattern: '^[0-9a-fA-F]{64}$', description: 'hex HMAC-SHA256(fleet secret, deviceId + ":" + nonce + ":" + ts)' }),
}, { additionalProperties: false })
export const Provisioned = Type.Object({
  id: Type.String(),
  token: Type.String({ description: 'the device token, shown once' }),
  claimCode: Type.String(),
  claimCodeExpiresAt: Type.Integer(),
  mqtt: MqttLogin,
})

// ---- voice ----

export const VoiceSettingsBody = Type.Object({
  instructions: Type.Optional(Type.String({ minLength: 1, maxLength: VOICE_INSTRUCTIONS_MAX, description: 'the persona: what the assistant is and how it speaks (Realtime instructions)' })),
  voice: Type.Optional(Type.String({ pattern: '^[a-z0-9_-]{1,32}$', description: 'a Realtime voice, e.g. marin, cedar, alloy' })),
  language: Type.Optional(Type.Union([Type.String({ pattern: '^[a-z]{2}$', description: 'ISO-639-1 code of what the user speaks' }), Type.Null()])),
  mode: Type.Optional(Type.Union([Type.Literal('vad'), Type.Literal('ptt')], { description: 'vad: the server hears when the user stops; ptt: push-to-talk' })),
  dailyMinutes: Type.Optional(Type.Integer({ minimum: 0, maximum: 1440, description: 'minutes of audio (heard plus spoken) a UTC day; 0 turns voice off' })),
}, { additionalProperties: false, description: 'PUT replaces the settings: an omitted field takes its default' })
export const VoiceSettingsView = Type.Object({
  deviceId: DeviceId,
  instructions: Type.String(),
  voice: Type.String(),
  language: Type.Union([Type.String(), Type.Null()]),
  mode: Type.Union([Type.Literal('vad'), Type.Literal('ptt')]),
  dailyMinutes: Type.Integer(),
  updatedAt: Type.Union([EpochMs, Type.Null()], { description: 'null: never set, these are the defaults' }),
  today: Type.Object({
    usedMs: Type.Integer({ description: 'audio heard plus spoken today (UTC), as recorded so far' }),
    remainingMs: Type.Integer(),
    resetAt: EpochMs,
  }),
})
export const ConversationQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20 })),
  before: Type.Optional(Type.Integer({ minimum: 0, description: 'page: conversations that started before this epoch ms (the previous page\'s `next`)' })),
})
export const Conversation = Type.Object({
  id: Type.String({ description: 'the session id the device got in its hello' }),
  model: Type.String(),
  startedAt: EpochMs,
  endedAt: Type.Union([EpochMs, Type.Null()]),
  endReason: Type.Union([Type.String(), Type.Null()]),
  audioMs: Type.Integer(),
  responses: Type.Integer(),
  inputTokens: Type.Integer(),
  outputTokens: Type.Integer(),
  transcript: Type.Array(Type.Object({ role: Type.Union([Type.Literal('user'), Type.Literal('assistant')]), text: Type.String(), at: EpochMs })),
})
export const ConversationList = Type.Object({ items: Type.Array(Conversation), next: Type.Optional(Type.Integer()) })

export function errorResponses (codes: readonly ErrorCode[]): Record<number, TSchema> {
  const byStatus = new Map<number, ErrorCode[]>()
  // a route's own codes may repeat those its auth rule brings
  for (const c of new Set(codes)) {
    const s = ERRORS[c].status
    byStatus.set(s, [...(byStatus.get(s) ?? []), c])
  }
  const out: Record<number, TSchema> = {}
  for (const [status, list] of byStatus) out[status] = errorReply(list)
  return out
}
