// The API: Fastify with REST routes, OpenAPI docs, metrics and MQTT over WebSocket, built unstarted.

import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifySchemaCompiler } from 'fastify'
import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import fastifyWebsocket from '@fastify/websocket'
import fastifyRateLimit from '@fastify/rate-limit'
import fastifyHelmet from '@fastify/helmet'
import fastifyCors from '@fastify/cors'
import { createHash } from 'node:crypto'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { Config } from '../schemas/config.ts'
import { ERRORS, ERROR_CODES, RoostError } from '../schemas/errors.ts'
import type { TelemetryLimits } from '../schemas/telemetry.ts'
import type { Database } from '../db/open.ts'
import type { BrokerPort } from './broker-port.ts'
import { installAuth } from './auth.ts'
import { secretEquals } from '../broker/identity.ts'
import { accountRoutes } from './accounts.ts'
import { UserAuth, userAuthFor } from './user-auth.ts'
import { LoginGuard } from './lockout.ts'
import { installErrorHandling } from './errors.ts'
import { deviceRoutes } from './devices.ts'
import { telemetryRoutes } from './telemetry.ts'
import { stateRoutes } from './state.ts'
import { commandRoutes } from './commands.ts'
import { EventHub, eventRoutes } from './events.ts'
import { WebhookDispatcher } from './webhook-dispatch.ts'
import { webhookRoutes } from './webhooks.ts'
import { firmwareRoutes } from './firmware.ts'
import { rolloutRoutes } from './rollouts.ts'
import { voiceRoutes } from './voice.ts'
import { openFirmwareStore, type FirmwareStore } from './firmware-store.ts'
import { healthRoutes } from './health.ts'
import { mqttWebSocketRoute } from './mqtt-ws.ts'

export interface ApiDeps {
  readonly db: Database
  readonly log: Logger
  readonly registry: Registry
  readonly broker: BrokerPort
  readonly now?: () => number
  // where devices are told to connect (the broker's real port when it was started on port 0)
  readonly mqttPort?: number
  // user credentials, shared with the broker's app logins when both run in one process
  readonly users?: UserAuth
  readonly lockout?: LoginGuard
}

/** What every route plugin receives. */
export interface ApiContext {
  readonly db: Database
  readonly registry: Registry
  readonly broker: BrokerPort
  readonly now: () => number
  readonly mqtt: { readonly host: string, readonly port: number }
  // where devices reach this API (ROOST_PUBLIC_URL), no trailing slash; a configured port 0 is the real one
  readonly publicUrl: () => string
  readonly telemetryLimits: TelemetryLimits
  readonly events: EventHub
  readonly eventsWindow: number
  readonly webhooks: WebhookDispatcher
  readonly firmware: FirmwareStore
  readonly users: UserAuth
  readonly lockout: LoginGuard
  readonly isAdminToken: (token: string) => boolean
  readonly accounts: Config['accounts']
  readonly fleetSecret: string | undefined
}

// WebSocket frames may carry a whole MQTT packet plus a little framing; the MQTT byte guard then
// checks the packets themselves. Without this bound `ws` would buffer any frame a client announces.
const WS_FRAME_SLACK_BYTES = 64 * 1024

// Query strings and path parameters are text, so they are coerced to the schema's types ("5" → 5). JSON
// bodies are taken as sent: coercing them turned `{"name": null}` into "" and telemetry `null`/`true`/`[5]`
// into 0/1/5 (a union's first branch wins). The options are otherwise Fastify's defaults.
export function validatorCompiler (): FastifySchemaCompiler<unknown> {
  const options = { useDefaults: true, removeAdditional: false, allErrors: false, addUsedSchema: false } as const
  // ajv-formats is CommonJS whose typings declare only a default export; its function is also its own `.default`
  const body = ajvFormats.default(new Ajv({ ...options, coerceTypes: false }))
  const text = ajvFormats.default(new Ajv({ ...options, coerceTypes: 'array' }))
  return ({ schema, httpPart }) => (httpPart === 'body' ? body : text).compile(schema as object)
}

// not counted against the rate limit: probes, scrapes and the docs page
const UNLIMITED_PREFIXES = ['/health', '/metrics', '/docs']
// HSTS max-age when the API is reached over TLS (a proxy terminating it): one year, the usual floor for preload lists
const HSTS = 'max-age=31536000; includeSubDomains'

/**
 * Rate limiting (@fastify/rate-limit, per credential or else per IP), security headers (@fastify/helmet),
 * CORS for the configured origins (@fastify/cors), and HSTS on requests that came over TLS.
 */
async function installAbuseGuards (app: FastifyInstance, config: Config): Promise<void> {
  await app.register(fastifyHelmet, {
    // the docs page runs Swagger UI's inline scripts; the API itself answers JSON, which a CSP does not guard
    contentSecurityPolicy: false,
    // sent below only when the request arrived over TLS: over plain HTTP it would be ignored or wrong
    hsts: false,
  })
  app.addHook('onSend', async (request, reply) => {
    if (request.protocol === 'https') reply.header('strict-transport-security', HSTS)
  })
  const origins = config.corsOrigins
  if (origins.length > 0) await app.register(fastifyCors, { origin: origins.includes('*') ? true : [...origins], credentials: false })
  await app.register(fastifyRateLimit, {
    global: true,
    max: config.rateLimit.max,
    timeWindow: config.rateLimit.windowMs,
    // a hash of the bearer credential (never the credential itself, which would sit in memory as a key), else the address
    keyGenerator: request => {
      const auth = request.headers.authorization
      return auth === undefined ? `ip:${request.ip}` : 'cred:' + createHash('sha256').update(auth).digest('base64url')
    },
    allowList: request => UNLIMITED_PREFIXES.some(p => request.url === p || request.url.startsWith(p + '/') || request.url.startsWith(p + '?')),
    errorResponseBuilder: (_request, context) => new RoostError('RATE_LIMITED', { seconds: Math.ceil(context.ttl / 1000) }),
  })
}

export async function buildApi (config: Config, deps: ApiDeps): Promise<FastifyInstance> {
  const adminToken = config.auth.adminToken
  if (adminToken === undefined) throw new Error('buildApi needs config.auth.adminToken (resolveSecrets fills it)')
  const urlSecret = config.auth.urlSecret
  if (urlSecret === undefined) throw new Error('buildApi needs config.auth.urlSecret (resolveSecrets fills it)')
  const app = Fastify({
    loggerInstance: deps.log as FastifyBaseLogger,
    trustProxy: config.trustProxy,
    // request ids in logs; never the Authorization header (pino's default request serializer omits headers)
    genReqId: () => Math.random().toString(36).slice(2, 10),
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.setValidatorCompiler(validatorCompiler())

  const ctx: ApiContext = {
    db: deps.db,
    registry: deps.registry,
    broker: deps.broker,
    now: deps.now ?? Date.now,
    mqtt: { host: config.broker.publicHost, port: deps.mqttPort ?? config.broker.mqttPort },
    publicUrl: () => {
      const url = new URL(config.http.publicUrl)
      // like ctx.mqtt above: with ROOST_HTTP_PORT=0 the port is known once the server listens
      const address = url.port === '0' ? app.server.address() : null
      if (typeof address === 'object' && address !== null) url.port = String(address.port)
      return url.href.replace(/\/+$/, '')
    },
    telemetryLimits: config.telemetry,
    events: new EventHub(config.eventsWindow),
    eventsWindow: config.eventsWindow,
    webhooks: new WebhookDispatcher({ db: deps.db, log: deps.log.child({ part: 'webhooks' }), ...config.webhooks }),
    firmware: await openFirmwareStore({ dataDir: config.dataDir, maxBytes: config.firmware.maxBytes, urlSecret }),
    users: deps.users ?? userAuthFor(config, deps.db),
    lockout: deps.lockout ?? new LoginGuard({ addressThreshold: config.loginAddressFailures }),
    isAdminToken: token => secretEquals(token, adminToken),
    accounts: config.accounts,
    fleetSecret: config.auth.fleetSecret,
  }
  await ctx.events.connect(deps.broker)
  await ctx.webhooks.start()
  ctx.events.listen(e => ctx.webhooks.onEvent(e))
  app.addHook('onClose', async () => { await ctx.webhooks.stop() })

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Roost API', version: '1', description: 'REST surface of Roost. Errors are `{statusCode, code, message}` with a stable `code`; MQTT refusals use the same catalogue (schema MqttError).' },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'the admin token; a user\'s access token or API key (own devices only); or a device token on that device\'s endpoints' } },
        schemas: {
          MqttError: {
            type: 'object',
            description: 'payload on devices/{id}/errors when the broker refuses a publish or subscribe of that device',
            properties: {
              topic: { type: 'string' },
              code: { type: 'string', enum: ERROR_CODES.filter(c => ERRORS[c].surface !== 'rest') },
              message: { type: 'string' },
            },
            required: ['topic', 'code', 'message'],
          },
        },
      },
      security: [{ bearer: [] }],
    },
  })
  await app.register(fastifySwaggerUi, { routePrefix: '/docs' })
  await app.register(fastifyWebsocket, { options: { maxPayload: config.broker.maxPacketBytes + WS_FRAME_SLACK_BYTES } })

  installErrorHandling(app)
  await installAbuseGuards(app, config)
  installAuth(app, { adminToken, db: deps.db, users: ctx.users })

  await app.register(healthRoutes(ctx))
  await app.register(deviceRoutes(ctx))
  await app.register(accountRoutes(ctx))
  await app.register(telemetryRoutes(ctx))
  await app.register(stateRoutes(ctx))
  await app.register(commandRoutes(ctx))
  await app.register(eventRoutes(ctx))
  await app.register(webhookRoutes(ctx))
  await app.register(firmwareRoutes(ctx))
  await app.register(rolloutRoutes(ctx))
  await app.register(voiceRoutes(ctx))
  await app.register(mqttWebSocketRoute(ctx))
  // unknown routes answer ROUTE_NOT_FOUND; documented here since no route of its own returns it
  app.get('/v1', {
    schema: {
      summary: 'API root: which version this is',
      tags: ['operations'],
      response: { 200: Type.Object({ name: Type.String(), version: Type.String() }), 404: Type.Object({ statusCode: Type.Integer(), code: Type.Unsafe<string>({ type: 'string', enum: ['ROUTE_NOT_FOUND'] }), message: Type.String() }, { description: 'any unknown path under /v1' }), 500: Type.Object({ statusCode: Type.Integer(), code: Type.Unsafe<string>({ type: 'string', enum: ['INTERNAL'] }), message: Type.String() }, { description: 'any route: an unexpected failure, logged with its request id' }) },
    },
  }, async () => ({ name: 'roost', version: '1' }))
  return app
}
