// The README's first minute: add a device, paste the mosquitto_pub line, read the value back over REST.

import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startRoost, type TestRoost } from './harness.ts'

const run = promisify(execFile)

describe('quick start', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost() })
  afterAll(async () => { await roost.close() })

  it('a device created over REST stores a reading sent with the real mosquitto_pub and REST returns it as latest', async () => {
    const created = await roost.request('POST', '/v1/devices', { id: 'kitchen-1', name: 'Kitchen' })
    expect(created.status).toBe(201)
    expect(created.body.mqtt).toEqual({ host: 'localhost', port: roost.mqttPort, username: 'kitchen-1' })
    const token = created.body.token as string
    expect(token.length).toBeGreaterThanOrEqual(28)

    await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(roost.mqttPort), '-i', 'kitchen-1', '-u', 'kitchen-1', '-P', token,
      '-q', '1', '-t', 'devices/kitchen-1/telemetry', '-m', '{"temperature":21.5,"door":"closed"}'])

    // QoS 1: mosquitto_pub exits after PUBACK, which Roost sends only after the commit, so no waiting here
    const latest = await roost.request('GET', '/v1/devices/kitchen-1/telemetry/latest')
    expect(latest.status).toBe(200)
    expect(latest.body.deviceId).toBe('kitchen-1')
    expect(latest.body.values.temperature.value).toBe(21.5)
    expect(latest.body.values.door.value).toBe('closed')
  })

  it('the device token also reads its own latest values, but not another device\'s', async () => {
    const a = await roost.addDevice('qs-a')
    await roost.addDevice('qs-b')
    expect((await roost.request('GET', '/v1/devices/qs-a/telemetry/latest', undefined, a)).status).toBe(200)
    const other = await roost.request('GET', '/v1/devices/qs-b/telemetry/latest', undefined, a)
    expect(other.status).toBe(403)
    expect(other.body.code).toBe('DEVICE_TOKEN_SCOPE')
  })
  it('roost device add (the real CLI, against the running server) prints a mosquitto_pub line that, pasted into a shell, stores a reading', async () => {
    const { stdout } = await run(process.execPath, ['bin/roost.mjs', 'device', 'add', 'kitchen-2'], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: { ...process.env, ROOST_HTTP_PORT: String(roost.httpPort), ROOST_ADMIN_TOKEN: roost.adminToken, ROOST_DATA_DIR: roost.dataDir, ROOST_PUBLIC_HOST: '127.0.0.1' },
    })
    const line = stdout.split('\n').map(l => l.trim()).find(l => l.startsWith('mosquitto_pub '))
    expect(line).toBeDefined()
    expect(line).toContain(`-p ${roost.mqttPort}`)
    await run('sh', ['-c', line as string])
    const latest = await roost.request('GET', '/v1/devices/kitchen-2/telemetry/latest')
    expect(latest.body.values.temperature.value).toBe(21.5)
  })
})
