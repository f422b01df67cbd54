// MQTT 3.1.1 rules Aedes and mqtt-packet are lenient about, each tagged with its spec ID. A breach
// closes that connection only [MQTT-4.8.0-1].

import type { ConnectPacket } from 'aedes'

// [MQTT-1.5.3-1] ill-formed UTF-8 and UTF-16 surrogates; [MQTT-1.5.3-2] U+0000; control characters
// U+0001–U+001F and U+007F–U+009F and the non-characters U+FFFE/U+FFFF, which 1.5.3 says SHOULD NOT
// appear and Roost refuses. The parser decodes ill-formed bytes to U+FFFD, so U+FFFD in a decoded
// string is how ill-formed input shows; a client that really sends an encoded U+FFFD is refused too.
const FORBIDDEN_CHARS = /[\u0000-\u001F\u007F-\u009F\uD800-\uDFFF\uFFFD\uFFFE\uFFFF]/

export function mqttStringProblem (s: string): string | undefined {
  const m = FORBIDDEN_CHARS.exec(s)
  if (m === null) return undefined
  const cp = m[0].charCodeAt(0)
  if (cp === 0) return '[MQTT-1.5.3-2] U+0000 in a UTF-8 string'
  if (cp === 0xfffd || (cp >= 0xd800 && cp <= 0xdfff)) return '[MQTT-1.5.3-1] ill-formed UTF-8'
  return `[MQTT-1.5.3-1] disallowed control character U+${cp.toString(16).toUpperCase().padStart(4, '0')}`
}

/** Checks of a CONNECT that the parser accepts but the spec forbids; returns the broken rule. */
export function connectProblem (packet: ConnectPacket): string | undefined {
  const p = mqttStringProblem(packet.clientId ?? '')
  if (p !== undefined) return p + ' (client id)'
  if (packet.username !== undefined) {
    const u = mqttStringProblem(packet.username)
    if (u !== undefined) return u + ' (user name)'
  }
  // [MQTT-3.1.2-22] a password needs a user name
  if (packet.password !== undefined && packet.username === undefined) return '[MQTT-3.1.2-22] password flag set without user name flag'
  const will = packet.will
  if (will !== undefined && will !== null) {
    // [MQTT-3.1.2-14] will QoS 3 is reserved
    if ((will.qos as number) > 2) return '[MQTT-3.1.2-14] will QoS 3'
    const w = mqttStringProblem(will.topic)
    if (w !== undefined) return w + ' (will topic)'
    // the will is published as a PUBLISH, so its topic is a topic name: no wildcards [MQTT-3.3.2-2], not empty [MQTT-4.7.3-1]
    if (will.topic === '' || will.topic.includes('+') || will.topic.includes('#')) return '[MQTT-3.3.2-2] will topic must be a topic name without wildcards'
  }
  return undefined
}

interface AnyPacket {
  readonly cmd: string
  readonly qos?: number
  readonly dup?: boolean
  readonly messageId?: number
  readonly subscriptions?: readonly unknown[]
  readonly unsubscriptions?: readonly unknown[]
}

/**
 * Checks every packet after CONNECT before Aedes handles it. Cheap numeric checks only: strings are
 * checked where a decision is made (and cached), not per message.
 */
export function packetProblem (packet: AnyPacket): string | undefined {
  switch (packet.cmd) {
    case 'publish':
      // [MQTT-2.3.1-1] QoS 1/2 PUBLISH carries a non-zero packet identifier
      if ((packet.qos ?? 0) > 0 && packet.messageId === 0) return '[MQTT-2.3.1-1] packet identifier 0'
      // [MQTT-3.3.1-2] DUP must be 0 on QoS 0 messages
      if (packet.qos === 0 && packet.dup === true) return '[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH'
      return undefined
    case 'subscribe':
      if (packet.messageId === 0) return '[MQTT-2.3.1-1] packet identifier 0'
      // [MQTT-3.8.3-3] at least one topic filter
      if ((packet.subscriptions?.length ?? 0) === 0) return '[MQTT-3.8.3-3] SUBSCRIBE without topic filters'
      return undefined
    case 'unsubscribe':
      if (packet.messageId === 0) return '[MQTT-2.3.1-1] packet identifier 0'
      // [MQTT-3.10.3-2] at least one topic filter
      if ((packet.unsubscriptions?.length ?? 0) === 0) return '[MQTT-3.10.3-2] UNSUBSCRIBE without topic filters'
      return undefined
    case 'puback':
    case 'pubrec':
    case 'pubrel':
    case 'pubcomp':
      if (packet.messageId === 0) return '[MQTT-2.3.1-1] packet identifier 0'
      return undefined
    case 'connack':
    case 'suback':
    case 'unsuback':
    case 'pingresp':
      // server-to-client packets; a client sending one breaks the protocol [MQTT-4.8.0-1]
      return `[MQTT-4.8.0-1] a client may not send ${packet.cmd.toUpperCase()}`
    case 'auth':
      return '[MQTT-2.2.1] AUTH does not exist in MQTT 3.1.1'
    default:
      return undefined
  }
}
