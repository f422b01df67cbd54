// The `roost` command: start the platform (or one part of it) and do the common admin steps.

import { ConfigError, loadConfig, type Config } from './schemas/config.ts'
import { isDeviceId } from './schemas/topics.ts'
import { createLogger } from './log.ts'
import { readSecrets, resolveSecrets } from './secrets.ts'
import { startPlatform, type Part } from './platform.ts'
import { openDatabase } from './db/open.ts'
import { createDevice } from './db/devices.ts'
import { cpuBudget, gcMode, LAUNCHER_ENV } from './bin/launcher.mjs'

const USAGE = `usage:
  roost start [--flag value ...]       broker, API and (with OPENAI_API_KEY) the voice bridge on the embedded database (or DATABASE_URL)
  roost broker [--flag value ...]      the MQTT broker alone
  roost api [--flag value ...]         the REST API alone, using the broker at ROOST_BROKER_URL
  roost bridge [--flag value ...]      the voice bridge alone, using the broker at ROOST_BROKER_URL (needs OPENAI_API_KEY)
  roost device add <id> [--name text]  create a device; prints its token and a mosquitto_pub line
Settings come from flags, then environment variables, then defaults; see README.md.`

async function main (argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  switch (command) {
    case 'start': return await serve(rest, ['broker', 'api', 'bridge'])
    case 'broker': return await serve(rest, ['broker'])
    case 'api': return await serve(rest, ['api'])
    case 'bridge': return await serve(rest, ['bridge'])
    case 'device':
      if (rest[0] === 'add') return await deviceAdd(rest.slice(1))
      break
    case undefined:
    case 'help':
    case '--help':
      process.stdout.write(USAGE + '\n')
      return command === undefined ? 1 : 0
  }
  process.stderr.write(`unknown command "${argv.join(' ')}"\n${USAGE}\n`)
  return 1
}

function config (argv: readonly string[]): Config {
  return loadConfig(argv, process.env)
}

async function serve (argv: readonly string[], parts: Part[]): Promise<number> {
  const resolved = resolveSecrets(config(argv))
  const cfg = resolved.config
  const log = createLogger(cfg.log.level)
  if (cfg.broker.anonymous) log.warn('ROOST_ANONYMOUS=true: clients without credentials may use the scratch topic space')
  const platform = await startPlatform(cfg, log, parts)
  const { mqtt, http } = platform.ports
  if (resolved.generatedAdminToken) {
    // printed once, to the terminal, never to the JSON log; it stays in the data dir's secrets.json
    process.stdout.write([
      '',
      '  Roost is running for the first time. Your admin token (saved in ' + cfg.dataDir + '/secrets.json):',
      '',
      '    ' + String(cfg.auth.adminToken),
      '',
      '  Add a device:   npx roost device add kitchen-1',
      '',
    ].join('\n') + '\n')
  }
  log.info({ mqtt, mqtts: platform.ports.mqtts, http, docs: http === undefined ? undefined : `http://localhost:${http}/docs`, cpus: cpuBudget(), gc: gcMode() }, 'roost is ready')
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    log.info({ signal }, 'shutting down')
    platform.close().then(() => process.exit(0), err => { log.error({ err }, 'shutdown failed'); process.exit(1) })
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
  if (process.env[LAUNCHER_ENV] !== undefined && process.send !== undefined) {
    // started again by bin/roost.mjs with the flags for one CPU: stop with the launcher, however it ends
    process.channel?.unref()
    process.once('disconnect', () => stop('launcher exited'))
    if (!process.connected) stop('launcher exited')
  }
  return await new Promise<number>(() => {}) // runs until a signal
}

function takeFlag (argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name)
  if (i === -1) return undefined
  const value = argv[i + 1]
  argv.splice(i, 2)
  return value
}

async function deviceAdd (argv: string[]): Promise<number> {
  const args = [...argv]
  const name = takeFlag(args, '--name')
  const id = args.shift()
  if (id === undefined || !isDeviceId(id)) {
    process.stderr.write('roost device add <id>: the id must match ^[A-Za-z0-9_-]{1,64}$ (e.g. kitchen-1)\n')
    return 1
  }
  const cfg = config(args)
  const adminToken = cfg.auth.adminToken ?? readSecrets(cfg.dataDir)?.adminToken
  let token: string
  let mqttPort = cfg.broker.mqttPort
  try {
    // the running server owns the embedded database: ask it
    const res = await fetch(`http://127.0.0.1:${cfg.http.port}/v1/devices`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${adminToken ?? ''}` },
      body: JSON.stringify(name === undefined ? { id } : { id, name }),
    })
    const body = await res.json() as { token?: string, mqtt?: { port: number }, message?: string }
    if (res.status !== 201 || body.token === undefined) {
      process.stderr.write(`could not add ${id}: ${body.message ?? res.statusText}\n`)
      return 1
    }
    token = body.token
    mqttPort = body.mqtt?.port ?? mqttPort
  } catch (err) {
    if ((err as { cause?: { code?: string } }).cause?.code !== 'ECONNREFUSED') throw err
    // nothing is running: write to the database directly
    const db = await openDatabase({ url: cfg.db.url, dataDir: cfg.dataDir })
    try {
      const created = await createDevice(db, { id, name }, Date.now())
      if (created === undefined) {
        process.stderr.write(`could not add ${id}: a device with this id already exists\n`)
        return 1
      }
      token = created.token
    } finally {
      await db.close()
    }
  }
  const host = cfg.broker.publicHost
  process.stdout.write([
    `device ${id} created. Its token (shown only now; rotate with POST /v1/devices/${id}/token):`,
    '',
    `  ${token}`,
    '',
    'Send a reading:',
    '',
    `  mosquitto_pub -h ${host} -p ${mqttPort} -i ${id} -u ${id} -P '${token}' -q 1 -t devices/${id}/telemetry -m '{"temperature":21.5}'`,
    '',
  ].join('\n') + '\n')
  return 0
}

main(process.argv.slice(2)).then(code => { process.exitCode = code }, err => {
  if (err instanceof ConfigError) process.stderr.write(err.message + '\n')
  else process.stderr.write(`roost: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
