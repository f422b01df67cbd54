// Accounts: users, their login sessions (refresh tokens), their API keys, device claim codes and the
// nonces of fleet provisioning. Every secret is stored as a hash only.

import { bigint, index, jsonb, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core'

export const users = pgTable('users', {
  id: text('id').primaryKey(),
  // stored lower-cased: one account per address whatever the case it is typed in
  email: text('email').notNull(),
  // scrypt$N$r$p$salt$hash (api/passwords.ts)
  passwordHash: text('password_hash').notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  passwordChangedAt: bigint('password_changed_at', { mode: 'number' }).notNull(),
}, t => [uniqueIndex('users_email_idx').on(t.email)])

export const userSessions = pgTable('user_sessions', {
  id: text('id').primaryKey(), // the `sid` of its access tokens
  userId: text('user_id').notNull(),
  // SHA-256 of the current refresh token; a refresh replaces it, so a refresh token works once
  refreshHash: text('refresh_hash').notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
  revokedAt: bigint('revoked_at', { mode: 'number' }),
}, t => [
  uniqueIndex('user_sessions_refresh_idx').on(t.refreshHash),
  index('user_sessions_user_idx').on(t.userId),
])

export const API_KEY_SCOPES = ['read', 'write', 'admin'] as const
export type ApiKeyScope = typeof API_KEY_SCOPES[number]

export const apiKeys = pgTable('api_keys', {
  id: text('id').primaryKey(),
  userId: text('user_id').notNull(),
  name: text('name').notNull(),
  scopes: jsonb('scopes').$type<ApiKeyScope[]>().notNull(),
  // SHA-256 of the key: 192 random bits need no slow hash
  keyHash: text('key_hash').notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  expiresAt: bigint('expires_at', { mode: 'number' }),
  revokedAt: bigint('revoked_at', { mode: 'number' }),
}, t => [
  uniqueIndex('api_keys_hash_idx').on(t.keyHash),
  index('api_keys_user_idx').on(t.userId),
])

export const claimCodes = pgTable('claim_codes', {
  deviceId: text('device_id').primaryKey(), // one live code per device; a new one replaces it
  codeHash: text('code_hash').notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
})

export const provisionNonces = pgTable('provision_nonces', {
  nonce: text('nonce').primaryKey(),
  deviceId: text('device_id').notNull(),
  // kept for the replay window only; older ones are deleted
  usedAt: bigint('used_at', { mode: 'number' }).notNull(),
})

export type UserRow = typeof users.$inferSelect
export type SessionRow = typeof userSessions.$inferSelect
export type ApiKeyRow = typeof apiKeys.$inferSelect
