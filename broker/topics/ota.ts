// OTA notices (retained, written by the platform) and the status a device reports while updating.
import type { FamilyRule } from '../acl.ts'
import { deviceToPlatform, platformToDevice } from './direction.ts'

export const otaRules: { readonly ota: FamilyRule, readonly 'ota/status': FamilyRule } = {
  ota: platformToDevice,
  'ota/status': deviceToPlatform,
}
