// Topic access control as pure functions over (identity, topic, action), dispatched to one rule per topic family.

import type { PublishPacket } from 'aedes'
import type { ErrorCode } from '../schemas/errors.ts'
import { FAMILIES, FAMILY_NAMES, isCommandId, parseTopic, type Family } from '../schemas/topics.ts'
import type { Identity } from './identity.ts'

export type Decision = 'allow' | ErrorCode

// `unacknowledged`: the publish could not be handled now (the database is away); instead of acknowledging
// and dropping it, the connection is closed without a PUBACK so the client sends it again
// `params` fill the catalogue message's placeholders beyond {topic} and {detail}
export interface Refusal { readonly code: ErrorCode, readonly detail?: string, readonly params?: Readonly<Record<string, string | number>>, readonly unacknowledged?: true }

/** Work a family does on a publish its rule allowed, before it is acknowledged and relayed (e.g. store telemetry). */
export type AcceptStep = (identity: Identity, deviceId: string, packet: PublishPacket, done: (refusal?: Refusal) => void) => void

export interface FamilyRule {
  publish (identity: Identity, deviceId: string): Decision
  read (identity: Identity, deviceId: string): Decision
  readonly accept?: AcceptStep
}

export type FamilyTable = Readonly<Record<Family, FamilyRule>>

export interface PublishDecision {
  readonly decision: Decision
  readonly rule: FamilyRule | undefined
  readonly deviceId: string | undefined
}

/** Who owns a device, for apps' reads; undefined when nobody does. */
export type OwnerOf = (deviceId: string) => string | undefined
const NO_OWNERS: OwnerOf = () => undefined

// What an app may read of the devices its user owns: their data and what the platform says of them,
// not what is addressed to the device (commands, desired state aside, OTA notices, downlink audio)
export const APP_READABLE: ReadonlySet<Family> = new Set<Family>([
  'telemetry', 'state/reported', 'state/desired', 'presence', 'commands/result', 'ota/status', 'audio/events', 'stream/frames', 'errors',
])

const FORBIDDEN: PublishDecision = { decision: 'TOPIC_FORBIDDEN', rule: undefined, deviceId: undefined }
const UNKNOWN: PublishDecision = { decision: 'TOPIC_UNKNOWN', rule: undefined, deviceId: undefined }
const FREE: PublishDecision = { decision: 'allow', rule: undefined, deviceId: undefined }

/** May `identity` publish to the concrete topic `topic`? */
export function decidePublish (identity: Identity, topic: string, table: FamilyTable): PublishDecision {
  const parsed = parseTopic(topic)
  switch (parsed.space) {
    case 'device': {
      const rule = table[parsed.family]
      // apps write through the REST API
      if (identity.kind === 'app') return { decision: 'TOPIC_FORBIDDEN', rule, deviceId: parsed.deviceId }
      return { decision: rule.publish(identity, parsed.deviceId), rule, deviceId: parsed.deviceId }
    }
    case 'device-unknown':
    case 'devices-invalid':
      return UNKNOWN
    case 'reserved':
      // $SYS/ and other $ roots belong to the broker [MQTT-4.7.2-1]; users/ and roost/ to platform services
      return identity.kind === 'service' && !parsed.root.startsWith('$') ? FREE : FORBIDDEN
    case 'scratch':
      return identity.kind === 'device' || identity.kind === 'app' ? FORBIDDEN : FREE
  }
}

/** May `identity` receive a message published on the concrete topic `topic`? */
export function decideRead (identity: Identity, topic: string, table: FamilyTable, ownerOf: OwnerOf = NO_OWNERS): boolean {
  if (identity.kind === 'service') return true
  const parsed = parseTopic(topic)
  if (identity.kind === 'app') return parsed.space === 'device' && APP_READABLE.has(parsed.family) && ownerOf(parsed.deviceId) === identity.userId
  switch (parsed.space) {
    case 'device': return table[parsed.family].read(identity, parsed.deviceId) === 'allow'
    case 'scratch': return identity.kind === 'anonymous'
    default: return false
  }
}

// 'all': everything the filter can match is readable, deliver without checks.
// 'some': grant, but check each delivered topic with decideRead (the filter is narrowed).
export type ReadScope = 'all' | 'some' | ErrorCode

/**
 * May `identity` subscribe to `filter`? Wildcards are narrowed rather than refused when they can reach
 * something readable: `#` from an anonymous client receives the scratch space only, `devices/D/#` from
 * device D receives only D's platform → device topics. A filter that can only reach other devices'
 * or reserved topics is refused (SUBACK 0x80).
 */
export function decideSubscribe (identity: Identity, filter: string, table: FamilyTable, ownerOf: OwnerOf = NO_OWNERS): ReadScope {
  if (identity.kind === 'service') return 'all'
  if (filter.charCodeAt(0) === 36 /* $ */) return 'TOPIC_FORBIDDEN'
  const levels = filter.split('/')
  const wild = filter.includes('+') || filter.includes('#')
  if (identity.kind === 'app') return appSubscribe(identity.userId, levels, ownerOf)
  if (!wild) return decideRead(identity, filter, table) ? 'all' : 'TOPIC_FORBIDDEN'

  if (identity.kind === 'anonymous') {
    const root = levels[0] as string
    if (root === '+' || root === '#') return 'some'
    return parseTopic(root + '/x').space === 'scratch' ? 'all' : 'TOPIC_FORBIDDEN'
  }

  // a device: which of its own families can the filter match, and are they all readable?
  const own = identity.deviceId
  let readable = 0
  let unreadable = 0
  for (const family of FAMILY_NAMES) {
    if (!filterMatches(levels, ['devices', own, ...FAMILIES[family].levels])) continue
    if (table[family].read(identity, own) === 'allow') readable++
    else unreadable++
  }
  if (readable === 0) return 'TOPIC_FORBIDDEN'
  // a filter whose first two levels are not literally devices/<own id> could also match other spaces
  const anchored = levels[0] === 'devices' && levels[1] === own
  return anchored && unreadable === 0 ? 'all' : 'some'
}

/**
 * An app's subscription is always narrowed ('some'): each delivery is checked against who owns the device
 * now, so `devices/#` or `devices/+/telemetry` bring the user's own devices only, and a device that
 * changes hands stops at once. Refused outright when the filter can reach no app-readable family, or
 * names a device the user does not own.
 */
function appSubscribe (userId: string, levels: readonly string[], ownerOf: OwnerOf): ReadScope {
  const device = levels[1]
  if (levels[0] !== 'devices' && levels[0] !== '+' && levels[0] !== '#') return 'TOPIC_FORBIDDEN'
  if (device !== undefined && device !== '+' && device !== '#' && ownerOf(device) !== userId) return 'TOPIC_FORBIDDEN'
  // a literal device level stands in the template as itself (the template's '+' is for ids of another shape)
  const deviceLevel = device === undefined || device === '+' || device === '#' ? '+' : device
  for (const family of APP_READABLE) {
    if (filterMatches(levels, ['devices', deviceLevel, ...FAMILIES[family].levels])) return 'some'
  }
  return 'TOPIC_FORBIDDEN'
}

/** Does a topic filter match a topic template, where '+' in the template is one free level (an id)? */
export function filterMatches (filter: readonly string[], template: readonly string[]): boolean {
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]
    if (f === '#') return true // matches this level and everything below, and the parent [MQTT-4.7.1-2]
    const t = template[i]
    if (t === undefined) return false
    if (f === '+') continue
    if (t === '+' ? !isCommandId(f) : f !== t) return false
  }
  return filter.length === template.length
}
