// The errors topic: why the broker refused a device's publish or subscribe, published by the broker only.

import type { FamilyRule } from '../acl.ts'
import { brokerOnly } from './direction.ts'
import { errorMessage, type ErrorCode } from '../../schemas/errors.ts'
import { deviceTopic } from '../../schemas/topics.ts'

export const errorRules: { readonly errors: FamilyRule } = {
  errors: brokerOnly('device-and-platform'),
}

export interface ErrorNotice { readonly topic: string, readonly code: ErrorCode, readonly message: string }

/** The message telling device `deviceId` why `topic` was refused, with the catalogue's text filled in. */
export function errorNotice (deviceId: string, topic: string, code: ErrorCode, params: Record<string, string | number>): { topic: string, payload: Buffer } {
  const notice: ErrorNotice = { topic, code, message: errorMessage(code, { topic, ...params }) }
  return { topic: deviceTopic(deviceId, 'errors'), payload: Buffer.from(JSON.stringify(notice)) }
}
