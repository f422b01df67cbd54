// Rollout REST routes: create a staged rollout of a firmware image, list and read it with per-stage counts,
// start/pause/resume/cancel it; and GET /v1/ota/check, where a device asks over HTTP whether to update.

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { errorResponses } from '../schemas/rest.ts'
import { RoostError } from '../schemas/errors.ts'
import type { RolloutDeviceRow, RolloutRow } from '../schemas/db/rollouts.ts'
import {
  OtaCheckQuery, OtaManifest, Rollout, RolloutCreate, RolloutDetail, RolloutListQuery, RolloutParams, RolloutPatch,
  allowedActions, assignStages, emptyCounts, stagesProblem, type RolloutView, type StageCounts,
} from '../schemas/rollouts.ts'
import { ROLLOUT_DEVICE_STATES } from '../schemas/db/rollouts.ts'
import { isSemver } from '../schemas/firmware.ts'
import { getFirmware } from '../db/firmware.ts'
import { createRollout, getRollout, listRollouts, pickDevices, rolloutDeviceList, stageCounts } from '../db/rollouts.ts'
import { newId } from '../db/webhooks.ts'
import { authErrors } from './auth.ts'
import { RolloutEngine } from './rollout-engine.ts'
import type { ApiContext } from './index.ts'

function view (r: RolloutRow, byStage: Map<number, StageCounts> | undefined): RolloutView {
  const total = emptyCounts()
  const stages = r.stages.map((spec, index) => {
    const counts = byStage?.get(index) ?? emptyCounts()
    for (const s of ROLLOUT_DEVICE_STATES) total[s] += counts[s]
    return { index, ...spec, size: ROLLOUT_DEVICE_STATES.reduce((n, s) => n + counts[s], 0), counts }
  })
  return {
    id: r.id,
    firmwareId: r.firmwareId,
    version: r.version,
    hardware: r.hardware,
    target: r.target as RolloutView['target'],
    failureThreshold: r.failureThreshold,
    state: r.state,
    currentStage: r.currentStage,
    pausedReason: r.pausedReason,
    deviceCount: stages.reduce((n, s) => n + s.size, 0),
    stages,
    counts: total,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
  }
}

function deviceView (d: RolloutDeviceRow): typeof RolloutDetail.static['devices'][number] {
  return { deviceId: d.deviceId, stage: d.stage, state: d.state, fromVersion: d.fromVersion, progress: d.progress, error: d.error, updatedAt: d.updatedAt }
}

const STATES_DESCRIBED = 'Each device is `pending` (its stage has not started), `notified` (its notice is out), then in the state it last reported on ' +
  'devices/{id}/ota/status (`downloading`, `verifying`, `installing`, `rebooting`, `succeeded`, `failed`). A device that reports the new version ' +
  '(reported state `firmware`, or GET /v1/ota/check) counts as succeeded.'

export const rolloutRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, now } = ctx
  const engine = new RolloutEngine({ db, log: app.log.child({ part: 'rollouts' }), now, broker: ctx.broker, firmware: ctx.firmware, publicUrl: ctx.publicUrl })
  await engine.connect()
  // notices carry the public URL, whose port may be known only once the server listens (ROOST_HTTP_PORT=0)
  app.addHook('onListen', async () => { engine.start() })
  app.addHook('onClose', async () => { await engine.stop() })

  async function viewOf (row: RolloutRow): Promise<RolloutView> {
    return view(row, (await stageCounts(db, [row.id])).get(row.id))
  }

  async function mustGet (id: string): Promise<RolloutRow> {
    const row = await getRollout(db, id)
    if (row === undefined) throw new RoostError('ROLLOUT_NOT_FOUND', { id })
    return row
  }

  app.post('/v1/rollouts', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Create a staged rollout of a firmware image (a draft: PATCH {"action": "start"} starts it)',
      description: 'Targets devices whose reported hardware is `target.hardware` (which must be the image\'s) and whose reported version is known, ' +
        'differs from the image\'s and is among `fromVersions` when given, among `deviceIds` when given, and that are not in another unfinished rollout. ' +
        'Devices report hardware and version as the keys `hardware` and `firmware` of their reported state (or through GET /v1/ota/check). ' +
        'The devices, sorted by id, fill the stages in order: `{count}` takes that many, `{percent}` that share of all targeted devices. ' +
        'A stage passes when every one of its devices has succeeded or failed with at most `failureThreshold` failures; one failure more pauses the rollout with a `pausedReason`.',
      tags: ['ota'],
      body: RolloutCreate,
      response: { 201: Rollout, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'FIRMWARE_NOT_FOUND', 'ROLLOUT_HARDWARE_MISMATCH', 'ROLLOUT_NO_DEVICES']) },
    },
  }, async (request, reply) => {
    const { firmwareId, target, stages, failureThreshold = 0 } = request.body
    const problem = stagesProblem(stages)
    if (problem !== undefined) throw new RoostError('VALIDATION_FAILED', { detail: problem })
    const bad = target.fromVersions?.find(v => !isSemver(v))
    if (bad !== undefined) throw new RoostError('FIRMWARE_VERSION_INVALID', { version: bad.slice(0, 200) })
    const image = await getFirmware(db, firmwareId)
    if (image === undefined) throw new RoostError('FIRMWARE_NOT_FOUND', { id: firmwareId })
    if (image.hardware !== target.hardware) throw new RoostError('ROLLOUT_HARDWARE_MISMATCH', { id: firmwareId, firmware: image.hardware, target: target.hardware })

    const picked = await pickDevices(db, { hardware: target.hardware, version: image.version, fromVersions: target.fromVersions, deviceIds: target.deviceIds, tags: target.tags })
    const placed = assignStages(stages, picked.length).flatMap((stage, i) => stage < 0 ? [] : [{ ...picked[i] as typeof picked[number], stage }])
    if (placed.length === 0) {
      const from = target.fromVersions === undefined ? `a known version other than ${image.version}` : `version ${target.fromVersions.join(' or ')}`
      const tagged = target.tags === undefined || target.tags.length === 0 ? '' : `, tagged ${target.tags.join(' and ')}`
      throw new RoostError('ROLLOUT_NO_DEVICES', { detail: `hardware "${target.hardware}" running ${from}${target.deviceIds === undefined ? '' : ', among the listed devices'}${tagged}, and in no other unfinished rollout` })
    }
    const row = await createRollout(db, {
      id: newId('ro_'), firmwareId, version: image.version, hardware: image.hardware, target, stages, failureThreshold,
    }, placed, now())
    request.log.info({ rolloutId: row.id, firmwareId, devices: placed.length, stages: stages.length }, 'rollout created')
    return await reply.status(201).send(await viewOf(row))
  })

  app.get('/v1/rollouts', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Rollouts, newest first, with devices by state per stage',
      description: STATES_DESCRIBED,
      tags: ['ota'],
      querystring: RolloutListQuery,
      response: { 200: Type.Object({ items: Type.Array(Rollout) }), ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED']) },
    },
  }, async request => {
    const rows = await listRollouts(db, request.query.state)
    const counts = await stageCounts(db, rows.map(r => r.id))
    return { items: rows.map(r => view(r, counts.get(r.id))) }
  })

  app.get('/v1/rollouts/:id', {
    config: { auth: 'admin' },
    schema: {
      summary: 'One rollout, with devices by state per stage and every device\'s state',
      description: STATES_DESCRIBED,
      tags: ['ota'],
      params: RolloutParams,
      response: { 200: RolloutDetail, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'ROLLOUT_NOT_FOUND']) },
    },
  }, async request => {
    const row = await mustGet(request.params.id)
    return { ...await viewOf(row), devices: (await rolloutDeviceList(db, row.id)).map(deviceView) }
  })

  app.patch('/v1/rollouts/:id', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Start, pause, resume or cancel a rollout',
      description: 'start: draft → running; the first stage\'s devices get the retained notice on devices/{id}/ota. ' +
        'pause: running → paused; devices not yet updating lose their notice, those mid-update carry on. ' +
        'resume: paused → running; the stage\'s failed devices are notified again and the stage is judged afresh. ' +
        'cancel: draft, running or paused → cancelled; every notice of the rollout is withdrawn. ' +
        'Anything else answers 409 ROLLOUT_TRANSITION_INVALID naming the actions allowed.',
      tags: ['ota'],
      params: RolloutParams,
      body: RolloutPatch,
      response: { 200: Rollout, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'ROLLOUT_NOT_FOUND', 'ROLLOUT_TRANSITION_INVALID']) },
    },
  }, async request => {
    const { id } = request.params
    const { action } = request.body
    const result = await engine.act(id, action)
    if (!result.ok) {
      if (result.reason === 'not-found') throw new RoostError('ROLLOUT_NOT_FOUND', { id })
      throw new RoostError('ROLLOUT_TRANSITION_INVALID', { state: result.state, action, allowed: allowedActions(result.state).join(', ') || 'none (it is over)' })
    }
    return await viewOf(result.rollout)
  })

  app.get('/v1/ota/check', {
    config: { auth: 'device-token' },
    schema: {
      summary: 'A device asks whether to update: 204 when current, else 200 with the same manifest as its OTA notice',
      description: 'With the device\'s own token; the device is the token\'s. `hardware` and `version` are what it runs and are recorded like the keys `hardware` and `firmware` of its reported state ' +
        '(reporting a rollout\'s version counts as having installed it). The answer is 200 when the device is in a running rollout whose stage has started, ' +
        'it has not succeeded yet, and the rollout\'s version and hardware differ from and match what it sent; the link in it is freshly signed.',
      tags: ['ota'],
      querystring: OtaCheckQuery,
      response: {
        200: OtaManifest,
        204: Type.Null({ description: 'nothing to install: the device runs what it should' }),
        ...errorResponses([...authErrors('device-token'), 'VALIDATION_FAILED', 'FIRMWARE_VERSION_INVALID']),
      },
    },
  }, async (request, reply) => {
    const { hardware, version } = request.query
    if (!isSemver(version)) throw new RoostError('FIRMWARE_VERSION_INVALID', { version: version.slice(0, 200) })
    const principal = request.principal
    if (principal?.kind !== 'device') throw new RoostError('DEVICE_TOKEN_REQUIRED')
    const notice = await engine.check(principal.deviceId, hardware, version)
    if (notice === undefined) return await reply.status(204).send(null)
    return notice
  })
}
