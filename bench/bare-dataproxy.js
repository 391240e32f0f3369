// Experiment: apilb's data path alone (dist/pool Pool + dist/proxy TcpProxy, default options) without the daemon
// around it: no health checks, no metrics/prom-client, no admin server, no logger. Comparing it with apilb
// (`bench/profile-bulk.js`, TARGETS=apilb,apilb-bare) separates the cost of Connection from the rest.
// Usage: node bench/bare-dataproxy.js LISTEN_PORT BACKEND_PORT...
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from './lib.js';

const { Pool } = await import(pathToFileURL(join(ROOT, 'dist/pool/pool.js')).href);
const { TcpProxy } = await import(pathToFileURL(join(ROOT, 'dist/proxy/proxy.js')).href);
const { createListener, bindListener } = await import(pathToFileURL(join(ROOT, 'dist/proxy/listen.js')).href);

const [listenPort, ...backends] = process.argv.slice(2).map(Number);
// Bisecting switches: PROM=1 runs prom-client's default metrics; IMPORT=undici,pino,... just imports modules.
if (process.env.PROM === '1') (await import('prom-client')).collectDefaultMetrics();
for (const m of (process.env.IMPORT ?? '').split(',').filter(Boolean)) await import(m);
const pool = new Pool({});
for (const port of backends) pool.add({ address: { host: '127.0.0.1', port } });
const proxy = new TcpProxy({ pool });
const server = createListener();
await bindListener(server, { host: '127.0.0.1', port: listenPort });
proxy.serve(server);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
