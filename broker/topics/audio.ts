// Voice audio: microphone frames and control up from the device, speaker frames and events down from the bridge.
import type { FamilyRule } from '../acl.ts'
import { deviceToPlatform, platformToDevice } from './direction.ts'

export const audioRules: {
  readonly 'audio/up': FamilyRule, readonly 'audio/ctl': FamilyRule
  readonly 'audio/down': FamilyRule, readonly 'audio/events': FamilyRule
} = {
  'audio/up': deviceToPlatform,
  'audio/ctl': deviceToPlatform,
  'audio/down': platformToDevice,
  'audio/events': platformToDevice,
}
