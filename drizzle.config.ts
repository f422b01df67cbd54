// drizzle-kit settings: `npm run db:generate` writes SQL migrations from schemas/db/ into db/migrations/.
import { defineConfig } from 'drizzle-kit'

export default defineConfig({
  dialect: 'postgresql',
  schema: ['./schemas/db/devices.ts', './schemas/db/telemetry.ts', './schemas/db/state.ts', './schemas/db/commands.ts', './schemas/db/webhooks.ts', './schemas/db/firmware.ts', './schemas/db/accounts.ts', './schemas/db/voice.ts', './schemas/db/rollouts.ts'],
  out: './db/migrations',
})
