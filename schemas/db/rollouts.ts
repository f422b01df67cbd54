// OTA rollouts: each rollout of one firmware image in stages, every targeted device's place and progress in
// it, and what firmware each device runs (the facts rollouts pick their devices by).
//
// Device rows reference the device with ON DELETE CASCADE, so deleting a device removes it from rollouts
// without db/devices.ts knowing about OTA.

import { sql } from 'drizzle-orm'
import { bigint, index, integer, jsonb, pgTable, primaryKey, text } from 'drizzle-orm/pg-core'
import { devices } from './devices.ts'
import { firmware } from './firmware.ts'

export const ROLLOUT_STATES = ['draft', 'running', 'paused', 'finished', 'cancelled'] as const
export type RolloutState = typeof ROLLOUT_STATES[number]
// a rollout in one of these still hands its image out (or will): its firmware cannot be deleted, and its
// devices are not picked by another rollout
export const UNFINISHED_ROLLOUT_STATES: readonly RolloutState[] = ['draft', 'running', 'paused']

// pending: its stage has not started. notified: the notice is out. Then what the device reported on ota/status.
export const ROLLOUT_DEVICE_STATES = ['pending', 'notified', 'downloading', 'verifying', 'installing', 'rebooting', 'succeeded', 'failed'] as const
export type RolloutDeviceState = typeof ROLLOUT_DEVICE_STATES[number]

/** A stage as given at creation: a share of the targeted devices, or a number of them. */
export type StageSpec = { readonly percent: number } | { readonly count: number }

/** The target as given at creation. */
export interface RolloutTarget {
  readonly hardware: string
  readonly fromVersions?: readonly string[]
  readonly deviceIds?: readonly string[]
  readonly tags?: readonly string[]
}

export const rollouts = pgTable('rollouts', {
  id: text('id').primaryKey(),
  // null once the image was deleted after the rollout finished or was cancelled; version and hardware stay
  firmwareId: text('firmware_id').references(() => firmware.id, { onDelete: 'set null' }),
  version: text('version').notNull(),
  hardware: text('hardware').notNull(),
  target: jsonb('target').$type<RolloutTarget>().notNull(),
  stages: jsonb('stages').$type<StageSpec[]>().notNull(),
  // failed devices a stage may have; one more pauses the rollout
  failureThreshold: integer('failure_threshold').notNull(),
  state: text('state').$type<RolloutState>().notNull(),
  // index of the stage being rolled out (0 in a draft)
  currentStage: integer('current_stage').notNull().default(0),
  pausedReason: text('paused_reason'),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  updatedAt: bigint('updated_at', { mode: 'number' }).notNull(),
  startedAt: bigint('started_at', { mode: 'number' }),
  finishedAt: bigint('finished_at', { mode: 'number' }),
}, t => [
  index('rollouts_created_idx').on(t.createdAt),
  // the few unfinished rollouts, read on every status report, firmware delete and rollout creation
  index('rollouts_unfinished_idx').on(t.state).where(sql`state IN ('draft', 'running', 'paused')`),
])

export const rolloutDevices = pgTable('rollout_devices', {
  rolloutId: text('rollout_id').notNull().references(() => rollouts.id, { onDelete: 'cascade' }),
  deviceId: text('device_id').notNull().references(() => devices.id, { onDelete: 'cascade' }),
  stage: integer('stage').notNull(),
  state: text('state').$type<RolloutDeviceState>().notNull(),
  // the version the device ran when it was picked
  fromVersion: text('from_version'),
  progress: integer('progress'), // percent, from the last report that had one
  error: text('error'), // from the last failed report
  updatedAt: bigint('updated_at', { mode: 'number' }).notNull(),
}, t => [
  primaryKey({ columns: [t.rolloutId, t.deviceId] }),
  // a device's report finds its rollout through this
  index('rollout_devices_device_idx').on(t.deviceId),
  index('rollout_devices_stage_idx').on(t.rolloutId, t.stage),
])

// What a device runs, from its own reports: state/reported keys `hardware` and `firmware`, an ota/status
// `succeeded`, or the query of GET /v1/ota/check. Rollouts target devices by these.
export const deviceFirmware = pgTable('device_firmware', {
  deviceId: text('device_id').primaryKey().references(() => devices.id, { onDelete: 'cascade' }),
  hardware: text('hardware'),
  version: text('version'),
  updatedAt: bigint('updated_at', { mode: 'number' }).notNull(),
}, t => [
  index('device_firmware_hardware_version_idx').on(t.hardware, t.version),
])

export type RolloutRow = typeof rollouts.$inferSelect
export type RolloutDeviceRow = typeof rolloutDevices.$inferSelect
export type DeviceFirmwareRow = typeof deviceFirmware.$inferSelect
