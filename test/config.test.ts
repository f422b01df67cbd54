// Configuration: flags beat environment beat defaults, every problem is reported at once, the result is
// deeply frozen, and the real CLI stops with the problems listed.

import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ConfigError, flagName, loadConfig, SETTINGS, type Config } from '../schemas/config.ts'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('..', import.meta.url))

let scratch: string
let certFile: string
let keyFile: string
beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'roost-config-'))
  // loadConfig only checks that the files exist; their contents matter to the TLS listener, not here
  certFile = join(scratch, 'cert.pem')
  keyFile = join(scratch, 'key.pem')
  writeFileSync(certFile, 'cert')
  writeFileSync(keyFile, 'key')
})
afterAll(() => { rmSync(scratch, { recursive: true, force: true }) })

/** The problems loadConfig reports, or [] when it accepts. */
function problems (argv: readonly string[], env: Record<string, string | undefined> = {}): readonly string[] {
  try {
    loadConfig(argv, env)
    return []
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    return err.problems
  }
}

describe('defaults', () => {
  it('with no flags and no environment, every setting has its documented default', () => {
    expect(loadConfig([], {})).toEqual({
      dataDir: resolve('./data'),
      log: { level: 'info' },
      db: { url: undefined },
      redis: { url: undefined },
      broker: {
        host: '0.0.0.0',
        mqttPort: 1883,
        mqttsPort: 8883,
        tls: undefined,
        maxPacketBytes: 262_144,
        anonymous: false,
        offlineQueueLimit: 1000,
        publicHost: 'localhost',
        url: 'mqtt://127.0.0.1:1883',
      },
      http: { host: '0.0.0.0', port: 8080, publicUrl: 'http://localhost:8080' },
      auth: { adminToken: undefined, serviceToken: undefined, fleetSecret: undefined, urlSecret: undefined, sessionSecret: undefined },
      openai: { apiKey: undefined, baseUrl: 'https://api.openai.com/v1', realtimeModel: 'gpt-realtime' },
      voice: { idleMs: 1_800_000 },
      telemetry: { maxKeys: 64, maxPayloadBytes: 65_536, maxBatchRows: 1000 },
      lastSeenFlushMs: 5000,
      eventsWindow: 10_000,
      webhooks: { retryWindowMs: 3_600_000, timeoutMs: 10_000 },
      firmware: { maxBytes: 33_554_432 },
      accounts: { signup: false, accessTtlMs: 900_000, refreshTtlMs: 2_592_000_000, claimCodeTtlMs: 604_800_000 },
      rateLimit: { max: 100, windowMs: 60_000 },
      loginAddressFailures: 20,
      corsOrigins: [],
      trustProxy: false,
    } satisfies Config)
  })

  it('reads only the environment it is given, never process.env', () => {
    const saved = process.env.ROOST_MQTT_PORT
    process.env.ROOST_MQTT_PORT = '2345'
    try {
      expect(loadConfig([], {}).broker.mqttPort).toBe(1883)
    } finally {
      if (saved === undefined) delete process.env.ROOST_MQTT_PORT
      else process.env.ROOST_MQTT_PORT = saved
    }
  })

  it('an empty environment variable counts as unset', () => {
    expect(loadConfig([], { ROOST_MQTT_PORT: '', DATABASE_URL: '' })).toMatchObject({ broker: { mqttPort: 1883 }, db: { url: undefined } })
  })
})

describe('precedence', () => {
  it('the environment beats the default', () => {
    const config = loadConfig([], { ROOST_MQTT_PORT: '2000', ROOST_LOG_LEVEL: 'debug', ROOST_ANONYMOUS: 'true', DATABASE_URL: 'postgres://u@db/roost' })
    expect(config).toMatchObject({ broker: { mqttPort: 2000, anonymous: true }, log: { level: 'debug' }, db: { url: 'postgres://u@db/roost' } })
  })

  it.each([
    ['--mqtt-port 1999', ['--mqtt-port', '1999']],
    ['--mqtt-port=1999', ['--mqtt-port=1999']],
  ])('a flag (%s) beats the environment', (_form, argv) => {
    expect(loadConfig(argv, { ROOST_MQTT_PORT: '2000' }).broker.mqttPort).toBe(1999)
    expect(loadConfig(argv, {}).broker.mqttPort).toBe(1999)
  })

  it('settings without the ROOST_ prefix take their whole name as the flag', () => {
    expect(flagName('DATABASE_URL')).toBe('--database-url')
    expect(flagName('ROOST_TELEMETRY_MAX_KEYS')).toBe('--telemetry-max-keys')
    const config = loadConfig(['--database-url', 'postgresql://h/db', '--telemetry-max-keys=8'], { DATABASE_URL: 'postgres://other/db' })
    expect(config).toMatchObject({ db: { url: 'postgresql://h/db' }, telemetry: { maxKeys: 8 } })
  })

  it('every setting can be given as a flag and as an environment variable', () => {
    const defaults = loadConfig([], {})
    // a valid sample value per kind of setting, read back through the config to see it arrived
    for (const s of SETTINGS) {
      const sample: Record<string, string> = {
        ROOST_LOG_LEVEL: 'warn', DATABASE_URL: 'postgres://h/db', REDIS_URL: 'redis://h:6379', ROOST_ANONYMOUS: 'true', ROOST_SIGNUP: 'true', ROOST_TRUST_PROXY: 'true',
        ROOST_TLS_CERT: certFile, ROOST_TLS_KEY: keyFile, ROOST_BROKER_URL: 'mqtt://h:1884', OPENAI_BASE_URL: 'http://h/v1', ROOST_PUBLIC_URL: 'https://h/roost',
      }
      const value = sample[s.env] ?? (s.kind === 'port' || s.kind === 'int' ? '4321' : 'sample-' + s.env.toLowerCase())
      // the TLS pair must come together
      const pair = s.env === 'ROOST_TLS_CERT' ? { ROOST_TLS_KEY: keyFile } : s.env === 'ROOST_TLS_KEY' ? { ROOST_TLS_CERT: certFile } : {}
      const viaFlag = loadConfig([`${flagName(s.env)}=${value}`], pair)
      const viaEnv = loadConfig([], { [s.env]: value, ...pair })
      expect(viaFlag, s.env).toEqual(viaEnv)
      expect(viaEnv, s.env).not.toEqual(defaults)
    }
  })

  it('TLS is on when the certificate and key are both given', () => {
    expect(loadConfig(['--tls-cert', certFile, '--tls-key', keyFile], {}).broker.tls).toEqual({ certFile, keyFile })
  })
})

describe('bad values', () => {
  it('lists every problem at once in one ConfigError', () => {
    let error: unknown
    try {
      loadConfig(
        ['--mqtt-port', 'notaport', '--http-port=99999', '--bogus=1', '--anonymous', 'yes', '--log-level', 'loud', '--tls-cert', certFile],
        { DATABASE_URL: 'mysql://db/roost', ROOST_MAX_PACKET_BYTES: '100' },
      )
    } catch (err) {
      error = err
    }
    expect(error).toBeInstanceOf(ConfigError)
    const found = (error as ConfigError).problems
    const expected = [
      /ROOST_MQTT_PORT \(--mqtt-port\) must be a port number.*"notaport"/,
      /ROOST_HTTP_PORT \(--http-port\) must be a port number.*"99999"/,
      /unknown flag --bogus/,
      /ROOST_ANONYMOUS \(--anonymous\) must be true or false, got "yes"/,
      /ROOST_LOG_LEVEL \(--log-level\) must be one of .*, got "loud"/,
      /ROOST_TLS_CERT and ROOST_TLS_KEY must be set together/,
      /DATABASE_URL must be a postgres:\/\/ URL/,
      /ROOST_MAX_PACKET_BYTES \(--max-packet-bytes\) must be at least 1024, got 100/,
    ]
    for (const re of expected) expect(found.some(p => re.test(p)), `a problem matching ${re}`).toBe(true)
    expect(found).toHaveLength(expected.length)
    // the message lists them too, one a line, for the terminal
    for (const p of found) expect((error as ConfigError).message).toContain('  - ' + p)
  })

  it.each([
    ['a negative port', ['--mqtt-port', '-1'], /must be a port number/],
    ['a fractional port', ['--http-port', '80.5'], /must be a port number/],
    ['a flag without its value', ['--mqtt-port'], /--mqtt-port needs a value/],
    ['a flag followed by another flag', ['--mqtt-port', '--http-port', '80'], /--mqtt-port needs a value/],
    ['a positional argument', ['start'], /unexpected argument "start"/],
    ['a TLS key without a certificate', ['--tls-key', join('/nonexistent', 'key.pem')], /ROOST_TLS_KEY.*no file at/],
    ['a whole number that is not one', ['--offline-queue-limit', '1e3'], /must be a whole number/],
    ['a base URL that is not a URL', ['--openai-base-url', 'not a url'], /OPENAI_BASE_URL.*must be a URL/],
    ['an empty admin token', ['--admin-token='], /ROOST_ADMIN_TOKEN.*must not be empty/],
  ])('refuses %s', (_what, argv, re) => {
    expect(problems(argv).some(p => re.test(p))).toBe(true)
  })

  it('accepts port 0 (an ephemeral port, as the tests use) and 65535', () => {
    expect(problems(['--mqtt-port', '0', '--http-port', '65535'])).toEqual([])
  })

  it('a bad value in the environment is named by its variable and its flag', () => {
    expect(problems([], { ROOST_HTTP_PORT: 'http' })).toEqual(['ROOST_HTTP_PORT (--http-port) must be a port number 0–65535, got "http"'])
  })
})

describe('the loaded config', () => {
  function frozenEverywhere (value: unknown, path: string, out: string[]): void {
    if (value === null || typeof value !== 'object') return
    if (!Object.isFrozen(value)) out.push(path)
    for (const [k, v] of Object.entries(value)) frozenEverywhere(v, `${path}.${k}`, out)
  }

  it('is deeply frozen', () => {
    const config = loadConfig(['--tls-cert', certFile, '--tls-key', keyFile], {})
    const notFrozen: string[] = []
    frozenEverywhere(config, 'config', notFrozen)
    expect(notFrozen).toEqual([])
    // modules are strict mode: writing throws instead of being ignored
    expect(() => { (config.broker as { mqttPort: number }).mqttPort = 1 }).toThrow(TypeError)
    expect(() => { (config.broker.tls as { certFile: string }).certFile = 'x' }).toThrow(TypeError)
    expect(config.broker.mqttPort).toBe(1883)
  })
})

describe('the roost CLI', () => {
  // a clean environment: nothing of the developer's own Roost settings leaks into the child
  function cliEnv (extra: Record<string, string>): NodeJS.ProcessEnv {
    const names = new Set<string>(SETTINGS.map(s => s.env))
    const env: NodeJS.ProcessEnv = {}
    for (const [k, v] of Object.entries(process.env)) if (!names.has(k)) env[k] = v
    return { ...env, ...extra }
  }

  async function roostCli (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
    const dataDir = mkdtempSync(join(scratch, 'data-'))
    try {
      const { stdout, stderr } = await run(process.execPath, ['bin/roost.mjs', ...args], { cwd: ROOT, env: cliEnv({ ROOST_DATA_DIR: dataDir }), timeout: 60_000 })
      return { code: 0, stdout, stderr }
    } catch (err) {
      const e = err as { code?: number | string, stdout?: string, stderr?: string, killed?: boolean }
      if (e.killed === true || typeof e.code !== 'number') throw err
      return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
    }
  }

  it('roost start with a bad MQTT port and a bad HTTP port exits non-zero and prints both problems', async () => {
    const { code, stderr } = await roostCli(['start', '--mqtt-port', 'notaport', '--http-port', '99999'])
    expect(code).not.toBe(0)
    expect(stderr).toContain('configuration is not valid')
    expect(stderr).toContain('ROOST_MQTT_PORT (--mqtt-port) must be a port number 0–65535, got "notaport"')
    expect(stderr).toContain('ROOST_HTTP_PORT (--http-port) must be a port number 0–65535, got "99999"')
    // a config problem is a message, not a crash
    expect(stderr).not.toMatch(/\bat .*\.ts:\d+/)
  })

  it('roost device add with an impossible id exits non-zero and says what an id looks like', async () => {
    const { code, stdout, stderr } = await roostCli(['device', 'add', 'bad/id'])
    expect(code).not.toBe(0)
    expect(stderr).toContain('the id must match ^[A-Za-z0-9_-]{1,64}$')
    expect(stdout).not.toContain('created')
  })
})
