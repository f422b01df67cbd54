// Admin and service tokens: taken from the config when set, otherwise generated on first start and kept
// in the data dir (mode 0600), so restarts keep working with the same credentials.

import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { withConfig, type Config } from './schemas/config.ts'

interface SecretsFile { adminToken: string, serviceToken: string }

export const SECRETS_FILE = 'secrets.json'

function newSecret (prefix: string): string {
  return prefix + randomBytes(24).toString('base64url')
}

export function readSecrets (dataDir: string): SecretsFile | undefined {
  const path = join(dataDir, SECRETS_FILE)
  if (!existsSync(path)) return undefined
  return JSON.parse(readFileSync(path, 'utf8')) as SecretsFile
}

/** Returns the config with both tokens filled, and whether the admin token was generated just now. */
export function resolveSecrets (config: Config): { config: Config, generatedAdminToken: boolean } {
  let stored = readSecrets(config.dataDir)
  let generatedAdminToken = false
  if (stored === undefined) {
    stored = { adminToken: newSecret('rat_'), serviceToken: newSecret('rst_') }
    mkdirSync(config.dataDir, { recursive: true })
    writeFileSync(join(config.dataDir, SECRETS_FILE), JSON.stringify(stored, null, 2) + '\n', { mode: 0o600 })
    generatedAdminToken = config.auth.adminToken === undefined
  }
  return {
    config: withConfig(config, {
      auth: {
        ...config.auth,
        adminToken: config.auth.adminToken ?? stored.adminToken,
        serviceToken: config.auth.serviceToken ?? stored.serviceToken,
      },
    }),
    generatedAdminToken,
  }
}
