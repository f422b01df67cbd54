// Desired and reported device state: the platform (API) writes desired, retained; the device reports,
// and each report is merged into the stored reported document before it is acknowledged.

import type { Logger } from 'pino'
import type { FamilyRule, Refusal } from '../acl.ts'
import { deviceToPlatform, platformToDevice } from './direction.ts'
import { stateProblem } from '../../schemas/state.ts'
import type { Database } from '../../db/open.ts'
import { mergeReported } from '../../db/state.ts'
import { recordFirmware } from '../../db/rollouts.ts'
import { reportedFirmware } from '../../schemas/rollouts.ts'

export interface StateDeps {
  readonly db: Database
  readonly log: Logger
  readonly now: () => number
}

export function stateRules (deps: StateDeps): { readonly 'state/reported': FamilyRule, readonly 'state/desired': FamilyRule } {
  // one device's reports are merged one after another, in the order they arrived
  const chains = new Map<string, Promise<void>>()
  return {
    'state/desired': platformToDevice,
    'state/reported': {
      ...deviceToPlatform,
      accept (identity, deviceId, packet, done) {
        if (identity.kind !== 'device') return done()
        let patch: unknown
        try { patch = JSON.parse((packet.payload as Buffer).toString('utf8')) } catch { return done({ code: 'PAYLOAD_INVALID', detail: 'not JSON' }) }
        const problem = stateProblem(patch)
        if (problem !== undefined) return done({ code: 'PAYLOAD_INVALID', detail: problem })
        const step = async (): Promise<void> => {
          let refusal: Refusal | undefined
          try {
            const result = await mergeReported(deps.db, deviceId, patch as Record<string, unknown>, deps.now())
            if (!result.ok) refusal = { code: 'PAYLOAD_INVALID', detail: result.reason === 'invalid' ? result.detail : 'version' }
            // `hardware` and `firmware` in reported state are what OTA rollouts target devices by (schemas/rollouts.ts)
            const firmware = result.ok && ('hardware' in (patch as object) || 'firmware' in (patch as object)) ? reportedFirmware(result.row.reported) : undefined
            if (firmware !== undefined) await recordFirmware(deps.db, deviceId, firmware, deps.now())
          } catch (err) {
            // not acknowledged: the connection is closed and the device sends the report again
            deps.log.warn({ err, deviceId }, 'reported state not stored; closing the connection so the device resends')
            refusal = { code: 'DB_UNAVAILABLE', unacknowledged: true }
          }
          done(refusal)
        }
        const next = (chains.get(deviceId) ?? Promise.resolve()).then(step)
        chains.set(deviceId, next)
        void next.then(() => { if (chains.get(deviceId) === next) chains.delete(deviceId) })
      },
    },
  }
}
