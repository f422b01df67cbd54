// OTA notices (retained, written by the platform) and the status a device reports while updating: each
// report is stored against the device's rollout before it is acknowledged.

import type { Logger } from 'pino'
import type { FamilyRule, Refusal } from '../acl.ts'
import { deviceToPlatform, platformToDevice } from './direction.ts'
import { parseOtaStatus } from '../../schemas/rollouts.ts'
import type { Database } from '../../db/open.ts'
import { recordOtaStatus } from '../../db/rollouts.ts'

export interface OtaDeps {
  readonly db: Database
  readonly log: Logger
  readonly now: () => number
}

export function otaRules (deps: OtaDeps): { readonly ota: FamilyRule, readonly 'ota/status': FamilyRule } {
  // one device's reports are stored one after another, in the order they arrived
  const chains = new Map<string, Promise<void>>()
  return {
    ota: platformToDevice,
    'ota/status': {
      ...deviceToPlatform,
      accept (identity, deviceId, packet, done) {
        // a service relaying a report has stored it already
        if (identity.kind !== 'device') return done()
        const status = parseOtaStatus(packet.payload as Buffer)
        if (typeof status === 'string') return done({ code: 'PAYLOAD_INVALID', detail: status })
        const step = async (): Promise<void> => {
          let refusal: Refusal | undefined
          try {
            await recordOtaStatus(deps.db, deviceId, status, deps.now())
          } catch (err) {
            // not acknowledged: the connection is closed and the device sends the report again
            deps.log.warn({ err, deviceId }, 'OTA status not stored; closing the connection so the device resends')
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
