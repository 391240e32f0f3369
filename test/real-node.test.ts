/**
 * apilb under a real systemd (issue 14): a Debian 12 node booted with systemd 252 as PID 1 (systemd-nspawn, private
 * network), apilb's .deb installed the way an operator does (test/support/real-node.ts: installApilb), three TLS API-server
 * stand-ins as units inside, kubelet-like client load inside. Checks, in order on one node:
 *
 * 1. the shipped units start `active (running)` with the minimal config (backends + caFile) under the full sandbox,
 *    READY=1 after the first health round, kubelet (a stub with the shipped drop-in) only after READY;
 * 2. traffic through 127.0.0.1:6443 and [::1]:6443 reaches the stand-ins with the client certificate intact;
 * 3. `systemctl restart` and `systemctl reload` with 20 long-lived watches and a new connection every 50 ms:
 *    0 failed, no new connection waits 2 s, every watch re-established within 3 s; reload keeps every watch;
 * 4. STATUS= follows health changes and reloads (a rejected reload shows in `systemctl status`);
 * 5. the watchdog restarts a SIGSTOPped apilb;
 * 6. a control-plane node (kube-apiserver stand-in on *:6443 + its static pod manifest): after a reboot the API
 *    server holds 6443 and apilb is skipped, not restart-looping; the documented override moves apilb to 6444.
 *
 * Needs root, systemd-nspawn and debootstrap (npm test's pretest installs them; in CI APILB_REQUIRE_REAL_NODE=1
 * turns a missing prerequisite into a failure instead of a skip). The Debian root filesystem is cached in /var/cache/apilb-realnode.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { createTestCA } from '../src/demo/test-ca.js';
import { waitFor } from './support/index.js';
import { installApilb, RealNode, whyNoRealNode, type Installed } from './support/real-node.js';
import type { LoadReport } from './support/real-node-load.js';

// Boot, install, a dozen checks and a reboot: minutes, not tap's default 120 s.
t.setTimeout(15 * 60_000);

const REPO = fileURLToPath(new URL('..', import.meta.url));
const BACKEND_PORTS = [7001, 7002, 7003];
const MINIMAL_CONFIG = `backends: [${BACKEND_PORTS.map((p) => `"127.0.0.1:${p}"`).join(', ')}]\ncaFile: /etc/kubernetes/pki/ca.crt\n`;
const CLIENT = { ca: '/srv/client/ca.crt', cert: '/srv/client/client.crt', key: '/srv/client/client.key' };
const MANIFEST = '/etc/kubernetes/manifests/kube-apiserver.yaml';

const why = whyNoRealNode();

t.test('apilb under a real systemd', { skip: why && !process.env.APILB_REQUIRE_REAL_NODE ? `cannot boot a real node here: ${why}` : false }, async (t) => {
  if (why) {
    t.fail(`APILB_REQUIRE_REAL_NODE is set but a real node cannot be booted: ${why}`);
    return;
  }
  const began = Date.now();
  const ca = createTestCA();
  t.teardown(() => ca.remove());
  const server = ca.server();
  const client = ca.client('system:node:node-1', 'system:nodes');
  const node = await RealNode.create(`/var/tmp/apilb-realnode-${process.pid}`, `apilb-rn-${process.pid}`, (l) => t.comment(l));
  // APILB_REAL_NODE_KEEP=1 leaves the node running for a look inside (nsenter -t PID -a).
  t.teardown(() => (process.env.APILB_REAL_NODE_KEEP ? t.comment(`kept: ${node.dir}, PID 1 = ${node.pid}`) : node.destroy()));
  const app = await installApilb(node, REPO);
  t.comment(`node booted and the .deb built and installed after ${Date.now() - began} ms`);

  node.writeFile('/srv/ca/ca.crt', ca.cert);
  node.writeFile('/srv/ca/apiserver.crt', server.cert);
  node.writeFile('/srv/ca/apiserver.key', server.key, 0o600);
  node.writeFile('/etc/kubernetes/pki/ca.crt', ca.cert);
  node.writeFile(CLIENT.ca, ca.cert);
  node.writeFile(CLIENT.cert, client.cert);
  node.writeFile(CLIENT.key, client.key, 0o600);
  node.writeFile('/srv/load.mjs', transpileLoadScript());
  node.writeFile('/etc/systemd/system/apiserver@.service', standInUnit(app, '127.0.0.1', '%i', 'apiserver-%i'));
  // kubelet stand-in with the shipped drop-in (installed by installApilb): records what it saw of apilb at start.
  node.writeFile(
    '/etc/systemd/system/kubelet.service',
    [
      '[Unit]',
      'Description=kubelet stand-in',
      '[Service]',
      "ExecStart=/bin/sh -c 'systemctl show -p ActiveState -p SubState -p StatusText apilb.service > /run/kubelet-saw; exec sleep infinity'",
      '[Install]',
      'WantedBy=multi-user.target',
      '',
    ].join('\n'),
  );
  node.writeFile('/etc/apilb/apilb.yaml', MINIMAL_CONFIG);
  await node.run('systemctl daemon-reload');
  await node.run(`systemctl enable --now ${BACKEND_PORTS.map((p) => `apiserver@${p}`).join(' ')}`);
  await waitFor(async () => (await node.exec(`ss -Hltn | grep -c ':700[123] '`)).stdout.trim() === '3', {
    timeoutMs: 20_000,
    intervalMs: 100,
    what: 'stand-ins listening',
  });

  await t.test('starts with the minimal config under the full sandbox; kubelet starts after READY', async (t) => {
    // As docs/install.md says: enable both units; kubelet's start pulls apilb in (Wants=) and waits for READY=1.
    await node.run('systemctl enable apilb.socket apilb.service kubelet.service');
    const t0 = Date.now();
    await node.run('systemctl start kubelet.service', 90_000);
    t.comment(`systemctl start kubelet.service (pulling apilb in) took ${Date.now() - t0} ms`);
    t.equal(await node.show('apilb.service', 'ActiveState'), 'active');
    t.equal(await node.show('apilb.service', 'SubState'), 'running', 'active (running)');
    // The stand-in is Type=simple: `systemctl start` returns once it is forked, maybe before its shell wrote the file.
    const saw = await waitFor(
      async () => {
        const text = await node.run('cat /run/kubelet-saw 2>/dev/null || true');
        return text.includes('StatusText=') ? text : undefined;
      },
      { timeoutMs: 10_000, what: 'the kubelet stand-in wrote what it saw' },
    );
    t.match(saw, /ActiveState=active/, 'kubelet started only once apilb was active (Type=notify: after READY=1)');
    t.match(saw, /StatusText=serving 3\/3 backends up/, 'and READY=1 came after the first health round (all three checked up)');
    const journal = await node.run('journalctl -u apilb.service -o cat --no-pager');
    t.notMatch(journal, /unexpected error|uv_interface_addresses/, 'no interface-lookup crash under RestrictAddressFamilies (finding 1)');
    const pid = await node.show('apilb.service', 'MainPID');
    const status = await node.run(`cat /proc/${pid}/status`);
    t.match(status, /^CapEff:\s+0+$/m, 'no capabilities');
    t.match(status, /^Seccomp:\s+2$/m, 'seccomp filter on');
    t.match(status, /^NoNewPrivs:\s+1$/m);
    const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
    t.ok(uid >= 61184 && uid <= 65519, `runs as a dynamic user (uid ${uid} in systemd's DynamicUser range)`);
    t.match(
      await node.run(`cat /proc/${pid}/cmdline | tr '\\0' ' '`),
      /\/usr\/lib\/apilb\/node\/bin\/node --max-semi-space-size=1 \/usr\/lib\/apilb\/dist\/cli\.js run --config \/etc\/apilb\/apilb\.yaml/,
      "the bundled Node.js 24 with the launcher's V8 flag (issue 18)",
    );
    t.match(await node.run(`tr '\\0' '\\n' < /proc/${pid}/environ`), /^MALLOC_ARENA_MAX=2$/m, "the launcher's malloc setting");
    const backlog = (await node.run("ss -Hltn 'sport = :6443'"))
      .trim()
      .split('\n')
      .map((l) => Number(l.trim().split(/\s+/)[2]));
    t.same(backlog, [4096, 4096], "both sockets keep apilb.socket's Backlog=4096 after apilb adopted them (finding 4)");
  });

  await t.test('traffic through 127.0.0.1:6443 and [::1]:6443 keeps the client certificate', async (t) => {
    for (const host of ['127.0.0.1', '::1']) {
      const r = JSON.parse(await node.run(`${app.node} /srv/load.mjs '${JSON.stringify({ mode: 'probe', host, port: 6443, ...CLIENT })}'`)) as {
        status?: number;
        body?: string;
      };
      t.equal(r.status, 200, `${host}: GET /whoami through apilb`);
      t.match(JSON.parse(r.body ?? '{}'), { cn: 'system:node:node-1', o: ['system:nodes'] }, `${host}: the API server saw the client certificate`);
    }
  });

  await t.test('restart and reload under 20 watches and a new connection every 50 ms', async (t) => {
    const load = startLoad(node, app);
    t.teardown(() => load.stop());
    await waitFor(
      async () => {
        const r = await load.ask('peek');
        return r.streams.open === 20 && r.conns.ok >= 20;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: '20 watches open and requests flowing' },
    );
    await load.ask('report');

    const t0 = Date.now();
    await node.run('systemctl restart apilb.service', 60_000);
    const restartMs = Date.now() - t0;
    await waitFor(
      async () => {
        const r = await load.ask('peek');
        return r.streams.reestablished >= 20 && r.streams.pending === 0 && r.conns.attempted >= 40;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: 'every watch re-established after the restart' },
    );
    const restart = await load.ask('report');
    t.comment(`restart: systemctl restart ${restartMs} ms; ${JSON.stringify(restart)}`);
    t.comment(
      await node.run(
        'journalctl -u apilb.service -o short-precise --no-pager -n 40 | grep -E \'Stopping|Stopped|Starting|Started|signal|"started"|socket_activation\' | cut -c8-220',
      ),
    );
    t.equal(restart.conns.failed, 0, 'restart: no new connection failed');
    const restartWait = Math.max(restart.conns.slowestMs, restart.conns.oldestInFlightMs);
    t.ok(restartWait < 2000, `restart: slowest new connection ${restartWait} ms < 2 s`);
    t.ok(restart.streams.closed >= 20, 'restart: the old process closed the watches');
    t.ok(restart.streams.maxGapMs < 3000, `restart: every watch back within ${restart.streams.maxGapMs} ms < 3 s`);

    const reloadsBefore = await countLog(node, '"event":"reloaded"');
    node.writeFile('/etc/apilb/apilb.yaml', `${MINIMAL_CONFIG}healthCheckInterval: 3s\n`);
    await node.run('systemctl reload apilb.service');
    await waitFor(async () => (await countLog(node, '"event":"reloaded"')) > reloadsBefore, { timeoutMs: 20_000, intervalMs: 100, what: 'reload applied' });
    const before = (await load.ask('peek')).conns.attempted;
    await waitFor(async () => (await load.ask('peek')).conns.attempted >= before + 20, {
      timeoutMs: 20_000,
      intervalMs: 100,
      what: 'requests after the reload',
    });
    const reload = await load.ask('report');
    t.comment(`reload: ${JSON.stringify(reload)}`);
    t.equal(reload.conns.failed, 0, 'reload: no new connection failed');
    const reloadWait = Math.max(reload.conns.slowestMs, reload.conns.oldestInFlightMs);
    t.ok(reloadWait < 2000, `reload: slowest new connection ${reloadWait} ms < 2 s`);
    t.equal(reload.streams.closed, 0, 'reload: every watch stayed open');
    t.equal(reload.streams.open, 20);
    node.writeFile('/etc/apilb/apilb.yaml', MINIMAL_CONFIG);
    await node.run('systemctl reload apilb.service');
    // Finding 8: the STOPPING=1 helper dies with the cgroup's SIGTERM now and then; that is no error to log.
    t.notMatch(await node.run('journalctl -u apilb.service -o cat --no-pager'), /systemd_notify_failed/, 'no notify failure logged across the stops');
  });

  await t.test('systemctl status follows health and reloads (STATUS=)', async (t) => {
    const statusText = (): Promise<string> => node.show('apilb.service', 'StatusText');
    await waitFor(async () => (await statusText()) === 'serving 3/3 backends up', { timeoutMs: 20_000, intervalMs: 100, what: 'all up' });
    await node.run('systemctl stop apiserver@7002');
    await waitFor(async () => (await statusText()).startsWith('serving 2/3'), { timeoutMs: 20_000, intervalMs: 100, what: 'STATUS 2/3' });
    t.equal(await statusText(), 'serving 2/3 backends up', 'one stand-in down: 2/3');
    await node.run('systemctl start apiserver@7002');
    await waitFor(async () => (await statusText()).startsWith('serving 3/3'), { timeoutMs: 30_000, intervalMs: 100, what: 'STATUS 3/3' });
    t.equal(await statusText(), 'serving 3/3 backends up', 'back: 3/3');
    // docs/install.md's reload procedure: reload, then `systemctl status` tells whether the file was taken.
    node.writeFile('/etc/apilb/apilb.yaml', `${MINIMAL_CONFIG}rise: many\n`);
    await node.run('systemctl reload apilb.service');
    const rejected = await waitFor(
      async () => {
        const s = await statusText();
        return s.includes('last reload rejected') ? s : '';
      },
      { timeoutMs: 20_000, intervalMs: 100, what: 'rejected reload in STATUS' },
    );
    t.match(rejected, /^serving 3\/3 backends up; last reload rejected: .*rise/, 'a rejected reload shows in systemctl status');
    node.writeFile('/etc/apilb/apilb.yaml', MINIMAL_CONFIG);
    await node.run('systemctl reload apilb.service');
    await waitFor(async () => !(await statusText()).includes('rejected'), { timeoutMs: 20_000, intervalMs: 100, what: 'STATUS after a good reload' });
    t.equal(await statusText(), 'serving 3/3 backends up', 'a good reload clears it');

    // No backend at all: READY=1 (the end of `systemctl restart`, Type=notify) waits for one up to rise × interval
    // + timeout (2 × 2 s + 1 s with the defaults) after the first round, then comes anyway and says so.
    const all = BACKEND_PORTS.map((p) => `apiserver@${p}`).join(' ');
    await node.run(`systemctl stop ${all}`);
    const t0 = Date.now();
    await node.run('systemctl restart apilb.service', 60_000);
    const readyAfter = Date.now() - t0;
    t.comment(`with no backend up, systemctl restart (READY=1) took ${readyAfter} ms`);
    t.ok(readyAfter >= 5000, 'READY=1 held back for the bound');
    t.equal(await statusText(), 'no backend up (3 configured): forwarding to all of them (panic)', 'and STATUS= says why');
    await node.run(`systemctl start ${all}`);
    await waitFor(async () => (await statusText()).startsWith('serving 3/3'), {
      timeoutMs: 30_000,
      intervalMs: 100,
      what: 'STATUS 3/3 after the stand-ins came back',
    });
    t.equal(await statusText(), 'serving 3/3 backends up', 'back to 3/3 without a restart');
  });

  await t.test('the watchdog restarts a stopped (SIGSTOP) apilb', async (t) => {
    // WatchdogSec=30s as shipped would make this check wait 30 s; the mechanism is the same with 3 s.
    node.writeFile('/etc/systemd/system/apilb.service.d/50-test-watchdog.conf', '[Service]\nWatchdogSec=3s\n');
    await node.run('systemctl daemon-reload && systemctl restart apilb.service');
    const pid = await node.show('apilb.service', 'MainPID');
    const t0 = Date.now();
    await node.run(`kill -STOP ${pid}`);
    const next = await waitFor(
      async () => {
        const p = await node.show('apilb.service', 'MainPID');
        return p !== pid && p !== '0' && (await node.show('apilb.service', 'ActiveState')) === 'active' ? p : '';
      },
      { timeoutMs: 30_000, intervalMs: 100, what: 'a new apilb after the watchdog fired' },
    );
    t.comment(`watchdog: new MainPID ${next} ${Date.now() - t0} ms after SIGSTOP`);
    t.match(await node.run('journalctl -u apilb.service -o cat --no-pager'), /Watchdog timeout/, 'systemd reports the watchdog timeout');
    await node.run('rm /etc/systemd/system/apilb.service.d/50-test-watchdog.conf && systemctl daemon-reload && systemctl restart apilb.service');
  });

  await t.test('control-plane node: after a reboot kube-apiserver holds 6443, apilb is skipped', async (t) => {
    node.writeFile(MANIFEST, 'apiVersion: v1\nkind: Pod\nmetadata: {name: kube-apiserver, namespace: kube-system}\n');
    node.writeFile('/etc/systemd/system/kube-apiserver.service', standInUnit(app, '::', '6443', 'kube-apiserver'));
    await node.run('systemctl daemon-reload && systemctl enable kube-apiserver.service');
    await node.reboot();
    const api = await waitFor(
      async () => ((await node.show('kube-apiserver.service', 'SubState')) === 'running' ? node.show('kube-apiserver.service', 'MainPID') : ''),
      { timeoutMs: 30_000, intervalMs: 100, what: 'kube-apiserver running' },
    );
    // `running` comes right after the fork (Type=simple): wait, with a bound, for the stand-in to have bound 6443.
    const holders = await waitFor(
      async () => {
        const out = await node.run("ss -Hltnp 'sport = :6443'");
        return out.includes(`pid=${api},`) ? out : '';
      },
      { timeoutMs: 30_000, intervalMs: 100, what: 'kube-apiserver listening on 6443' },
    );
    t.match(holders, new RegExp(`pid=${api},`), 'kube-apiserver holds 6443');
    t.notMatch(holders, /127\.0\.0\.1:6443/, 'nothing else holds 127.0.0.1:6443');
    t.equal(await node.show('kube-apiserver.service', 'NRestarts'), '0', 'kube-apiserver started once (no EADDRINUSE loop)');
    for (const unit of ['apilb.socket', 'apilb.service']) {
      t.equal(await node.show(unit, 'ActiveState'), 'inactive', `${unit} inactive`);
      t.equal(await node.show(unit, 'ConditionResult'), 'no', `${unit}: skipped by its condition, not failed`);
    }
    t.equal(await node.show('apilb.service', 'NRestarts'), '0', 'apilb is not in a restart loop');
    t.equal(await node.show('kubelet.service', 'ActiveState'), 'active', 'kubelet started anyway (Wants=, not Requires=)');

    // docs/install.md section 4a: apilb on 6444 on a control-plane node.
    node.writeFile(
      '/etc/systemd/system/apilb.socket.d/control-plane.conf',
      '[Unit]\nConditionPathExists=\n[Socket]\nListenStream=\nListenStream=127.0.0.1:6444\nListenStream=[::1]:6444\n',
    );
    node.writeFile('/etc/systemd/system/apilb.service.d/control-plane.conf', '[Unit]\nConditionPathExists=\n');
    // The command exactly as docs/install.md section 4a gives it (minus sudo): the one that works on systemd 252.
    await node.run(`systemctl daemon-reload && ${documentedRestart()}`, 90_000);
    const r = JSON.parse(await node.run(`${app.node} /srv/load.mjs '${JSON.stringify({ mode: 'probe', host: '::1', port: 6444, ...CLIENT })}'`)) as {
      status?: number;
    };
    t.equal(r.status, 200, 'the override serves on [::1]:6444');
    t.match(await node.run("ss -Hltnp 'sport = :6443'"), new RegExp(`pid=${api},`), 'while kube-apiserver keeps 6443');
  });

  t.comment(`real-node run took ${Date.now() - began} ms`);
});

/** The stop-and-start line of docs/install.md section 4 (control-plane override), without `sudo`. */
function documentedRestart(): string {
  const doc = readFileSync(new URL('../docs/install.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('## 4. Control-plane nodes'), doc.indexOf('## 5.'));
  const line = section.split('\n').find((l) => /^sudo systemctl (stop|restart) apilb/.test(l));
  if (!line) throw new Error('docs/install.md section 4 has no `sudo systemctl stop|restart apilb…` line');
  return line.replaceAll('sudo ', '');
}

/** A unit running the TLS kube-apiserver stand-in (src/demo/fake-apiserver-main.ts) with the installed Node.js. */
function standInUnit(app: Installed, host: string, port: string, name: string): string {
  return [
    '[Unit]',
    `Description=API server stand-in ${name}`,
    '[Service]',
    `ExecStart=${app.node} ${app.appDir}/dist/demo/fake-apiserver-main.js --ca-dir /srv/ca --host ${host} --port ${port} --name ${name} --watch-interval-ms 200`,
    'Restart=always',
    'RestartSec=1s',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** test/support/real-node-load.ts as plain JavaScript for the node's Node.js (it imports only node: modules). */
function transpileLoadScript(): string {
  const src = readFileSync(fileURLToPath(new URL('./support/real-node-load.ts', import.meta.url)), 'utf8');
  return ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
}

/** The client load running inside the node; `ask` sends a command and resolves with its report line. */
function startLoad(node: RealNode, app: Installed): { ask: (cmd: 'peek' | 'report') => Promise<LoadReport>; stop: () => void } {
  const args = { mode: 'load', host: '127.0.0.1', port: 6443, streams: 20, intervalMs: 50, ...CLIENT };
  const child = node.spawn([app.node, '/srv/load.mjs', JSON.stringify(args)]);
  const waiting: ((r: LoadReport) => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', function onLoadLine(line: string) {
    waiting.shift()?.(JSON.parse(line) as LoadReport);
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  return {
    ask: (cmd) =>
      new Promise((resolve, reject) => {
        if (child.exitCode !== null) {
          reject(new Error(`load client exited ${child.exitCode}: ${stderr}`));
          return;
        }
        waiting.push(resolve);
        child.stdin!.write(`${cmd}\n`);
      }),
    stop: () => {
      child.stdin!.end();
    },
  };
}

async function countLog(node: RealNode, needle: string): Promise<number> {
  const out = await node.run('journalctl -u apilb.service -o cat --no-pager');
  return out.split('\n').filter((l) => l.includes(needle)).length;
}
