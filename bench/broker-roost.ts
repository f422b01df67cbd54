// The Roost broker under test, in its own process: `roost broker` (or, for the commands benchmark, broker
// and API, and for the voice benchmark broker, API and bridge, as `roost start` runs them) on the config
// the orchestrator passes in the environment, answering memory and row-count requests over IPC.

import { loadConfig } from '../schemas/config.ts'
import { createLogger } from '../log.ts'
import { resolveSecrets } from '../secrets.ts'
import { startPlatform } from '../platform.ts'
import { loopDelayMeter, serveParent } from './process.ts'
import { collectGarbage, memorySample } from './memory.ts'
import { roostParts } from './settings.ts'

// the benchmark passes a generated config in the environment, as `roost broker` would read it
const config = resolveSecrets(loadConfig([], process.env)).config
const log = createLogger(config.log.level)
const platform = await startPlatform(config, log, roostParts(process.env))
const loop = loopDelayMeter()

serveParent({
  memory: async () => { await collectGarbage(); return memorySample() },
  telemetryRows: async () => {
    // counted here because PGlite is single-process: only the broker can open its data dir
    const rows = await platform.db.query<{ n: number | string }>('SELECT count(*)::int8 AS n FROM telemetry')
    return Number(rows[0]?.n ?? 0)
  },
  // how long work waited for Roost's event loop over a window (the voice benchmark's latency figures)
  loopDelayStart: () => loop.start(),
  loopDelay: () => loop.read(),
  stop: () => platform.close(),
}, { port: platform.ports.mqtt, httpPort: platform.ports.http })
