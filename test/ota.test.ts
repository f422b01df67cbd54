// OTA rollouts end to end with simulated devices (real MQTT clients, real HTTP): staged notices on the
// retained devices/{id}/ota topic, resumed downloads verified by SHA-256 and Ed25519, status reports moving
// stages on, self-pausing on failures, withdrawal on cancel and finish, rebuild after a restart,
// GET /v1/ota/check, FIRMWARE_IN_USE, and the topic rules.

import { createHash, createPublicKey, randomBytes, verify, type KeyObject } from 'node:crypto'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { collect, eventually, nextMessage, sleep, startRoost, type TestRoost } from './harness.ts'
import { assignStages, judgeStage, emptyCounts, nextRolloutState, stageEnds, type OtaNotice } from '../schemas/rollouts.ts'

// notices carry http://{ROOST_PUBLIC_HOST}:{real port}; the listeners are bound to 127.0.0.1 only
const ENV = { ROOST_PUBLIC_HOST: '127.0.0.1' }
const KiB = 1024

interface Firmware { id: string, version: string, hardware: string, size: number, sha256: string, signature: string }

function sha256 (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

async function upload (roost: TestRoost, version: string, hardware: string, image: Uint8Array = randomBytes(64 * KiB)): Promise<Firmware> {
  const form = new FormData()
  form.append('version', version)
  form.append('hardware', hardware)
  form.append('file', new Blob([image as Uint8Array<ArrayBuffer>]), 'image.bin')
  const res = await fetch(roost.httpUrl + '/v1/firmware', { method: 'POST', headers: { authorization: `Bearer ${roost.adminToken}` }, body: form })
  expect(res.status).toBe(201)
  return await res.json() as Firmware
}

/** Creates devices that have reported their hardware and firmware version (as reported state); returns their tokens. */
async function fleet (roost: TestRoost, ids: string[], hardware: string, version: string): Promise<Record<string, string>> {
  const tokens: Record<string, string> = {}
  for (const id of ids) {
    tokens[id] = await roost.addDevice(id)
    const device = await roost.connectDevice(id, tokens[id] as string)
    // acknowledged once stored: the rollout can target the device as soon as this resolves
    await device.publishAsync(`devices/${id}/state/reported`, JSON.stringify({ hardware, firmware: version, uptime: 1 }), { qos: 1 })
    await device.endAsync()
  }
  return tokens
}

/** A device listening on its OTA topic: every message (an empty one withdraws the notice) is kept in order. */
async function listen (roost: TestRoost, id: string, token: string): Promise<{ client: MqttClient, messages: Array<{ topic: string, payload: Buffer }> }> {
  const client = await roost.connectDevice(id, token)
  const { messages } = collect(client)
  await client.subscribeAsync([`devices/${id}/ota`, `devices/${id}/errors`], { qos: 1 })
  return { client, messages }
}

function notices (messages: Array<{ topic: string, payload: Buffer }>): Array<OtaNotice | null> {
  return messages.filter(m => m.topic.endsWith('/ota')).map(m => (m.payload.length === 0 ? null : JSON.parse(m.payload.toString()) as OtaNotice))
}

async function noticeOf (messages: Array<{ topic: string, payload: Buffer }>, what: string): Promise<OtaNotice> {
  return await eventually(() => notices(messages).filter(n => n !== null).at(-1) ?? undefined, 5000, what)
}

/** What a newly subscribing device finds retained on its OTA topic within `ms` (undefined: nothing). */
async function retainedFor (roost: TestRoost, id: string, token: string, ms = 400): Promise<OtaNotice | undefined> {
  const { client, messages } = await listen(roost, id, token)
  await sleep(ms)
  await client.endAsync()
  const found = notices(messages)
  expect(found.every(n => n !== null)).toBe(true) // a withdrawn notice is not retained as an empty message
  return found[0] ?? undefined
}

async function status (device: MqttClient, id: string, version: string, state: string, extra: Record<string, unknown> = {}): Promise<void> {
  await device.publishAsync(`devices/${id}/ota/status`, JSON.stringify({ version, state, ...extra }), { qos: 1 })
}

/**
 * Downloads the image the way a device on a flaky link does: the first request is cut off part way, the
 * second asks for the rest with `Range` and `If-Range`. Reports progress on the way.
 */
async function interruptedDownload (notice: OtaNotice, progress: (percent: number) => Promise<void>): Promise<Buffer> {
  const abort = new AbortController()
  const first = await fetch(notice.url, { signal: abort.signal })
  expect(first.status).toBe(200)
  const etag = first.headers.get('etag') as string
  const reader = (first.body as ReadableStream<Uint8Array>).getReader()
  const parts: Buffer[] = []
  let got = 0
  while (got < notice.size / 4) {
    const { value, done } = await reader.read()
    if (done) break
    parts.push(Buffer.from(value))
    got += value.length
  }
  abort.abort() // the link drops mid-image
  await reader.cancel().catch(() => {})
  expect(got).toBeLessThan(notice.size)
  await progress(Math.floor(got * 100 / notice.size))
  const rest = await fetch(notice.url, { headers: { range: `bytes=${got}-`, 'if-range': etag } })
  expect(rest.status).toBe(206)
  expect(rest.headers.get('content-range')).toBe(`bytes ${got}-${notice.size - 1}/${notice.size}`)
  parts.push(Buffer.from(await rest.arrayBuffer()))
  await progress(100)
  return Buffer.concat(parts)
}

/** Everything a device does from the notice to the reboot: download, verify digest and signature, install. */
async function install (device: MqttClient, id: string, notice: OtaNotice, key: KeyObject): Promise<void> {
  await status(device, id, notice.version, 'downloading', { progress: 0 })
  const image = await interruptedDownload(notice, p => status(device, id, notice.version, 'downloading', { progress: p }))
  await status(device, id, notice.version, 'verifying')
  expect(image.length).toBe(notice.size)
  expect(sha256(image)).toBe(notice.sha256)
  // the signature covers the 32 raw digest bytes, checked against the pinned key
  expect(verify(null, Buffer.from(notice.sha256, 'hex'), key, Buffer.from(notice.signature, 'base64'))).toBe(true)
  await status(device, id, notice.version, 'installing')
  await status(device, id, notice.version, 'rebooting')
  await device.endAsync()
}

async function rollout (roost: TestRoost, id: string): Promise<any> {
  const res = await roost.request('GET', `/v1/rollouts/${id}`)
  expect(res.status).toBe(200)
  return res.body
}

async function act (roost: TestRoost, id: string, action: string): Promise<{ status: number, body: any }> {
  return await roost.request('PATCH', `/v1/rollouts/${id}`, { action })
}

describe('stage planning and judging', () => {
  it.each([
    [[{ count: 2 }, { percent: 50 }], 4, [2, 4]],
    [[{ percent: 10 }, { percent: 90 }], 4, [1, 4]],
    [[{ percent: 33.3 }, { percent: 33.3 }, { percent: 33.4 }], 10, [4, 7, 10]],
    [[{ count: 5 }], 3, [3]],
    [[{ percent: 50 }], 5, [3]],
    [[{ count: 1 }, { count: 1 }, { percent: 100 }], 2, [1, 2, 2]],
  ])('stages %j over %i devices end at %j', (stages, total, ends) => {
    expect(stageEnds(stages, total)).toEqual(ends)
  })

  it('devices past the last stage are left out', () => {
    expect(assignStages([{ count: 1 }, { percent: 25 }], 4)).toEqual([0, 1, -1, -1])
  })

  it('a stage passes when all finished within the threshold and fails as soon as failures exceed it', () => {
    expect(judgeStage({ ...emptyCounts(), succeeded: 2, downloading: 1 }, 0, 0, 2)).toEqual({ kind: 'waiting' })
    expect(judgeStage({ ...emptyCounts(), succeeded: 2, failed: 1 }, 1, 0, 2)).toEqual({ kind: 'passed' })
    expect(judgeStage({ ...emptyCounts(), failed: 2, notified: 5 }, 1, 1, 3)).toMatchObject({ kind: 'failed', reason: 'stage 2 of 3: 2 of 7 devices failed, more than the failure threshold of 1' })
  })

  it.each([
    ['draft', 'start', 'running'], ['running', 'pause', 'paused'], ['paused', 'resume', 'running'], ['running', 'cancel', 'cancelled'],
    ['draft', 'pause', undefined], ['running', 'start', undefined], ['finished', 'cancel', undefined], ['cancelled', 'resume', undefined],
  ] as const)('a %s rollout on %s becomes %s', (state, action, next) => {
    expect(nextRolloutState(state, action)).toBe(next)
  })
})

describe('OTA rollouts', () => {
  let roost: TestRoost
  let key: KeyObject
  beforeAll(async () => {
    roost = await startRoost({ env: ENV })
    key = createPublicKey((await roost.request('GET', '/v1/firmware/signing-key', undefined, null)).body.pem as string)
  })
  afterAll(async () => { await roost?.close() })

  it('a two-stage rollout updates stage 1 through resumed, verified downloads, moves on to stage 2, reaches a device that was offline, and withdraws its notices when finished', async () => {
    const image = randomBytes(2 * 1024 * KiB)
    const fw = await upload(roost, '2.0.0', 'esp32-s3', image)
    const tokens = await fleet(roost, ['s3-a', 's3-b', 's3-c', 's3-d'], 'esp32-s3', '1.0.0')
    // neither is picked: other hardware, and already on the version
    await fleet(roost, ['c3-x'], 'esp32-c3', '1.0.0')
    await fleet(roost, ['s3-current'], 'esp32-s3', '2.0.0')

    const created = await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'esp32-s3' }, stages: [{ count: 2 }, { percent: 50 }], failureThreshold: 0 })
    expect(created.status).toBe(201)
    const id = created.body.id as string
    expect(created.body).toMatchObject({ state: 'draft', version: '2.0.0', hardware: 'esp32-s3', firmwareId: fw.id, deviceCount: 4, currentStage: 0, pausedReason: null, startedAt: null })
    expect(created.body.stages.map((s: any) => [s.size, s.counts.pending])).toEqual([[2, 2], [2, 2]])
    expect((await rollout(roost, id)).devices.map((d: any) => [d.deviceId, d.stage, d.state, d.fromVersion]))
      .toEqual([['s3-a', 0, 'pending', '1.0.0'], ['s3-b', 0, 'pending', '1.0.0'], ['s3-c', 1, 'pending', '1.0.0'], ['s3-d', 1, 'pending', '1.0.0']])

    const a = await listen(roost, 's3-a', tokens['s3-a'] as string)
    const b = await listen(roost, 's3-b', tokens['s3-b'] as string)
    const c = await listen(roost, 's3-c', tokens['s3-c'] as string)
    // s3-d stays offline through its stage's start

    const started = await act(roost, id, 'start')
    expect(started.status).toBe(200)
    expect(started.body).toMatchObject({ state: 'running', currentStage: 0 })
    expect(started.body.stages[0].counts).toMatchObject({ notified: 2 })

    const noticeA = await noticeOf(a.messages, 'the notice to s3-a')
    const noticeB = await noticeOf(b.messages, 'the notice to s3-b')
    expect(noticeA).toEqual({ version: '2.0.0', url: expect.stringMatching(new RegExp(`^${roost.httpUrl}/v1/firmware/${fw.id}/download\\?exp=\\d+&sig=`)), size: image.length, sha256: sha256(image), signature: fw.signature })
    expect(noticeB).toMatchObject({ version: '2.0.0', sha256: fw.sha256 })
    await sleep(200)
    expect(notices(c.messages)).toEqual([]) // stage 2 has not started

    await install(a.client, 's3-a', noticeA, key)
    await install(b.client, 's3-b', noticeB, key)
    let view = await rollout(roost, id)
    expect(view.stages[0].counts).toMatchObject({ rebooting: 2 })
    expect(view.devices.find((d: any) => d.deviceId === 's3-a')).toMatchObject({ state: 'rebooting', progress: null })
    expect(view.currentStage).toBe(0)

    // after the reboot: s3-a says so on ota/status; s3-b only reports the version it now runs
    const aAgain = await roost.connectDevice('s3-a', tokens['s3-a'] as string)
    await status(aAgain, 's3-a', '2.0.0', 'succeeded')
    const bAgain = await roost.connectDevice('s3-b', tokens['s3-b'] as string)
    await bAgain.publishAsync('devices/s3-b/state/reported', JSON.stringify({ firmware: '2.0.0' }), { qos: 1 })

    view = await eventually(async () => { const v = await rollout(roost, id); return v.currentStage === 1 ? v : undefined }, 5000, 'stage 2 to start')
    expect(view.state).toBe('running')
    expect(view.stages[0].counts).toMatchObject({ succeeded: 2 })
    expect(view.stages[1].counts).toMatchObject({ notified: 2 })

    const noticeC = await noticeOf(c.messages, 'the notice to s3-c')
    // the device that was offline finds its notice retained when it connects
    const d = await listen(roost, 's3-d', tokens['s3-d'] as string)
    const noticeD = await noticeOf(d.messages, 'the retained notice to s3-d')
    expect(noticeD).toMatchObject({ version: '2.0.0', sha256: fw.sha256, size: image.length })

    await install(c.client, 's3-c', noticeC, key)
    await install(d.client, 's3-d', noticeD, key)
    for (const dev of ['s3-c', 's3-d']) await status(await roost.connectDevice(dev, tokens[dev] as string), dev, '2.0.0', 'succeeded')

    view = await eventually(async () => { const v = await rollout(roost, id); return v.state === 'finished' ? v : undefined }, 5000, 'the rollout to finish')
    expect(view.counts).toMatchObject({ succeeded: 4, failed: 0, pending: 0 })
    expect(typeof view.finishedAt).toBe('number')
    // finished: the notices are withdrawn, so a device subscribing now finds nothing
    expect(await retainedFor(roost, 's3-a', tokens['s3-a'] as string)).toBeUndefined()
    expect(await retainedFor(roost, 's3-d', tokens['s3-d'] as string)).toBeUndefined()
    // and every device is known to run 2.0.0 now: a second rollout of it has no one left to update
    const again = await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'esp32-s3' }, stages: [{ percent: 100 }] })
    expect(again.status).toBe(409)
    expect(again.body.code).toBe('ROLLOUT_NO_DEVICES')
    expect((await roost.request('GET', '/v1/rollouts?state=finished')).body.items.map((r: any) => r.id)).toContain(id)
    // a finished rollout no longer holds its image
    expect((await roost.request('DELETE', `/v1/firmware/${fw.id}`)).status).toBe(204)
  })

  it('a stage with more failures than its threshold pauses the rollout with a reason; resume tells the failed devices again', async () => {
    const fw = await upload(roost, '1.1.0', 'fail-hw')
    const tokens = await fleet(roost, ['f-1', 'f-2', 'f-3'], 'fail-hw', '1.0.0')
    const id = (await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'fail-hw' }, stages: [{ percent: 100 }], failureThreshold: 1 })).body.id as string
    const f1 = await listen(roost, 'f-1', tokens['f-1'] as string)
    const f2 = await listen(roost, 'f-2', tokens['f-2'] as string)
    expect((await act(roost, id, 'start')).status).toBe(200)
    await noticeOf(f1.messages, 'the notice to f-1')
    await noticeOf(f2.messages, 'the notice to f-2')

    await status(f1.client, 'f-1', '1.1.0', 'failed', { error: 'flash write failed at 0x1a0000' })
    await sleep(200)
    expect((await rollout(roost, id)).state).toBe('running') // one failure is within the threshold
    await status(f2.client, 'f-2', '1.1.0', 'downloading', { progress: 40 })
    await status(f2.client, 'f-2', '1.1.0', 'failed', { error: 'signature mismatch' })

    const paused = await eventually(async () => { const v = await rollout(roost, id); return v.state === 'paused' ? v : undefined }, 5000, 'the rollout to pause')
    expect(paused.pausedReason).toBe('stage 1 of 1: 2 of 3 devices failed, more than the failure threshold of 1')
    expect(paused.stages[0].counts).toMatchObject({ failed: 2, notified: 1 })
    expect(paused.devices.find((d: any) => d.deviceId === 'f-1')).toMatchObject({ state: 'failed', error: 'flash write failed at 0x1a0000' })
    // f-3 had not begun: while paused it is not told
    expect(await retainedFor(roost, 'f-3', tokens['f-3'] as string)).toBeUndefined()

    const again = await act(roost, id, 'pause')
    expect(again.status).toBe(409)
    expect(again.body).toMatchObject({ code: 'ROLLOUT_TRANSITION_INVALID', message: 'a paused rollout cannot pause; allowed now: resume, cancel' })

    const before = notices(f1.messages).length
    const resumed = await act(roost, id, 'resume')
    expect(resumed.status).toBe(200)
    expect(resumed.body).toMatchObject({ state: 'running', pausedReason: null })
    expect(resumed.body.stages[0].counts).toMatchObject({ notified: 3, failed: 0 })
    await eventually(() => (notices(f1.messages).length > before ? true : undefined), 5000, 'the notice to f-1 again')
    expect(await retainedFor(roost, 'f-3', tokens['f-3'] as string)).toMatchObject({ version: '1.1.0' })
    expect((await act(roost, id, 'cancel')).status).toBe(200)
  })

  it('cancelling withdraws the retained notices and frees the image; while a rollout uses it the image cannot be deleted; invalid transitions are named', async () => {
    const fw = await upload(roost, '3.0.0', 'cancel-hw')
    const tokens = await fleet(roost, ['k-1', 'k-2'], 'cancel-hw', '2.9.0')
    const id = (await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'cancel-hw', fromVersions: ['2.9.0'] }, stages: [{ count: 1 }, { count: 1 }] })).body.id as string

    for (const [action, message] of [['pause', 'a draft rollout cannot pause; allowed now: start, cancel'], ['resume', 'a draft rollout cannot resume; allowed now: start, cancel']]) {
      const res = await act(roost, id, action as string)
      expect(res.status).toBe(409)
      expect(res.body).toMatchObject({ code: 'ROLLOUT_TRANSITION_INVALID', message })
    }
    const inUse = await roost.request('DELETE', `/v1/firmware/${fw.id}`)
    expect(inUse.status).toBe(409)
    expect(inUse.body.code).toBe('FIRMWARE_IN_USE')

    expect((await act(roost, id, 'start')).status).toBe(200)
    expect(await retainedFor(roost, 'k-1', tokens['k-1'] as string)).toMatchObject({ version: '3.0.0', sha256: fw.sha256 })
    expect((await act(roost, id, 'start')).body).toMatchObject({ code: 'ROLLOUT_TRANSITION_INVALID', message: 'a running rollout cannot start; allowed now: pause, cancel' })
    expect((await roost.request('DELETE', `/v1/firmware/${fw.id}`)).body.code).toBe('FIRMWARE_IN_USE')

    const k1 = await listen(roost, 'k-1', tokens['k-1'] as string)
    await noticeOf(k1.messages, 'the retained notice to k-1')
    const cancelled = await act(roost, id, 'cancel')
    expect(cancelled.status).toBe(200)
    expect(cancelled.body).toMatchObject({ state: 'cancelled', finishedAt: expect.any(Number) })
    // a subscribed device sees the notice withdrawn (an empty retained message); a new subscriber finds nothing
    await eventually(() => (notices(k1.messages).at(-1) === null ? true : undefined), 5000, 'the withdrawal')
    expect(await retainedFor(roost, 'k-1', tokens['k-1'] as string)).toBeUndefined()
    expect(await retainedFor(roost, 'k-2', tokens['k-2'] as string)).toBeUndefined()

    for (const action of ['cancel', 'start', 'resume']) {
      const res = await act(roost, id, action)
      expect(res.status).toBe(409)
      expect(res.body).toMatchObject({ code: 'ROLLOUT_TRANSITION_INVALID', message: `a cancelled rollout cannot ${action}; allowed now: none (it is over)` })
    }
    expect((await roost.request('DELETE', `/v1/firmware/${fw.id}`)).status).toBe(204)
    // the rollout's history outlives the image
    expect(await rollout(roost, id)).toMatchObject({ firmwareId: null, version: '3.0.0', hardware: 'cancel-hw', state: 'cancelled' })
    const missing = await act(roost, 'ro_missing', 'start')
    expect(missing.status).toBe(404)
    expect(missing.body.code).toBe('ROLLOUT_NOT_FOUND')
  })

  it('GET /v1/ota/check answers a device 204 when it is current and 200 with its notice\'s manifest while its stage runs; reporting the version there counts as success', async () => {
    const image = randomBytes(100 * KiB)
    const fw = await upload(roost, '1.2.0', 'check-hw', image)
    const tokens = await fleet(roost, ['h-1', 'h-2'], 'check-hw', '1.0.0')
    const check = (id: string, version: string, token: string | null = tokens[id] as string): Promise<{ status: number, body: any }> =>
      roost.request('GET', `/v1/ota/check?hardware=check-hw&version=${version}`, undefined, token)

    const id = (await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'check-hw', deviceIds: ['h-1', 'h-2', 's3-a'] }, stages: [{ count: 1 }, { count: 1 }] })).body.id as string
    expect((await check('h-1', '1.0.0')).status).toBe(204) // a draft offers nothing

    const h1 = await listen(roost, 'h-1', tokens['h-1'] as string)
    await act(roost, id, 'start')
    const notice = await noticeOf(h1.messages, 'the notice to h-1')
    const offered = await check('h-1', '1.0.0')
    expect(offered.status).toBe(200)
    expect(offered.body).toEqual({ ...notice, url: expect.stringMatching(new RegExp(`^${roost.httpUrl}/v1/firmware/${fw.id}/download\\?`)) })
    const fetched = await fetch(offered.body.url as string)
    expect(sha256(Buffer.from(await fetched.arrayBuffer()))).toBe(sha256(image))
    expect((await check('h-2', '1.0.0')).status).toBe(204) // its stage has not started

    expect((await check('h-1', '1.0.0', roost.adminToken)).body.code).toBe('DEVICE_TOKEN_REQUIRED')
    expect((await check('h-1', '1.0.0', null)).body.code).toBe('AUTH_REQUIRED')
    expect((await check('h-1', 'one')).body.code).toBe('FIRMWARE_VERSION_INVALID')

    // h-1 asks again running the new version: it is current, and its stage is done
    expect((await check('h-1', '1.2.0')).status).toBe(204)
    const moved = await eventually(async () => { const v = await rollout(roost, id); return v.currentStage === 1 ? v : undefined }, 5000, 'stage 2 to start')
    expect(moved.devices.map((d: any) => [d.deviceId, d.state])).toEqual([['h-1', 'succeeded'], ['h-2', 'notified']])
    expect((await check('h-2', '1.0.0')).status).toBe(200)
    await act(roost, id, 'cancel')
  })

  it('target.tags picks only devices carrying every tag', async () => {
    const fw = await upload(roost, '2.1.0', 'tag-hw')
    await fleet(roost, ['t-kitchen', 't-kitchen-beta', 't-garage'], 'tag-hw', '2.0.0')
    expect((await roost.request('PATCH', '/v1/devices/t-kitchen', { tags: ['kitchen'] })).body.tags).toEqual(['kitchen'])
    await roost.request('PATCH', '/v1/devices/t-kitchen-beta', { tags: ['kitchen', 'beta'] })
    await roost.request('PATCH', '/v1/devices/t-garage', { tags: ['beta'] })
    const beta = await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'tag-hw', tags: ['kitchen', 'beta'] }, stages: [{ percent: 100 }] })
    expect(beta.status, JSON.stringify(beta.body)).toBe(201)
    expect((await rollout(roost, beta.body.id as string)).devices.map((d: { deviceId: string }) => d.deviceId)).toEqual(['t-kitchen-beta'])
    expect((await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'tag-hw', tags: ['attic'] }, stages: [{ percent: 100 }] })).body).toMatchObject({ code: 'ROLLOUT_NO_DEVICES', message: expect.stringContaining('tagged attic') })
    await act(roost, beta.body.id as string, 'cancel')
  })

  it('a rollout is refused for another hardware, an unknown image, bad tags, bad stages, or a target no device matches', async () => {
    const fw = await upload(roost, '5.0.0', 'refuse-hw')
    const tokens = await fleet(roost, ['r-1'], 'refuse-hw', '4.0.0')
    const create = (body: Record<string, unknown>): Promise<{ status: number, body: any }> =>
      roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'refuse-hw' }, stages: [{ percent: 100 }], ...body })
    expect((await create({ target: { hardware: 'esp32-s3' } })).body).toMatchObject({ code: 'ROLLOUT_HARDWARE_MISMATCH', message: `firmware "${fw.id}" is built for hardware "refuse-hw", not "esp32-s3"` })
    expect((await create({ firmwareId: 'fw_nope' })).body.code).toBe('FIRMWARE_NOT_FOUND')
    expect((await create({ target: { hardware: 'refuse-hw', tags: ['no spaces'] } })).body.code).toBe('VALIDATION_FAILED')
    expect((await create({ stages: [{ percent: 60 }, { percent: 60 }] })).body).toMatchObject({ code: 'VALIDATION_FAILED', message: expect.stringContaining('more than 100') })
    expect((await create({ stages: [] })).body.code).toBe('VALIDATION_FAILED')
    expect((await create({ stages: [{ percent: 10, count: 1 }] })).body.code).toBe('VALIDATION_FAILED')
    expect((await create({ target: { hardware: 'refuse-hw', fromVersions: ['3.0.0'] } })).body.code).toBe('ROLLOUT_NO_DEVICES')
    expect((await create({ target: { hardware: 'refuse-hw', deviceIds: ['s3-a'] } })).body.code).toBe('ROLLOUT_NO_DEVICES')
    const first = await create({})
    expect(first.status).toBe(201)
    // a device follows one unfinished rollout at a time
    expect((await create({})).body.code).toBe('ROLLOUT_NO_DEVICES')
    // rollouts are the admin's
    expect((await roost.request('GET', '/v1/rollouts', undefined, tokens['r-1'])).body.code).toBe('ADMIN_REQUIRED')
    expect((await roost.request('GET', '/v1/rollouts', undefined, null)).status).toBe(401)
    await act(roost, first.body.id as string, 'cancel')
  })

  it('a device may not publish its own OTA notice nor report another device\'s status, and a malformed report is refused', async () => {
    const fw = await upload(roost, '1.0.1', 'acl-hw')
    const tokens = await fleet(roost, ['v-1', 'v-2'], 'acl-hw', '1.0.0')
    const id = (await roost.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'acl-hw' }, stages: [{ percent: 100 }] })).body.id as string
    await act(roost, id, 'start')
    const v1 = await listen(roost, 'v-1', tokens['v-1'] as string)
    await noticeOf(v1.messages, 'the notice to v-1')

    const forged = nextMessage(v1.client, t => t === 'devices/v-1/errors')
    await v1.client.publishAsync('devices/v-1/ota', JSON.stringify({ version: '9.9.9', url: 'http://evil.example/x.bin', size: 1, sha256: '00', signature: 'AA==' }), { qos: 1, retain: true })
    expect(JSON.parse((await forged).payload.toString())).toMatchObject({ topic: 'devices/v-1/ota', code: 'TOPIC_FORBIDDEN' })

    const other = nextMessage(v1.client, t => t === 'devices/v-1/errors')
    await v1.client.publishAsync('devices/v-2/ota/status', JSON.stringify({ version: '1.0.1', state: 'failed' }), { qos: 1 })
    expect(JSON.parse((await other).payload.toString())).toMatchObject({ topic: 'devices/v-2/ota/status', code: 'TOPIC_FORBIDDEN' })

    const malformed = nextMessage(v1.client, t => t === 'devices/v-1/errors')
    await v1.client.publishAsync('devices/v-1/ota/status', JSON.stringify({ version: '1.0.1', state: 'exploded' }), { qos: 1 })
    expect(JSON.parse((await malformed).payload.toString())).toMatchObject({ topic: 'devices/v-1/ota/status', code: 'PAYLOAD_INVALID' })

    const view = await rollout(roost, id)
    expect(view.devices.map((d: any) => [d.deviceId, d.state])).toEqual([['v-1', 'notified'], ['v-2', 'notified']])
    // a report for a version no rollout offers it is taken and changes nothing
    await status(v1.client, 'v-1', '7.0.0', 'downloading')
    expect((await rollout(roost, id)).devices[0].state).toBe('notified')
    // the forged notice went nowhere: what is retained is still the platform's
    expect(notices(v1.messages).filter(n => n?.version === '9.9.9')).toEqual([])
    expect(await retainedFor(roost, 'v-1', tokens['v-1'] as string)).toMatchObject({ version: '1.0.1', sha256: fw.sha256 })
    await act(roost, id, 'cancel')
  })
})

describe('OTA notices across a restart', () => {
  it('a device connecting after a restart receives its notice, rebuilt from the database with a link to the new port', async () => {
    const first = await startRoost({ keepDataDir: true, env: ENV })
    const image = randomBytes(50 * KiB)
    const fw = await upload(first, '2.2.0', 'restart-hw', image)
    const tokens = await fleet(first, ['sleepy-ota'], 'restart-hw', '2.1.0')
    const id = (await first.request('POST', '/v1/rollouts', { firmwareId: fw.id, target: { hardware: 'restart-hw' }, stages: [{ percent: 100 }] })).body.id as string
    expect((await act(first, id, 'start')).status).toBe(200)
    const dataDir = first.dataDir
    const env = { ...ENV, ROOST_ADMIN_TOKEN: first.adminToken, ROOST_SERVICE_TOKEN: first.serviceToken }
    await first.close()

    const second = await startRoost({ dataDir, env })
    try {
      const device = await listen(second, 'sleepy-ota', tokens['sleepy-ota'] as string)
      const notice = await noticeOf(device.messages, 'the rebuilt notice')
      expect(notice).toMatchObject({ version: '2.2.0', size: image.length, sha256: sha256(image), signature: fw.signature })
      expect(notice.url.startsWith(second.httpUrl + '/')).toBe(true)
      const res = await fetch(notice.url)
      expect(res.status).toBe(200)
      expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(sha256(image))
      expect((await rollout(second, id)).state).toBe('running')
    } finally {
      await second.close()
    }
  })
})
