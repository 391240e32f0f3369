// Experiment for issue 6's performance work (not apilb): the Node pipe proxy with the backend→client direction
// read through `onread` into a shared, reused buffer instead of a fresh Buffer per chunk. The buffer is safe to
// reuse only when the write to the client completed synchronously (writableLength back to 0); otherwise that
// write still references it, so the proxy switches to a fresh shared buffer and stops reading until 'drain'.
// Caveat (why apilb does not do exactly this): after the swap, idle connections still hold the old shared buffer
// as their next read target (Node picks a socket's next buffer right after its previous read), so a later read on
// another connection could overwrite bytes a pending write still references. src/proxy/connection.ts copies reads
// out of the shared buffer and gives bulk connections buffers of their own instead.
// Usage: node bench/pipe-proxy-onread.js LISTEN_PORT BACKEND_PORT...
import { createServer, connect } from 'node:net';

const [listenPort, ...backends] = process.argv.slice(2).map(Number);
// IMPORT=undici,pino,...: load apilb's dependencies too (a bigger old generation), to compare GC behaviour.
for (const m of (process.env.IMPORT ?? '').split(',').filter(Boolean)) await import(m);
const SIZE = Number(process.env.ONREAD_KB ?? 64) * 1024;
let shared = Buffer.allocUnsafe(SIZE);
function currentBuffer() { return shared; }
let next = 0;

createServer({ noDelay: true }, function onClient(client) {
  const upstream = connect({
    port: backends[next++ % backends.length], host: '127.0.0.1', noDelay: true,
    onread: {
      buffer: currentBuffer,
      callback: function onUpstreamRead(n, buf) {
        client.write(buf.subarray(0, n));
        if (client.writableLength > 0) {
          // The write still holds `buf`: never hand it out again.
          if (buf === shared) shared = Buffer.allocUnsafe(SIZE);
          return false; // pause reading the backend until the client drains
        }
        return true;
      },
    },
  });
  client.on('drain', () => upstream.resume());
  client.on('data', (d) => { if (!upstream.write(d)) client.pause(); });
  upstream.on('drain', () => client.resume());
  client.on('end', () => upstream.end());
  upstream.on('end', () => client.end());
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
}).listen({ port: listenPort, host: '127.0.0.1', backlog: 4096 });
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0)); // exit normally so --cpu-prof writes its profile
