/**
 * DNS-named backends: one backend per A/AAAA record, re-resolved on a jittered timer, last known set kept on
 * failure or empty answers, the name itself as a fallback when the first resolution fails, and the daemon
 * wiring (names resolved before binding, IP literals in the static source).
 */
import t, { type Test } from 'tap';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { BackendSet } from '../src/discovery/backend-set.js';
import { DnsDiscovery, isDnsName, type DnsErrorEvent, type DnsStaleEvent, type ResolvedAddress } from '../src/discovery/dns.js';
import { resolveConfig } from '../src/config/config.js';
import { parseAddress } from '../src/config/values.js';
import { Daemon } from '../src/daemon.js';
import { createLogger } from '../src/logging.js';
import { Pool } from '../src/pool/pool.js';
import { OptionError } from '../src/errors.js';
import { FakeClock } from './support/fake-clock.js';
import { dial, echoServer, readBytes, until } from './support/net.js';

/** A resolver whose answers the test sets per host; `calls` counts lookups. */
function scriptedResolver() {
  const answers = new Map<string, string[] | Error>();
  const calls: string[] = [];
  const resolver = async (host: string): Promise<ResolvedAddress[]> => {
    calls.push(host);
    const a = answers.get(host);
    if (a instanceof Error) throw a;
    if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return a.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  return { answers, calls, resolver };
}

function setup(opts: { names?: string[]; serverName?: string; random?: () => number } = {}) {
  const clock = new FakeClock();
  const pool = new Pool({ clock });
  const backendSet = new BackendSet(pool);
  const r = scriptedResolver();
  const dns = new DnsDiscovery({
    backendSet,
    names: (opts.names ?? ['api.test:6443']).map((n) => parseAddress(n)),
    refresh: 30_000,
    resolver: r.resolver,
    clock,
    random: opts.random ?? (() => 0.5),
    ...(opts.serverName ? { serverName: opts.serverName } : {}),
  });
  const ids = () =>
    pool.backends
      .filter((b) => !b.removed)
      .map((b) => b.id)
      .sort();
  return { clock, pool, backendSet, dns, ids, ...r };
}

/** Lets resolver promises settle (they resolve on the microtask queue; no timers involved). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

t.test('a name expands to one backend per A/AAAA record, serverName = the name', async (tt) => {
  const s = setup();
  s.backendSet.set('static', [{ address: parseAddress('10.0.0.9:6443') }]);
  s.answers.set('api.test', ['127.0.0.1', '::1', '127.0.0.1']);
  await s.dns.start();
  tt.teardown(() => s.dns.close());
  tt.same(s.ids(), ['10.0.0.9:6443', '127.0.0.1:6443', '[::1]:6443'], 'duplicates collapsed, static source kept');
  const b = s.pool.get('[::1]:6443')!;
  tt.equal(b.serverName, 'api.test', 'TLS verification uses the DNS name');
  tt.equal(b.source, 'dns');
  tt.same(s.backendSet.names().sort(), ['dns:api.test:6443', 'static']);
  tt.equal(s.clock.pending, 1, 'one refresh timer per name');
});

t.test('--tls-server-name overrides the DNS name for verification', async (tt) => {
  const s = setup({ serverName: 'kubernetes' });
  s.answers.set('api.test', ['127.0.0.1']);
  await s.dns.start();
  tt.teardown(() => s.dns.close());
  tt.equal(s.pool.get('127.0.0.1:6443')!.serverName, 'kubernetes');
});

t.test('re-resolved every refresh (jittered): records added and removed, others untouched', async (tt) => {
  const s = setup({ random: () => 1 });
  s.answers.set('api.test', ['127.0.0.1', '127.0.0.2']);
  await s.dns.start();
  tt.teardown(() => s.dns.close());
  const kept = s.pool.get('127.0.0.1:6443')!;
  kept.activeConnections = 1; // a live connection: it must stay the same object
  s.answers.set('api.test', ['127.0.0.1', '127.0.0.3']);
  s.clock.advance(32_999);
  await settle();
  tt.equal(s.calls.length, 1, 'not before refresh + 10% jitter (random 1 → 33 s)');
  s.clock.advance(1);
  await settle();
  tt.equal(s.calls.length, 2, 're-resolved at 33 s');
  tt.same(s.ids(), ['127.0.0.1:6443', '127.0.0.3:6443']);
  tt.equal(s.pool.get('127.0.0.1:6443'), kept, 'an unchanged record keeps its backend');
  tt.equal(s.pool.get('127.0.0.2:6443'), undefined, 'a gone record is removed (no connections: deleted at once)');

  const low = setup({ random: () => 0 });
  low.answers.set('api.test', ['127.0.0.1']);
  await low.dns.start();
  tt.teardown(() => low.dns.close());
  low.clock.advance(27_000);
  await settle();
  tt.equal(low.calls.length, 2, 'random 0 → refresh at 27 s (−10%)');
});

t.test('failed or empty resolution keeps the last known set, counted, never zero', async (tt) => {
  const s = setup();
  const errors: DnsErrorEvent[] = [];
  const stale: DnsStaleEvent[] = [];
  s.dns.on('error', (e) => errors.push(e));
  s.dns.on('stale', (e) => stale.push(e));
  s.answers.set('api.test', ['127.0.0.1', '127.0.0.2']);
  await s.dns.start();
  tt.teardown(() => s.dns.close());

  s.answers.set('api.test', Object.assign(new Error('queryA ETIMEOUT api.test'), { code: 'ETIMEOUT' }));
  await s.dns.refreshAll();
  tt.same(s.ids(), ['127.0.0.1:6443', '127.0.0.2:6443'], 'kept after a failure');
  tt.equal(errors.length, 1);
  tt.match(errors[0], { name: 'api.test:6443', kept: 2, fallback: false, error: { message: 'queryA ETIMEOUT api.test' } });

  s.answers.set('api.test', []);
  await s.dns.refreshAll();
  tt.same(s.ids(), ['127.0.0.1:6443', '127.0.0.2:6443'], 'kept after an empty answer');
  tt.same(stale, [{ name: 'api.test:6443', kept: 2, fallback: false }]);
  tt.equal(s.dns.failures.get('api.test:6443'), 2, 'both counted');
  tt.equal(s.clock.pending, 1, 'still refreshing');

  s.answers.set('api.test', ['127.0.0.2']);
  await s.dns.refreshAll();
  tt.same(s.ids(), ['127.0.0.2:6443'], 'recovers on the next good answer');
});

t.test('first resolution fails: the name itself is the backend until a refresh succeeds', async (tt) => {
  const s = setup();
  const errors: DnsErrorEvent[] = [];
  s.dns.on('error', (e) => errors.push(e));
  await s.dns.start();
  tt.teardown(() => s.dns.close());
  tt.same(s.ids(), ['api.test:6443'], 'net.connect resolves it at dial time');
  tt.equal(s.pool.get('api.test:6443')!.serverName, 'api.test');
  tt.equal(errors[0]?.fallback, true);
  await s.dns.refreshAll();
  tt.same(s.ids(), ['api.test:6443'], 'still the name after another failure');
  s.answers.set('api.test', ['127.0.0.1', '::1']);
  await s.dns.refreshAll();
  tt.same(s.ids(), ['127.0.0.1:6443', '[::1]:6443'], 'the records replace the name');
});

t.test("no 'error' listener: a failure does not throw", async (tt) => {
  const s = setup();
  await s.dns.start();
  tt.teardown(() => s.dns.close());
  tt.same(s.ids(), ['api.test:6443']);
  tt.equal(s.dns.failures.get('api.test:6443'), 1);
});

t.test("update(): names added and removed, refresh changed; a dropped name's late answer is ignored", async (tt) => {
  const s = setup({ names: ['a.test:6443', 'b.test:6443'] });
  s.answers.set('a.test', ['127.0.0.1']);
  s.answers.set('b.test', ['127.0.0.2']);
  s.answers.set('c.test', ['127.0.0.3']);
  await s.dns.start();
  tt.teardown(() => s.dns.close());
  tt.same(s.ids(), ['127.0.0.1:6443', '127.0.0.2:6443']);
  await s.dns.update([parseAddress('a.test:6443'), parseAddress('c.test:6443')], { refresh: 5000 });
  tt.same(s.ids(), ['127.0.0.1:6443', '127.0.0.3:6443']);
  tt.same(s.dns.sources.sort(), ['a.test:6443', 'c.test:6443']);
  tt.equal(s.dns.refresh, 5000);

  // A lookup still running when its name is dropped must not bring the name back.
  let release: ((v: ResolvedAddress[]) => void) | undefined;
  const slow = new DnsDiscovery({
    backendSet: s.backendSet,
    names: [parseAddress('slow.test:6443')],
    refresh: 30_000,
    clock: s.clock,
    resolver: () => new Promise((r) => (release = r)),
  });
  const started = slow.start();
  await slow.update([]);
  release!([{ address: '127.0.0.9', family: 4 }]);
  await started;
  slow.close();
  tt.equal(s.backendSet.get('dns:slow.test:6443'), undefined, 'late answer discarded');
  tt.equal(s.pool.get('127.0.0.9:6443'), undefined);
});

t.test('options are validated', async (tt) => {
  const pool = new Pool();
  const backendSet = new BackendSet(pool);
  tt.throws(() => new DnsDiscovery({ backendSet, names: [parseAddress('10.0.0.1:6443')], refresh: 1000 }), OptionError);
  tt.throws(() => new DnsDiscovery({ backendSet, names: [parseAddress('10.0.0.1:6443')], refresh: 1000 }), {
    message: 'option names "10.0.0.1:6443" is an IP address, not a DNS name',
  });
  tt.throws(() => new DnsDiscovery({ backendSet, names: [], refresh: 0 }), { message: 'option refresh must be a number of ms > 0, got 0' });
  tt.equal(isDnsName(parseAddress('[::1]:6443')), false);
  tt.equal(isDnsName(parseAddress('localhost:6443')), true);
});

t.test('the real resolver: localhost expands to its loopback addresses', async (tt) => {
  const pool = new Pool();
  const backendSet = new BackendSet(pool);
  const dns = new DnsDiscovery({ backendSet, names: [parseAddress('localhost:6443')], refresh: 30_000 });
  await dns.start();
  tt.teardown(() => dns.close());
  const ids = pool.backends.map((b) => b.id);
  tt.ok(ids.includes('127.0.0.1:6443'), `127.0.0.1 among ${ids.join(', ')}`);
  tt.ok(
    ids.every((id) => id === '127.0.0.1:6443' || id === '[::1]:6443'),
    'only loopback addresses (::1 when /etc/hosts lists it)',
  );
  tt.ok(pool.backends.every((b) => b.serverName === 'localhost' && b.source === 'dns'));
});

/** Echo-with-name servers on 127.0.0.1 and ::1 with the same port (a DNS name has one port for all records). */
async function dualStackBackends(tt: Test): Promise<{ port: number; names: string[] }> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const v4 = await echoServer('v4');
    const v6 = createServer({ allowHalfOpen: true }, (s: Socket) => {
      s.on('error', () => {});
      s.write('v6\n');
      s.pipe(s);
    });
    const ok = await new Promise<boolean>((resolve) => {
      v6.once('error', () => resolve(false));
      v6.listen(v4.port, '::1', () => resolve(true));
    });
    if (!ok) {
      await v4.close();
      continue;
    }
    tt.teardown(() => v4.close());
    tt.teardown(() => closeServer(v6));
    return { port: v4.port, names: ['v4', 'v6'] };
  }
  throw new Error('could not bind the same port on 127.0.0.1 and ::1');
}

function closeServer(s: Server): Promise<void> {
  return new Promise((resolve) => s.close(() => resolve()));
}

t.test('daemon: a DNS backend resolved before binding, balanced across its records', async (tt) => {
  const { port } = await dualStackBackends(tt);
  const staticBackend = await echoServer('static');
  tt.teardown(() => staticBackend.close());
  const r = scriptedResolver();
  r.answers.set('api.test', ['127.0.0.1', '::1']);
  const config = resolveConfig({
    flags: {
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      backends: [`api.test:${port}`, staticBackend.address],
      healthCheckMode: 'tcp',
      logLevel: 'silent',
    },
  });
  const d = new Daemon(config, { resolver: r.resolver, logger: createLogger('silent') });
  tt.same(
    d.backendSet.get('static')!.map((s) => `${s.address.host}:${s.address.port}`),
    [staticBackend.address],
    'IP literals are the static source',
  );
  await d.start();
  tt.teardown(() => d.close(0));
  tt.same(d.pool.backends.map((b) => b.id).sort(), [`127.0.0.1:${port}`, staticBackend.address, `[::1]:${port}`].sort());
  const lport = (d.listeners[0]!.address() as AddressInfo).port;
  const seen = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const s = await dial(lport);
    seen.add((await readBytes(s, 3)).toString().trim());
    s.destroy();
  }
  tt.same([...seen].sort(), ['static', 'v4', 'v6'], 'round-robin reaches both records and the static backend');
});

t.test('daemon: first resolution fails → the name is dialled by net.connect', async (tt) => {
  const backend = await echoServer('byname');
  tt.teardown(() => backend.close());
  const config = resolveConfig({
    flags: { listen: ['127.0.0.1:0'], adminListen: '127.0.0.1:0', backends: [`localhost:${backend.port}`], healthCheckMode: 'tcp', logLevel: 'silent' },
  });
  const failing = async (): Promise<ResolvedAddress[]> => {
    throw Object.assign(new Error('getaddrinfo EAI_AGAIN localhost'), { code: 'EAI_AGAIN' });
  };
  const d = new Daemon(config, { resolver: failing, logger: createLogger('silent') });
  await d.start();
  tt.teardown(() => d.close(0));
  tt.same(
    d.pool.backends.map((b) => b.id),
    [`localhost:${backend.port}`],
  );
  tt.equal(d.dnsFailures.get(`localhost:${backend.port}`), 1, 'counted');
  const s = await dial((d.listeners[0]!.address() as AddressInfo).port);
  tt.equal((await readBytes(s, 7)).toString(), 'byname\n', 'connected through the name');
  s.destroy();
  await until(() => backend.sockets.size <= 1, 'proxied socket closed');
});
