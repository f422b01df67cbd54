// Device state REST routes: read desired, reported and their delta; patch desired (published retained).

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DeviceParams, DeviceStateView, StatePatch, errorResponses } from '../schemas/rest.ts'
import { RoostError } from '../schemas/errors.ts'
import { stateDelta, stateProblem } from '../schemas/state.ts'
import { deviceTopic } from '../schemas/topics.ts'
import type { DeviceStateRow } from '../schemas/db/state.ts'
import { getDevice } from '../db/devices.ts'
import { getState, patchDesired } from '../db/state.ts'
import { authErrors } from './auth.ts'
import type { ApiContext } from './index.ts'

function view (row: DeviceStateRow): typeof DeviceStateView.static {
  return {
    deviceId: row.deviceId,
    desired: { version: row.desiredVersion, state: row.desired, updatedAt: row.desiredAt },
    reported: { version: row.reportedVersion, state: row.reported, updatedAt: row.reportedAt },
    delta: stateDelta(row.desired, row.reported),
  }
}

export const stateRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, broker, now } = ctx
  // One device's patches are handled one after another, commit then publish, so the retained copy
  // always ends at the newest version (concurrent patches would otherwise publish in either order).
  const chains = new Map<string, Promise<unknown>>()
  function serialized<T> (id: string, step: () => Promise<T>): Promise<T> {
    const next = (chains.get(id) ?? Promise.resolve()).then(step, step)
    chains.set(id, next)
    const settle = (): void => { if (chains.get(id) === next) chains.delete(id) }
    next.then(settle, settle)
    return next
  }

  async function mustExist (id: string): Promise<void> {
    if (await getDevice(db, id) === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id })
  }

  app.get('/v1/devices/:id/state', {
    config: { auth: 'device' },
    schema: {
      summary: 'Desired and reported state, their versions and times, and the delta still to apply',
      tags: ['state'],
      params: DeviceParams,
      response: { 200: DeviceStateView, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    await mustExist(request.params.id)
    return view(await getState(db, request.params.id))
  })

  app.patch('/v1/devices/:id/state', {
    config: { auth: 'owner' },
    schema: {
      summary: 'Merge a patch into the desired state; the whole document is published retained on devices/{id}/state/desired',
      tags: ['state'],
      params: DeviceParams,
      body: StatePatch,
      response: { 200: DeviceStateView, ...errorResponses([...authErrors('owner'), 'VALIDATION_FAILED', 'PAYLOAD_INVALID', 'DEVICE_NOT_FOUND', 'STATE_VERSION_CONFLICT']) },
    },
  }, async request => {
    const id = request.params.id
    const problem = stateProblem(request.body.state)
    if (problem !== undefined) throw new RoostError('PAYLOAD_INVALID', { detail: problem })
    await mustExist(id)
    const row = await serialized(id, async () => {
      const result = await patchDesired(db, id, request.body.state, request.body.version, now())
      if (!result.ok) {
        if (result.reason === 'version') throw new RoostError('STATE_VERSION_CONFLICT', { current: result.currentVersion, expected: request.body.version ?? '' })
        throw new RoostError('PAYLOAD_INVALID', { detail: result.detail })
      }
      const doc = Buffer.from(JSON.stringify({ version: result.row.desiredVersion, state: result.row.desired }))
      await broker.publish(deviceTopic(id, 'state/desired'), doc, { qos: 1, retain: true })
      return result.row
    })
    request.log.info({ deviceId: id, version: row.desiredVersion }, 'desired state changed')
    return view(row)
  })
}
