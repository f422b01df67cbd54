// Device REST routes: create (token shown once), list, get, patch, delete, rotate token.

import { randomBytes } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { Device, DeviceCreate, DeviceCreated, DeviceList, DeviceListQuery, DeviceParams, DevicePatch, DeviceToken, errorResponses, type DeviceView } from '../schemas/rest.ts'
import { RoostError } from '../schemas/errors.ts'
import { createDevice, deleteDevice, getDevice, listDevices, rotateDeviceToken, updateDevice } from '../db/devices.ts'
import type { DeviceRow } from '../schemas/db/devices.ts'
import { authErrors, requestUser } from './auth.ts'
import { APP_USERNAME } from '../broker/identity.ts'
import type { ApiContext } from './index.ts'

// generated ids look like the seed's device ids (ABCD1234): short, unambiguous, typeable
function generatedId (): string {
  const letters = 'ABCDEFGHJKLMNPQRSTUVWXYZ'
  const bytes = randomBytes(8)
  let id = ''
  for (let i = 0; i < 4; i++) id += letters[(bytes[i] as number) % letters.length]
  for (let i = 4; i < 8; i++) id += String((bytes[i] as number) % 10)
  return id
}

export function deviceView (row: DeviceRow, online: boolean): DeviceView {
  return { id: row.id, name: row.name, ownerId: row.ownerId, tags: row.tags, online, lastSeen: row.lastSeen, createdAt: row.createdAt, updatedAt: row.updatedAt }
}

export const deviceRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, broker, now } = ctx

  app.post('/v1/devices', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Create a device; the reply holds its token, shown this once',
      tags: ['devices'],
      body: DeviceCreate,
      response: { 201: DeviceCreated, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'DEVICE_EXISTS']) },
    },
  }, async (request, reply) => {
    const explicit = request.body.id
    if (explicit === APP_USERNAME) throw new RoostError('VALIDATION_FAILED', { detail: `"${APP_USERNAME}" is the MQTT username of apps and cannot be a device id` })
    // a generated id may collide; try a few before giving up
    for (let attempt = 0; attempt < 5; attempt++) {
      const id = explicit ?? generatedId()
      const created = await createDevice(db, { id, name: request.body.name, ownerId: request.body.ownerId, tags: request.body.tags }, now())
      if (created !== undefined) {
        await broker.deviceChanged(id, 'changed') // forget a cached "no such device"
        request.log.info({ deviceId: id }, 'device created')
        return reply.status(201).send({ id, token: created.token, mqtt: { host: ctx.mqtt.host, port: ctx.mqtt.port, username: id } })
      }
      if (explicit !== undefined) break
    }
    throw new RoostError('DEVICE_EXISTS', { id: explicit ?? '' })
  })

  app.get('/v1/devices', {
    config: { auth: 'user' },
    schema: {
      summary: 'List devices, in id order: all of them for the admin, a user\'s own for a user',
      tags: ['devices'],
      querystring: DeviceListQuery,
      response: { 200: DeviceList, ...errorResponses([...authErrors('user'), 'VALIDATION_FAILED']) },
    },
  }, async request => {
    const limit = request.query.limit ?? 100
    const rows = await listDevices(db, { limit, after: request.query.after, ownerId: requestUser(request) })
    const items = rows.map(r => deviceView(r, broker.isOnline(r.id)))
    const last = rows[rows.length - 1]
    return rows.length === limit && last !== undefined ? { items, next: last.id } : { items }
  })

  app.get('/v1/devices/:id', {
    config: { auth: 'device' },
    schema: {
      summary: 'Get a device, with online and lastSeen',
      tags: ['devices'],
      params: DeviceParams,
      response: { 200: Device, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    const row = await getDevice(db, request.params.id)
    if (row === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id: request.params.id })
    return deviceView(row, broker.isOnline(row.id))
  })

  app.patch('/v1/devices/:id', {
    config: { auth: 'owner' },
    schema: {
      summary: 'Change a device\'s name or tags (its owner too), or its owner (the admin only: assigning, or null to release it)',
      tags: ['devices'],
      params: DeviceParams,
      body: DevicePatch,
      response: { 200: Device, ...errorResponses([...authErrors('owner'), 'VALIDATION_FAILED', 'ADMIN_REQUIRED']) },
    },
  }, async request => {
    if (request.body.ownerId !== undefined && request.principal?.kind !== 'admin') throw new RoostError('ADMIN_REQUIRED')
    const before = await getDevice(db, request.params.id)
    const row = await updateDevice(db, request.params.id, request.body, now())
    if (row === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id: request.params.id })
    await broker.deviceChanged(row.id, before !== undefined && before.ownerId !== row.ownerId ? 'owner' : 'changed')
    return deviceView(row, broker.isOnline(row.id))
  })

  app.delete('/v1/devices/:id', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Delete a device: its session is closed and its telemetry removed',
      tags: ['devices'],
      params: DeviceParams,
      response: { 204: Type.Null(), ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async (request, reply) => {
    const deleted = await deleteDevice(db, request.params.id)
    if (!deleted) throw new RoostError('DEVICE_NOT_FOUND', { id: request.params.id })
    await broker.deviceChanged(request.params.id, 'deleted')
    request.log.info({ deviceId: request.params.id }, 'device deleted')
    return reply.status(204).send(null)
  })

  app.post('/v1/devices/:id/token', {
    config: { auth: 'owner' },
    schema: {
      summary: 'Rotate a device token: the old one stops working and an open session is closed',
      tags: ['devices'],
      params: DeviceParams,
      response: { 200: DeviceToken, ...errorResponses([...authErrors('owner'), 'VALIDATION_FAILED']) },
    },
  }, async request => {
    const token = await rotateDeviceToken(db, request.params.id, now())
    if (token === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id: request.params.id })
    await broker.deviceChanged(request.params.id, 'rotated')
    request.log.info({ deviceId: request.params.id }, 'device token rotated')
    return { id: request.params.id, token }
  })
}
