// Roost's one configuration: every setting, its source (flag > environment > default) and its validation.
// This is the only module that reads process.env; everything else receives the frozen Config.

import { existsSync } from 'node:fs'
import { resolve } from 'node:path'

export interface Config {
  readonly dataDir: string
  readonly log: { readonly level: LogLevel }
  readonly db: { readonly url: string | undefined }
  readonly redis: { readonly url: string | undefined }
  readonly broker: {
    readonly host: string
    readonly mqttPort: number
    readonly mqttsPort: number
    readonly tls: { readonly certFile: string, readonly keyFile: string } | undefined
    readonly maxPacketBytes: number
    readonly anonymous: boolean
    readonly offlineQueueLimit: number
    readonly publicHost: string
    readonly url: string
  }
  // publicUrl: where devices fetch firmware (OTA notices); a port of 0 stands for the port the API listens on
  readonly http: { readonly host: string, readonly port: number, readonly publicUrl: string }
  readonly auth: {
    // undefined until resolveSecrets() fills them from the data dir (generated on first start)
    readonly adminToken: string | undefined
    readonly serviceToken: string | undefined
    readonly fleetSecret: string | undefined
    // key of signed download links; never a setting, always generated into the data dir by resolveSecrets()
    readonly urlSecret: string | undefined
    // key of user access tokens; generated into the data dir like urlSecret
    readonly sessionSecret: string | undefined
  }
  readonly accounts: {
    readonly signup: boolean
    readonly accessTtlMs: number
    readonly refreshTtlMs: number
    readonly claimCodeTtlMs: number
  }
  readonly rateLimit: { readonly max: number, readonly windowMs: number }
  // failed logins from one address before it is locked out (per account it is 5)
  readonly loginAddressFailures: number
  readonly corsOrigins: readonly string[]
  // behind a TLS-terminating proxy: take the client address and protocol from X-Forwarded-* headers
  readonly trustProxy: boolean
  readonly openai: { readonly apiKey: string | undefined, readonly baseUrl: string, readonly realtimeModel: string }
  readonly voice: { readonly idleMs: number }
  readonly telemetry: {
    readonly maxKeys: number
    readonly maxPayloadBytes: number
    readonly maxBatchRows: number
  }
  readonly lastSeenFlushMs: number
  readonly eventsWindow: number
  readonly webhooks: { readonly retryWindowMs: number, readonly timeoutMs: number }
  readonly firmware: { readonly maxBytes: number }
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

// 256 KiB: one second of Opus at 64 kbit/s is 8 KiB and a telemetry batch is a few KiB;
// nothing legitimate comes near this, and it bounds what one packet can make us buffer.
export const DEFAULT_MAX_PACKET_BYTES = 256 * 1024

// 32 MiB: twice the largest ESP-IDF app (OTA) partition, 16 MiB, so no real image comes near it; it
// bounds the disk one upload can fill.
export const DEFAULT_FIRMWARE_MAX_BYTES = 32 * 1024 * 1024

type Kind = 'port' | 'int' | 'bool' | 'string' | 'url' | 'file' | 'level'

interface Setting {
  readonly env: string
  readonly kind: Kind
  readonly default: string | undefined
  readonly help: string
  readonly min?: number
  readonly secret?: boolean
}

// Every setting Roost reads. The flag form is derived from the variable: ROOST_MQTT_PORT → --mqtt-port,
// DATABASE_URL → --database-url.
export const SETTINGS = [
  { env: 'ROOST_DATA_DIR', kind: 'string', default: './data', help: 'embedded database, firmware files, generated secrets' },
  { env: 'ROOST_LOG_LEVEL', kind: 'level', default: 'info', help: 'pino log level' },
  { env: 'DATABASE_URL', kind: 'url', default: undefined, help: 'a Postgres server instead of the embedded PGlite', secret: true },
  { env: 'REDIS_URL', kind: 'url', default: undefined, help: 'shared broker state for several broker nodes', secret: true },
  { env: 'ROOST_HOST', kind: 'string', default: '0.0.0.0', help: 'address the MQTT and HTTP listeners bind to' },
  { env: 'ROOST_PUBLIC_HOST', kind: 'string', default: 'localhost', help: 'host name devices are told to connect to' },
  // unset: http://{ROOST_PUBLIC_HOST}:{ROOST_HTTP_PORT}, the real port when that is 0; set it behind a proxy or TLS terminator
  { env: 'ROOST_PUBLIC_URL', kind: 'url', default: undefined, help: 'base URL devices reach the HTTP API at (firmware links in OTA notices); default http://{ROOST_PUBLIC_HOST}:{ROOST_HTTP_PORT}' },
  { env: 'ROOST_MQTT_PORT', kind: 'port', default: '1883', help: 'plain MQTT' },
  { env: 'ROOST_MQTTS_PORT', kind: 'port', default: '8883', help: 'MQTT over TLS (needs ROOST_TLS_CERT and ROOST_TLS_KEY)' },
  { env: 'ROOST_TLS_CERT', kind: 'file', default: undefined, help: 'PEM certificate for MQTT/TLS' },
  { env: 'ROOST_TLS_KEY', kind: 'file', default: undefined, help: 'PEM private key for MQTT/TLS' },
  { env: 'ROOST_HTTP_PORT', kind: 'port', default: '8080', help: 'REST, /docs, /metrics and MQTT over WebSocket at /mqtt' },
  { env: 'ROOST_BROKER_URL', kind: 'url', default: 'mqtt://127.0.0.1:1883', help: 'where `roost api` (run apart from the broker) finds the broker' },
  { env: 'ROOST_ADMIN_TOKEN', kind: 'string', default: undefined, help: 'admin REST credential (generated on first start)', secret: true },
  { env: 'ROOST_SERVICE_TOKEN', kind: 'string', default: undefined, help: 'broker login of the bridge and api processes (generated on first start)', secret: true },
  { env: 'ROOST_FLEET_SECRET', kind: 'string', default: undefined, help: 'fleet provisioning HMAC key; unset turns provisioning off', secret: true },
  { env: 'OPENAI_API_KEY', kind: 'string', default: undefined, help: 'Realtime upstream key; unset turns voice off', secret: true },
  { env: 'OPENAI_BASE_URL', kind: 'url', default: 'https://api.openai.com/v1', help: 'Realtime upstream base URL' },
  { env: 'ROOST_REALTIME_MODEL', kind: 'string', default: 'gpt-realtime', help: 'Realtime model' },
  // the contract's 30 minutes: long enough for a pause in a conversation, short enough not to hold a session overnight
  { env: 'ROOST_VOICE_IDLE_MS', kind: 'int', default: String(30 * 60 * 1000), min: 1000, help: 'a voice session with no audio or control for this long ends' },
  { env: 'ROOST_MAX_PACKET_BYTES', kind: 'int', default: String(DEFAULT_MAX_PACKET_BYTES), min: 1024, help: 'largest MQTT packet accepted, checked before it is buffered' },
  { env: 'ROOST_ANONYMOUS', kind: 'bool', default: 'false', help: 'let clients without credentials use the scratch topic space' },
  // 1000 QoS 1 messages of a typical 200-byte command is 200 KB per sleeping client: enough for a night offline
  { env: 'ROOST_OFFLINE_QUEUE_LIMIT', kind: 'int', default: '1000', min: 1, help: 'QoS 1 messages kept per offline persistent session; older ones beyond this are dropped and counted' },
  { env: 'ROOST_TELEMETRY_MAX_KEYS', kind: 'int', default: '64', min: 1, help: 'keys per telemetry object' },
  { env: 'ROOST_TELEMETRY_MAX_BYTES', kind: 'int', default: '65536', min: 64, help: 'largest telemetry payload' },
  { env: 'ROOST_TELEMETRY_MAX_ROWS', kind: 'int', default: '1000', min: 1, help: 'objects in one telemetry array' },
  // 10,000 events is minutes of a busy fleet's presence, state and command changes: enough to ride out a reconnect
  { env: 'ROOST_EVENTS_WINDOW', kind: 'int', default: '10000', min: 1, help: 'events kept for Server-Sent Events clients resuming with Last-Event-ID' },
  { env: 'ROOST_WEBHOOK_RETRY_WINDOW_MS', kind: 'int', default: String(3600 * 1000), min: 1000, help: 'how long a webhook delivery is retried (exponential backoff with jitter) before it is marked failed' },
  { env: 'ROOST_WEBHOOK_TIMEOUT_MS', kind: 'int', default: '10000', min: 100, help: 'how long one webhook attempt may take' },
  { env: 'ROOST_SIGNUP', kind: 'bool', default: 'false', help: 'let anyone create an account with POST /v1/users (otherwise only the admin can)' },
  { env: 'ROOST_ACCESS_TOKEN_TTL_S', kind: 'int', default: '900', min: 1, help: 'lifetime of a user access token, in seconds (refresh tokens renew it)' },
  { env: 'ROOST_REFRESH_TOKEN_TTL_S', kind: 'int', default: String(30 * 86400), min: 60, help: 'how long a login session lasts without being refreshed, in seconds' },
  { env: 'ROOST_CLAIM_CODE_TTL_S', kind: 'int', default: String(7 * 86400), min: 60, help: 'how long a device claim code stays valid, in seconds' },
  { env: 'ROOST_RATE_LIMIT_MAX', kind: 'int', default: '100', min: 1, help: 'REST requests per credential (or per IP without one) per window; /health, /metrics and /docs are not counted' },
  { env: 'ROOST_RATE_LIMIT_WINDOW_S', kind: 'int', default: '60', min: 1, help: 'the rate-limit window, in seconds' },
  { env: 'ROOST_LOGIN_ADDRESS_FAILURES', kind: 'int', default: '20', min: 1, help: 'failed REST or MQTT logins from one address before it is locked out, with a wait that doubles each further failure (per account: 5)' },
  { env: 'ROOST_TRUST_PROXY', kind: 'bool', default: 'false', help: 'trust X-Forwarded-For/-Proto from a reverse proxy (client address for limits and lockouts; HTTPS for HSTS)' },
  { env: 'ROOST_CORS_ORIGINS', kind: 'string', default: undefined, help: 'comma-separated origins browsers may call the REST API from (* for any; empty: none)' },
  { env: 'ROOST_FIRMWARE_MAX_BYTES', kind: 'int', default: String(DEFAULT_FIRMWARE_MAX_BYTES), min: 1, help: 'largest firmware image accepted by POST /v1/firmware; larger uploads stop at this size with 413' },
  { env: 'ROOST_LAST_SEEN_FLUSH_MS', kind: 'int', default: '5000', min: 10, help: 'how often lastSeen times are written, in one statement' },
] as const satisfies readonly Setting[]

export type SettingName = typeof SETTINGS[number]['env']

export class ConfigError extends Error {
  readonly problems: readonly string[]
  constructor (problems: readonly string[]) {
    super('configuration is not valid:\n' + problems.map(p => '  - ' + p).join('\n'))
    this.problems = problems
  }
}

export function flagName (env: string): string {
  return '--' + env.replace(/^ROOST_/, '').toLowerCase().replace(/_/g, '-')
}

/** Parses `--name value` and `--name=value` pairs; unknown flags are problems, not silently ignored. */
function parseFlags (argv: readonly string[], problems: string[]): Map<string, string> {
  const byFlag = new Map<string, string>(SETTINGS.map(s => [flagName(s.env), s.env]))
  const values = new Map<string, string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (!arg.startsWith('--')) { problems.push(`unexpected argument "${arg}"`); continue }
    const eq = arg.indexOf('=')
    const flag = eq === -1 ? arg : arg.slice(0, eq)
    const env = byFlag.get(flag)
    if (env === undefined) { problems.push(`unknown flag ${flag}`); continue }
    let value: string | undefined
    if (eq !== -1) value = arg.slice(eq + 1)
    else if (i + 1 < argv.length && !(argv[i + 1] as string).startsWith('--')) value = argv[++i]
    if (value === undefined) { problems.push(`${flag} needs a value`); continue }
    values.set(env, value)
  }
  return values
}

type Raw = Record<SettingName, string | undefined>

function check (s: Setting, value: string, problems: string[]): void {
  const where = `${s.env} (${flagName(s.env)})`
  switch (s.kind) {
    case 'port': {
      const n = Number(value)
      if (!/^\d+$/.test(value) || n > 65535) problems.push(`${where} must be a port number 0–65535, got "${value}"`)
      break
    }
    case 'int': {
      const n = Number(value)
      if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) problems.push(`${where} must be a whole number, got "${value}"`)
      else if (s.min !== undefined && n < s.min) problems.push(`${where} must be at least ${s.min}, got ${n}`)
      break
    }
    case 'bool':
      if (value !== 'true' && value !== 'false') problems.push(`${where} must be true or false, got "${value}"`)
      break
    case 'url':
      try { new URL(value) } catch { problems.push(`${where} must be a URL`) }
      break
    case 'file':
      if (!existsSync(value)) problems.push(`${where}: no file at "${value}"`)
      break
    case 'level':
      if (!(LOG_LEVELS as readonly string[]).includes(value)) problems.push(`${where} must be one of ${LOG_LEVELS.join(', ')}, got "${value}"`)
      break
    case 'string':
      if (value === '') problems.push(`${where} must not be empty`)
      break
  }
}

/**
 * Reads flags, then environment, then defaults. Throws ConfigError listing every problem at once.
 * `env` is a parameter so tests pass their own; the CLI passes process.env.
 */
export function loadConfig (argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Config {
  const problems: string[] = []
  const flags = parseFlags(argv, problems)
  const raw = {} as Raw
  for (const s of SETTINGS as readonly Setting[]) {
    const value = flags.get(s.env) ?? nonEmpty(env[s.env]) ?? s.default
    if (value !== undefined) check(s, value, problems)
    raw[s.env as SettingName] = value
  }
  const cert = raw.ROOST_TLS_CERT
  const key = raw.ROOST_TLS_KEY
  if ((cert === undefined) !== (key === undefined)) problems.push('ROOST_TLS_CERT and ROOST_TLS_KEY must be set together')
  if (raw.DATABASE_URL !== undefined && !/^postgres(ql)?:/.test(raw.DATABASE_URL)) problems.push('DATABASE_URL must be a postgres:// URL')
  if (raw.ROOST_PUBLIC_URL !== undefined && !/^https?:\/\//i.test(raw.ROOST_PUBLIC_URL)) problems.push('ROOST_PUBLIC_URL must be an http:// or https:// URL')
  if (problems.length > 0) throw new ConfigError(problems)

  const int = (name: SettingName): number => Number(raw[name])
  const config: Config = {
    dataDir: resolve(raw.ROOST_DATA_DIR as string),
    log: { level: raw.ROOST_LOG_LEVEL as LogLevel },
    db: { url: raw.DATABASE_URL },
    redis: { url: raw.REDIS_URL },
    broker: {
      host: raw.ROOST_HOST as string,
      mqttPort: int('ROOST_MQTT_PORT'),
      mqttsPort: int('ROOST_MQTTS_PORT'),
      tls: cert !== undefined && key !== undefined ? { certFile: cert, keyFile: key } : undefined,
      maxPacketBytes: int('ROOST_MAX_PACKET_BYTES'),
      anonymous: raw.ROOST_ANONYMOUS === 'true',
      offlineQueueLimit: int('ROOST_OFFLINE_QUEUE_LIMIT'),
      publicHost: raw.ROOST_PUBLIC_HOST as string,
      url: raw.ROOST_BROKER_URL as string,
    },
    http: { host: raw.ROOST_HOST as string, port: int('ROOST_HTTP_PORT'), publicUrl: publicUrl(raw) },
    auth: {
      adminToken: raw.ROOST_ADMIN_TOKEN,
      serviceToken: raw.ROOST_SERVICE_TOKEN,
      fleetSecret: raw.ROOST_FLEET_SECRET,
      urlSecret: undefined,
      sessionSecret: undefined,
    },
    openai: {
      apiKey: raw.OPENAI_API_KEY,
      baseUrl: raw.OPENAI_BASE_URL as string,
      realtimeModel: raw.ROOST_REALTIME_MODEL as string,
    },
    voice: { idleMs: int('ROOST_VOICE_IDLE_MS') },
    telemetry: {
      maxKeys: int('ROOST_TELEMETRY_MAX_KEYS'),
      maxPayloadBytes: int('ROOST_TELEMETRY_MAX_BYTES'),
      maxBatchRows: int('ROOST_TELEMETRY_MAX_ROWS'),
    },
    lastSeenFlushMs: int('ROOST_LAST_SEEN_FLUSH_MS'),
    eventsWindow: int('ROOST_EVENTS_WINDOW'),
    webhooks: { retryWindowMs: int('ROOST_WEBHOOK_RETRY_WINDOW_MS'), timeoutMs: int('ROOST_WEBHOOK_TIMEOUT_MS') },
    firmware: { maxBytes: int('ROOST_FIRMWARE_MAX_BYTES') },
    accounts: {
      signup: raw.ROOST_SIGNUP === 'true',
      accessTtlMs: int('ROOST_ACCESS_TOKEN_TTL_S') * 1000,
      refreshTtlMs: int('ROOST_REFRESH_TOKEN_TTL_S') * 1000,
      claimCodeTtlMs: int('ROOST_CLAIM_CODE_TTL_S') * 1000,
    },
    rateLimit: { max: int('ROOST_RATE_LIMIT_MAX'), windowMs: int('ROOST_RATE_LIMIT_WINDOW_S') * 1000 },
    loginAddressFailures: int('ROOST_LOGIN_ADDRESS_FAILURES'),
    trustProxy: raw.ROOST_TRUST_PROXY === 'true',
    corsOrigins: (raw.ROOST_CORS_ORIGINS ?? '').split(',').map(o => o.trim()).filter(o => o !== ''),
  }
  return deepFreeze(config)
}

/** ROOST_PUBLIC_URL without a trailing slash, or the default made of the public host and the HTTP port. */
function publicUrl (raw: Raw): string {
  if (raw.ROOST_PUBLIC_URL !== undefined) return raw.ROOST_PUBLIC_URL.replace(/\/+$/, '')
  const host = raw.ROOST_PUBLIC_HOST as string
  return `http://${host.includes(':') ? `[${host}]` : host}:${raw.ROOST_HTTP_PORT as string}`
}

function nonEmpty (v: string | undefined): string | undefined {
  return v === undefined || v === '' ? undefined : v
}

export function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

/** A copy of the config with some groups replaced, frozen again (used once secrets are resolved). */
export function withConfig (config: Config, patch: Partial<{ [K in keyof Config]: Config[K] }>): Config {
  return deepFreeze({ ...config, ...patch })
}
