// Live stream frames (e.g. JPEG screens): the device is the streamer; the broker only relays them.
import type { FamilyRule } from '../acl.ts'
import { deviceToPlatform } from './direction.ts'

export const streamRules: { readonly 'stream/frames': FamilyRule } = {
  'stream/frames': deviceToPlatform,
}
