// The topic ACL and login rules as tables over the pure decisions in broker/acl.ts and broker/identity.ts.
// These functions do no I/O, so this file needs no running Roost; acl-e2e.test.ts checks the same rules
// through a real broker.

import { describe, expect, it } from 'vitest'
import { decidePublish, decideRead, decideSubscribe, filterMatches, type Decision, type FamilyTable, type ReadScope } from '../broker/acl.ts'
import { decideLogin, type DeviceCredential, type Identity, type LoginContext, type LoginRequest } from '../broker/identity.ts'
import { GroupCommitter } from '../broker/ingest.ts'
import { buildFamilyTable } from '../broker/families.ts'
import { CommandCenter } from '../broker/topics/commands.ts'
import { topicMatches } from './topic-match.ts'
import { hashToken } from '../db/devices.ts'
import { createLogger } from '../log.ts'
import type { Database } from '../db/open.ts'
import { FAMILY_NAMES, deviceTopic } from '../schemas/topics.ts'

// The table the broker uses (broker/families.ts). The committer and database are never reached: only
// the families' `accept` steps use them, and these tests only ask for decisions (the database throws if asked).
const log = createLogger('silent')
const committer = new GroupCommitter({ write: async () => {}, log })
const noDatabase: Database = {
  kind: 'pglite',
  get orm (): never { throw new Error('ACL decisions must not touch the database') },
  query: async () => { throw new Error('ACL decisions must not touch the database') },
  close: async () => {},
}
const commandCenter = new CommandCenter({ db: noDatabase, log, now: Date.now, publish: async () => { throw new Error('ACL decisions must not publish') }, isOnline: () => false })
const table: FamilyTable = buildFamilyTable({ limits: { maxKeys: 64, maxPayloadBytes: 65536, maxBatchRows: 1000 }, committer, now: Date.now }, { db: noDatabase, log, now: Date.now }, commandCenter)

const deviceA: Identity = { kind: 'device', deviceId: 'A' }
const service: Identity = { kind: 'service', name: 'api' }
const anonymous: Identity = { kind: 'anonymous' }
const who = { 'device A': deviceA, service, anonymous } as const
type Who = keyof typeof who

type PublishRow = readonly [Who, string, Decision]

describe('decidePublish: who may publish where', () => {
  const rows: readonly PublishRow[] = [
    // a device writes its own device → platform topics
    ['device A', 'devices/A/telemetry', 'allow'],
    ['device A', 'devices/A/state/reported', 'allow'],
    ['device A', 'devices/A/commands/c1/result', 'allow'],
    ['device A', 'devices/A/ota/status', 'allow'],
    ['device A', 'devices/A/audio/up', 'allow'],
    ['device A', 'devices/A/audio/ctl', 'allow'],
    ['device A', 'devices/A/stream/frames', 'allow'],
    // ... and nothing of another device
    ['device A', 'devices/B/telemetry', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/B/state/reported', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/B/commands/c1/result', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/B/audio/up', 'TOPIC_FORBIDDEN'],
    // ... nor its own platform → device topics
    ['device A', 'devices/A/state/desired', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/commands/c1', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/ota', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/presence', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/errors', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/audio/down', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/audio/events', 'TOPIC_FORBIDDEN'],
    // ... nor outside devices/
    ['device A', '$SYS/x', 'TOPIC_FORBIDDEN'],
    ['device A', 'users/u1', 'TOPIC_FORBIDDEN'],
    ['device A', 'roost/control/devices/A', 'TOPIC_FORBIDDEN'],
    ['device A', 'hello/world', 'TOPIC_FORBIDDEN'],
    // topics under devices/ that are no family, or whose id is not a device id
    ['device A', 'devices/A/unknown', 'TOPIC_UNKNOWN'],
    ['device A', 'devices/A/commands/c1/other', 'TOPIC_UNKNOWN'],
    ['device A', 'devices/A', 'TOPIC_UNKNOWN'],
    ['device A', 'devices/A/telemetry/extra', 'TOPIC_UNKNOWN'],
    ['device A', 'devices/not.an.id/telemetry', 'TOPIC_UNKNOWN'],
    ['device A', 'devices', 'TOPIC_UNKNOWN'],
    // services write the platform → device topics (api, bridge) and may relay device topics
    ['service', 'devices/A/commands/c1', 'allow'],
    ['service', 'devices/A/state/desired', 'allow'],
    ['service', 'devices/A/ota', 'allow'],
    ['service', 'devices/A/audio/down', 'allow'],
    ['service', 'devices/A/audio/events', 'allow'],
    ['service', 'devices/A/telemetry', 'allow'],
    ['service', 'roost/control/devices/A', 'allow'],
    ['service', 'users/u1/devices', 'allow'],
    ['service', 'hello/world', 'allow'],
    // nobody but the broker itself publishes presence, errors or $SYS [MQTT-4.7.2-1]
    ['service', 'devices/A/presence', 'TOPIC_FORBIDDEN'],
    ['service', 'devices/A/errors', 'TOPIC_FORBIDDEN'],
    ['service', '$SYS/broker/uptime', 'TOPIC_FORBIDDEN'],
    ['service', '$other/x', 'TOPIC_FORBIDDEN'],
    // anonymous clients only have the scratch space
    ['anonymous', 'hello/world', 'allow'],
    ['anonymous', 'a', 'allow'],
    ['anonymous', 'test/nosubscribe', 'allow'],
    ['anonymous', 'devices/A/telemetry', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'devices/A/commands/c1', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'devices/A/presence', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'devices/A/whatever', 'TOPIC_UNKNOWN'],
    ['anonymous', '$SYS/x', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'users/u1', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'roost/control/devices/A', 'TOPIC_FORBIDDEN'],
  ]

  it.each(rows)('%s publishing to %s: %s', (name, topic, expected) => {
    expect(decidePublish(who[name], topic, table).decision).toBe(expected)
  })

  it('an allowed device topic comes back with its family rule and device id, so the accept step can run', () => {
    const d = decidePublish(deviceA, 'devices/A/telemetry', table)
    expect(d.deviceId).toBe('A')
    expect(d.rule).toBe(table.telemetry)
    expect(d.rule?.accept).toBeTypeOf('function')
  })

  it('no device may publish any platform-written family of any device, its own included', () => {
    for (const family of FAMILY_NAMES) {
      for (const owner of ['A', 'B']) {
        const topic = deviceTopic(owner, family, 'c1')
        const d = decidePublish(deviceA, topic, table).decision
        const own = owner === 'A' && ['telemetry', 'state/reported', 'commands/result', 'ota/status', 'audio/up', 'audio/ctl', 'stream/frames'].includes(family)
        expect(d, topic).toBe(own ? 'allow' : 'TOPIC_FORBIDDEN')
      }
    }
  })
})

type ReadRow = readonly [Who, string, boolean]

describe('decideRead: who may receive a message on a topic', () => {
  const rows: readonly ReadRow[] = [
    ['device A', 'devices/A/commands/c1', true],
    ['device A', 'devices/A/state/desired', true],
    ['device A', 'devices/A/ota', true],
    ['device A', 'devices/A/errors', true],
    ['device A', 'devices/A/audio/down', true],
    ['device A', 'devices/A/audio/events', true],
    // what a device writes goes to the platform, not back to the device
    ['device A', 'devices/A/telemetry', false],
    ['device A', 'devices/A/state/reported', false],
    ['device A', 'devices/A/presence', false],
    // nothing of another device
    ['device A', 'devices/B/commands/c1', false],
    ['device A', 'devices/B/state/desired', false],
    ['device A', 'devices/B/errors', false],
    ['device A', 'devices/B/telemetry', false],
    ['device A', 'hello/world', false],
    ['device A', '$SYS/x', false],
    ['service', 'devices/B/telemetry', true],
    ['service', 'devices/B/presence', true],
    ['service', '$SYS/x', true],
    ['anonymous', 'hello/world', true],
    ['anonymous', 'devices/A/presence', false],
    ['anonymous', 'devices/A/commands/c1', false],
    ['anonymous', 'devices/A/whatever', false],
    ['anonymous', '$SYS/x', false],
    ['anonymous', 'users/u1', false],
    ['anonymous', 'roost/control/devices/A', false],
  ]

  it.each(rows)('%s receiving %s: %s', (name, topic, expected) => {
    expect(decideRead(who[name], topic, table)).toBe(expected)
  })
})

type SubscribeRow = readonly [Who, string, ReadScope]

describe('decideSubscribe: which filters are granted, narrowed or refused', () => {
  const rows: readonly SubscribeRow[] = [
    // wildcards that could reach other devices are narrowed to what A may read
    ['device A', '#', 'some'],
    ['device A', '+/A/#', 'some'],
    ['device A', '+/+/+', 'some'],
    ['device A', 'devices/A/#', 'some'],
    ['device A', 'devices/A/+', 'some'],
    ['device A', 'devices/+/commands/+', 'some'],
    // a filter matching only A's readable topics is granted whole
    ['device A', 'devices/A/commands/+', 'all'],
    ['device A', 'devices/A/commands/c1', 'all'],
    ['device A', 'devices/A/state/desired', 'all'],
    ['device A', 'devices/A/errors', 'all'],
    ['device A', 'devices/A/audio/+', 'some'],
    // filters that can only reach what A may not read are refused (SUBACK 0x80)
    ['device A', 'devices/+/telemetry', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/telemetry', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/presence', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/A/commands/+/result', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/B/#', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/B/commands/+', 'TOPIC_FORBIDDEN'],
    ['device A', 'devices/B/state/desired', 'TOPIC_FORBIDDEN'],
    ['device A', 'hello/#', 'TOPIC_FORBIDDEN'],
    ['device A', 'hello/world', 'TOPIC_FORBIDDEN'],
    // $ topics are never matched by a leading wildcard and never granted to clients [MQTT-4.7.2-1]
    ['device A', '$SYS/#', 'TOPIC_FORBIDDEN'],
    ['anonymous', '$SYS/#', 'TOPIC_FORBIDDEN'],
    ['anonymous', '$SYS/broker/uptime', 'TOPIC_FORBIDDEN'],
    // anonymous: the scratch space only
    ['anonymous', '#', 'some'],
    ['anonymous', '+/world', 'some'],
    ['anonymous', 'hello/#', 'all'],
    ['anonymous', 'hello/+/x', 'all'],
    ['anonymous', 'hello/world', 'all'],
    ['anonymous', 'devices/#', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'devices/+/presence', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'devices/A/commands/c1', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'users/#', 'TOPIC_FORBIDDEN'],
    ['anonymous', 'roost/+', 'TOPIC_FORBIDDEN'],
    // services see everything
    ['service', '#', 'all'],
    ['service', 'devices/+/telemetry', 'all'],
    ['service', '$SYS/#', 'all'],
  ]

  it.each(rows)('%s subscribing to %s: %s', (name, filter, expected) => {
    expect(decideSubscribe(who[name], filter, table)).toBe(expected)
  })

  // Every concrete topic any family of device A or B can have, plus the other spaces.
  const topics: readonly string[] = [
    ...FAMILY_NAMES.flatMap(f => [deviceTopic('A', f, 'c1'), deviceTopic('B', f, 'c1')]),
    'hello/world', 'hello', 'users/u1', 'roost/control/devices/A', '$SYS/x',
  ]
  const filters: readonly string[] = rows.map(r => r[1])

  it('a filter granted "all" matches only topics its subscriber may read, so skipping the per-delivery check leaks nothing', () => {
    for (const name of ['device A', 'anonymous'] as const) {
      for (const filter of filters) {
        if (decideSubscribe(who[name], filter, table) !== 'all') continue
        for (const topic of topics) {
          if (!topicMatches(filter, topic)) continue
          expect(decideRead(who[name], topic, table), `${name}: ${filter} matches ${topic}`).toBe(true)
        }
      }
    }
  })

  it('a filter granted "some" still delivers nothing of device B to device A', () => {
    for (const filter of filters) {
      if (decideSubscribe(deviceA, filter, table) !== 'some') continue
      for (const topic of topics.filter(t => t.startsWith('devices/B/'))) {
        if (topicMatches(filter, topic)) expect(decideRead(deviceA, topic, table), `${filter} → ${topic}`).toBe(false)
      }
    }
  })

  it('filterMatches treats # as this level and below, + as one level, and a command id level as any command id', () => {
    expect(filterMatches(['devices', '#'], ['devices', 'A', 'telemetry'])).toBe(true)
    // [MQTT-4.7.1-2] "sport/#" also matches "sport"
    expect(filterMatches(['devices', 'A', '#'], ['devices', 'A'])).toBe(true)
    expect(filterMatches(['devices', '+'], ['devices', 'A', 'telemetry'])).toBe(false)
    expect(filterMatches(['devices', 'A', 'commands', 'c1'], ['devices', 'A', 'commands', '+'])).toBe(true)
    expect(filterMatches(['devices', 'A', 'commands', 'bad.id'], ['devices', 'A', 'commands', '+'])).toBe(false)
    expect(filterMatches(['devices', 'A', 'telemetry', 'x'], ['devices', 'A', 'telemetry'])).toBe(false)
  })
})


describe('decideLogin: who may connect, as whom', () => {
  const tokenA = 'rdt_token-of-A'
  const serviceToken = 'rst_service-secret'
  const devices = new Map<string, DeviceCredential>([['A', { tokenHash: hashToken(tokenA) }], ['B', { tokenHash: hashToken('rdt_token-of-B') }]])
  function context (anonymous: boolean): LoginContext {
    return { lookupDevice: async id => devices.get(id), serviceToken, anonymous }
  }
  function login (clientId: string, username?: string, password?: string, clean = true): LoginRequest {
    return { clientId, username, password: password === undefined ? undefined : Buffer.from(password), clean }
  }

  type Expected = { readonly identity: Identity } | { readonly returnCode: 2 | 4 | 5, readonly code: string }
  type LoginRow = readonly [string, LoginRequest, boolean, Expected]
  const rows: readonly LoginRow[] = [
    ['a device with its id as client id and its token', login('A', 'A', tokenA), false, { identity: deviceA }],
    ['a device keeping a persistent session', login('A', 'A', tokenA, false), false, { identity: deviceA }],
    ['a device with another client id', login('A-2', 'A', tokenA), false, { returnCode: 2, code: 'CLIENT_ID_MISMATCH' }],
    ['a device with an empty client id', login('', 'A', tokenA), false, { returnCode: 2, code: 'CLIENT_ID_MISMATCH' }],
    ['a device using another device\'s client id', login('B', 'A', tokenA), false, { returnCode: 2, code: 'CLIENT_ID_MISMATCH' }],
    ['a device with a wrong token', login('A', 'A', 'rdt_wrong'), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a device with B\'s token', login('A', 'A', 'rdt_token-of-B'), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a device without a password', login('A', 'A'), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['an unknown device', login('Z', 'Z', tokenA), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a user name that is no device id', login('x', 'a/b', tokenA), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a wildcard user name', login('x', '#', tokenA), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['an empty user name', login('x', '', tokenA), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a service with the service token', login('api-1', 'service:api', serviceToken), false, { identity: service }],
    ['a service whose client id is not a registered device', login('Z', 'service:api', serviceToken), false, { identity: service }],
    ['a service using device A\'s id as client id', login('A', 'service:api', serviceToken), false, { returnCode: 2, code: 'CLIENT_ID_RESERVED' }],
    ['a service with a wrong token', login('api-1', 'service:api', 'nope'), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a service with a token one byte longer', login('api-1', 'service:api', serviceToken + 'x'), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a service without a password', login('api-1', 'service:api'), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['a service without a name', login('api-1', 'service:', serviceToken), false, { returnCode: 4, code: 'AUTH_INVALID' }],
    ['anonymous when anonymous logins are off', login('c1'), false, { returnCode: 5, code: 'AUTH_INVALID' }],
    ['anonymous when anonymous logins are on', login('c1'), true, { identity: anonymous }],
    ['anonymous with an empty client id and clean session', login(''), true, { identity: anonymous }],
    ['anonymous using device A\'s id as client id', login('A'), true, { returnCode: 2, code: 'CLIENT_ID_RESERVED' }],
    // [MQTT-3.1.3-8] an empty client id needs CleanSession 1, whoever logs in
    ['[MQTT-3.1.3-8] an empty client id with clean session 0 (anonymous)', login('', undefined, undefined, false), true, { returnCode: 2, code: 'CLIENT_ID_REQUIRED' }],
    ['[MQTT-3.1.3-8] an empty client id with clean session 0 (device)', login('', 'A', tokenA, false), false, { returnCode: 2, code: 'CLIENT_ID_REQUIRED' }],
    ['[MQTT-3.1.3-8] an empty client id with clean session 0 (service)', login('', 'service:api', serviceToken, false), false, { returnCode: 2, code: 'CLIENT_ID_REQUIRED' }],
  ]

  it.each(rows)('%s', async (_title, req, anon, expected) => {
    const result = await decideLogin(req, context(anon))
    if ('identity' in expected) expect(result).toEqual({ ok: true, identity: expected.identity })
    else expect(result).toEqual({ ok: false, returnCode: expected.returnCode, code: expected.code })
  })

  it('a failing device lookup rejects the login instead of letting it in', async () => {
    const failing: LoginContext = { lookupDevice: async () => { throw new Error('db down') }, serviceToken, anonymous: false }
    await expect(decideLogin(login('A', 'A', tokenA), failing)).rejects.toThrow('db down')
  })
})
