// The one map from topic family to its rule: a new topic family is one file under topics/ and one line here.

import type { FamilyTable } from './acl.ts'
import { telemetryRules, type TelemetryDeps } from './topics/telemetry.ts'
import { stateRules, type StateDeps } from './topics/state.ts'
import { commandRules, type CommandCenter } from './topics/commands.ts'
import { otaRules } from './topics/ota.ts'
import { presenceRules } from './topics/presence.ts'
import { audioRules } from './topics/audio.ts'
import { streamRules } from './topics/stream.ts'
import { errorRules } from './topics/errors.ts'

/** FamilyTable is a Record over every family, so a family added to schemas/topics.ts without a rule fails the type check. */
export function buildFamilyTable (telemetry: TelemetryDeps, state: StateDeps, commands: CommandCenter): FamilyTable {
  return {
    ...telemetryRules(telemetry),
    ...stateRules(state),
    ...commandRules(commands),
    ...otaRules(state),
    ...presenceRules,
    ...audioRules,
    ...streamRules,
    ...errorRules,
  }
}
