// MQTT over WebSocket at /mqtt: an ordinary Fastify route, so request hooks run before the upgrade.

import { createWebSocketStream } from 'ws'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { ApiContext } from './index.ts'

export const mqttWebSocketRoute = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  app.get('/mqtt', {
    websocket: true,
    schema: { summary: 'MQTT over WebSocket (subprotocol `mqtt`); log in with MQTT CONNECT as over TCP', tags: ['mqtt'], hide: false },
  }, (socket, request) => {
    request.raw.socket.setNoDelay(true)
    const stream = createWebSocketStream(socket)
    // errors surface through the MQTT client's close handling; an unhandled 'error' would crash the process
    stream.on('error', err => request.log.debug({ err: err.message }, 'mqtt websocket stream error'))
    ctx.broker.handleMqttStream(stream, request.raw)
  })
}
