// The broker: Aedes with Roost's logins, topic ACL, packet guard, conformance checks, presence and telemetry ingest.

import { createServer, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls'
import { readFileSync } from 'node:fs'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { AddressInfo } from 'node:net'
import { Aedes, type Client, type PublishPacket, type Subscription, type AedesPublishPacket } from 'aedes'
import aedesMemory from 'aedes-persistence'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { Config } from '../schemas/config.ts'
import type { ErrorCode } from '../schemas/errors.ts'
import { errorMessage } from '../schemas/errors.ts'
import type { Family } from '../schemas/topics.ts'
import { FAMILIES, deviceTopic, isDeviceId, parseTopic } from '../schemas/topics.ts'
import type { Database } from '../db/open.ts'
import { allDevices, deviceCredentials, writeLastSeen } from '../db/devices.ts'
import { insertTelemetry } from '../db/telemetry.ts'
import { allDesired } from '../db/state.ts'
import { decideLogin, describeIdentity, APP_USERNAME, type AppCredential, type DeviceCredential, type Identity } from './identity.ts'
import { LoginGuard } from '../api/lockout.ts'
import { getDevice } from '../db/devices.ts'
import { decidePublish, decideRead, decideSubscribe, filterMatches, type Decision, type FamilyRule, type FamilyTable, type Refusal } from './acl.ts'
import { connectProblem, mqttStringProblem, packetProblem } from './conformance.ts'
import { CONNACK_UNSUPPORTED_LEVEL, PacketFramer } from './packet-guard.ts'
import { GroupCommitter } from './ingest.ts'
import { DeviceCredentials } from './credentials.ts'
import { createMq } from './mq.ts'
import { LastSeen } from './last-seen.ts'
import { boundOfflineQueue } from './offline-queue.ts'
import { BrokerCounters, registerBrokerMetrics, type FlowKey } from './metrics.ts'
import { PresenceTracker } from './topics/presence.ts'
import { buildFamilyTable } from './families.ts'
import { CommandCenter, commandExpired } from './topics/commands.ts'
import { errorNotice } from './topics/errors.ts'

/** User credentials for app logins (api/user-auth.ts's UserAuth), and word of their revocation. */
export interface AppLogins {
  verify (token: string): Promise<AppCredential | undefined>
  on (event: 'revoked', listener: (r: { kind: 'session' | 'apikey', id: string, userId: string }) => void): unknown
}

export interface BrokerDeps {
  readonly db: Database
  readonly log: Logger
  readonly registry: Registry
  readonly now?: () => number
  // without it, username `app` is refused like any unknown login
  readonly apps?: AppLogins
  // failed logins per username and per address (shared with the REST login when in one process)
  readonly guard?: LoginGuard
}

export interface PlatformPublish {
  readonly qos?: 0 | 1
  readonly retain?: boolean
}

// 'commands': the device has new commands waiting (delivered now if it is online)
// 'owner': its owner changed; apps' reads of it are judged again at once
export type DeviceChange = 'changed' | 'rotated' | 'deleted' | 'commands' | 'owner'

export interface Broker {
  readonly aedes: Aedes
  readonly presence: PresenceTracker
  readonly committer: GroupCommitter
  readonly commands: CommandCenter
  /** Serves one MQTT connection over any duplex stream (the API's /mqtt WebSocket route uses this). */
  handle (stream: Duplex, req?: IncomingMessage): void
  listen (): Promise<{ mqttPort: number, mqttsPort: number | undefined }>
  /** Publishes as the platform itself (no ACL: presence, desired state, errors). */
  publish (topic: string, payload: Buffer | string, opts?: PlatformPublish): Promise<void>
  /** A device was changed through the API: forget cached credentials, and cut its session on rotate/delete. */
  deviceChanged (deviceId: string, change: DeviceChange): Promise<void>
  /** True when the device's current session has subscribed to its commands and had its first delivery. */
  commandsListening (deviceId: string): boolean
  close (): Promise<void>
}

// Aedes drops, as a duplicate, a message numbered below the last one a client got from the same broker: a
// guard for clusters, where one message can arrive by two brokers. It numbers a publish when the publish
// starts, and a QoS 1 publish passes the session store before it is routed, so a QoS 0 publish made just
// after it overtakes it, and the QoS 1 message (a voice state event, a caption, presence) was dropped for
// that client. Roost is one broker, where nothing arrives twice: no client remembers the numbers.
const NOTHING_REMEMBERED: object = new Proxy(Object.create(null) as object, {
  get: () => undefined,
  set: () => true,
  deleteProperty: () => true,
})

// A publish the ACL or its family refused: Aedes still acknowledges it (MQTT 3.1.1 has no negative
// PUBACK), and the broker's publish below drops it instead of relaying it.
const REFUSED = Symbol('roost.refused')
const SESSION = Symbol('roost.session')
const CONNECT_FACTS = Symbol('roost.connect')

interface CachedPublish {
  readonly decision: Decision
  readonly rule: FamilyRule | undefined
  readonly deviceId: string | undefined
  readonly flow: FlowKey
  readonly fromDevice: boolean // a device-written family: retain is cleared, last-seen touched
}

interface Session {
  readonly identity: Identity
  // created at the first publish: most connections of a fleet sit idle and never need one
  publishCache: Map<string, CachedPublish> | undefined
  // present once the client holds a narrowed wildcard subscription: each delivery is checked, per topic once
  readCache: Map<string, boolean> | undefined
  // set once this session's first command delivery (which resends unanswered ones) has happened
  commandsDelivered?: true
}

// the parts of aedes-persistence's session store this file uses beyond the offline-queue bound
type SessionStore = Parameters<typeof boundOfflineQueue>[0] & {
  cleanSubscriptions (client: { id: string }): Promise<void>
  outgoingStream (client: { id: string }): AsyncIterable<unknown>
}

interface ConnectFacts { readonly clientId: string, readonly clean: boolean, readonly willTopic: string | undefined }

type RoostClient = Client & { [SESSION]?: Session, [CONNECT_FACTS]?: ConnectFacts, _parser: ParserInternals }
type RoostPacket = PublishPacket & { [REFUSED]?: true }
interface ParserInternals {
  parse (buf: Buffer): number
  listeners (event: 'packet'): Array<(packet: unknown) => void>
  removeAllListeners (event: 'packet'): void
  on (event: 'packet', fn: (packet: unknown) => void): void
}

// Per-connection decision caches: a device publishes to a handful of topics; a service may address
// thousands of devices, so the cache is dropped when it grows past this instead of growing forever.
const DECISION_CACHE_MAX = 512
// Telemetry statements committing at once on a Postgres server: enough to keep the server busy while the
// broker prepares the next batch, few enough that they rarely wait on each other's row locks
const INGEST_STATEMENTS_IN_FLIGHT = 3
// rows per embedded-database transaction: COPY costs ~25% less per row at 20,000 than at 5,000, and a
// batch that size commits in ~0.15 s, a bound on the added acknowledgement delay under full load
const PGLITE_BATCH_ROWS = 20_000
// A refused client that does not close after our CONNACK is cut off after this.
const REFUSAL_LINGER_MS = 1000

export function buildBroker (config: Config, deps: BrokerDeps): Broker {
  const { db, log } = deps
  const now = deps.now ?? Date.now
  const serviceToken = config.auth.serviceToken
  if (serviceToken === undefined) throw new Error('buildBroker needs config.auth.serviceToken (resolveSecrets fills it)')

  const counters = new BrokerCounters()
  // a Postgres server works on several statements at once; PGlite runs them one by one on our thread,
  // where fewer, larger COPYs cost less per row
  const committer = new GroupCommitter(db.kind === 'postgres'
    ? { write: rows => insertTelemetry(db, rows), log, maxInFlight: INGEST_STATEMENTS_IN_FLIGHT }
    : { write: rows => insertTelemetry(db, rows), log, maxInFlight: 1, maxBatchRows: PGLITE_BATCH_ROWS })
  const lastSeen = new LastSeen(seen => writeLastSeen(db, seen), config.lastSeenFlushMs, log)

  const commands = new CommandCenter({
    db,
    log,
    now,
    publish: (topic, payload, opts) => platformPublish(topic, payload, opts),
    isOnline: id => presence.isOnline(id),
  })
  const table: FamilyTable = buildFamilyTable({ limits: config.telemetry, committer, now }, { db, log, now }, commands)

  const credentials = new DeviceCredentials(ids => deviceCredentials(db, ids))
  // who owns each device, for apps' reads: loaded at start, updated on every device change
  const owners = new Map<string, string>()
  const ownerOf = (id: string): string | undefined => owners.get(id)
  const loginGuard = deps.guard ?? new LoginGuard({ addressThreshold: config.loginAddressFailures })
  // open app connections, to close those of a revoked or expired credential
  const appClients = new Set<RoostClient>()
  const lookupDevice = (id: string): Promise<DeviceCredential | undefined> => credentials.lookup(id)

  // aedes-persistence is CommonJS whose typings claim an ES default export; at run time the default import is the factory
  const memory = aedesMemory as unknown as () => SessionStore
  const persistence = boundOfflineQueue(memory(), config.broker.offlineQueueLimit, clientId => {
    counters.offlineDropped++
    if (counters.offlineDropped % 1000 === 1) log.warn({ clientId, limit: config.broker.offlineQueueLimit, dropped: counters.offlineDropped }, 'offline queue full; newest QoS 1 messages are dropped')
  })

  const aedes = new Aedes({
    mq: createMq(),
    persistence,
    preConnect,
    authenticate,
    authorizePublish,
    authorizeSubscribe,
    authorizeForward,
    // 64 chars is the longest device id; MQTT 3.1 clients are held to the spec's 23 only by Aedes' own check
    maxClientsIdLength: 23,
  })

  // ---- login ---------------------------------------------------------------------------------------

  function preConnect (client: Client, packet: Parameters<typeof connectProblem>[0], done: (err: Error | null, ok: boolean) => void): void {
    const problem = connectProblem(packet)
    if (problem !== undefined) {
      violation(client as RoostClient, problem)
      return done(new Error(problem), false)
    }
    const c = client as RoostClient
    c[CONNECT_FACTS] = { clientId: packet.clientId ?? '', clean: packet.clean !== false, willTopic: packet.will?.topic }
    ;(client as unknown as { duplicates: object }).duplicates = NOTHING_REMEMBERED
    done(null, true)
  }

  function authenticate (client: Client, username: string | undefined, password: Buffer | undefined, done: (err: (Error & { returnCode: number }) | null, ok: boolean | null) => void): void {
    const c = client as RoostClient
    const facts = c[CONNECT_FACTS] as ConnectFacts
    const refuse = (returnCode: number, code: ErrorCode): void => {
      counters.connectsRefused++
      counters.refuse(code)
      log.info({ clientId: facts.clientId, username, code, returnCode }, 'MQTT login refused')
      setTimeout(() => c.conn.destroy(), REFUSAL_LINGER_MS).unref()
      done(Object.assign(new Error(errorMessage(code)), { returnCode }), false)
    }
    // every app logs in as `app`: counting its failures per username would let anyone lock all apps out
    // (and its password is a signed token or a 192-bit key, nothing to guess), so apps count per address only
    const account = username === undefined || username === APP_USERNAME ? undefined : `mqtt:${username}`
    // a TCP or TLS socket has the client's address; a WebSocket stream does not (its logins count per username)
    const remote = (c.conn as { remoteAddress?: string }).remoteAddress
    const address = remote === undefined ? undefined : `ip:${remote}`
    const wait = loginGuard.retryAfter(account, address)
    // while locked out even a right password is refused; CONNACK 5 tells the client not to hurry back
    if (wait > 0) return refuse(5, 'LOGIN_LOCKED')
    const verifyApp = deps.apps === undefined ? undefined : (token: string) => (deps.apps as AppLogins).verify(token)
    decideLogin({ clientId: facts.clientId, username, password, clean: facts.clean }, { lookupDevice, serviceToken: serviceToken as string, anonymous: config.broker.anonymous, verifyApp })
      .then(result => {
        if (!result.ok) {
          if (result.code === 'AUTH_INVALID' && username !== undefined) {
            const locked = loginGuard.fail(account, address)
            if (locked.length > 0) log.warn({ locked, clientId: facts.clientId }, 'MQTT logins locked out after repeated failures')
          }
          return refuse(result.returnCode, result.code)
        }
        loginGuard.succeed(account)
        // a will is a publish the client makes later; refuse the login now rather than drop the will then
        if (facts.willTopic !== undefined && decidePublish(result.identity, facts.willTopic, table).decision !== 'allow') return refuse(5, 'TOPIC_FORBIDDEN')
        c[SESSION] = { identity: result.identity, publishCache: undefined, readCache: undefined }
        if (result.identity.kind === 'app') watchApp(c, result.identity.expiresAt)
        c[CONNECT_FACTS] = undefined // needed only for the login; an idle connection should not carry it
        counters.connectsAccepted++
        done(null, true)
      }, (err: unknown) => {
        log.error({ err, clientId: facts.clientId }, 'login lookup failed')
        refuse(3, 'DB_UNAVAILABLE') // CONNACK 3: server unavailable; the client retries
      })
  }

  // ---- publish ---------------------------------------------------------------------------------------

  function decide (identity: Identity, topic: string): CachedPublish {
    const problem = mqttStringProblem(topic)
    if (problem !== undefined) return { decision: 'PROTOCOL_VIOLATION', rule: undefined, deviceId: undefined, flow: 'other', fromDevice: false }
    const d = decidePublish(identity, topic, table)
    const parsed = parseTopic(topic)
    const family: Family | undefined = parsed.space === 'device' ? parsed.family : undefined
    return {
      decision: d.decision,
      rule: d.rule,
      deviceId: d.deviceId,
      flow: family ?? (parsed.space === 'scratch' ? 'scratch' : 'other'),
      fromDevice: family !== undefined && FAMILIES[family].writer === 'device' && identity.kind === 'device',
    }
  }

  function authorizePublish (client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const c = client as RoostClient | null
    const session = c?.[SESSION]
    // no client: a will restored from persistence; wills were authorized at CONNECT
    if (c === null || session === undefined) return done(null)
    const cache = session.publishCache ?? (session.publishCache = new Map<string, CachedPublish>())
    let entry = cache.get(packet.topic)
    if (entry === undefined) {
      entry = decide(session.identity, packet.topic)
      if (cache.size >= DECISION_CACHE_MAX) cache.clear()
      cache.set(packet.topic, entry)
    }
    if (entry.decision === 'PROTOCOL_VIOLATION') {
      // [MQTT-1.5.3-1] ill-formed topic strings close the connection
      violation(c, mqttStringProblem(packet.topic) as string)
      return done(new Error('protocol violation'))
    }
    if (entry.decision !== 'allow') return refusePublish(c, session, packet, { code: entry.decision }, done)
    counters.count(counters.in, entry.flow)
    if (entry.fromDevice) {
      // device topics are never retained (the contract's table); a retained telemetry would replay stale data
      packet.retain = false
      lastSeen.touch(entry.deviceId as string, now())
    }
    const accept = entry.rule?.accept
    if (accept === undefined) return done(null)
    accept(session.identity, entry.deviceId as string, packet, refusal => {
      if (refusal === undefined) done(null)
      else refusePublish(c, session, packet, refusal, done)
    })
  }

  function refusePublish (client: RoostClient, session: Session, packet: RoostPacket, refusal: Refusal, done: (err?: Error | null) => void): void {
    packet[REFUSED] = true
    counters.refuse(refusal.code)
    if (refusal.unacknowledged === true) return done(new Error(refusal.code)) // Aedes closes the connection: no PUBACK
    const identity = session.identity
    log.debug({ clientId: client.id, topic: packet.topic, code: refusal.code, detail: refusal.detail }, 'publish refused')
    if (identity.kind === 'device') {
      const params = { action: 'publish to', detail: refusal.detail ?? '', limit: refusal.detail ?? '', ...refusal.params }
      const notice = errorNotice(identity.deviceId, packet.topic, refusal.code, params)
      background(platformPublish(notice.topic, notice.payload, { qos: 0 }), 'error notice')
    }
    done(null)
  }

  // Refused packets are acknowledged by Aedes but must go nowhere: this is the one place they stop.
  // Aedes' runtime publish takes (packet, client, done); its typings only declare (packet, done)
  type AedesPublishFn = (packet: unknown, client: Client | null, done?: (err?: Error) => void) => void
  const aedesPublish = aedes.publish.bind(aedes) as unknown as AedesPublishFn
  ;(aedes as { publish: unknown }).publish = function publish (packet: RoostPacket, client: Client | null | ((err?: Error) => void), done?: (err?: Error) => void) {
    if (packet[REFUSED] === true) {
      const cb = typeof client === 'function' ? client : done
      if (cb !== undefined) cb()
      return
    }
    aedesPublish(packet, client as Client | null, done)
  }

  function platformPublish (topic: string, payload: Buffer | string, opts: PlatformPublish = {}): Promise<void> {
    const parsed = parseTopic(topic)
    counters.count(counters.out, parsed.space === 'device' ? parsed.family : 'other')
    return new Promise((resolve, reject) => {
      aedesPublish({
        cmd: 'publish',
        topic,
        payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
        qos: opts.qos ?? 0,
        retain: opts.retain ?? false,
        dup: false,
      }, null, err => (err ? reject(err) : resolve()))
    })
  }

  // ---- subscribe and delivery -------------------------------------------------------------------------

  function authorizeSubscribe (client: Client, sub: Subscription, done: (err: Error | null, sub?: Subscription | null) => void): void {
    const c = client as RoostClient
    const session = c[SESSION]
    if (session === undefined) return done(null, null)
    const problem = mqttStringProblem(sub.topic)
    if (problem !== undefined) {
      violation(c, problem)
      return done(new Error(problem))
    }
    const scope = decideSubscribe(session.identity, sub.topic, table, ownerOf)
    if (scope === 'all' || scope === 'some') {
      if (scope === 'some' && session.readCache === undefined) session.readCache = new Map()
      return done(null, sub)
    }
    counters.refuse(scope)
    log.debug({ clientId: c.id, filter: sub.topic, code: scope }, 'subscribe refused')
    const identity = session.identity
    if (identity.kind === 'device') {
      const notice = errorNotice(identity.deviceId, sub.topic, scope, { action: 'subscribe to' })
      background(platformPublish(notice.topic, notice.payload, { qos: 0 }), 'error notice')
    }
    done(null, null) // SUBACK 0x80
  }

  function authorizeForward (client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    // a command the broker's own offline queue kept past its expiry is never delivered late
    if (packet.topic.includes('/commands/') && !packet.topic.endsWith('/result') && commandExpired(packet.payload as Buffer, now())) return null
    const session = (client as RoostClient)[SESSION]
    const cache = session?.readCache
    if (cache === undefined) return packet // no narrowed subscription: everything subscribed is readable
    let ok = cache.get(packet.topic)
    if (ok === undefined) {
      ok = decideRead((session as Session).identity, packet.topic, table, ownerOf)
      if (cache.size >= DECISION_CACHE_MAX) cache.clear()
      cache.set(packet.topic, ok)
    }
    return ok ? packet : null
  }

  // ---- connections -----------------------------------------------------------------------------------

  let openConnections = 0

  // A publish of the broker's own that nobody awaits; one racing close() fails with "mqemitter is closed",
  // which must not surface as an unhandled rejection.
  function background (p: Promise<void>, what: string): void {
    p.catch((err: unknown) => {
      if (aedes.closed) log.debug({ err, what }, 'platform publish after close dropped')
      else log.warn({ err, what }, 'platform publish failed')
    })
  }

  function violation (client: RoostClient, detail: string): void {
    counters.refuse('PROTOCOL_VIOLATION')
    log.warn({ clientId: client.id ?? undefined, detail }, 'protocol violation; closing the connection')
    client.conn.destroy()
  }

  function handle (stream: Duplex, req?: IncomingMessage): void {
    openConnections++
    stream.once('close', () => { openConnections-- })
    coalesceWrites(stream)
    const client = aedes.handle(stream, req) as RoostClient
    guard(client, stream)
  }

  /**
   * Aedes writes each delivered message on its own: it delivers every message in its own setImmediate and
   * mqtt-packet corks the socket only until the next tick, so a busy subscriber cost one writev system
   * call per message (~30% of the broker's CPU when relaying). Corking from a connection's first write in
   * an event-loop turn until that turn's deliveries have run sends them in one writev; an idle connection's
   * single message leaves in the same turn.
   */
  function coalesceWrites (stream: Duplex): void {
    let corked = false
    const uncork = (): void => {
      corked = false
      stream.uncork()
    }
    const write = stream.write
    stream.write = function coalescedWrite (this: Duplex, ...args: Parameters<Duplex['write']>): boolean {
      if (!corked) {
        corked = true
        stream.cork()
        setImmediate(uncork)
      }
      return write.apply(this, args)
    } as Duplex['write']
  }

  /** Puts the byte framer in front of the parser and the packet checks in front of Aedes' handler. */
  function guard (client: RoostClient, stream: Duplex): void {
    const parser = client._parser
    const framer = new PacketFramer(config.broker.maxPacketBytes)
    const parse = parser.parse.bind(parser)
    let stopped = false
    parser.parse = (buf: Buffer): number => {
      if (stopped) return 0
      const verdict = framer.feed(buf)
      if (verdict === undefined) return parse(buf)
      stopped = true
      switch (verdict.kind) {
        case 'too-large':
          counters.refuse('PACKET_TOO_LARGE')
          log.warn({ clientId: client.id ?? undefined, size: verdict.size, limit: config.broker.maxPacketBytes }, 'packet too large; closing the connection')
          stream.destroy()
          break
        case 'malformed-length':
          violation(client, '[MQTT-2.2.3] remaining length longer than four bytes')
          break
        case 'unsupported-level':
          // [MQTT-3.1.2-2] answer CONNACK 0x01 and close
          counters.refuse('PROTOCOL_VIOLATION')
          log.info({ level: verdict.level }, 'unsupported MQTT protocol level; CONNACK 0x01')
          stream.end(CONNACK_UNSUPPORTED_LEVEL)
          setTimeout(() => stream.destroy(), REFUSAL_LINGER_MS).unref()
          break
      }
      return 0
    }
    const [enqueue] = parser.listeners('packet')
    if (enqueue === undefined) throw new Error('aedes client parser has no packet listener')
    parser.removeAllListeners('packet')
    parser.on('packet', function checked (this: unknown, packet: unknown) {
      if (stopped) return
      const problem = packetProblem(packet as Parameters<typeof packetProblem>[0])
      if (problem !== undefined) {
        stopped = true
        violation(client, problem)
        return
      }
      enqueue.call(this, packet)
    })
  }

  /** A device's session opened or closed: last seen, retained presence, a log line. */
  function deviceSession (client: Client, online: boolean): void {
    const session = (client as RoostClient)[SESSION]
    if (session?.identity.kind !== 'device') return
    const id = session.identity.deviceId
    lastSeen.touch(id, now())
    background(online ? presence.online(id, client) : presence.offline(id, client), 'presence')
    // a persistent session's subscriptions are restored before this point
    if (online) deliverCommandsOnSubscription(client, Object.keys((client as unknown as { subscriptions: Record<string, unknown> }).subscriptions))
    log.info({ deviceId: id }, online ? 'device connected' : 'device disconnected')
  }

  /**
   * Commands go out once the device listens for them: at connect when its persistent session restored a
   * matching subscription, or when it subscribes (a clean session subscribes after CONNACK). The first
   * delivery of a session also resends sent but unanswered commands: a clean session has lost them, and a
   * device acts once per command id.
   */
  function deliverCommandsOnSubscription (client: Client, filters: readonly string[]): void {
    const session = (client as RoostClient)[SESSION]
    if (session?.identity.kind !== 'device') return
    const id = session.identity.deviceId
    const template = ['devices', id, 'commands', '+']
    if (!filters.some(f => filterMatches(f.split('/'), template))) return
    const resend = session.commandsDelivered !== true
    session.commandsDelivered = true
    void commands.deliver(id, resend)
  }

  /** The connected session of a client id, if any (Aedes keeps them by id; its typings do not say so). */
  function clientOf (clientId: string): Client | undefined {
    return (aedes as unknown as { clients: Record<string, Client | undefined> }).clients[clientId]
  }

  function commandsListening (deviceId: string): boolean {
    const client = clientOf(deviceId)
    return client !== undefined && (client as RoostClient)[SESSION]?.commandsDelivered === true
  }

  // Aedes sets each subscription's qos to the granted code, 128 for a refused one (its typings say 0–2)
  aedes.on('subscribe', (subs, client) => deliverCommandsOnSubscription(client, subs.filter(s => (s.qos as number) !== 128).map(s => s.topic)))
  aedes.on('clientReady', client => deviceSession(client, true))
  aedes.on('clientDisconnect', client => deviceSession(client, false))

  aedes.on('keepaliveTimeout', client => {
    log.info({ clientId: client.id }, 'keepalive timeout')
  })

  aedes.on('clientError', (client, err) => {
    log.debug({ clientId: client.id, err: err.message }, 'client error')
  })

  aedes.on('connectionError', (_client, err) => {
    log.debug({ err: err.message }, 'connection error before login')
  })

  const presence = new PresenceTracker((topic, payload, retain) => platformPublish(topic, payload, { qos: 1, retain }), now)

  registerBrokerMetrics(deps.registry, {
    counters,
    ingest: committer.stats,
    connections: () => openConnections,
    onlineDevices: () => presence.onlineCount,
    lockouts: () => loginGuard.lockouts,
  })

  // ---- control from a separate api process ------------------------------------------------------------

  async function deviceChanged (deviceId: string, change: DeviceChange): Promise<void> {
    if (change === 'commands') return await commands.deliver(deviceId, false)
    await refreshOwner(deviceId, change)
    if (change === 'owner') return
    credentials.forget(deviceId)
    if (change === 'changed') return
    const client = clientOf(deviceId)
    if (client !== undefined) {
      log.info({ deviceId, change }, 'closing the device session')
      await new Promise<void>(resolve => client.close(() => resolve()))
    }
    if (change === 'deleted') {
      await presence.forget(deviceId)
      // an empty retained payload removes the retained desired document
      await platformPublish(deviceTopic(deviceId, 'state/desired'), Buffer.alloc(0), { qos: 1, retain: true })
      // and its OTA notice (its rollout rows went with it)
      await platformPublish(deviceTopic(deviceId, 'ota'), Buffer.alloc(0), { qos: 1, retain: true })
      await forgetSession(deviceId)
    }
  }

  /** Drops a deleted device's persistent session, so a new device with the same id starts clean. */
  async function forgetSession (clientId: string): Promise<void> {
    const client = { id: clientId }
    await persistence.cleanSubscriptions(client)
    for await (const packet of persistence.outgoingStream(client)) await persistence.outgoingClearMessageId(client, packet)
  }

  // `roost api` in its own process tells the broker about device changes on roost/control/devices/{id};
  // only service logins may publish under roost/ (see decidePublish).
  aedes.subscribe('roost/control/devices/+', (packet: AedesPublishPacket, cb: () => void) => {
    const id = packet.topic.split('/')[3] as string
    let change: unknown
    try { change = (JSON.parse(packet.payload.toString()) as { change?: unknown }).change } catch { change = undefined }
    if (isDeviceId(id) && (change === 'changed' || change === 'rotated' || change === 'deleted' || change === 'commands' || change === 'owner')) void deviceChanged(id, change)
    else log.warn({ topic: packet.topic }, 'ignored control message')
    cb()
  }, () => {})

  // ---- listeners -------------------------------------------------------------------------------------

  const servers: Array<Server | TlsServer> = []

  function serve (server: Server | TlsServer, port: number): Promise<number> {
    servers.push(server)
    return new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, config.broker.host, () => {
        server.off('error', reject)
        resolve((server.address() as AddressInfo).port)
      })
    })
  }

  function onSocket (socket: Socket): void {
    // MQTT is small request/response traffic; Nagle would hold PUBACKs for the peer's delayed ACK
    socket.setNoDelay(true)
    handle(socket)
  }

  // ---- apps --------------------------------------------------------------------------------------------

  /** An app connection ends when its credential expires or is revoked. */
  function watchApp (c: RoostClient, expiresAt: number | null): void {
    appClients.add(c)
    const timer = expiresAt === null ? undefined : setTimeout(() => closeApp(c, 'credential expired'), Math.max(0, expiresAt - now()))
    timer?.unref()
    // an Aedes client emits no 'close' of its own: its connection's stream does, however it ended
    c.conn.once('close', () => { appClients.delete(c); if (timer !== undefined) clearTimeout(timer) })
  }

  function closeApp (c: RoostClient, why: string): void {
    appClients.delete(c)
    const identity = c[SESSION]?.identity
    log.info({ clientId: c.id, userId: identity?.kind === 'app' ? identity.userId : undefined, why }, 'closing app connection')
    c.close()
  }

  deps.apps?.on('revoked', r => {
    for (const c of appClients) {
      const identity = c[SESSION]?.identity
      if (identity?.kind === 'app' && identity.credential.kind === r.kind && identity.credential.id === r.id) closeApp(c, `${r.kind === 'apikey' ? 'API key' : 'session'} revoked`)
    }
  })

  /** Reads the device's owner again; when it changed, every app's read decisions are made afresh. */
  async function refreshOwner (deviceId: string, change: DeviceChange): Promise<void> {
    const owner = change === 'deleted' ? undefined : (await getDevice(db, deviceId))?.ownerId ?? undefined
    if (owners.get(deviceId) === owner) return
    if (owner === undefined) owners.delete(deviceId)
    else owners.set(deviceId, owner)
    for (const c of appClients) c[SESSION]?.readCache?.clear()
    log.info({ deviceId, ownerId: owner ?? null }, 'device owner changed')
  }

  async function listen (): Promise<{ mqttPort: number, mqttsPort: number | undefined }> {
    await aedes.listen()
    // nobody is connected at start: every device's retained presence says offline; the same read primes
    // the login cache, so a fleet reconnecting after a restart needs no query per login
    const fleet = await allDevices(db)
    credentials.prime(fleet)
    for (const d of fleet) if (d.ownerId !== null) owners.set(d.id, d.ownerId)
    await presence.rebuild(fleet)
    // retained desired documents are projections of the database: republished whole at every start
    for (const d of await allDesired(db)) {
      await platformPublish(deviceTopic(d.deviceId, 'state/desired'), JSON.stringify({ version: d.desiredVersion, state: d.desired }), { qos: 1, retain: true })
    }
    lastSeen.start()
    commands.start()
    const mqttPort = await serve(createServer(onSocket), config.broker.mqttPort)
    let mqttsPort: number | undefined
    const tls = config.broker.tls
    if (tls !== undefined) {
      const server = createTlsServer({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) })
      server.on('secureConnection', onSocket)
      server.on('tlsClientError', err => log.debug({ err: err.message }, 'TLS handshake failed'))
      mqttsPort = await serve(server, config.broker.mqttsPort)
    }
    log.info({ mqttPort, mqttsPort }, 'broker listening')
    return { mqttPort, mqttsPort }
  }

  async function close (): Promise<void> {
    // servers finish closing only once their connections are gone, which aedes.close() brings about
    const stopped = servers.map(s => new Promise<void>(resolve => s.close(() => resolve())))
    await new Promise<void>(resolve => aedes.close(() => resolve()))
    await Promise.all(stopped)
    commands.stop()
    await committer.idle()
    await lastSeen.stop()
  }

  return { aedes, presence, committer, commands, handle, listen, publish: platformPublish, deviceChanged, commandsListening, close }
}
