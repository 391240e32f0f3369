/**
 * The `apilb status` table (formatStatus) for the cases a single daemon run does not show: panic, removed
 * backends, no check yet, a failing check on an up backend, no backends; plus age and byte formatting and
 * fetchStatus failures (bad address, a non-apilb answer).
 */
import t from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fetchStatus, formatAge, formatBytes, formatStatus, MAX_STATUS_BYTES, terminalSafe, type StatusBackend, type StatusDoc } from '../src/admin/status.js';
import { hasCode } from '../src/errors.js';

const NOW = Date.parse('2026-01-01T12:00:00.000Z');

function backend(over: Partial<StatusBackend>): StatusBackend {
  return {
    address: '10.0.0.1:6443',
    state: 'up',
    since: new Date(NOW - 65_000).toISOString(),
    reason: 'first check passed',
    source: 'static',
    eligible: true,
    removed: false,
    lastCheck: { result: 'ok', latencyMs: 12.4, error: null, status: 200, at: new Date(NOW - 1000).toISOString() },
    activeConnections: 3,
    connectionShare: 1,
    totalConnections: 10,
    connectFailures: { refused: 2, timeout: 1 },
    checks: { ok: 5, status: 0, error: 0 },
    transitions: { up: 1 },
    bytes: { toBackend: 2048, toClient: 5 * 1024 * 1024 },
    ...over,
  };
}

function doc(over: Partial<StatusDoc>): StatusDoc {
  return {
    version: '1.2.3',
    pid: 42,
    startedAt: new Date(NOW - 3_700_000).toISOString(),
    uptimeSeconds: 3700,
    ready: true,
    readyReason: '1/1 backends up',
    panic: false,
    listeners: ['127.0.0.1:6443', '[::1]:6443'],
    admin: '127.0.0.1:9643',
    activeConnections: 3,
    acceptedConnections: 10,
    backends: [backend({})],
    credentials: null,
    ...over,
  };
}

t.test('formatAge and formatBytes', async (tt) => {
  tt.same([0, 59, 60, 61, 3599, 3600, 3661, 86399, 86400, 90000, -5].map(formatAge), [
    '0s',
    '59s',
    '1m00s',
    '1m01s',
    '59m59s',
    '1h00m',
    '1h01m',
    '23h59m',
    '1d00h',
    '1d01h',
    '0s',
  ]);
  tt.same([0, 1023, 1024, 1536, 5 * 1024 * 1024, 3 * 1024 ** 4].map(formatBytes), ['0 B', '1023 B', '1.0 KiB', '1.5 KiB', '5.0 MiB', '3.0 TiB']);
});

t.test('a healthy daemon: header, aligned columns, totals', async (tt) => {
  const out = formatStatus(doc({}), NOW);
  tt.equal(
    out,
    [
      'apilb 1.2.3 (pid 42), up 1h01m: ready (1/1 backends up)',
      'listeners: 127.0.0.1:6443, [::1]:6443   admin: 127.0.0.1:9643   client connections: 3 open, 10 accepted',
      '',
      'BACKEND        STATE  FOR    CHECK    ACTIVE  SHARE  TOTAL  FAILED  IN/OUT             REASON',
      '10.0.0.1:6443  up     1m05s  ok 12ms  3       100%   10     3       2.0 KiB / 5.0 MiB  first check passed',
      '',
    ].join('\n'),
  );
});

t.test('panic, removed, never checked, failing check on an up backend, not-ready status', async (tt) => {
  const out = formatStatus(
    doc({
      ready: false,
      readyReason: 'no backend is up (3 configured)',
      panic: true,
      backends: [
        backend({
          address: '10.0.0.1:6443',
          state: 'down',
          reason: 'health check failed: connection refused',
          lastCheck: { result: 'error', latencyMs: 0.7, error: 'connection refused', status: null, at: '' },
        }),
        backend({
          address: '10.0.0.2:6443',
          state: 'draining',
          removed: true,
          reason: 'removed',
          lastCheck: { result: 'status', latencyMs: 3, error: 'etcd not ready', status: 500, at: '' },
        }),
        backend({ address: '10.0.0.3:6443', state: 'unknown', reason: 'startup', lastCheck: null, connectFailures: {} }),
        backend({
          address: '10.0.0.4:6443',
          state: 'up',
          lastCheck: { result: 'error', latencyMs: 1000, error: 'timeout after 1000 ms', status: null, at: '' },
        }),
      ],
    }),
    NOW,
  );
  tt.match(out, /: NOT READY \(no backend is up \(3 configured\)\)\n/);
  tt.match(out, /\nPANIC: no backend is eligible; every backend is tried for each connection\n/);
  tt.match(out, /10\.0\.0\.1:6443\s+down\s+1m05s\s+error 0\.7ms\s+.*health check failed: connection refused\n/, 'reason already names the error: not repeated');
  tt.match(out, /10\.0\.0\.2:6443\s+draining \(removed\)\s+1m05s\s+500 3\.0ms\s+.*removed \(last check: etcd not ready\)\n/);
  tt.match(out, /10\.0\.0\.3:6443\s+unknown\s+1m05s\s+-\s+3\s+100%\s+10\s+0\s+/);
  tt.match(out, /10\.0\.0\.4:6443\s+up\s+1m05s\s+error 1000ms\s+.*first check passed \(last check: timeout after 1000 ms\)\n/);
});

t.test('no backends', async (tt) => {
  tt.match(formatStatus(doc({ backends: [] }), NOW), /\n\nno backends\n$/);
});

t.test('fetchStatus: invalid address and an answer that is not a /status document', async (tt) => {
  await tt.rejects(fetchStatus('localhost'), { code: 'APILB_ERR_ADMIN_UNREACHABLE', message: /invalid --admin-listen "localhost"/ });
  const server = createServer((req, res) => {
    if (req.url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ hello: 'world' }));
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  tt.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;
  const err = await fetchStatus(`127.0.0.1:${port}`).catch((e: unknown) => e);
  tt.ok(hasCode(err, 'APILB_ERR_ADMIN_UNREACHABLE'));
  tt.match((err as Error).message, /not an apilb \/status document/);
});

t.test('fetchStatus: a server that never answers times out', async (tt) => {
  const server = createServer(() => {
    // never responds
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  tt.teardown(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as AddressInfo).port;
  await tt.rejects(fetchStatus(`127.0.0.1:${port}`, 200), { code: 'APILB_ERR_ADMIN_UNREACHABLE', message: /no answer within 200 ms/ });
});

// ---- Hostile input (issue 19, finding 7) ----

const ESC = '\x1b';
const HOSTILE: Array<{ name: string; text: string }> = [
  { name: 'colour and clear-screen escapes', text: `${ESC}[2J${ESC}[31mREADY${ESC}[0m` },
  { name: 'OSC 52 clipboard write', text: `${ESC}]52;c;cm0gLXJmIH4=\x07` },
  { name: 'one-byte CSI (C1)', text: '\x9b2J' },
  { name: 'carriage return overwriting the line', text: 'down\rup  ' },
  { name: 'bidi override', text: 'ok \u202egnissap\u202c' },
  { name: 'DEL and NUL', text: 'a\x7fb\x00c' },
];

t.test('formatStatus: control characters from backends (/readyz bodies, reasons, errors) are shown escaped, never sent', async (tt) => {
  for (const h of HOSTILE) {
    const out = formatStatus(
      doc({
        readyReason: h.text,
        backends: [
          backend({
            address: `10.0.0.1:6443${h.text}`,
            reason: h.text,
            lastCheck: { result: 'status', status: 500, latencyMs: 3, error: h.text, at: '2026-01-01T00:00:00.000Z' },
          }),
        ],
      }),
      Date.parse('2026-01-01T00:01:00.000Z'),
    );
    tt.notOk(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/.test(out), `${h.name}: no control character reaches the terminal`);
    tt.ok(out.includes(terminalSafe(h.text)), `${h.name}: shown escaped (${terminalSafe(h.text)})`);
  }
});

t.test('fetchStatus: --json output escapes them too; an endless answer is cut at MAX_STATUS_BYTES', async (tt) => {
  const hostileDoc = doc({ readyReason: HOSTILE.map((h) => h.text).join(' '), backends: [] });
  let sent = 0;
  const server = createServer((req, res) => {
    if (req.url !== '/status') return res.end();
    res.writeHead(200, { 'content-type': 'application/json' });
    if (endless) {
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      const pump = () => {
        while (!res.destroyed && sent < 64 * MAX_STATUS_BYTES && res.write(chunk)) sent += chunk.length;
        if (!res.destroyed && sent < 64 * MAX_STATUS_BYTES) res.once('drain', pump);
      };
      res.write('{"backends": [');
      pump();
      return;
    }
    res.end(JSON.stringify(hostileDoc));
  });
  let endless = false;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  tt.teardown(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as AddressInfo).port;
  const { raw, doc: got } = await fetchStatus(`127.0.0.1:${port}`);
  tt.notOk(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/.test(raw), 'raw JSON holds no control character');
  tt.equal(JSON.parse(raw).readyReason, got.readyReason, 'and is still the same document');
  endless = true;
  const err = await fetchStatus(`127.0.0.1:${port}`, 10_000).catch((e: unknown) => e);
  tt.ok(hasCode(err, 'APILB_ERR_ADMIN_UNREACHABLE'));
  tt.match((err as Error).message, /larger than 4194304 bytes/);
  tt.ok(sent < 16 * MAX_STATUS_BYTES, `stopped reading: the server got to write ${sent} bytes, not 256 MiB`);
});
