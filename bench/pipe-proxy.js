// The "bare Node net pipe proxy" floor from issue 6 (also the apilb stand-in while dist/cli.js has no `run`).
// Usage: node bench/pipe-proxy.js LISTEN_PORT BACKEND_PORT...
import { createServer, connect } from 'node:net';

const [listenPort, ...backends] = process.argv.slice(2).map(Number);
let next = 0;
createServer({ noDelay: true }, function onClient(client) {
  const upstream = connect({ port: backends[next++ % backends.length], host: '127.0.0.1', noDelay: true });
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
}).listen({ port: listenPort, host: '127.0.0.1', backlog: 4096 });
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0)); // exit normally so --cpu-prof writes its profile
