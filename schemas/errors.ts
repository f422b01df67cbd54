// The one catalogue of error codes Roost shows to clients, over REST and on MQTT `devices/{id}/errors`.
// A code keeps its meaning forever: retire a code by moving it to RETIRED_CODES, never reuse it.

export interface ErrorSpec {
  readonly status: number
  readonly message: string
  // 'rest' codes appear in REST replies, 'mqtt' on the errors topic or in broker logs, 'both' in both
  readonly surface: 'rest' | 'mqtt' | 'both'
}

export const ERRORS = {
  AUTH_REQUIRED: { status: 401, message: 'this endpoint needs a bearer credential', surface: 'rest' },
  AUTH_INVALID: { status: 401, message: 'the credential is not valid', surface: 'both' },
  ADMIN_REQUIRED: { status: 403, message: 'this endpoint needs the admin token', surface: 'rest' },
  DEVICE_TOKEN_SCOPE: { status: 403, message: 'a device token may only act on its own device', surface: 'rest' },
  DEVICE_NOT_FOUND: { status: 404, message: 'no device with id "{id}"', surface: 'rest' },
  DEVICE_EXISTS: { status: 409, message: 'a device with id "{id}" already exists', surface: 'rest' },
  CLIENT_ID_MISMATCH: { status: 403, message: 'a device must connect with its device id as client id', surface: 'mqtt' },
  CLIENT_ID_RESERVED: { status: 403, message: 'this client id belongs to a device; only that device may use it', surface: 'mqtt' },
  CLIENT_ID_REQUIRED: { status: 400, message: 'an empty client id needs clean session 1 [MQTT-3.1.3-8]', surface: 'mqtt' },
  PROTOCOL_VIOLATION: { status: 400, message: 'the packet breaks the MQTT specification: {detail}', surface: 'mqtt' },
  PACKET_TOO_LARGE: { status: 413, message: 'the packet is larger than {limit} bytes', surface: 'mqtt' },
  TOPIC_FORBIDDEN: { status: 403, message: 'this identity may not {action} "{topic}"', surface: 'mqtt' },
  TOPIC_UNKNOWN: { status: 404, message: '"{topic}" is not a Roost device topic', surface: 'mqtt' },
  PAYLOAD_INVALID: { status: 400, message: 'the payload is not valid: {detail}', surface: 'both' },
  PAYLOAD_TOO_LARGE: { status: 413, message: 'the payload is larger than {limit} bytes', surface: 'both' },
  COMMAND_NOT_FOUND: { status: 404, message: 'device "{id}" has no command "{command}"', surface: 'both' },
  COMMAND_FINAL: { status: 409, message: 'command "{command}" is already {status}; a result is taken once, before it expires', surface: 'both' },
  WEBHOOK_NOT_FOUND: { status: 404, message: 'no webhook with id "{id}"', surface: 'rest' },
  STATE_VERSION_CONFLICT: { status: 409, message: 'desired state is at version {current}, not {expected}; read it again and retry', surface: 'rest' },
  VALIDATION_FAILED: { status: 400, message: 'the request is not valid: {detail}', surface: 'rest' },
  QUERY_INVALID: { status: 400, message: 'the query is not valid: {detail}', surface: 'rest' },
  ROUTE_NOT_FOUND: { status: 404, message: 'no route {method} {url}', surface: 'rest' },
  DB_UNAVAILABLE: { status: 503, message: 'the database is not reachable; try again', surface: 'both' },
  INTERNAL: { status: 500, message: 'an internal error happened; it has been logged', surface: 'rest' },
} as const satisfies Record<string, ErrorSpec>

export type ErrorCode = keyof typeof ERRORS

// Codes that once existed and must never be given a new meaning.
export const RETIRED_CODES: readonly string[] = [
  // never emitted: REST refuses a bad id through the request schema (VALIDATION_FAILED); MQTT answers
  // AUTH_INVALID for a bad user name (ids cannot be probed) and TOPIC_UNKNOWN for a bad topic
  'DEVICE_ID_INVALID',
]

export const ERROR_CODES = Object.keys(ERRORS) as ErrorCode[]

/** Fills `{name}` placeholders of a code's message template. */
export function errorMessage (code: ErrorCode, params: Record<string, string | number> = {}): string {
  return ERRORS[code].message.replace(/\{(\w+)\}/g, (whole, name: string) =>
    params[name] === undefined ? whole : String(params[name]))
}

/** An error carrying a catalogue code; REST turns it into `{statusCode, code, message}`. */
export class RoostError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  constructor (code: ErrorCode, params: Record<string, string | number> = {}) {
    super(errorMessage(code, params))
    this.code = code
    this.statusCode = ERRORS[code].status
  }
}
