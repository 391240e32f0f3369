// Benchmark backend, one process listening on --count ports (the "API servers"). The first byte a client sends
// picks the service, so one port serves every test and a proxy needs one backend set:
//   0x16 (TLS ClientHello) → HTTPS server (kubelet-like small JSON responses, /readyz, /healthz)
//   'S'                    → source: streams bytes as fast as the client reads (bulk throughput)
//   'P'                    → paced source: ~200 MB/s (400 KB every 2 ms while the socket keeps up), so every
//                            proxy carries the same load with CPU to spare and CPU s/GB compares like for like
//   'U'                    → sink: reads and discards everything the client sends (bulk upload, client → API server)
//   'H'                    → hold: answers 'h' once, then keeps the connection open (open-connection RSS)
// Prints {"ports":[...]} on stdout when ready. Exits when stdin closes (parent gone).
import { createServer } from 'node:net';
import { createServer as createHttps } from 'node:https';
import { readFileSync } from 'node:fs';

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')));
const count = Number(args.count ?? 3);
const cert = readFileSync(args.cert);
const key = readFileSync(args.key);

// A small Node object as kubelet GETs it (~1 KB), the typical request of the keep-alive test.
const body = Buffer.from(JSON.stringify({
  kind: 'Node', apiVersion: 'v1',
  metadata: { name: 'node-1', uid: '8f1b4a9e-0000-4000-8000-000000000001', resourceVersion: '123456',
    labels: { 'kubernetes.io/hostname': 'node-1', 'kubernetes.io/os': 'linux', 'node-role.kubernetes.io/worker': '' },
    annotations: { 'node.alpha.kubernetes.io/ttl': '0', 'volumes.kubernetes.io/controller-managed-attach-detach': 'true' } },
  spec: { podCIDR: '10.244.1.0/24', podCIDRs: ['10.244.1.0/24'] },
  status: { conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'kubelet is posting ready status' }],
    addresses: [{ type: 'InternalIP', address: '10.0.0.11' }, { type: 'Hostname', address: 'node-1' }],
    nodeInfo: { kubeletVersion: 'v1.31.0', containerRuntimeVersion: 'containerd://1.7.20', kernelVersion: '6.1.0', osImage: 'Debian GNU/Linux 12 (bookworm)' } },
}));
const ok = Buffer.from('ok');

const https = createHttps({ cert, key, keepAliveTimeout: 120_000 }, function onRequest(req, res) {
  req.resume();
  if (req.url === '/readyz' || req.url === '/healthz' || req.url === '/livez') {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': ok.length });
    res.end(ok);
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
});
https.on('tlsClientError', () => {});

const chunk = Buffer.alloc(64 * 1024, 0x61);
function source(sock) {
  function pump() {
    while (sock.writable && sock.write(chunk));
  }
  sock.on('drain', pump);
  pump();
}

function onConnection(sock) {
  sock.on('error', () => sock.destroy());
  sock.once('readable', function onFirst() {
    const first = sock.read(1);
    if (first === null) { if (!sock.readableEnded) sock.once('readable', onFirst); return; }
    const b = first[0];
    if (b === 0x16) {
      sock.unshift(first);
      https.emit('connection', sock);
    } else if (b === 0x53 /* S */) {
      sock.on('data', () => {});
      source(sock);
    } else if (b === 0x50 /* P */) {
      sock.on('data', () => {});
      const burst = Buffer.alloc(400 * 1024, 0x62);
      const t = setInterval(function onPace() {
        if (sock.writableLength < 1024 * 1024) sock.write(burst);
      }, 2);
      sock.on('close', () => clearInterval(t));
    } else if (b === 0x55 /* U */) {
      sock.on('data', () => {});
    } else if (b === 0x48 /* H */) {
      sock.on('data', () => {});
      sock.on('end', () => sock.end());
      sock.write('h');
    } else {
      sock.destroy();
    }
  });
}

const ports = [];
for (let i = 0; i < count; i++) {
  const srv = createServer({ noDelay: true }, onConnection);
  await new Promise((resolve) => srv.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve));
  ports.push(srv.address().port);
}
process.stdout.write(JSON.stringify({ ports }) + '\n');
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
