// Telemetry: a device's readings, validated whole and stored before a QoS 1 publish is acknowledged.

import type { FamilyRule, Refusal } from '../acl.ts'
import { deviceToPlatform } from './direction.ts'
import { parseTelemetry, type TelemetryLimits } from '../../schemas/telemetry.ts'
import type { StoredRow } from '../../db/telemetry.ts'
import type { GroupCommitter } from '../ingest.ts'

export interface TelemetryDeps {
  readonly limits: TelemetryLimits
  readonly committer: GroupCommitter
  readonly now: () => number
}

export function telemetryRules (deps: TelemetryDeps): { readonly telemetry: FamilyRule } {
  return {
    telemetry: {
      ...deviceToPlatform,
      accept (identity, deviceId, packet, done) {
        // services relay telemetry they have stored already (the HTTP fallback); only devices' publishes are stored here
        if (identity.kind !== 'device') return done()
        const parsed = parseTelemetry(packet.payload as Buffer, deps.limits, deps.now())
        if (!parsed.ok) {
          const refusal: Refusal = { code: parsed.code, detail: parsed.detail }
          return done(refusal)
        }
        const rows: StoredRow[] = parsed.rows.map(r => ({ deviceId, key: r.key, ts: r.ts, value: r.value }))
        if (packet.qos === 0) {
          // QoS 0 is relayed at once; under database pressure its rows may be dropped (and counted)
          deps.committer.add(rows)
          return done()
        }
        // QoS 1/2: the PUBACK/PUBREC is written only after this callback, i.e. after the commit
        deps.committer.add(rows, () => done())
      },
    },
  }
}
