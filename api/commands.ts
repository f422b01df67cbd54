// Command REST routes: send (optionally waiting for the result), list, get, and the HTTP way for devices
// that cannot hold MQTT: poll pending commands, post results.

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Command, CommandCreate, CommandList, CommandListQuery, CommandParams, DeviceParams, errorResponses } from '../schemas/rest.ts'
import { CommandResultBody, COMMAND_TTL_DEFAULT_MS } from '../schemas/commands.ts'
import { RoostError } from '../schemas/errors.ts'
import type { CommandRow } from '../schemas/db/commands.ts'
import { getDevice } from '../db/devices.ts'
import { commandStore, getCommand, listCommands, markSent } from '../db/commands.ts'
import { authErrors } from './auth.ts'
import type { ApiContext } from './index.ts'

function view (row: CommandRow): typeof Command.static {
  return {
    id: row.id,
    deviceId: row.deviceId,
    name: row.name,
    params: row.params,
    status: row.status,
    createdAt: row.createdAt,
    expiresAt: row.expiresAt,
    sentAt: row.sentAt,
    finishedAt: row.finishedAt,
    ...(row.result === null ? {} : { result: row.result }),
    error: row.error,
  }
}

export const commandRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, broker, now } = ctx
  const store = commandStore(db)
  // POSTs waiting for their command's result, by command id: one listener for all of them
  const waiters = new Map<string, (row: CommandRow) => void>()
  const stopListening = broker.onCommandFinished(row => waiters.get(row.id)?.(row))
  app.addHook('onClose', async () => { stopListening() })

  async function mustExist (id: string): Promise<void> {
    if (await getDevice(db, id) === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id })
  }

  /** Resolves with the command once final, or with its stored row after `ms`. */
  function finished (row: CommandRow, ms: number): Promise<CommandRow> {
    return new Promise(resolve => {
      let done = false
      const finish = (r: CommandRow): void => {
        if (done) return
        done = true
        clearTimeout(timer)
        waiters.delete(row.id)
        resolve(r)
      }
      waiters.set(row.id, finish)
      const timer = setTimeout(() => { void getCommand(db, row.deviceId, row.id).then(r => finish(r ?? row), () => finish(row)) }, ms)
    })
  }

  app.post('/v1/devices/:id/commands', {
    config: { auth: 'owner' },
    schema: {
      summary: 'Send a command: stored, published at QoS 1 on devices/{id}/commands/{cmdId} when the device is online (or when it next connects), answered on …/result',
      tags: ['commands'],
      params: DeviceParams,
      body: CommandCreate,
      response: { 201: Command, ...errorResponses([...authErrors('owner'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async (request, reply) => {
    const id = request.params.id
    const t = now()
    const row = await store.create({ deviceId: id, name: request.body.name, params: request.body.params ?? {}, now: t, expiresAt: t + (request.body.ttlMs ?? COMMAND_TTL_DEFAULT_MS), send: broker.commandsListening(id) })
    if (row === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id })
    ctx.events.command(row)
    const waitMs = request.body.waitMs ?? 0
    // listen before delivering, so a fast answer is not missed
    const answer = waitMs > 0 ? finished(row, waitMs) : undefined
    await broker.commandCreated(row)
    const latest = answer !== undefined ? await answer : (await getCommand(db, id, row.id)) ?? row
    return reply.status(201).send(view(latest))
  })

  app.get('/v1/devices/:id/commands', {
    config: { auth: 'device' },
    schema: {
      summary: 'A device\'s commands, newest first; `status=pending` lists what it still has to do, oldest first, and marks them sent when the device itself asks',
      tags: ['commands'],
      params: DeviceParams,
      querystring: CommandListQuery,
      response: { 200: CommandList, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    const id = request.params.id
    await mustExist(id)
    const t = now()
    const rows = await listCommands(db, id, { status: request.query.status, limit: request.query.limit ?? 100, now: t })
    if (request.query.status === 'pending' && request.principal?.kind === 'device') {
      // polling is how an HTTP device receives its commands
      await markSent(db, rows.filter(r => r.status === 'queued').map(r => r.id), t)
      for (const r of rows) if (r.status === 'queued') { r.status = 'sent'; r.sentAt = t }
    }
    return { items: rows.map(view) }
  })

  app.get('/v1/devices/:id/commands/:cmdId', {
    config: { auth: 'device' },
    schema: {
      summary: 'One command, with its status and the device\'s result',
      tags: ['commands'],
      params: CommandParams,
      response: { 200: Command, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'COMMAND_NOT_FOUND']) },
    },
  }, async request => {
    const row = await getCommand(db, request.params.id, request.params.cmdId)
    if (row === undefined) throw new RoostError('COMMAND_NOT_FOUND', { id: request.params.id, command: request.params.cmdId })
    return view(row)
  })

  app.post('/v1/devices/:id/commands/:cmdId/result', {
    config: { auth: 'device-self' },
    schema: {
      summary: 'A device answers a command over HTTP: {"ok": true, "result": …} or {"ok": false, "error": "…"}',
      tags: ['commands'],
      params: CommandParams,
      body: CommandResultBody,
      response: { 200: Command, ...errorResponses([...authErrors('device-self'), 'VALIDATION_FAILED', 'PAYLOAD_INVALID', 'COMMAND_NOT_FOUND', 'COMMAND_FINAL']) },
    },
  }, async request => {
    const { id, cmdId } = request.params
    const outcome = await broker.finishCommand(id, cmdId, request.body)
    if ('row' in outcome) return view(outcome.row)
    throw new RoostError(outcome.code, { detail: outcome.detail ?? '', ...outcome.params })
  })
}
