import t, { type Test } from 'tap';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { Client, request } from 'undici';
import { resolveConfig } from '../src/config/config.js';
import { formatAddress, parseAddress, type Address } from '../src/config/values.js';
import { startDaemon, type Daemon, type DaemonDeps } from '../src/daemon.js';
import { createTestCA, type LeafCert, type TestCA } from '../src/demo/test-ca.js';
import { BackendSet } from '../src/discovery/backend-set.js';
import { backendsFromSlices, EndpointSliceDiscovery, ENDPOINTSLICES_SOURCE, implausibleReason, type DiscoveryTuning } from '../src/discovery/endpointslices.js';
import { caFingerprints, loadStateFile, saveStateFile } from '../src/discovery/state-file.js';
import { ListWatch } from '../src/discovery/list-watch.js';
import type { EndpointSlice } from '../src/discovery/slices.js';
import { createLogger } from '../src/logging.js';
import { Pool } from '../src/pool/pool.js';
import { AddressPolicy, canonicalHost } from '../src/discovery/address-policy.js';
import type { Dialer } from '../src/proxy/proxy.js';
import { connect as netConnect, Socket as NetSocket } from 'node:net';
import type { StatusDoc } from '../src/admin/status.js';
import { parseExposition, promtool } from './support/prom-text.js';
import { addApiStandIn, FakeCluster, startApiStandIns, type ApiStandIn } from './support/endpointslice-server.js';
import { FakeClock } from './support/fake-clock.js';
import { dial as dialPort, readBytes, until } from './support/net.js';
import { bindListener, createListener } from '../src/proxy/listen.js';
import { captureLogger } from './support/logs.js';

let ca: TestCA;
let serverCert: LeafCert;
let clientCert: LeafCert;
let otherCa: TestCA;

t.before(() => {
  ca = createTestCA();
  // Every loopback address the stand-ins use, so health checks that verify the backend IP pass too.
  serverCert = ca.server('kube-apiserver', ['DNS:kubernetes', 'DNS:localhost', ...[1, 2, 3, 4, 5, 6, 7].map((i) => `IP:127.0.0.${i}`)]);
  clientCert = ca.client('system:node:node-1', 'system:nodes');
  otherCa = createTestCA({ name: 'another-cluster-ca' });
});
t.teardown(() => {
  ca.remove();
  otherCa.remove();
});

function tmp(t: Test, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
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
async function rig(
  t: Test,
  opts: {
    hosts?: string[];
    tuning?: DiscoveryTuning;
    stateDir?: string;
    seeds?: string[];
    setup?: (c: FakeCluster, port: number) => void;
    start?: boolean;
    allowLocal?: boolean;
    exclude?: Address[];
  } = {},
): Promise<Rig> {
  const cluster = new FakeCluster();
  const standIns = await startApiStandIns(cluster, opts.hosts ?? ['127.0.0.2', '127.0.0.3'], { tls: serverCert, ca: ca.cert });
  const port = standIns[0]!.port;
  t.teardown(() => Promise.all(standIns.map((s) => s.close())));
  opts.setup?.(cluster, port);
  const pool = new Pool();
  const set = new BackendSet(pool);
  set.set(
    'static',
    (opts.seeds ?? ['10.99.0.1:6443']).map((s) => ({ address: parseAddress(s) })),
  );
  const clock = new FakeClock();
  const { logger, lines } = captureLogger();
  const d = new EndpointSliceDiscovery({
    backendSet: set,
    target: { host: standIns[0]!.host, port },
    tls: { ca: ca.cert, cert: clientCert.cert, key: clientCert.key },
    clock,
    random: () => 0.5,
    logger,
    // The stand-ins are on loopback, which discovered lists may only name with the operator's opt-in.
    allowLocal: opts.allowLocal ?? true,
    ...(opts.exclude ? { exclude: opts.exclude } : {}),
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
    live: () =>
      pool.backends
        .filter((b) => !b.removed)
        .map((b) => b.id)
        .sort(),
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
        ports: [
          { name: 'https', port: 6443, protocol: 'TCP' },
          { name: 'metrics', port: 9090, protocol: 'TCP' },
        ],
      },
      {
        metadata: { name: 'v6' },
        addressType: 'IPv6',
        endpoints: [{ addresses: ['fd00::1'] }, { addresses: ['fd00::1'] }],
        ports: [{ name: 'https', port: 443 }],
      },
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
  t.match(
    implausibleReason(
      Array.from({ length: 65 }, (_, i) => ({ host: `10.0.1.${i}`, port: 6443 })),
      64,
    ),
    /65 API servers/,
  );
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
  t.throws(() => new EndpointSliceDiscovery({ backendSet: set, target: { host: '127.0.0.1', port: 0 }, tls: { ca: ca.cert } }), {
    code: 'APILB_ERR_OPTION_INVALID',
  });
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

t.test('an empty or implausible list is never applied: the last good list and the seeds stay', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), port), tuning: { maxBackends: 3 } });
  const p = r.port;
  await until(() => r.d.stats.applied === 1 && r.cluster.openWatches === 1, 'first list applied, watching');
  const good = [`127.0.0.2:${p}`, `127.0.0.3:${p}`];

  r.cluster.setSlice(
    'kubernetes',
    [
      { ip: '127.0.0.2', ready: false },
      { ip: '127.0.0.3', ready: false },
    ],
    p,
  );
  await r.caughtUp();
  r.clock.advance(3000);
  t.same(r.discovered(), good, 'every endpoint not ready: ignored');
  t.equal(r.d.stats.rejected, 1);

  r.cluster.deleteSlice('kubernetes');
  await r.caughtUp();
  r.clock.advance(3000);
  t.same(r.discovered(), good, 'slice deleted: ignored');
  t.equal(r.d.stats.rejected, 2);

  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5'), p);
  await r.caughtUp();
  r.clock.advance(3000);
  t.same(r.discovered(), good, 'more than maxBackends: ignored');
  t.equal(r.d.stats.rejected, 3);
  t.same(r.live(), ['10.99.0.1:6443', ...good], 'seed and last good list in the pool');
  const warned = r.lines.filter((l) => l.event === 'discovery_rejected');
  t.equal(warned.length, 3, 'each distinct reason logged once');
  t.match(String(warned[0]!.msg), /no ready API server in the EndpointSlices \(2 not ready\); keeping the last good list \(2 API servers\)/);
  t.equal(warned[0]!.code, 'APILB_ERR_DISCOVERY');

  r.cluster.setSlice('kubernetes', eps('127.0.0.3'), p);
  await r.caughtUp();
  r.clock.advance(3000);
  t.same(r.discovered(), [`127.0.0.3:${p}`], 'a plausible list is applied again');
  t.equal(r.d.stats.listSize, 1);
});

t.test('an empty first LIST leaves the seeds alone', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', [{ ip: '127.0.0.2', ready: false }], port) });
  await until(() => r.d.stats.rejected === 1, 'first list rejected');
  t.equal(r.set.get(ENDPOINTSLICES_SOURCE), undefined, 'nothing applied');
  t.same(r.live(), ['10.99.0.1:6443']);
  await until(() => r.cluster.openWatches === 1, 'watching anyway');
  // Still before any good list: the first plausible one is applied at once, without debounce.
  r.cluster.setSlice('kubernetes', eps('127.0.0.2'), r.port);
  await until(() => r.discovered().length === 1, 'first good list applied without waiting');
  t.equal(r.d.stats.applied, 1);
});

t.test('watch errors back off with jitter and resume from the last resourceVersion; events missed meanwhile arrive', async (t) => {
  let rnd = 0.5;
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2'), port), tuning: { random: () => rnd } });
  const p = r.port;
  const failures: number[] = [];
  r.d.on('failure', (f) => failures.push(f.retryInMs));
  await until(() => r.cluster.openWatches === 1, 'watching');
  const rvAtBreak = r.d.stats.resourceVersion;

  r.cluster.failWatches = 2;
  r.cluster.breakWatches();
  await until(() => failures.length === 1, 'first failure');
  t.equal(failures[0], 1000, 'first retry after backoffBaseMs (random 0.5 = no jitter)');
  t.equal(r.d.stats.state, 'backoff');
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), p); // happens while apilb is not watching
  rnd = 0; // jitter ±50%: the low end
  r.clock.advance(1000);
  await until(() => failures.length === 2, 'second failure (injected 500)');
  t.equal(failures[1], 1000, 'second retry doubles (2000) and is jittered down by 50%');
  rnd = 1;
  r.clock.advance(1000);
  await until(() => failures.length === 3, 'third failure (injected 500)');
  t.equal(failures[2], 6000, 'third retry doubles (4000) and is jittered up by 50%');
  r.clock.advance(6000);
  await until(() => r.cluster.openWatches === 1, 'watch re-established');
  await r.caughtUp();
  const watches = r.cluster.requests.filter((q) => q.kind === 'watch');
  t.ok(watches.length >= 4);
  t.ok(
    watches.slice(1).every((w) => w.resourceVersion === rvAtBreak),
    'every retry resumed from the resourceVersion it had',
  );
  t.equal(r.cluster.requests.filter((q) => q.kind === 'list').length, 1, 'no re-list');
  r.clock.advance(3000);
  t.same(r.discovered(), [`127.0.0.2:${p}`, `127.0.0.3:${p}`], 'the change made during the outage arrived');
  t.equal(r.d.stats.errors, 3);
  t.equal(r.d.stats.watchRestarts, 3);
  t.match(r.d.stats.lastError, /WATCH: HTTP 500: injected watch failure/);
  const warns = r.lines.filter((l) => l.event === 'discovery_error' && l.level === 'warn');
  t.ok(warns.length >= 1 && warns.length <= 2, 'a repeated error is logged at warn once');
  t.ok(
    r.lines.some((l) => l.event === 'discovery_recovered'),
    'recovery logged',
  );

  // Backoff resets after success: the next failure waits backoffBaseMs again.
  rnd = 0.5;
  r.cluster.failWatches = 1;
  r.cluster.breakWatches();
  await until(() => failures.length === 4, 'fourth failure');
  t.equal(failures[3], 1000, 'backoff reset after a working watch');
  r.clock.advance(1000);
  await until(() => failures.length === 5, 'the injected 500');
  r.clock.advance(2000);
  await until(() => r.cluster.openWatches === 1, 'watching again');
});

t.test('backoff is capped at backoffMaxMs', async (t) => {
  const r = await rig(t, { setup: (c) => (c.failLists = 100), tuning: { backoffBaseMs: 1000, backoffMaxMs: 5000 } });
  const failures: number[] = [];
  r.d.on('failure', (f) => failures.push(f.retryInMs));
  for (let i = 1; i <= 6; i++) {
    await until(() => failures.length === i, `failure ${i}`);
    r.clock.advance(failures[i - 1]!);
  }
  t.same(failures, [1000, 2000, 4000, 5000, 5000, 5000]);
  t.equal(r.d.stats.lists, 0);
});

t.test('ListWatch alone: LIST items, then ADDED/MODIFIED/DELETED changes; bookmarks and 410 events move only the resourceVersion', async (t) => {
  const cluster = new FakeCluster();
  const [standIn] = await startApiStandIns(cluster, ['127.0.0.2'], { tls: serverCert, ca: ca.cert });
  t.teardown(() => standIn!.close());
  cluster.setSlice('a', eps('127.0.0.2'), 6443);
  const seen: string[] = [];
  const relists: string[] = [];
  const lw = new ListWatch<EndpointSlice>({
    target: { host: standIn!.host, port: standIn!.port },
    tls: { ca: ca.cert, cert: clientCert.cert, key: clientCert.key },
    path: '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices',
    labelSelector: 'kubernetes.io/service-name=kubernetes',
    listName: 'an EndpointSliceList',
    timing: { backoffBaseMs: 1000, backoffMaxMs: 30_000, requestTimeoutMs: 10_000, watchTimeoutSeconds: 300, minWatchMs: 1000 },
    clock: new FakeClock(),
    random: () => 0.5,
    onList: (items) => seen.push(`LIST ${items.map((s) => s.metadata?.name).join(',')}`),
    onChange: (type, s) => seen.push(`${type} ${s.metadata?.name}`),
  });
  lw.on('relist', (ev) => relists.push(ev.reason));
  t.teardown(() => lw.close());
  lw.start();
  await until(() => cluster.openWatches === 1, 'watching');
  cluster.setSlice('b', eps('127.0.0.3'), 6443);
  cluster.setSlice('a', eps('127.0.0.4'), 6443);
  cluster.deleteSlice('b');
  await until(() => lw.stats.resourceVersion === cluster.resourceVersion, 'caught up');
  cluster.goneAsEvent = true;
  cluster.expireWatches();
  await until(() => lw.stats.lists === 2 && cluster.openWatches === 1, 're-listed and watching');
  t.same(seen, ['LIST a', 'ADDED b', 'MODIFIED a', 'DELETED b', 'LIST a']);
  t.same(relists, ['410-event']);
  t.equal(lw.stats.relists, 1);
  t.equal(lw.stats.errors, 0);
  await lw.close();
  t.equal(cluster.openWatches, 0, 'close() ends the watch');
});

t.test('410 Gone on the watch request re-lists', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2'), port) });
  const p = r.port;
  await until(() => r.cluster.openWatches === 1, 'watching');
  r.cluster.breakWatches();
  await until(() => r.d.stats.state === 'backoff', 'backing off');
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), p);
  r.cluster.compact(); // the history apilb would resume from is gone
  r.clock.advance(1000);
  await until(() => r.d.stats.lists === 2 && r.cluster.openWatches === 1, 're-listed and watching');
  t.equal(r.d.stats.relists, 1);
  const kinds = r.cluster.requests.map((q) => q.kind);
  t.same(kinds.slice(-3), ['watch', 'list', 'watch'], 'the 410 watch is followed by a LIST, then a fresh watch');
  t.equal(r.cluster.requests.at(-1)!.resourceVersion, r.cluster.resourceVersion, 'the new watch starts at the LIST resourceVersion');
  r.clock.advance(3000);
  t.same(r.discovered(), [`127.0.0.2:${p}`, `127.0.0.3:${p}`], 'the re-list brought the change');
  t.ok(r.lines.some((l) => l.event === 'discovery_relist' && l.reason === '410'));
});

t.test('an ERROR event with code 410 inside the watch stream re-lists at once', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2'), port) });
  r.cluster.goneAsEvent = true;
  await until(() => r.cluster.openWatches === 1, 'watching');
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), r.port);
  await r.caughtUp();
  r.cluster.expireWatches();
  // No clock advance: a 410 is not an error, the LIST follows immediately.
  await until(() => r.d.stats.lists === 2 && r.cluster.openWatches === 1, 're-listed and watching');
  t.equal(r.d.stats.relists, 1);
  t.equal(r.d.stats.errors, 0, 'not counted as an error');
  t.ok(r.lines.some((l) => l.event === 'discovery_relist' && l.reason === '410-event'));
  r.clock.advance(3000);
  t.equal(r.discovered().length, 2);
});

t.test('a watch the server ends is resumed from its resourceVersion without a LIST; bookmarks advance it', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2'), port) });
  await until(() => r.cluster.openWatches === 1, 'watching');
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), r.port);
  r.cluster.bookmark();
  await r.caughtUp();
  const rv = r.cluster.resourceVersion;
  r.cluster.endWatches();
  await until(() => r.d.stats.watchRestarts === 1 && r.cluster.openWatches === 1, 'watch resumed');
  t.equal(r.cluster.requests.at(-1)!.kind, 'watch');
  t.equal(r.cluster.requests.at(-1)!.resourceVersion, rv);
  t.equal(r.d.stats.lists, 1);
  t.equal(r.d.stats.errors, 0);

  // A watch that ends at once without an event is an error (no hot loop).
  r.cluster.endWatches();
  await until(() => r.d.stats.state === 'backoff', 'backing off');
  t.match(r.d.stats.lastError, /ended at once/);
  r.clock.advance(1000);
  await until(() => r.cluster.openWatches === 1, 'watching again');
});

t.test('LIST errors back off; 403 points at the RBAC manifest', async (t) => {
  const r = await rig(t, {
    setup: (c, port) => {
      c.setSlice('kubernetes', eps('127.0.0.2'), port);
      c.listStatus = 403;
    },
  });
  await until(() => r.d.stats.state === 'backoff', 'backing off');
  t.equal(r.d.stats.lists, 0);
  const err = r.lines.find((l) => l.event === 'discovery_error');
  t.match(String(err?.msg), /LIST failed: HTTP 403: endpointslices.discovery.k8s.io is forbidden \(.*contrib\/rbac-endpointslices.yaml\)/);
  t.equal(r.set.get(ENDPOINTSLICES_SOURCE), undefined);
  r.cluster.listStatus = 0;
  r.clock.advance(1000);
  await until(() => r.discovered().length === 1, 'listed after the RBAC fix');
});

/** Discovery trusting `ca` against an API server whose certificate comes from `otherCa`; started. */
async function discoveryAgainstOtherCa(t: Test) {
  const cluster = new FakeCluster();
  const [s] = await startApiStandIns(cluster, ['127.0.0.2'], { tls: otherCa.server(), ca: ca.cert });
  t.teardown(() => s!.close());
  cluster.setSlice('kubernetes', eps('127.0.0.2'), s!.port);
  const set = new BackendSet(new Pool());
  const clock = new FakeClock();
  const { logger, lines } = captureLogger();
  const d = new EndpointSliceDiscovery({
    backendSet: set,
    target: { host: s!.host, port: s!.port },
    tls: { ca: ca.cert, cert: clientCert.cert, key: clientCert.key },
    clock,
    random: () => 0.5,
    logger,
    allowLocal: true,
  });
  t.teardown(() => d.close());
  d.start();
  return { cluster, set, clock, lines, d };
}

t.test('TLS: a server certificate from another CA is refused, nothing is applied', async (t) => {
  const { cluster, set, lines, d } = await discoveryAgainstOtherCa(t);
  await until(() => d.stats.errors === 1, 'the TLS failure');
  t.equal(cluster.requests.length, 0, 'no request reached the impostor');
  t.match(String(lines.find((l) => l.event === 'discovery_error')?.msg), /does not verify against the cluster CA/);
  t.equal(set.get(ENDPOINTSLICES_SOURCE), undefined);
});

t.test('state file: written atomically after each applied change, with the CA fingerprints', async (t) => {
  const dir = tmp(t, 'apilb-state-');
  const r = await rig(t, { stateDir: dir, setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), port) });
  const p = r.port;
  const file = join(dir, 'endpoints.json');
  await until(() => existsSync(file), 'state file written');
  const doc = JSON.parse(readFileSync(file, 'utf8')) as { version: number; caFingerprints: string[]; backends: string[]; savedAt: string };
  t.equal(doc.version, 1);
  t.same(doc.backends, [`127.0.0.2:${p}`, `127.0.0.3:${p}`]);
  t.same(doc.caFingerprints, caFingerprints(ca.cert));
  t.match(doc.caFingerprints[0], /^[0-9a-f]{64}$/);
  t.equal(doc.savedAt, new Date(r.clock.now()).toISOString());
  r.cluster.setSlice('kubernetes', eps('127.0.0.3'), p);
  await r.caughtUp();
  r.clock.advance(3000);
  await until(() => (JSON.parse(readFileSync(file, 'utf8')) as { backends: string[] }).backends.length === 1, 'state file updated');
  t.same(readdirSync(dir), ['endpoints.json'], 'no temporary file left behind');
  t.equal(r.d.stats.stateFile, 'missing', 'nothing to load at the start');
  t.equal(r.d.stats.stateFileErrors, 0);
});

t.test('state file: a failed write is counted and said (warn, APILB_ERR_DISCOVERY); the list is applied anyway', async (t) => {
  const dir = tmp(t, 'apilb-state-');
  const notADir = join(dir, 'file');
  writeFileSync(notADir, 'x');
  const r = await rig(t, { stateDir: join(notADir, 'state'), setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), port) });
  await until(() => r.d.stats.stateFileErrors === 1, 'the write failed');
  t.equal(r.d.stats.applied, 1, 'applied regardless');
  t.same(r.discovered(), [`127.0.0.2:${r.port}`, `127.0.0.3:${r.port}`]);
  const line = r.lines.find((l) => l.event === 'discovery_state_write_failed');
  t.equal(line?.level, 'warn');
  t.equal(line?.code, 'APILB_ERR_DISCOVERY');
  t.equal(line?.component, 'endpointslices');
  t.equal(line?.dir, join(notADir, 'state'));
  t.match(String(line?.msg), /^cannot write the discovery state file in .*\/file\/state: .*ENOTDIR/);
});

t.test("state file: loaded before the first LIST; another cluster's file or a corrupt one is ignored", async (t) => {
  const fps = caFingerprints(ca.cert);

  t.test('same cluster: loaded synchronously by start()', async (t) => {
    const dir = tmp(t, 'apilb-state-');
    await saveStateFile(dir, [parseAddress('10.0.0.7:6443'), parseAddress('10.0.0.8:6443')], fps);
    const r = await rig(t, { stateDir: dir, start: false, setup: (c) => (c.failLists = 1000) });
    r.d.start();
    t.same(r.discovered(), ['10.0.0.7:6443', '10.0.0.8:6443'], 'in the pool when start() returns');
    t.equal(r.d.stats.stateFile, 'loaded');
    t.equal(r.d.stats.listSize, 2);
    t.ok(r.lines.some((l) => l.event === 'discovery_state_loaded'));
  });

  t.test('a CA bundle sharing a certificate (CA rotation) still matches', async (t) => {
    const dir = tmp(t, 'apilb-state-');
    await saveStateFile(dir, [parseAddress('10.0.0.7:6443')], caFingerprints(otherCa.cert + ca.cert));
    const r = loadStateFile(dir, fps);
    t.equal(r.result, 'loaded');
  });

  t.test('another cluster: ignored and logged, replaced after the first LIST', async (t) => {
    const dir = tmp(t, 'apilb-state-');
    await saveStateFile(dir, [parseAddress('10.0.0.7:6443')], caFingerprints(otherCa.cert));
    const r = await rig(t, { stateDir: dir, start: false, setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2'), port) });
    r.d.start();
    t.equal(r.set.get(ENDPOINTSLICES_SOURCE), undefined, 'not loaded');
    t.equal(r.d.stats.stateFile, 'other-cluster');
    const warn = r.lines.find((l) => l.event === 'discovery_state_ignored');
    t.equal(warn?.reason, 'ca-mismatch');
    t.match(String(warn?.msg), /written for another cluster/);
    await until(() => r.discovered().length === 1, 'listed');
    await until(() => loadStateFile(dir, fps).result === 'loaded', 'file rewritten for this cluster');
    t.same((loadStateFile(dir, fps) as { backends: unknown[] }).backends, [{ host: '127.0.0.2', port: r.port }]);
  });

  t.test('corrupt, wrong version, bad address, implausible: ignored', async (t) => {
    const dir = tmp(t, 'apilb-state-');
    const f = join(dir, 'endpoints.json');
    writeFileSync(f, '{"version": 1, "caFing');
    t.match(loadStateFile(dir, fps), { result: 'invalid', reason: /not JSON/ });
    writeFileSync(f, JSON.stringify({ version: 2, caFingerprints: fps, backends: [] }));
    t.match(loadStateFile(dir, fps), { result: 'invalid', reason: /version 2/ });
    writeFileSync(f, JSON.stringify({ version: 1, caFingerprints: fps, backends: ['nope'] }));
    t.match(loadStateFile(dir, fps), { result: 'invalid', reason: /backend "nope"/ });
    t.same(loadStateFile(join(dir, 'absent'), fps), { result: 'missing' });
    writeFileSync(f, JSON.stringify({ version: 1, caFingerprints: fps, backends: [] }));
    const r = await rig(t, { stateDir: dir, start: false, setup: (c) => (c.failLists = 1000) });
    r.d.start();
    t.equal(r.d.stats.stateFile, 'implausible', 'an empty list in the file is not applied either');
    t.equal(r.set.get(ENDPOINTSLICES_SOURCE), undefined);
  });
});

// ---- Through a real daemon: discovery's requests take apilb's own balanced path ----

function writeKubeconfig(t: Test): string {
  const dir = tmp(t, 'apilb-kubeconfig-');
  const path = join(dir, 'kubelet.conf');
  writeFileSync(
    path,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: test',
      '  cluster:',
      `    certificate-authority: ${ca.certFile}`,
      '    server: https://127.0.0.1:6443',
      'contexts:',
      '- name: test',
      '  context: {cluster: test, user: node}',
      'current-context: test',
      'users:',
      '- name: node',
      '  user:',
      `    client-certificate: ${clientCert.certFile}`,
      `    client-key: ${clientCert.keyFile}`,
      '',
    ].join('\n'),
  );
  return path;
}

async function daemon(t: Test, seeds: string[], kubeconfig: string, stateDir: string, tuning: DiscoveryTuning = {}, deps: DaemonDeps = {}): Promise<Daemon> {
  const config = resolveConfig({
    flags: {
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      backends: seeds,
      kubeconfig,
      discoverEndpointslices: true,
      discoveryAllowLocal: true,
      stateDir,
      logLevel: 'silent',
    },
    env: {},
  });
  const d = await startDaemon(config, { logger: createLogger('silent'), discovery: tuning, ...deps });
  t.teardown(() => d.close(0));
  return d;
}

/** A client holding one keep-alive TLS connection through apilb; `disconnects` counts lost connections. */
function apiClient(t: Test, d: Daemon): { client: Client; disconnects: () => number; whoami: () => Promise<string> } {
  const a = d.listeners[0]!.address() as { port: number };
  const client = new Client(`https://127.0.0.1:${a.port}`, {
    connect: { ca: ca.cert, cert: clientCert.cert, key: clientCert.key, servername: 'kubernetes' },
    pipelining: 1,
    keepAliveTimeout: 600_000,
  });
  let disconnects = 0;
  client.on('disconnect', () => disconnects++);
  t.teardown(() => client.destroy());
  return {
    client,
    disconnects: () => disconnects,
    whoami: async () => {
      const res = await client.request({ method: 'GET', path: '/whoami' });
      return res.body.text();
    },
  };
}

async function getStatus(d: Daemon): Promise<StatusDoc> {
  const res = await request(`http://${d.adminAddress}/status`);
  return (await res.body.json()) as StatusDoc;
}

t.test('daemon: a control-plane change reaches the pool and /status within 5 s, connections to unchanged API servers stay', async (t) => {
  const cluster = new FakeCluster();
  const standIns = await startApiStandIns(cluster, ['127.0.0.2', '127.0.0.3', '127.0.0.4'], { tls: serverCert, ca: ca.cert });
  t.teardown(() => Promise.all(standIns.map((s) => s.close())));
  const p = standIns[0]!.port;
  cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3', '127.0.0.4'), p);
  const d = await daemon(t, [`127.0.0.2:${p}`], writeKubeconfig(t), tmp(t, 'apilb-state-'));
  const disc = d.discovery!;
  t.ok(disc, 'discovery created by the daemon');
  const live = () =>
    d.pool.backends
      .filter((b) => !b.removed)
      .map((b) => b.id)
      .sort();
  await until(() => disc.stats.applied === 1 && cluster.openWatches === 1, 'first list applied, watching', 5000);
  t.same(live(), [`127.0.0.2:${p}`, `127.0.0.3:${p}`, `127.0.0.4:${p}`]);
  t.equal(disc.target.host, '127.0.0.1', "discovery targets apilb's own listener");
  t.equal(disc.target.port, (d.listeners[0]!.address() as { port: number }).port);
  t.ok(d.proxy.counters.accepted >= 1, "the LIST and WATCH came in through apilb's listener");
  t.ok(
    cluster.requests.every((q) => q.cn === 'system:node:node-1'),
    "with the kubeconfig's client identity",
  );

  const text = await (await request(`http://${d.adminAddress}/metrics`)).body.text();
  const m = parseExposition(text);
  t.equal(m.get('apilb_discovery_state', { state: 'watching' }), 1, 'apilb_discovery_state{state="watching"} 1');
  t.equal(m.get('apilb_discovery_state', { state: 'backoff' }), 0);
  t.equal(m.get('apilb_discovery_backends'), 3);
  t.ok(m.get('apilb_discovery_last_success_timestamp_seconds')! > 1e9);
  t.equal(m.types.get('apilb_discovery_watch_restarts_total'), 'counter');
  t.equal(m.get('apilb_discovery_errors_total'), 0);
  t.equal(m.get('apilb_discovery_relists_total'), 0);
  t.equal(m.get('apilb_discovery_rejected_lists_total'), 0);
  const lint = promtool(['check', 'metrics'], text);
  t.equal(lint.status, 0, `promtool check metrics passes: ${lint.output}`);

  // One keep-alive connection through apilb to each API server.
  const byServer = new Map<string, ReturnType<typeof apiClient>>();
  for (let i = 0; i < 20 && byServer.size < 3; i++) {
    const c = apiClient(t, d);
    const who = await c.whoami();
    if (!byServer.has(who)) byServer.set(who, c);
    else await c.client.close();
  }
  t.equal(byServer.size, 3, 'a connection on each API server');

  // Renumber: 127.0.0.4 is replaced by 127.0.0.5.
  const five = await addApiStandIn(cluster, '127.0.0.5', p, { tls: serverCert, ca: ca.cert });
  t.teardown(() => five.close());
  const t0 = Date.now();
  cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3', '127.0.0.5'), p);
  await until(() => live().includes(`127.0.0.5:${p}`) && !live().includes(`127.0.0.4:${p}`), 'the pool follows', 5000);
  const poolMs = Date.now() - t0;
  await until(
    async () => {
      const s = await getStatus(d);
      const five = s.backends.find((b) => b.address === `127.0.0.5:${p}`);
      const four = s.backends.find((b) => b.address === `127.0.0.4:${p}`);
      return five?.source === 'discovery' && (!four || four.removed);
    },
    '/status follows',
    5000,
  );
  const statusMs = Date.now() - t0;
  t.ok(statusMs < 5000, `change visible in /status after ${statusMs} ms (pool: ${poolMs} ms; debounce 3000 ms)`);
  t.comment(`measured: control-plane change -> pool ${poolMs} ms, -> /status ${statusMs} ms`);

  for (const name of ['127.0.0.2', '127.0.0.3']) {
    const c = byServer.get(name)!;
    t.equal(await c.whoami(), name, `the connection to unchanged ${name} still answers from ${name}`);
    t.equal(c.disconnects(), 0, `the connection to ${name} was never dropped`);
  }
  t.equal(await byServer.get('127.0.0.4')!.whoami(), '127.0.0.4', "the removed server's connection drains instead of being cut");
  const st = await getStatus(d);
  t.match(
    st.backends.find((b) => b.address === `127.0.0.4:${p}`),
    { removed: true, activeConnections: 1 },
  );
  for (const c of byServer.values()) await c.client.close();
});

t.test('daemon: restart with the persisted list while every seed is down', async (t) => {
  const cluster = new FakeCluster();
  const standIns = await startApiStandIns(cluster, ['127.0.0.2', '127.0.0.3'], { tls: serverCert, ca: ca.cert });
  t.teardown(() => Promise.all(standIns.map((s) => s.close())));
  const p = standIns[0]!.port;
  cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), p);
  const kubeconfig = writeKubeconfig(t);
  const stateDir = tmp(t, 'apilb-state-');

  const first = await daemon(t, [`127.0.0.2:${p}`], kubeconfig, stateDir);
  await until(() => loadStateFile(stateDir, caFingerprints(ca.cert)).result === 'loaded', 'state file written', 5000);
  const closeStart = Date.now();
  await first.close();
  t.ok(Date.now() - closeStart < 2000, 'the discovery watch does not hold the graceful shutdown');

  // Seeds that accept and hang up at once: dead API servers as far as a client can tell.
  const dead: NetServer[] = [];
  const deadSockets = new Set<Socket>();
  for (let i = 0; i < 2; i++) {
    const s = createNetServer((sock) => {
      deadSockets.add(sock);
      sock.on('error', () => {});
      sock.destroy();
    });
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    dead.push(s);
  }
  t.teardown(() => Promise.all(dead.map((s) => new Promise((r) => s.close(r)))));
  const seeds = dead.map((s) => `127.0.0.1:${(s.address() as { port: number }).port}`);

  const listsBefore = cluster.requests.filter((q) => q.kind === 'list').length;
  const second = await daemon(t, seeds, kubeconfig, stateDir, { backoffBaseMs: 50, backoffMaxMs: 200 });
  const disc = second.discovery!;
  t.equal(disc.stats.stateFile, 'loaded');
  const live = second.pool.backends.map((b) => b.id).sort();
  t.same(live, [...seeds, `127.0.0.2:${p}`, `127.0.0.3:${p}`].sort(), 'the persisted API servers are in the pool from the start');
  await until(() => disc.stats.lists >= 1, 'a LIST succeeded through the persisted API servers', 10000);
  t.ok(cluster.requests.filter((q) => q.kind === 'list').length > listsBefore);
  t.ok(disc.stats.lastSuccessTime > 0);
  t.equal(disc.stats.listSize, 2);
  const c = apiClient(t, second);
  t.match(await c.whoami(), /^127\.0\.0\.[23]$/, 'clients reach an API server although every seed is down');
  await c.client.close();
});

// ---- Hostile discovery data (issue 19, finding 6) ----

t.test('address policy: every spelling is canonicalised; own listeners, local, multicast, broadcast, unspecified refused', async (t) => {
  const canon: Array<[string, string]> = [
    ['::ffff:127.0.0.1', '127.0.0.1'],
    ['::ffff:7f00:1', '127.0.0.1'],
    ['0:0:0:0:0:ffff:7f00:1', '127.0.0.1'],
    ['::FFFF:A9FE:A9FE', '169.254.169.254'],
    ['FD00:0:0::1', 'fd00::1'],
    ['fe80::1%eth0', 'fe80::1%eth0'],
    ['10.0.0.1', '10.0.0.1'],
    ['API.Example', 'api.example'],
  ];
  for (const [input, want] of canon) t.equal(canonicalHost(input), want, `${input} → ${want}`);
  const own = [parseAddress('127.0.0.1:6443'), parseAddress('127.0.0.1:9643')];
  const strict = new AddressPolicy({ own, localAddresses: () => ['10.1.2.3'] });
  const local = new AddressPolicy({ own, allowLocal: true, localAddresses: () => ['10.1.2.3'] });
  const wildcard = new AddressPolicy({ own: [parseAddress('0.0.0.0:6443')], allowLocal: true, localAddresses: () => ['10.1.2.3', '::ffff:10.1.2.4'] });
  const cases: Array<{ addr: string; strict: RegExp | undefined; local: RegExp | undefined; wildcard?: RegExp | undefined }> = [
    { addr: '10.0.0.1:6443', strict: undefined, local: undefined, wildcard: undefined },
    { addr: '[fd00::1]:6443', strict: undefined, local: undefined },
    { addr: '127.0.0.1:6443', strict: /own listener/, local: /own listener/, wildcard: /own listener/ },
    { addr: '[::ffff:127.0.0.1]:6443', strict: /127\.0\.0\.1:6443 is apilb's own listener/, local: /own listener/, wildcard: /own listener/ },
    { addr: '[::ffff:7f00:1]:6443', strict: /own listener/, local: /own listener/ },
    { addr: '[::ffff:7f00:1]:9643', strict: /own listener/, local: /own listener/ },
    { addr: '127.0.0.5:6443', strict: /loopback address \(allow with --discovery-allow-local\)/, local: undefined, wildcard: /own listener/ },
    { addr: '127.0.0.1:2379', strict: /loopback/, local: undefined },
    { addr: '[::1]:6443', strict: /loopback/, local: undefined, wildcard: /own listener/ },
    { addr: '169.254.169.254:80', strict: /link-local/, local: undefined },
    { addr: '[::ffff:a9fe:a9fe]:80', strict: /169\.254\.169\.254:80 is a link-local/, local: undefined },
    { addr: '[fe80::1]:6443', strict: /link-local/, local: undefined },
    { addr: '224.0.0.1:6443', strict: /multicast/, local: /multicast/ },
    { addr: '[ff02::1]:6443', strict: /multicast/, local: /multicast/ },
    { addr: '255.255.255.255:6443', strict: /broadcast/, local: /broadcast/ },
    { addr: '0.0.0.0:6443', strict: /own listener|unspecified/, local: /own listener|unspecified/ },
    { addr: '0.0.0.0:443', strict: /an unspecified address/, local: /unspecified/ },
    { addr: '[::]:443', strict: /unspecified/, local: /unspecified/ },
    { addr: '10.1.2.3:6443', strict: undefined, local: undefined, wildcard: /own listener/ },
    { addr: '10.1.2.4:6443', strict: undefined, local: undefined, wildcard: /own listener/ },
    { addr: '10.1.2.3:443', strict: undefined, local: undefined, wildcard: undefined },
  ];
  for (const c of cases) {
    const a = parseAddress(c.addr);
    const check = (p: AddressPolicy, want: RegExp | undefined, name: string) => {
      const why = p.refusal(a);
      if (want) t.match(why, want, `${c.addr} (${name}): refused: ${why}`);
      else t.equal(why, undefined, `${c.addr} (${name}): accepted`);
    };
    check(strict, c.strict, 'strict');
    check(local, c.local, 'allow-local');
    if ('wildcard' in c) check(wildcard, c.wildcard, 'wildcard listener');
  }
});

t.test('hostile EndpointSlices never reach the pool (the only source of dials): canonical spellings, metadata, multicast', async (t) => {
  const own = parseAddress('127.0.0.1:6443');
  const r = await rig(t, {
    allowLocal: false,
    exclude: [own, parseAddress('127.0.0.1:9643')],
    setup: (c) => {
      c.setSlice('kubernetes', eps('10.0.0.1'), 6443);
      c.setSlice('metadata', eps('169.254.169.254', '127.0.0.5', '224.0.0.1', '255.255.255.255', '0.0.0.0'), 6443);
      c.setSlice('self-v6', eps('::ffff:127.0.0.1', '::ffff:7f00:1', '0:0:0:0:0:ffff:7f00:1', 'fe80::1', 'ff02::1', '::'), 6443, 'IPv6');
      c.setSlice('admin', eps('::ffff:7f00:1'), 9643, 'IPv6');
    },
  });
  await until(() => r.d.stats.applied === 1, 'applied');
  t.same(r.discovered(), ['10.0.0.1:6443'], 'only the ordinary address is used');
  t.same(r.live(), ['10.0.0.1:6443', '10.99.0.1:6443'], 'the pool holds the seed and that one address, nothing else');
  const warn = r.lines.find((l) => l.event === 'discovery_refused');
  t.ok(warn, 'refusals are logged at warn');
  const refused = (warn?.refused as string[]) ?? [];
  for (const want of [
    /169\.254\.169\.254:6443 is a link-local/,
    /127\.0\.0\.5:6443 is a loopback/,
    /224\.0\.0\.1:6443 is a multicast/,
    /255\.255\.255\.255:6443 is a broadcast/,
    /0\.0\.0\.0:6443 is an unspecified/,
    /^127\.0\.0\.1:6443 is apilb's own listener$/,
    /127\.0\.0\.1:9643 is apilb's own listener/,
    /\[fe80::1\]:6443 is a link-local/,
    /\[ff02::1\]:6443 is a multicast/,
    /\[::\]:6443 is an unspecified/,
  ]) {
    t.ok(
      refused.some((x) => want.test(x)),
      `refused: ${want}`,
    );
  }
});

t.test('a watch answered 410 every time backs off exponentially instead of re-listing in a hot loop', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2'), port) });
  r.cluster.watchStatus = 410;
  await until(() => r.d.stats.state === 'backoff', 'backing off after the second 410 in a row');
  const count = () => r.cluster.requests.length;
  t.equal(count(), 4, 'LIST, WATCH (410), LIST at once, WATCH (410): then wait');
  t.equal(r.d.stats.relists, 2);
  // backoffBaseMs 1000, random 0.5 (no jitter): 2 s, 4 s, 8 s ... capped at 30 s.
  const delays = [2000, 4000, 8000, 16000, 30000, 30000];
  for (const [i, ms] of delays.entries()) {
    r.clock.advance(ms - 1);
    await new Promise((res) => setImmediate(res));
    t.equal(count(), 4 + 2 * i, `nothing before ${ms} ms`);
    r.clock.advance(1);
    await until(() => count() === 6 + 2 * i && r.d.stats.state === 'backoff', `re-list #${i + 3} after ${ms} ms`);
  }
  t.equal(r.cluster.requests.filter((q) => q.kind === 'list').length, 8, '8 LISTs in 92 s of 410s, not thousands');
  // A working watch ends the streak: the next 410 re-lists at once again.
  r.cluster.watchStatus = 0;
  r.clock.advance(30_000);
  await until(() => r.cluster.openWatches === 1, 'watching again');
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), r.port);
  await r.caughtUp();
  r.cluster.goneAsEvent = true;
  r.cluster.expireWatches();
  await until(() => r.cluster.openWatches === 1, 're-listed at once after a single 410');
});

t.test('a 20 KB resourceVersion (431 on every watch) leads to a re-list with backoff, not a watch retried forever', async (t) => {
  const r = await rig(t, { setup: (c, port) => c.setSlice('kubernetes', eps('127.0.0.2'), port) });
  r.cluster.listResourceVersion = '9'.repeat(20_000);
  await until(() => r.d.stats.state === 'backoff', 'backing off after the refused watch');
  t.equal(r.d.stats.lists, 1);
  t.match(r.d.stats.lastError, /WATCH: HTTP 431/);
  t.same(r.discovered(), [`127.0.0.2:${r.port}`], 'the LIST itself was applied');
  r.clock.advance(1000);
  await until(() => r.d.stats.lists === 2, 'the next attempt is a LIST');
  await until(() => r.d.stats.state === 'backoff', 'backing off again');
  r.cluster.listResourceVersion = undefined;
  r.clock.advance(2000);
  await until(() => r.d.stats.lists === 3 && r.cluster.openWatches === 1, 'watching once the resourceVersion is sane');
});

/**
 * A dialer that records every backend apilb dials and connects only to `allowed` ones; any other is refused
 * without a connect, so a test can never reach an address it did not mean to (nor loop into apilb itself).
 */
function recordingDialer(allowed: ReadonlySet<string>): { dial: Dialer; dialed: string[] } {
  const dialed: string[] = [];
  const dial: Dialer = (backend, onread) => {
    dialed.push(backend.id);
    if (!allowed.has(backend.id)) {
      const s = new NetSocket();
      process.nextTick(() => s.destroy(Object.assign(new Error('refused by the test dialer'), { code: 'ECONNREFUSED' })));
      return s;
    }
    return netConnect({ host: backend.address.host, port: backend.address.port, allowHalfOpen: true, ...(onread ? { onread } : {}) });
  };
  return { dial, dialed };
}

t.test('daemon: EndpointSlices naming apilb itself in any spelling never reach the dialer', async (t) => {
  const cluster = new FakeCluster();
  const standIns = await startApiStandIns(cluster, ['127.0.0.2', '127.0.0.3'], { tls: serverCert, ca: ca.cert });
  t.teardown(() => Promise.all(standIns.map((s) => s.close())));
  const p = standIns[0]!.port;
  cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), p);
  const legit = new Set([`127.0.0.2:${p}`, `127.0.0.3:${p}`]);
  const { dial, dialed } = recordingDialer(legit);
  const d = await daemon(t, [`127.0.0.2:${p}`], writeKubeconfig(t), tmp(t, 'apilb-state-'), { debounceMs: 0 }, { dial });
  const own = (d.listeners[0]!.address() as { port: number }).port;
  const admin = parseAddress(d.adminAddress).port;
  await until(() => d.discovery!.stats.applied === 1 && cluster.openWatches === 1, 'watching');
  cluster.setSlice('self-v4', eps('127.0.0.1'), own);
  cluster.setSlice('self-v6', eps('::ffff:127.0.0.1', '::ffff:7f00:1', '0:0:0:0:0:ffff:7f00:1'), own, 'IPv6');
  cluster.setSlice('admin', eps('::ffff:127.0.0.1'), admin, 'IPv6');
  cluster.setSlice('wildcard', eps('0.0.0.0'), own);
  await until(() => d.discovery!.stats.resourceVersion === cluster.resourceVersion, 'caught up');
  for (let i = 0; i < 10; i++) t.match(await apiClient(t, d).whoami(), /127\.0\.0\.[23]/, 'answered by a stand-in');
  t.same([...new Set(dialed)].sort(), [...legit].sort(), 'only the two stand-ins were ever dialed');
  t.same(d.pool.backends.map((b) => b.id).sort(), [...legit].sort(), 'and only they are in the pool');
  t.ok(d.proxy.counters.accepted < 40, `no loop: ${d.proxy.counters.accepted} connections accepted for 10 requests and discovery`);
});

t.test('state file: a symlink planted at the temporary name is never followed (exclusive creation)', async (t) => {
  const dir = tmp(t, 'apilb-state-');
  const outside = tmp(t, 'apilb-victim-');
  const victim = join(outside, 'victim');
  writeFileSync(victim, 'precious\n');
  // The temporary name is predictable (pid and a per-process sequence): plant links for the next 200 writes.
  for (let seq = 1; seq <= 200; seq++) symlinkSync(victim, join(dir, `.endpoints.json.${process.pid}.${seq}.tmp`));
  await saveStateFile(dir, [parseAddress('10.0.0.7:6443')], caFingerprints(ca.cert));
  t.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the symlink target is untouched');
  const r = loadStateFile(dir, caFingerprints(ca.cert));
  t.equal(r.result, 'loaded', 'the state file itself was written');
  t.notOk(lstatSync(join(dir, 'endpoints.json')).isSymbolicLink(), 'endpoints.json is a regular file, not the planted link');
});

t.test('daemon: a DNS name or seed naming apilb itself in another spelling is never dialed (no loop)', async (t) => {
  const backend = createNetServer((s: Socket) => s.pipe(s));
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => backend.close(() => r())));
  const good = `127.0.0.1:${(backend.address() as { port: number }).port}`;
  const listener = createListener();
  await bindListener(listener, { host: '127.0.0.1', port: 0 });
  const own = (listener.address() as { port: number }).port;
  const { dial, dialed } = recordingDialer(new Set([good]));
  const config = resolveConfig({
    flags: {
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      backends: [good, `[::ffff:7f00:1]:${own}`, `self.example:${own}`],
      healthCheckMode: 'tcp',
      logLevel: 'silent',
    },
    env: {},
  });
  const { logger, lines } = captureLogger('info');
  const d = await startDaemon(config, { logger, dial, listeners: [listener], resolver: async () => [{ address: '::ffff:127.0.0.1', family: 6 }] });
  t.teardown(() => d.close(0));
  t.same(
    d.pool.backends.map((b) => b.id),
    [good],
    'only the real backend is in the pool',
  );
  t.match(String(lines.find((l) => l.event === 'backend_is_self')?.msg), new RegExp(`127\\.0\\.0\\.1:${own}`), 'said so');
  for (let i = 0; i < 5; i++) {
    const c = await dialPort(own);
    c.write('ping');
    t.equal((await readBytes(c, 4)).toString(), 'ping');
    c.destroy();
  }
  t.same([...new Set(dialed)], [good], 'only the real backend was ever dialed');
});

t.test('TLS rotation: updateTls applies a new CA and client certificate from the next request, without a restart', async (t) => {
  // The API server's certificate now comes from another CA (the cluster's CA was rotated): the old trust fails.
  const { cluster, set, clock, d } = await discoveryAgainstOtherCa(t);
  await until(() => d.stats.errors === 1, 'the TLS failure with the old CA');
  // Unusable material is refused as a whole; the old stays.
  t.throws(() => d.updateTls({ ca: 'not a certificate' }), { code: 'APILB_ERR_TLS_CONFIG' }, 'a CA without a certificate is refused');
  t.throws(() => d.updateTls({ ca: otherCa.cert, cert: clientCert.cert }), /needs both cert and key/, 'a certificate without its key is refused');
  // The rotated files (a bundle with both CAs, as during a rotation, and a renewed client certificate) apply
  // from the next request on.
  const renewed = ca.client('system:node:node-1-renewed', 'system:nodes');
  d.updateTls({ ca: ca.cert + otherCa.cert, cert: renewed.cert, key: renewed.key });
  clock.advance(60_000); // past the backoff
  await until(() => d.stats.lastSuccessTime > 0, 'a LIST with the new CA');
  t.same(
    cluster.requests.map((q) => q.cn),
    cluster.requests.map(() => 'system:node:node-1-renewed'),
    'every request that reached the API server came with the renewed client certificate',
  );
  t.ok(cluster.requests.length >= 1);
  await until(() => (set.get(ENDPOINTSLICES_SOURCE) ?? []).length === 1, 'the list is applied');
});

t.test('TLS rotation: the watch in flight keeps its connection (no re-list); the old client closes after it', async (t) => {
  const r = await rig(t);
  r.cluster.setSlice('kubernetes', eps('127.0.0.2'), r.port);
  await r.caughtUp();
  // Server side: the watch request has arrived (the client's state says 'watching' a moment before that).
  await until(() => r.cluster.openWatches === 1, 'a watch open at the API server');
  const relists = r.d.stats.relists;
  const lists = r.cluster.requests.filter((q) => q.kind === 'list').length;
  const watches = r.cluster.requests.filter((q) => q.kind === 'watch').length;
  r.d.updateTls({ ca: ca.cert, cert: clientCert.cert, key: clientCert.key });
  r.cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), r.port);
  await r.caughtUp();
  t.equal(r.d.stats.relists, relists, 'no re-list');
  t.equal(r.cluster.requests.filter((q) => q.kind === 'list').length, lists, 'no new LIST');
  t.equal(r.cluster.requests.filter((q) => q.kind === 'watch').length, watches, 'no new WATCH: the change came through the watch in flight');
});

t.test('daemon: a renewed client certificate in the kubeconfig reaches discovery too (its next request presents it)', async (t) => {
  const cluster = new FakeCluster();
  const standIns = await startApiStandIns(cluster, ['127.0.0.2', '127.0.0.3'], { tls: serverCert, ca: ca.cert });
  t.teardown(() => Promise.all(standIns.map((s) => s.close())));
  const p = standIns[0]!.port;
  cluster.setSlice('kubernetes', eps('127.0.0.2', '127.0.0.3'), p);
  // kubelet's layout: the kubeconfig names a cert/key pair that kubelet rewrites in place when it renews.
  const dir = tmp(t, 'apilb-pki-');
  const certFile = join(dir, 'kubelet-client.crt');
  const keyFile = join(dir, 'kubelet-client.key');
  writeFileSync(certFile, clientCert.cert);
  writeFileSync(keyFile, clientCert.key);
  const kubeconfig = join(dir, 'kubelet.conf');
  writeFileSync(kubeconfig, readFileSync(writeKubeconfig(t), 'utf8').replace(clientCert.certFile, certFile).replace(clientCert.keyFile, keyFile));
  const d = await daemon(t, [`127.0.0.2:${p}`], kubeconfig, tmp(t, 'apilb-state-'));
  await until(() => d.discovery!.stats.applied === 1 && cluster.openWatches === 1, 'first list applied, watching', 5000);
  t.ok(
    cluster.requests.every((q) => q.cn === 'system:node:node-1'),
    'the first identity',
  );
  const renewed = ca.client('system:node:node-1-renewed', 'system:nodes');
  // Atomic replacement, key first: a reader never sees a certificate without its key.
  writeFileSync(`${keyFile}.tmp`, renewed.key);
  renameSync(`${keyFile}.tmp`, keyFile);
  writeFileSync(`${certFile}.tmp`, renewed.cert);
  renameSync(`${certFile}.tmp`, certFile);
  await until(() => d.credentials.material.cert === renewed.cert, 'the credentials watcher read the renewed pair', 10_000);
  const before = cluster.requests.length;
  cluster.endWatches(); // the API server ends the watch (as it does every few minutes): discovery re-watches
  await until(() => cluster.requests.length > before, 'the next discovery request', 10_000);
  t.same(
    cluster.requests.slice(before).map((q) => q.cn),
    cluster.requests.slice(before).map(() => 'system:node:node-1-renewed'),
    'the requests after the renewal present the renewed certificate',
  );
});
