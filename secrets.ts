// Admin and service tokens: taken from the config when set, otherwise generated on first start and kept
// in the data dir (mode 0600), so restarts keep working with the same credentials. The same goes for the
// download-link key and the firmware signing key, which are never settings.

import { createPrivateKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { existsSync, linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { withConfig, type Config } from './schemas/config.ts'

// urlSecret and sessionSecret are absent from files written before download links and user logins existed;
// they are added on start
interface SecretsFile { adminToken: string, serviceToken: string, urlSecret?: string, sessionSecret?: string }

export const SECRETS_FILE = 'secrets.json'
export const FIRMWARE_SIGNING_KEY_FILE = 'firmware-signing.pem'

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
    stored = { adminToken: newSecret('rat_'), serviceToken: newSecret('rst_'), urlSecret: newSecret('rus_'), sessionSecret: newSecret('rss_') }
    mkdirSync(config.dataDir, { recursive: true })
    writeFileSync(join(config.dataDir, SECRETS_FILE), JSON.stringify(stored, null, 2) + '\n', { mode: 0o600 })
    generatedAdminToken = config.auth.adminToken === undefined
  } else if (stored.urlSecret === undefined || stored.sessionSecret === undefined) {
    stored = { ...stored, urlSecret: stored.urlSecret ?? newSecret('rus_'), sessionSecret: stored.sessionSecret ?? newSecret('rss_') }
    writeFileSync(join(config.dataDir, SECRETS_FILE), JSON.stringify(stored, null, 2) + '\n', { mode: 0o600 })
  }
  return {
    config: withConfig(config, {
      auth: {
        ...config.auth,
        adminToken: config.auth.adminToken ?? stored.adminToken,
        serviceToken: config.auth.serviceToken ?? stored.serviceToken,
        urlSecret: stored.urlSecret,
        sessionSecret: stored.sessionSecret,
      },
    }),
    generatedAdminToken,
  }
}

/**
 * The Ed25519 key firmware digests are signed with: read from the data dir, or generated there (mode 0600)
 * on first use. Devices pin its public half (GET /v1/firmware/signing-key) and refuse images signed with
 * another key, so the data dir must be backed up with it.
 */
export function firmwareSigningKey (dataDir: string): KeyObject {
  const path = join(dataDir, FIRMWARE_SIGNING_KEY_FILE)
  if (!existsSync(path)) {
    const { privateKey } = generateKeyPairSync('ed25519')
    mkdirSync(dataDir, { recursive: true })
    // written whole under a temporary name, then linked: when two processes start at once, the first
    // link wins and the other reads that complete key
    const temp = `${path}.${process.pid}.tmp`
    writeFileSync(temp, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 })
    try {
      linkSync(temp, path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    } finally {
      unlinkSync(temp)
    }
  }
  return createPrivateKey(readFileSync(path, 'utf8'))
}
