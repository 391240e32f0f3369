/**
 * Footprint guards (issue 18): what the daemon loads before it is asked for anything. undici (discovery only),
 * Node's bundled undici (reached through an ESM import of node:http on Node 22+), yaml (config files only),
 * prom-client's index and @opentelemetry/api each cost 4-26 MB of RSS on every node (bench/RESULTS.md); a
 * static import added anywhere under src/ brings them back, and this test names it. yargs (about 4 MB) is
 * loaded only by the commands that need it: `apilb run` with plain flags parses without it (src/cli.ts).
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));

/** Loads `entry` then runs `extra` (code, for the controls) in a fresh node; returns what got loaded. */
function loadedAfter(entry: string, extra = ''): string[] {
  const script = `
    import { createRequire } from 'node:module';
    const require = createRequire(${JSON.stringify(DIST)});
    await import(${JSON.stringify(DIST + entry)});
    ${extra}
    const heavy = /node_modules\\/(undici|yaml|@opentelemetry\\/api)\\/|node_modules\\/prom-client\\/index\\.js$/;
    const files = Object.keys(require.cache).filter((f) => heavy.test(f)).map((f) => f.replace(/^.*node_modules\\//, ''));
    const natives = process.moduleLoadList.filter((m) => /deps\\/undici/.test(m));
    const names = new Set(files.map((f) => (f.startsWith('@opentelemetry/') ? '@opentelemetry/api' : f.split('/')[0])));
    console.log(JSON.stringify([...names, ...natives].sort()));`;
  return JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' })) as string[];
}

t.test('importing the daemon loads no undici, yaml, prom-client index or @opentelemetry/api', async (tt) => {
  tt.same(loadedAfter('daemon.js'), [], 'nothing heavy loaded at startup');
});

t.test('controls: the detector sees each module once something loads it', async (tt) => {
  tt.same(loadedAfter('daemon.js', "require('yaml');"), ['yaml']);
  tt.ok(loadedAfter('daemon.js', "require('undici');").includes('undici'), 'undici');
  tt.same(loadedAfter('daemon.js', "require('prom-client').collectDefaultMetrics();"), ['@opentelemetry/api', 'prom-client']);
  // Why src/node-http.ts exists: on Node 22+ an ESM import of node:http loads Node's own bundled undici.
  const esmHttp = loadedAfter('daemon.js', "await import('node:http');");
  if (Number(process.versions.node.split('.')[0]) >= 22) tt.same(esmHttp, ['NativeModule internal/deps/undici/undici'], 'ESM import of node:http');
  else tt.same(esmHttp, [], 'Node 20: the ESM import of node:http is harmless');
});

/**
 * The ESM modules resolved while `entry` is imported and `extra` runs, seen by a module.register resolve hook
 * (ESM packages such as yargs never show in require.cache). A flush message through the hook's port, answered
 * after every earlier message, makes the list complete without waiting.
 */
function resolvedDuring(entry: string, extra = ''): string[] {
  const hook = `let port;
    export function initialize(data) { port = data.port; port.on('message', () => port.postMessage('flushed')); }
    export async function resolve(spec, ctx, next) { const r = await next(spec, ctx); port.postMessage(r.url); return r; }`;
  const script = `
    import { register } from 'node:module';
    import { MessageChannel } from 'node:worker_threads';
    const { port1, port2 } = new MessageChannel();
    const seen = [];
    const flushed = new Promise((resolve) => port1.on('message', (m) => (m === 'flushed' ? resolve() : seen.push(m))));
    register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hook)}), { data: { port: port2 }, transferList: [port2] });
    await import(${JSON.stringify(DIST + entry)});
    ${extra}
    port1.postMessage('flush');
    await flushed;
    port1.close();
    const names = seen.map((u) => /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(u)?.[1]).filter(Boolean);
    console.log(JSON.stringify([...new Set(names)].sort()));`;
  return JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' })) as string[];
}

t.test('importing the CLI loads no yargs (it comes on first use, for what run with plain flags does not need)', async (tt) => {
  const loaded = resolvedDuring('cli.js');
  tt.notOk(loaded.includes('yargs'), `no yargs among ${loaded.join(', ')}`);
  tt.ok(loaded.includes('pino'), 'control: the hook sees the packages the daemon imports (pino)');
  tt.ok(resolvedDuring('cli.js', "await import('yargs');").includes('yargs'), 'control: and yargs once something imports it');
});
