// Bare Aedes in its own process: no hooks, in-memory persistence, the baseline Roost is compared with.

import { createServer, type AddressInfo } from 'node:net'
import { Aedes } from 'aedes'
import { serveParent } from './process.ts'
import { collectGarbage, memorySample } from './memory.ts'

const aedes = await Aedes.createBroker()
const server = createServer(socket => {
  // Roost's listener and Mosquitto (set_tcp_nodelay) disable Nagle too; the comparison is of brokers, not of TCP settings
  socket.setNoDelay(true)
  aedes.handle(socket)
})
await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))

serveParent({
  memory: async () => { await collectGarbage(); return memorySample() },
  stop: async () => {
    const closed = new Promise<void>(resolve => server.close(() => resolve()))
    await new Promise<void>(resolve => aedes.close(() => resolve()))
    await closed
  },
}, { port: (server.address() as AddressInfo).port })
