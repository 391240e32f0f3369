import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { Client, request } from 'undici';
import { resolveConfig } from '../src/config/config.js';
import { formatAddress, parseAddress } from '../src/config/values.js';
import { startDaemon, type Daemon } from '../src/daemon.js';
import { createTestCA, type LeafCert, type TestCA } from '../src/demo/test-ca.js';
import { BackendSet } from '../src/discovery/backend-set.js';
import {
  backendsFromSlices,
  EndpointSliceDiscovery,
  ENDPOINTSLICES_SOURCE,
  implausibleReason,
  type DiscoveryTuning,
} from '../src/discovery/endpointslices.js';
import { caFingerprints, loadStateFile, saveStateFile } from '../src/discovery/state-file.js';
import { hasCode } from '../src/errors.js';
import { createLogger } from '../src/logging.js';
import { Pool } from '../src/pool/pool.js';
import type { StatusDoc } from '../src/admin/status.js';
import { addApiStandIn, FakeCluster, startApiStandIns, type ApiStandIn } from './support/endpointslice-server.js';
import { FakeClock } from './support/fake-clock.js';
import { until } from './support/net.js';

let ca: TestCA;
let serverCert: LeafCert;
let clientCert: LeafCert;
let otherCa: TestCA;

t.before(() => {
  ca = createTestCA();
  serverCert = ca.server();
  clientCert = ca.client('system:node:node-1', 'system:nodes');
  otherCa = createTestCA({ name: 'another-cluster-ca' });
});
t.teardown(() => {
  ca.remove();
  otherCa.remove();
});

function tmp(t: Tap.Test, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A pino logger whose lines land in `lines` (parsed). */
function captureLogger(): { logger: ReturnType<typeof createLogger>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger('debug', dest), lines };
}

interface Rig {
  cluster: FakeCluster;
  standIns: ApiStandIn[];
  port: number;
  pool: Pool;
  set: BackendSet;
  clock: FakeClock;
  d: EndpointSliceDiscovery;
  lines: Record<string, unknown>[];
  /** Sorted ids of the pool's live (non-removed) backends. */
  live(): string[];
  /** Sorted ids of the discovered source. */
  discovered(): string[];
  /** Resolves once discovery has seen everything the cluster published (its resourceVersion caught up). */
  caughtUp(): Promise<unknown>;
}

/**
 * Discovery pointed straight at stand-in 0 (the data path is exercised by the daemon tests below), with a fake
 * clock driving debounce and backoff. `random` 0.5 makes every jittered delay exactly its nominal value.
 */
async function rig(t: Tap.Test, opts: { hosts?: string[]; tuning?: DiscoveryTuning; stateDir?: string; seeds?: string[]; setup?: (c: FakeCluster, port: number) => void; start?: boolean } = {}): Promise<Rig> {
  const cluster = new FakeCluster();
  const standIns = await startApiStandIns(cluster, opts.hosts ?? ['127.0.0.2', '127.0.0.3'], { tls: serverCert, ca: ca.cert });
  const port = standIns[0]!.port;
  t.teardown(() => Promise.all(standIns.map((s) => s.close())));
  opts.setup?.(cluster, port);
  const pool = new Pool();
  const set = new BackendSet(pool);
  set.set('static', (opts.seeds ?? ['10.99.0.1:6443']).map((s) => ({ address: parseAddress(s) })));
  const clock = new FakeClock();
  const { logger, lines } = captureLogger();
  const d = new EndpointSliceDiscovery({
    backendSet: set,
    target: { host: standIns[0]!.host, port },
    tls: { ca: ca.cert, cert: clientCert.cert, key: clientCert.key },
    clock,
    random: () => 0.5,
    logger,
    ...(opts.stateDir ? { stateDir: opts.stateDir } : {}),
    ...opts.tuning,
  });
  t.teardown(() => d.close());
  if (opts.start ?? true) d.start();
  return {
    cluster,
    standIns,
    port,
    pool,
    set,
    clock,
    d,
    lines,
    live: () => pool.backends.filter((b) => !b.removed).map((b) => b.id).sort(),
    discovered: () => (set.get(ENDPOINTSLICES_SOURCE) ?? []).map((s) => formatAddress(s.address)).sort(),
    caughtUp: () => until(() => d.stats.resourceVersion === cluster.resourceVersion, `discovery at resourceVersion ${cluster.resourceVersion}`),
  };
}

const eps = (...ips: string[]) => ips.map((ip) => ({ ip }));

t.test('backendsFromSlices: ready endpoints × https ports; the rest is left out and said why', async (t) => {
  const r = backendsFromSlices(
    [
      {
        metadata: { name: 'kubernetes' },
        addressType: 'IPv4',
        endpoints: [
          { addresses: ['10.0.0.2'], conditions: { ready: true } },
          { addresses: ['10.0.0.1'], conditions: {} },
          { addresses: ['10.0.0.3'], conditions: { ready: false } },
          { addresses: ['10.0.0.4'], conditions: { ready: null } },
          { addresses: ['fd00::1'] },
          { addresses: ['0.0.0.0'] },
          { addresses: ['127.0.0.1'] },
        ],
        ports: [{ name: 'https', port: 6443, protocol: 'TCP' }, { name: 'metrics', port: 9090, protocol: 'TCP' }],
      },
      { metadata: { name: 'v6' }, addressType: 'IPv6', endpoints: [{ addresses: ['fd00::1'] }, { addresses: ['fd00::1'] }], ports: [{ name: 'https', port: 443 }] },
      { metadata: { name: 'fqdn' }, addressType: 'FQDN', endpoints: [{ addresses: ['api.example'] }], ports: [{ name: 'https', port: 6443 }] },
      { metadata: { name: 'noport' }, addressType: 'IPv4', endpoints: [{ addresses: ['10.0.0.9'] }], ports: [{ name: 'http', port: 80 }] },
      { metadata: { name: 'empty' }, addressType: 'IPv4', endpoints: null, ports: null },
    ],
    [{ host: '127.0.0.1', port: 6443 }],
  );
  t.same(r.backends.map(formatAddress), ['10.0.0.1:6443', '10.0.0.2:6443', '10.0.0.4:6443', '[fd00::1]:443']);
  t.equal(r.notReady, 1);
  t.match(r.skipped.join('\n'), /fd00::1" is not a usable IPv4/);
  t.match(r.skipped.join('\n'), /0\.0\.0\.0/);
  t.match(r.skipped.join('\n'), /127\.0\.0\.1:6443 is apilb's own listener/);
  t.match(r.skipped.join('\n'), /addressType FQDN/);
  t.match(r.skipped.join('\n'), /slice noport: no TCP port named https/);
  t.equal(implausibleReason([], 64), 'no ready API server in the EndpointSlices');
  t.match(implausibleReason(Array.from({ length: 65 }, (_, i) => ({ host: `10.0.1.${i}`, port: 6443 })), 64), /65 API servers/);
  t.equal(implausibleReason([{ host: '10.0.0.1', port: 6443 }], 64), undefined);
});

t.test('options are validated once, at construction', async (t) => {
  const set = new BackendSet(new Pool());
  const target = { host: '127.0.0.1', port: 6443 };
  t.throws(() => new EndpointSliceDiscovery({ backendSet: set, target, tls: { ca: '' } }), { code: 'APILB_ERR_TLS_CONFIG' });
  t.throws(() => new EndpointSliceDiscovery({ backendSet: set, target, tls: { ca: 'not a pem' } }), { code: 'APILB_ERR_TLS_CONFIG' });
  t.throws(() => new EndpointSliceDiscovery({ backendSet: set, target, tls: { ca: ca.cert }, debounceMs: -1 }), { code: 'APILB_ERR_OPTION_INVALID' });
  t.throws(() => new EndpointSliceDiscovery({ backendSet: set, target, tls: { ca: ca.cert }, backoffBaseMs: 0 }), { code: 'APILB_ERR_OPTION_INVALID' });
  t.throws(() => new EndpointSliceDiscovery({ backendSet: set, target, tls: { ca: ca.cert, cert: clientCert.cert } }), { code: 'APILB_ERR_OPTION_INVALID' });
  t.throws(() => new EndpointSliceDiscovery({ backendSet: set, target: { host: '127.0.0.1', port: 0 }, tls: { ca: ca.cert } }), { code: 'APILB_ERR_OPTION_INVALID' });
  const d = new EndpointSliceDiscovery({ backendSet: set, target, tls: { ca: ca.cert } });
  t.equal(d.debounceMs, 3000, 'debounce defaults to 3 s');
  t.equal(d.maxDebounceMs, 9000);
  t.equal(d.backoffBaseMs, 1000);
  t.equal(d.backoffMaxMs, 30000);
  t.equal(d.stats.state, 'stopped');
  await d.close();
});

t.test('first LIST applies at once; add, remove and renumber an API server, each after the debounce', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), port) });
  const p = r.port;
  await until(() => r.discovered().length === 2, 'first list applied');
  t.same(r.discovered(), [`127.0.0.2:${p}`, `127.0.0.3:${p}`]);
  t.same(r.live(), ['10.99.0.1:6443', `127.0.0.2:${p}`, `127.0.0.3:${p}`], 'seed kept next to the discovered servers');
  t.equal(r.pool.get(`127.0.0.2:${p}`)?.source, 'discovery');
  await until(() => r.d.stats.state === 'watching' && r.cluster.openWatches === 1, 'watch open');
  t.equal(r.cluster.requests[0]?.cn, 'system:node:node-1', 'the client certificate identifies apilb');

  // add
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3', '127.0.0.4'), p);
  await r.caughtUp();
  t.equal(r.discovered().length, 2, 'not applied before the debounce');
  r.clock.advance(2999);
  t.equal(r.discovered().length, 2, 'not applied 1 ms before the debounce ends');
  r.clock.advance(1);
  t.same(r.discovered(), [`127.0.0.2:${p}`, `127.0.0.3:${p}`, `127.0.0.4:${p}`], 'added');

  // remove
  const before3 = r.pool.get(`127.0.0.2:${p}`);
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.4'), p);
  await r.caughtUp();
  r.clock.advance(3000);
  t.same(r.live(), ['10.99.0.1:6443', `127.0.0.2:${p}`, `127.0.0.4:${p}`], 'removed');
  t.equal(r.pool.get(`127.0.0.2:${p}`), before3, 'an unchanged backend keeps its Backend object (state, connections)');

  // renumber: .4 becomes .5
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.5'), p);
  await r.caughtUp();
  r.clock.advance(3000);
  t.same(r.live(), ['10.99.0.1:6443', `127.0.0.2:${p}`, `127.0.0.5:${p}`], 'renumbered');

  t.equal(r.cluster.requests.filter((q) => q.kind === 'list').length, 1, 'one LIST; the rest came by WATCH');
  t.equal(r.d.stats.lists, 1);
  t.equal(r.d.stats.applied, 4);
  t.equal(r.d.stats.listSize, 2);
  t.ok(r.d.stats.lastSuccessTime > 0);
  t.equal(r.d.stats.lastChangeTime, r.clock.now());
  t.equal(r.d.stats.errors, 0);
});

t.test('debounce: a flapping entry is applied once, at most maxDebounce after the first change; a flap back is never applied', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), port) });
  const p = r.port;
  await until(() => r.d.stats.applied === 1 && r.cluster.openWatches === 1, 'first list applied, watching');

  // .3 flaps not-ready/ready and ends ready: nothing to apply.
  for (const ready of [false, true, false, true]) {
    r.cluster.setSlice('kubernetes', [{ ip: '127.0.0.2' }, { ip: '127.0.0.3', ready }], p);
    await r.caughtUp();
    r.clock.advance(1000);
  }
  r.clock.advance(5000);
  t.equal(r.d.stats.applied, 1, 'a flap back to the applied list changes nothing');
  t.same(r.discovered(), [`127.0.0.2:${p}`, `127.0.0.3:${p}`]);

  // .4 keeps flapping every 2 s (less than the debounce): applied once, at the cap 9 s after the first change.
  const start = r.clock.now();
  const changes = [true, false, true, false, true];
  for (let i = 0; i < changes.length; i++) {
    r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3', ...(changes[i] ? ['127.0.0.4'] : [])), p);
    await r.caughtUp();
    if (i < changes.length - 1) r.clock.advance(2000);
  }
  t.equal(r.clock.now() - start, 8000);
  r.clock.advance(999);
  t.equal(r.d.stats.applied, 1, 'not applied while changes keep coming, before the cap');
  r.clock.advance(1);
  t.equal(r.d.stats.applied, 2, 'applied at the cap');
  t.equal(r.d.stats.lastChangeTime - start, 9000);
  t.same(r.discovered(), [`127.0.0.2:${p}`, `127.0.0.3:${p}`, `127.0.0.4:${p}`], 'the state at the cap');
  r.clock.advance(10000);
  t.equal(r.d.stats.applied, 2, 'applied once');
});
