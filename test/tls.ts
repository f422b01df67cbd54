// A throwaway self-signed certificate and key for the MQTT/TLS listener, made with the `openssl` CLI.

import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TestCert {
  readonly certFile: string
  readonly keyFile: string
  /** The certificate's PEM, to pass as a client's `ca` (it is its own issuer). */
  readonly cert: Buffer
  /** ROOST_TLS_CERT and ROOST_TLS_KEY for startRoost's env. */
  readonly env: { readonly ROOST_TLS_CERT: string, readonly ROOST_TLS_KEY: string }
  remove (): void
}

/**
 * Makes a P-256 certificate for CN=localhost with subjectAltName localhost and 127.0.0.1, valid one day,
 * in a fresh temp dir. EC keys are generated in milliseconds, unlike RSA, which matters on a busy CI core.
 */
export function makeTestCert (): TestCert {
  const dir = mkdtempSync(join(tmpdir(), 'roost-tls-'))
  const certFile = join(dir, 'cert.pem')
  const keyFile = join(dir, 'key.pem')
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ], { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('the TLS tests need the openssl command (Debian package openssl; .ci/run installs it)')
    throw err
  }
  return {
    certFile,
    keyFile,
    cert: readFileSync(certFile),
    env: { ROOST_TLS_CERT: certFile, ROOST_TLS_KEY: keyFile },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  }
}
