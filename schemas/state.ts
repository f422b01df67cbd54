// Device state documents: what a desired patch or a reported update may hold, JSON merge patch, and the delta.

import { Type } from '@sinclair/typebox'

// A state document is configuration (a few flags, set points, widget values), not a data store: 16 KiB
// holds hundreds of keys and stays far below the broker's packet limit when published whole.
export const STATE_MAX_BYTES = 16 * 1024
// deep nesting is a sign of a mistaken payload and makes merge and compare recursive without end
export const STATE_MAX_DEPTH = 8

export type StateDoc = Record<string, unknown>

export const StateObject = Type.Record(Type.String(), Type.Unknown(), { description: `a JSON object, at most ${STATE_MAX_BYTES} bytes serialized and ${STATE_MAX_DEPTH} levels deep` })

export function isPlainObject (v: unknown): v is StateDoc {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function depth (v: unknown): number {
  if (Array.isArray(v)) return 1 + Math.max(0, ...v.map(depth))
  if (isPlainObject(v)) return 1 + Math.max(0, ...Object.values(v).map(depth))
  return 0
}

/** Why a state patch or document is not acceptable, or undefined. */
export function stateProblem (doc: unknown): string | undefined {
  if (!isPlainObject(doc)) return 'state must be a JSON object'
  if (Buffer.byteLength(JSON.stringify(doc)) > STATE_MAX_BYTES) return `state is larger than ${STATE_MAX_BYTES} bytes`
  if (depth(doc) > STATE_MAX_DEPTH) return `state is nested deeper than ${STATE_MAX_DEPTH} levels`
  return undefined
}

/** JSON merge patch (RFC 7396): objects merge key by key, null deletes a key, anything else replaces. */
export function mergePatch (target: unknown, patch: unknown): unknown {
  if (!isPlainObject(patch)) return patch
  const out: StateDoc = isPlainObject(target) ? { ...target } : {}
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = mergePatch(out[k], v)
  }
  return out
}

function deepEqual (a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]))
  if (isPlainObject(a) && isPlainObject(b)) {
    const ka = Object.keys(a)
    return ka.length === Object.keys(b).length && ka.every(k => Object.hasOwn(b, k) && deepEqual(a[k], b[k]))
  }
  return false
}

/** The desired keys whose value the device has not reported (yet): what it still has to apply. */
export function stateDelta (desired: StateDoc, reported: StateDoc): StateDoc {
  const delta: StateDoc = {}
  for (const [k, v] of Object.entries(desired)) if (!deepEqual(v, reported[k])) delta[k] = v
  return delta
}
