// The two directions of the contract's topic table as reusable rules: device → platform and platform → device.

import type { Identity } from '../identity.ts'
import type { Decision, FamilyRule } from '../acl.ts'

function isService (id: Identity): boolean {
  return id.kind === 'service'
}

function isDevice (id: Identity, deviceId: string): boolean {
  return id.kind === 'device' && id.deviceId === deviceId
}

/** Written by the device itself (or relayed by a platform service); read by the platform. */
export const deviceToPlatform: FamilyRule = {
  publish: (id, deviceId): Decision => (isDevice(id, deviceId) || isService(id) ? 'allow' : 'TOPIC_FORBIDDEN'),
  read: (id): Decision => (isService(id) ? 'allow' : 'TOPIC_FORBIDDEN'),
}

/** Written by platform services (api, bridge); read by the device it addresses and the platform. */
export const platformToDevice: FamilyRule = {
  publish: (id): Decision => (isService(id) ? 'allow' : 'TOPIC_FORBIDDEN'),
  read: (id, deviceId): Decision => (isDevice(id, deviceId) || isService(id) ? 'allow' : 'TOPIC_FORBIDDEN'),
}

/** Written by the broker itself only (its own publishes skip authorization); no client may publish. */
export function brokerOnly (readers: 'platform' | 'device-and-platform'): FamilyRule {
  return {
    publish: (): Decision => 'TOPIC_FORBIDDEN',
    read: readers === 'platform' ? deviceToPlatform.read : platformToDevice.read,
  }
}
