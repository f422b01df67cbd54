// Desired and reported device state: the device reports, the platform (API) writes desired, retained.
import type { FamilyRule } from '../acl.ts'
import { deviceToPlatform, platformToDevice } from './direction.ts'

export const stateRules: { readonly 'state/reported': FamilyRule, readonly 'state/desired': FamilyRule } = {
  'state/reported': deviceToPlatform,
  'state/desired': platformToDevice,
}
