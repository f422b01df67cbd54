// Command payloads: what the platform sends a device, the result a device answers with, and their limits.

import { Type } from '@sinclair/typebox'
import { isPlainObject } from './state.ts'

// a result is an answer (a reading, an acknowledgement, a short report), not a file transfer
export const COMMAND_RESULT_MAX_BYTES = 64 * 1024
export const COMMAND_NAME_MAX = 64
// a sleeping device woken in the morning still gets last night's command; longer is a job, not a command
export const COMMAND_TTL_DEFAULT_MS = 24 * 3600 * 1000
export const COMMAND_TTL_MAX_MS = 7 * 24 * 3600 * 1000
export const COMMAND_TTL_MIN_MS = 1000
// an HTTP request held longer than this is cut by proxies and load balancers anyway
export const COMMAND_WAIT_MAX_MS = 30_000

/** What a device receives on devices/{id}/commands/{cmdId}. */
export interface CommandMessage { readonly name: string, readonly params: Record<string, unknown>, readonly expiresAt: number }

export const CommandResultBody = Type.Object({
  ok: Type.Boolean(),
  result: Type.Optional(Type.Unknown({ description: 'any JSON value, when ok' })),
  error: Type.Optional(Type.String({ maxLength: 1024, description: 'why it failed, when not ok' })),
}, { additionalProperties: false })

export interface CommandOutcome { readonly ok: boolean, readonly result?: unknown, readonly error?: string }

/** Parses a result a device sent over MQTT (bytes) or HTTP (parsed JSON); a string says what is wrong. */
export function parseCommandResult (payload: Buffer | unknown): CommandOutcome | string {
  let doc: unknown = payload
  if (Buffer.isBuffer(payload)) {
    if (payload.length > COMMAND_RESULT_MAX_BYTES) return `result is larger than ${COMMAND_RESULT_MAX_BYTES} bytes`
    try { doc = JSON.parse(payload.toString('utf8')) } catch { return 'not JSON' }
  }
  if (!isPlainObject(doc)) return 'a result is a JSON object {"ok": true, "result": …} or {"ok": false, "error": "…"}'
  if (typeof doc.ok !== 'boolean') return '"ok" must be true or false'
  if (doc.error !== undefined && typeof doc.error !== 'string') return '"error" must be a string'
  return doc.ok ? { ok: true, result: doc.result } : { ok: false, error: (doc.error as string | undefined) ?? 'failed' }
}
