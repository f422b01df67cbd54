// Commands to a device and the results it publishes back.
import type { FamilyRule } from '../acl.ts'
import { deviceToPlatform, platformToDevice } from './direction.ts'

export const commandRules: { readonly commands: FamilyRule, readonly 'commands/result': FamilyRule } = {
  commands: platformToDevice,
  'commands/result': deviceToPlatform,
}
