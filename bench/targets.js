// The proxies under test, each started in front of the same backend ports. Every start function returns
// { name, port, pid, child, stop() } where pid is the process whose tree is measured (undefined for direct).
import { writeFileSync, readFileSync, openSync, existsSync, createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { spawnTracked, killChild, freePort, waitForPort, withNoFile, ROOT, tailStderr, waitFor, sleep, readJsonLine } from './lib.js';

const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** Whether dist/cli.js has the `run` command (the lead's data path). */
export function apilbAvailable() {
  const cli = join(ROOT, 'dist/cli.js');
  if (!existsSync(cli)) return false;
  const r = spawnSync(process.execPath, [cli, 'run', '--help'], { encoding: 'utf8', timeout: 10000 });
  return r.status === 0 && /--backend/.test(r.stdout + r.stderr);
}

function logFd(dir, name) { return openSync(join(dir, `${name}.log`), 'a'); }

async function started(name, child, port, extra = {}) {
  const err = child.stderr ? tailStderr(child) : () => '';
  try {
    await waitForPort(port, 15000);
  } catch (e) {
    await killChild(child, 'SIGKILL');
    throw new Error(`${name} did not start: ${e.message}\n${err()}`);
  }
  return { name, port, pid: child.pid, child, stop: (sig) => killChild(child, sig), ...extra };
}

/**
 * The Node.js flags and environment the shipped launcher (packaging/apilb) starts apilb with, read from its
 * `node_flags='...'` and `export NAME=value` lines, so the benchmarks measure apilb the way it ships.
 */
export function launcherSettings() {
  const text = readFileSync(join(ROOT, 'packaging/apilb'), 'utf8');
  const flags = /^node_flags='([^']*)'$/m.exec(text);
  if (!flags) throw new Error("packaging/apilb has no node_flags='...' line: bench/targets.js cannot run apilb as it ships");
  const env = Object.fromEntries([...text.matchAll(/^export ([A-Z_][A-Z0-9_]*)=(\S*)$/gm)].map((m) => [m[1], m[2]]));
  return { nodeArgs: flags[1].split(' ').filter(Boolean), env };
}

/**
 * apilb with default settings except listen, backends and admin address (plus the CA so the default HTTPS health
 * checks can verify the stand-in API servers), started like packaging/apilb starts it (its node flags and
 * environment, launcherSettings) unless `bare`. `nodeArgs` and `env` are added to those (experiments, profiling);
 * `extraArgs` lets the failover benchmark add its own; `node` is the runtime binary (bench/runtime.js); `cli`
 * another build's cli.js (A/B comparisons, bench/cost.js).
 */
export async function startApilb({ backends, dir, caFile, name = 'apilb', extraArgs = [], nodeArgs = [], env = {}, bare = false, node = process.execPath, cli = join(ROOT, 'dist/cli.js') }) {
  const shipped = bare ? { nodeArgs: [], env: {} } : launcherSettings();
  // Ports chosen by the kernel: apilb listens on port 0 and reports the bound addresses in its "started" log line.
  const args = [...shipped.nodeArgs, ...nodeArgs, cli, 'run', '--listen', '127.0.0.1:0',
    ...backends.flatMap((b) => ['--backend', `127.0.0.1:${b}`]), '--admin-listen', '127.0.0.1:0',
    ...(caFile ? ['--ca-file', caFile] : []), ...extraArgs];
  const fd = logFd(dir, name);
  const [cmd, wargs] = withNoFile(node, args);
  const child = spawnTracked(cmd, wargs, { stdio: ['pipe', 'pipe', fd], env: { ...process.env, ...shipped.env, ...env } });
  const log = createWriteStream(null, { fd: logFd(dir, name) });
  let line;
  try {
    line = await readJsonLine(child, (j) => j.event === 'started' || j.listen, 15000);
  } catch (e) {
    await killChild(child, 'SIGKILL');
    throw new Error(`${name} did not start: ${e.message} (log: ${join(dir, name + '.log')})`);
  }
  // Keep draining its log so a full pipe never blocks it.
  child.stdout.pipe(log);
  const port = Number(/:(\d+)$/.exec([].concat(line.listen)[0])[1]);
  const admin = Number(/:(\d+)$/.exec(line.admin)[1]);
  // Ready = admin /readyz answers 200 (at least one backend up); bounded, and we go on regardless.
  await waitFor(async () => {
    try { return (await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200; } catch { return false; }
  }, { timeout: 6000, interval: 100 });
  return { name, port, pid: child.pid, child, admin, stop: (sig) => killChild(child, sig) };
}

/** The 20-line Node pipe proxy (the floor from issue 6). */
export async function startNodePipe({ backends, dir, name = 'node-pipe', nodeArgs = [], script = 'bench/pipe-proxy.js', node = process.execPath }) {
  const port = await freePort();
  const fd = logFd(dir, name);
  const [cmd, wargs] = withNoFile(node, [...nodeArgs, join(ROOT, script), String(port), ...backends.map(String)]);
  const child = spawnTracked(cmd, wargs, { stdio: ['pipe', fd, fd] });
  return started(name, child, port);
}

/**
 * HAProxy 2.6, mode tcp, one thread, roundrobin. `variant`: 'bench' (plain tcp checks), 'kubeadm' (kubeadm's HA
 * docs config), 'kubeadm-shutdown' (same plus on-marked-down shutdown-sessions).
 */
export async function startHaproxy({ backends, dir, name = 'haproxy', variant = 'bench', maxconn = 20000 }) {
  const port = await freePort();
  const cfgFile = join(dir, `${name}.cfg`);
  const kubeadm = variant !== 'bench';
  const shutdown = variant === 'kubeadm-shutdown' ? ' on-marked-down shutdown-sessions' : '';
  const servers = backends.map((b, i) => `    server api${i} 127.0.0.1:${b} check${kubeadm ? ' verify none' + shutdown : ''}`).join('\n');
  // 'bench': a neutral tcp config. kubeadm: the haproxy.cfg of kubeadm's "ha-considerations" document
  // (mode http defaults with 35 s client/server timeouts, HTTPS GET /healthz checks at HAProxy's default
  // inter 2s fall 3 rise 2), only the bind address and the servers changed.
  const defaults = kubeadm ? `defaults
    mode                    http
    log                     global
    option                  httplog
    option                  dontlognull
    option http-server-close
    option forwardfor       except 127.0.0.0/8
    option                  redispatch
    retries                 1
    timeout http-request    10s
    timeout queue           20s
    timeout connect         5s
    timeout client          35s
    timeout server          35s
    timeout http-keep-alive 10s
    timeout check           10s` : `defaults
    mode tcp
    log global
    option dontlognull
    retries 1
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    maxconn ${maxconn}`;
  const backendOpts = kubeadm ? `    option httpchk
    http-check connect ssl
    http-check send meth GET uri /healthz
    http-check expect status 200
    mode tcp
    balance     roundrobin` : '    balance roundrobin';
  writeFileSync(cfgFile, `global
    nbthread 1
    maxconn ${maxconn}
    log stderr format short local0 notice
${defaults}
frontend fe
    bind 127.0.0.1:${port}
    mode tcp
    option tcplog
    default_backend be
backend be
${backendOpts}
${servers}
`);
  const fd = logFd(dir, name);
  const [cmd, wargs] = withNoFile('haproxy', ['-f', cfgFile, '-db']);
  const child = spawnTracked(cmd, wargs, { stdio: ['ignore', fd, fd] });
  return started(name, child, port, { cfgFile });
}

/**
 * nginx stream proxy, one worker. `variant` 'kubespray' uses kubespray's nginx-proxy settings
 * (least_conn, max_fails=1 fail_timeout=10s, proxy_timeout 10m, proxy_connect_timeout 1s).
 */
export async function startNginx({ backends, dir, name = 'nginx', variant = 'bench', connections = 20000 }) {
  const port = await freePort();
  const cfgFile = join(dir, `${name}.conf`);
  const prefix = join(dir, `${name}-prefix`);
  execFileSync('mkdir', ['-p', join(prefix, 'logs')]);
  const servers = variant === 'kubespray'
    ? backends.map((b) => `    server 127.0.0.1:${b};`).join('\n')
    : backends.map((b) => `    server 127.0.0.1:${b};`).join('\n');
  // kubespray's nginx-proxy (roles/kubernetes/node/templates/loadbalancer/nginx.conf.j2): least_conn, implicit
  // max_fails=1 fail_timeout=10s passive checks, proxy_timeout = loadbalancer_apiserver_keepalive_timeout (5m),
  // proxy_connect_timeout 1s.
  const lb = variant === 'kubespray' ? '    least_conn;\n' : '';
  const timeouts = variant === 'kubespray' ? '    proxy_timeout 5m;\n    proxy_connect_timeout 1s;\n' : '    proxy_timeout 1h;\n';
  writeFileSync(cfgFile, `load_module ${NGINX_STREAM_MODULE};
worker_processes 1;
worker_rlimit_nofile ${connections + 100};
pid ${join(prefix, 'nginx.pid')};
error_log ${join(prefix, 'logs/error.log')} warn;
daemon off;
events {
  multi_accept on;
  use epoll;
  worker_connections ${connections};
}
stream {
  upstream kube_apiserver {
${lb}${servers}
  }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    proxy_pass kube_apiserver;
${timeouts}  }
}
`);
  const fd = logFd(dir, name);
  const [cmd, wargs] = withNoFile('nginx', ['-p', prefix, '-c', cfgFile]);
  const child = spawnTracked(cmd, wargs, { stdio: ['ignore', fd, fd] });
  const t = await started(name, child, port, { cfgFile });
  await sleep(100);
  return t;
}

export function haveNginxStream() { return existsSync(NGINX_STREAM_MODULE); }
