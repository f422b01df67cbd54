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
  USER_REQUIRED: { status: 403, message: 'this endpoint needs a user\'s credential or the admin token', surface: 'rest' },
  DEVICE_CREDENTIAL_REQUIRED: { status: 403, message: 'only the device itself (or the admin) may do this', surface: 'rest' },
  DEVICE_TOKEN_REQUIRED: { status: 403, message: 'this endpoint takes a device token: it answers for the device the token belongs to', surface: 'rest' },
  SCOPE_REQUIRED: { status: 403, message: 'this credential lacks the "{scope}" scope', surface: 'rest' },
  USER_EXISTS: { status: 409, message: 'an account with this email already exists', surface: 'rest' },
  SIGNUP_DISABLED: { status: 403, message: 'self sign-up is off (ROOST_SIGNUP); the admin creates accounts', surface: 'rest' },
  PASSWORD_TOO_SHORT: { status: 400, message: 'a password needs at least {min} characters', surface: 'rest' },
  LOGIN_FAILED: { status: 401, message: 'the email or password is wrong', surface: 'rest' },
  LOGIN_LOCKED: { status: 429, message: 'too many failed attempts; try again in {seconds} s', surface: 'both' },
  REFRESH_INVALID: { status: 401, message: 'the refresh token is not valid (used, revoked or expired); log in again', surface: 'rest' },
  API_KEY_NOT_FOUND: { status: 404, message: 'no API key with id "{id}"', surface: 'rest' },
  CLAIM_CODE_INVALID: { status: 403, message: 'the claim code is wrong, used or was never issued for this device', surface: 'rest' },
  CLAIM_CODE_EXPIRED: { status: 403, message: 'the claim code expired; ask for a new one', surface: 'rest' },
  DEVICE_OWNED: { status: 409, message: 'device "{id}" already has an owner', surface: 'rest' },
  PROVISIONING_DISABLED: { status: 404, message: 'fleet provisioning is off (no ROOST_FLEET_SECRET)', surface: 'rest' },
  PROVISION_SIGNATURE_INVALID: { status: 401, message: 'the provisioning HMAC does not match', surface: 'rest' },
  PROVISION_STALE: { status: 401, message: 'the provisioning timestamp is more than {window} s from the server clock', surface: 'rest' },
  PROVISION_REPLAYED: { status: 409, message: 'this provisioning nonce was used before', surface: 'rest' },
  RATE_LIMITED: { status: 429, message: 'too many requests; retry in {seconds} s', surface: 'rest' },
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
  VOICE_BAD_HELLO: { status: 400, message: 'the hello is not valid: {detail}', surface: 'mqtt' },
  VOICE_CONTROL_INVALID: { status: 400, message: 'the voice control message is not valid: {detail}', surface: 'mqtt' },
  VOICE_NO_SESSION: { status: 409, message: 'there is no voice session; send hello first', surface: 'mqtt' },
  VOICE_UPSTREAM_UNAVAILABLE: { status: 503, message: 'the voice service could not be reached: {detail}', surface: 'mqtt' },
  VOICE_UPSTREAM_CLOSED: { status: 502, message: 'the voice service ended the session: {detail}', surface: 'mqtt' },
  VOICE_SESSION_IDLE: { status: 408, message: 'the voice session ended after {minutes} minutes without activity', surface: 'mqtt' },
  VOICE_DISABLED: { status: 403, message: 'voice is off for this device (its daily minutes are 0)', surface: 'mqtt' },
  VOICE_LIMIT_REACHED: { status: 429, message: 'the daily voice budget of {minutes} minutes is used up; it resets at {resetAt}', surface: 'mqtt' },
  WEBHOOK_NOT_FOUND: { status: 404, message: 'no webhook with id "{id}"', surface: 'rest' },
  FIRMWARE_NOT_FOUND: { status: 404, message: 'no firmware with id "{id}"', surface: 'rest' },
  FIRMWARE_EXISTS: { status: 409, message: 'firmware {version} for hardware "{hardware}" already exists; upload a new version or delete that one first', surface: 'rest' },
  FIRMWARE_IN_USE: { status: 409, message: 'firmware "{id}" is used by a rollout that has not finished', surface: 'rest' },
  FIRMWARE_TOO_LARGE: { status: 413, message: 'the firmware image is larger than {limit} bytes (ROOST_FIRMWARE_MAX_BYTES)', surface: 'rest' },
  FIRMWARE_EMPTY: { status: 400, message: 'the firmware image is empty', surface: 'rest' },
  FIRMWARE_VERSION_INVALID: { status: 400, message: '"{version}" is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build], semver.org 2.0.0)', surface: 'rest' },
  FIRMWARE_HARDWARE_INVALID: { status: 400, message: 'hardware "{hardware}" must be letters, digits, _ . and -, 1–64 characters', surface: 'rest' },
  DOWNLOAD_SIGNATURE_INVALID: { status: 403, message: 'the download link\'s signature is not valid; ask for a new link', surface: 'rest' },
  DOWNLOAD_EXPIRED: { status: 403, message: 'the download link expired at {expiredAt}; ask for a new link', surface: 'rest' },
  RANGE_NOT_SATISFIABLE: { status: 416, message: 'the range "{range}" lies outside the {size} bytes of the image', surface: 'rest' },
  ROLLOUT_NOT_FOUND: { status: 404, message: 'no rollout with id "{id}"', surface: 'rest' },
  ROLLOUT_TRANSITION_INVALID: { status: 409, message: 'a {state} rollout cannot {action}; allowed now: {allowed}', surface: 'rest' },
  ROLLOUT_NO_DEVICES: { status: 409, message: 'no device matches the rollout\'s target: {detail}', surface: 'rest' },
  ROLLOUT_HARDWARE_MISMATCH: { status: 400, message: 'firmware "{id}" is built for hardware "{firmware}", not "{target}"', surface: 'rest' },
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
  // extra response headers, e.g. Retry-After on a lockout
  readonly headers: Readonly<Record<string, string>>
  constructor (code: ErrorCode, params: Record<string, string | number> = {}, headers: Readonly<Record<string, string>> = {}) {
    super(errorMessage(code, params))
    this.code = code
    this.statusCode = ERRORS[code].status
    this.headers = headers
  }
}
