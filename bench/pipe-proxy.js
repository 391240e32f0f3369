// The "bare Node net pipe proxy" floor from issue 6 (also the apilb stand-in while dist/cli.js has no `run`).
// Usage: node bench/pipe-proxy.js LISTEN_PORT BACKEND_PORT...
import { createServer, connect } from 'node:net';

const [listenPort, ...backends] = process.argv.slice(2).map(Number);
// Experiment switches (bench/profile-bulk.js passes the environment through): NODELAY=0 leaves Nagle on,
// STACK_LIMIT=0 stops socket errors from capturing stack traces, PROM=1 see below.
const noDelay = process.env.NODELAY !== '0';
if (process.env.STACK_LIMIT !== undefined) Error.stackTraceLimit = Number(process.env.STACK_LIMIT);
// PROM=1: also run prom-client's default metrics (GC observer, event-loop-lag monitor), as apilb does.
if (process.env.PROM === '1') (await import('prom-client')).collectDefaultMetrics();
let next = 0;
createServer({ noDelay }, function onClient(client) {
  const upstream = connect({ port: backends[next++ % backends.length], host: '127.0.0.1', noDelay });
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
}).listen({ port: listenPort, host: '127.0.0.1', backlog: 4096 });
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0)); // exit normally so --cpu-prof writes its profile
