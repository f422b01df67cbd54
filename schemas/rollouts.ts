// OTA rollouts: the notice and status payloads on devices/{id}/ota and ota/status, how devices are split
// into stages, which action a rollout takes in which state, when a stage is done, and the REST shapes.

import { Type, type Static } from '@sinclair/typebox'
import { isPlainObject } from './state.ts'
import { DEVICE_ID_PATTERN } from './topics.ts'
import { FIRMWARE_HARDWARE_PATTERN, FIRMWARE_VERSION_MAX, isHardware, isSemver } from './firmware.ts'
import { ROLLOUT_DEVICE_STATES, ROLLOUT_STATES, type RolloutDeviceState, type RolloutState, type StageSpec } from './db/rollouts.ts'

// ---- payloads -----------------------------------------------------------------------------------------

/** The retained notice on devices/{id}/ota; `url` is absolute, signed and expiring, and needs no credential. */
export interface OtaNotice {
  readonly version: string
  readonly url: string
  readonly size: number
  readonly sha256: string
  readonly signature: string
}

// what a device reports on ota/status; pending and notified are the platform's own states
export const OTA_REPORT_STATES = ['downloading', 'verifying', 'installing', 'rebooting', 'succeeded', 'failed'] as const
export type OtaReportState = typeof OTA_REPORT_STATES[number]
// a report is a line of progress, not a log: the error text says why in a sentence
export const OTA_STATUS_MAX_BYTES = 4096
export const OTA_ERROR_MAX = 512

export interface OtaStatus {
  readonly version: string
  readonly state: OtaReportState
  readonly progress?: number
  readonly error?: string
}

/** Parses a payload of devices/{id}/ota/status; a string says what is wrong. Unknown keys are ignored. */
export function parseOtaStatus (payload: Buffer | string): OtaStatus | string {
  if (payload.length > OTA_STATUS_MAX_BYTES) return `a status report is at most ${OTA_STATUS_MAX_BYTES} bytes`
  let doc: unknown
  try { doc = JSON.parse(payload.toString()) } catch { return 'not JSON' }
  if (!isPlainObject(doc)) return 'a status report is a JSON object {"version", "state", "progress"?, "error"?}'
  const { version, state, progress, error } = doc
  if (typeof version !== 'string' || !isSemver(version)) return '"version" must be the semantic version being installed'
  if (typeof state !== 'string' || !(OTA_REPORT_STATES as readonly string[]).includes(state)) return `"state" must be one of ${OTA_REPORT_STATES.join(', ')}`
  if (progress !== undefined && (typeof progress !== 'number' || !Number.isInteger(progress) || progress < 0 || progress > 100)) return '"progress" must be a whole percent 0–100'
  if (error !== undefined && (typeof error !== 'string' || error.length > OTA_ERROR_MAX)) return `"error" must be a string of at most ${OTA_ERROR_MAX} characters`
  return { version, state: state as OtaReportState, ...(progress === undefined ? {} : { progress }), ...(error === undefined ? {} : { error }) }
}

/**
 * The firmware facts in a device's reported state document: `hardware` and `firmware` (its running
 * version), each taken only when well formed. Undefined when the document has neither.
 */
export function reportedFirmware (reported: Record<string, unknown>): { hardware?: string, version?: string } | undefined {
  const hardware = typeof reported.hardware === 'string' && isHardware(reported.hardware) ? reported.hardware : undefined
  const version = typeof reported.firmware === 'string' && isSemver(reported.firmware) ? reported.firmware : undefined
  if (hardware === undefined && version === undefined) return undefined
  return { ...(hardware === undefined ? {} : { hardware }), ...(version === undefined ? {} : { version }) }
}

// ---- stages -----------------------------------------------------------------------------------------

// more stages than this is a schedule, not a rollout
export const ROLLOUT_STAGES_MAX = 20

/**
 * Where each stage ends in the stably ordered list of `total` devices: stage k holds devices
 * [ends[k-1], ends[k]). A `count` stage takes that many devices; a `percent` stage takes its share of
 * `total`, measured cumulatively over the percent stages (ceil(total × percents so far / 100) minus the
 * same before it), so [{percent: 10}, {percent: 90}] covers everyone and rounding never strands a device.
 * Devices past the last stage's end are not in the rollout.
 */
export function stageEnds (stages: readonly StageSpec[], total: number): number[] {
  const share = (percent: number): number => Math.ceil(total * percent / 100 - 1e-9)
  const ends: number[] = []
  let end = 0
  let percent = 0
  for (const s of stages) {
    let size: number
    if ('percent' in s) {
      size = share(percent + s.percent) - share(percent)
      percent += s.percent
    } else {
      size = s.count
    }
    end = Math.min(total, end + size)
    ends.push(end)
  }
  return ends
}

/** The stage of each of `total` devices in order, or -1 for those past the last stage. */
export function assignStages (stages: readonly StageSpec[], total: number): number[] {
  const ends = stageEnds(stages, total)
  const out: number[] = []
  let stage = 0
  for (let i = 0; i < total; i++) {
    while (stage < ends.length && i >= (ends[stage] as number)) stage++
    out.push(stage < ends.length ? stage : -1)
  }
  return out
}

/** What is wrong with a list of stages, if anything. */
export function stagesProblem (stages: readonly StageSpec[]): string | undefined {
  if (stages.length === 0) return 'a rollout needs at least one stage'
  const percent = stages.reduce((sum, s) => sum + ('percent' in s ? s.percent : 0), 0)
  if (percent > 100 + 1e-9) return `the stages' percents add up to ${percent}, more than 100`
  return undefined
}

// ---- state machine ----------------------------------------------------------------------------------

export const ROLLOUT_ACTIONS = ['start', 'pause', 'resume', 'cancel'] as const
export type RolloutAction = typeof ROLLOUT_ACTIONS[number]

// Every allowed edge; anything else is ROLLOUT_TRANSITION_INVALID.
const TRANSITIONS: Readonly<Record<RolloutAction, Partial<Record<RolloutState, RolloutState>>>> = {
  // draft → running: the first stage's devices are notified
  start: { draft: 'running' },
  // running → paused: no further device is told; devices mid-update carry on and their reports count
  pause: { running: 'paused' },
  // paused → running: the stage's failed devices are told again, and the stage is judged afresh
  resume: { paused: 'running' },
  // any unfinished rollout can be called off; its notices are withdrawn
  cancel: { draft: 'cancelled', running: 'cancelled', paused: 'cancelled' },
}

/** The state `action` leads to from `state`, or undefined when it is not allowed there. */
export function nextRolloutState (state: RolloutState, action: RolloutAction): RolloutState | undefined {
  return TRANSITIONS[action][state]
}

/** The actions allowed in `state`, for error messages. */
export function allowedActions (state: RolloutState): RolloutAction[] {
  return ROLLOUT_ACTIONS.filter(a => TRANSITIONS[a][state] !== undefined)
}

export type StageCounts = Record<RolloutDeviceState, number>

export function emptyCounts (): StageCounts {
  return { pending: 0, notified: 0, downloading: 0, verifying: 0, installing: 0, rebooting: 0, succeeded: 0, failed: 0 }
}

export type StageVerdict =
  | { readonly kind: 'waiting' } // devices are still updating
  | { readonly kind: 'passed' } // every device finished, failures within the threshold: the next stage may start
  | { readonly kind: 'failed', readonly reason: string } // more failures than the threshold: pause

/**
 * Judges a running stage. It passes once every device has finished (succeeded or failed) with at most
 * `threshold` failures, i.e. successes ≥ size − threshold; it fails as soon as failures exceed the
 * threshold, without waiting for the rest.
 */
export function judgeStage (counts: StageCounts, threshold: number, stage: number, stages: number): StageVerdict {
  const size = Object.values(counts).reduce((a, b) => a + b, 0)
  if (counts.failed > threshold) {
    return { kind: 'failed', reason: `stage ${stage + 1} of ${stages}: ${counts.failed} of ${size} devices failed, more than the failure threshold of ${threshold}` }
  }
  return counts.succeeded + counts.failed === size ? { kind: 'passed' } : { kind: 'waiting' }
}

// ---- REST -------------------------------------------------------------------------------------------

const Version = Type.String({ minLength: 1, maxLength: FIRMWARE_VERSION_MAX, description: 'semantic version (semver.org 2.0.0)' })
const Hardware = Type.String({ pattern: FIRMWARE_HARDWARE_PATTERN, description: 'board family' })
const EpochMs = Type.Integer({ minimum: 0, description: 'epoch milliseconds' })

export const StageSpecSchema = Type.Union([
  Type.Object({ percent: Type.Number({ exclusiveMinimum: 0, maximum: 100, description: 'this share of the targeted devices (stages add up to at most 100)' }) }, { additionalProperties: false }),
  Type.Object({ count: Type.Integer({ minimum: 1, description: 'this many devices' }) }, { additionalProperties: false }),
])

export const RolloutCreate = Type.Object({
  firmwareId: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }),
  target: Type.Object({
    hardware: Type.String({ ...Hardware, description: 'must be the firmware\'s hardware; devices are matched by the hardware they reported' }),
    fromVersions: Type.Optional(Type.Array(Version, { minItems: 1, maxItems: 100, description: 'only devices running one of these versions (default: any version but the target\'s)' })),
    deviceIds: Type.Optional(Type.Array(Type.String({ pattern: DEVICE_ID_PATTERN }), { minItems: 1, maxItems: 10_000, description: 'only these devices (still only those with matching hardware and a known version)' })),
    tags: Type.Optional(Type.Array(Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$' }), { maxItems: 32, description: 'devices carrying every one of these tags (set with POST/PATCH /v1/devices)' })),
  }, { additionalProperties: false }),
  stages: Type.Array(StageSpecSchema, { minItems: 1, maxItems: ROLLOUT_STAGES_MAX, description: 'filled in order from the targeted devices sorted by id' }),
  failureThreshold: Type.Optional(Type.Integer({ minimum: 0, default: 0, description: 'failed devices a stage may have and still pass; one more pauses the rollout' })),
}, { additionalProperties: false })

export const RolloutPatch = Type.Object({
  action: Type.Union(ROLLOUT_ACTIONS.map(a => Type.Literal(a)), { description: 'start (draft), pause (running), resume (paused), cancel (draft, running, paused)' }),
}, { additionalProperties: false })

export const RolloutParams = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) })

export const RolloutListQuery = Type.Object({
  state: Type.Optional(Type.Union(ROLLOUT_STATES.map(s => Type.Literal(s)))),
})

const Counts = Type.Object(Object.fromEntries(ROLLOUT_DEVICE_STATES.map(s => [s, Type.Integer()])) as Record<RolloutDeviceState, ReturnType<typeof Type.Integer>>, { description: 'devices by state' })

export const RolloutStageView = Type.Object({
  index: Type.Integer({ description: '0-based' }),
  percent: Type.Optional(Type.Number()),
  count: Type.Optional(Type.Integer()),
  size: Type.Integer({ description: 'devices in this stage' }),
  counts: Counts,
})

export const Rollout = Type.Object({
  id: Type.String(),
  firmwareId: Type.Union([Type.String(), Type.Null()], { description: 'null when the image has since been deleted' }),
  version: Type.String(),
  hardware: Type.String(),
  target: Type.Object({ hardware: Type.String(), fromVersions: Type.Optional(Type.Array(Type.String())), deviceIds: Type.Optional(Type.Array(Type.String())) }),
  failureThreshold: Type.Integer(),
  state: Type.Union(ROLLOUT_STATES.map(s => Type.Literal(s))),
  currentStage: Type.Integer({ description: 'index of the stage being rolled out' }),
  pausedReason: Type.Union([Type.String(), Type.Null()]),
  deviceCount: Type.Integer(),
  stages: Type.Array(RolloutStageView),
  counts: Counts,
  createdAt: EpochMs,
  updatedAt: EpochMs,
  startedAt: Type.Union([EpochMs, Type.Null()]),
  finishedAt: Type.Union([EpochMs, Type.Null()], { description: 'when it finished or was cancelled' }),
})
export type RolloutView = Static<typeof Rollout>

export const RolloutDeviceView = Type.Object({
  deviceId: Type.String(),
  stage: Type.Integer(),
  state: Type.Union(ROLLOUT_DEVICE_STATES.map(s => Type.Literal(s))),
  fromVersion: Type.Union([Type.String(), Type.Null()]),
  progress: Type.Union([Type.Integer(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  updatedAt: EpochMs,
})

export const RolloutDetail = Type.Composite([Rollout, Type.Object({ devices: Type.Array(RolloutDeviceView, { description: 'in stage order' }) })])

export const OtaCheckQuery = Type.Object({
  hardware: Hardware,
  version: Version,
})

export const OtaManifest = Type.Object({
  version: Type.String(),
  url: Type.String({ description: 'absolute, signed and expiring; needs no credential' }),
  size: Type.Integer({ description: 'bytes' }),
  sha256: Type.String({ description: 'lower-case hex' }),
  signature: Type.String({ description: 'base64 Ed25519 over the 32 raw bytes of the SHA-256 digest (GET /v1/firmware/signing-key)' }),
}, { description: 'the same document as the retained notice on devices/{id}/ota' })
