// The JSON logger (pino). Credentials are redacted wherever they could appear in a logged object.

import pino, { type Logger } from 'pino'
import type { LogLevel } from './schemas/config.ts'

export const REDACT_PATHS = [
  'req.headers.authorization',
  'headers.authorization',
  'password',
  'token',
  'adminToken',
  'serviceToken',
  '*.password',
  '*.token',
]

export function createLogger (level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino({ level, redact: { paths: REDACT_PATHS, censor: '[redacted]' }, base: { app: 'roost' } }, destination)
}
