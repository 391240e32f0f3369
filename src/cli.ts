#!/usr/bin/env node
/**
 * The command line: `apilb [run]`, `apilb check-config`, `apilb demo`, `apilb version`. Flags come from the
 * option table (config/options.ts). The only place that calls process.exit.
 */
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { fetchStatus, formatStatus } from './admin/status.js';
import { resolveConfig, type Config, type Layer, type ResolveInput } from './config/config.js';
import { OPTIONS } from './config/options.js';
import { installSignalHandlers, startDaemon } from './daemon.js';
import { listenFds, listenOnFds, splitListenFds } from './systemd/listen-fds.js';
import { ApilbError, ConfigError } from './errors.js';
import { VERSION } from './version.js';

/** Exit codes: 0 ok, 1 runtime failure, 2 invalid configuration or usage. */
const EXIT_RUNTIME = 1;
const EXIT_CONFIG = 2;

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function withOptions<T>(y: Argv<T>): Argv<T> {
  y.option('config', { type: 'string', describe: 'YAML config file (keys are the flags in camelCase; also APILB_CONFIG)', group: 'Operations:' });
  for (const spec of OPTIONS) {
    const type = spec.kind === 'bool' ? 'boolean' : spec.kind === 'address-list' ? 'array' : 'string';
    const def = spec.default === undefined ? '' : ` [default: ${String(spec.default)}]`;
    y.option(spec.flag, {
      type,
      describe: spec.describe + def,
      group: spec.group,
      ...(spec.kind === 'enum' ? { choices: spec.choices as string[] } : {}),
      ...(type === 'array' ? { string: true } : {}),
    });
  }
  return y;
}

/** The flags the operator actually set, keyed by config key. */
function flagLayer(argv: Record<string, unknown>): Layer {
  const layer: Layer = {};
  for (const spec of OPTIONS) {
    const v = argv[camel(spec.flag)];
    if (v === undefined) continue;
    layer[spec.key] = spec.kind === 'address-list' ? (v as unknown[]).map(String) : spec.kind === 'bool' ? v : String(v);
  }
  return layer;
}

/** The layers a configuration is resolved from; the daemon keeps them to resolve again on reload. */
function resolveInputFrom(argv: Record<string, unknown>, opts: { allowNoBackends?: boolean } = {}): ResolveInput {
  const configFile = (argv.config as string | undefined) ?? process.env.APILB_CONFIG;
  return {
    flags: flagLayer(argv),
    env: process.env,
    ...(configFile ? { configFile } : {}),
    ...(opts.allowNoBackends ? { allowNoBackends: true } : {}),
  };
}

function configFrom(argv: Record<string, unknown>, opts: { allowNoBackends?: boolean } = {}): Config {
  return resolveConfig(resolveInputFrom(argv, opts));
}

function die(err: unknown): never {
  if (err instanceof ConfigError) {
    process.stderr.write(`apilb: ${err.message}\n`);
    process.exit(EXIT_CONFIG);
  }
  if (err instanceof ApilbError) {
    process.stderr.write(`apilb: ${err.message} [${err.code}]\n`);
    process.exit(EXIT_RUNTIME);
  }
  process.stderr.write(`apilb: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(EXIT_RUNTIME);
}

function onEarlyReloadSignal(): void {
  process.stderr.write('apilb: SIGHUP while starting: ignored (the configuration being started is the current file)\n');
}

async function run(argv: Record<string, unknown>): Promise<void> {
  let config: Config;
  try {
    config = configFrom(argv);
  } catch (err) {
    die(err);
  }
  try {
    // SIGHUP's default action ends the process: until the daemon's own handler is installed (after the first
    // health round), a reload request (systemctl reload, a config-management run) must not kill a starting apilb.
    process.on('SIGHUP', onEarlyReloadSignal);
    // Socket activation (apilb.socket): serve on the sockets systemd holds instead of binding --listen, so a
    // restart queues new connections in the kernel instead of refusing them.
    const passed = splitListenFds(listenFds());
    const listeners = passed.listeners.length > 0 ? (await listenOnFds(passed.listeners)).map((l) => l.server) : undefined;
    const daemon = await startDaemon(config, { resolveInput: resolveInputFrom(argv), ...(listeners ? { listeners, handoff: true } : {}) });
    if (listeners) daemon.logger.info({ event: 'socket_activation', sockets: passed.listeners.map((f) => f.name) }, `serving on ${listeners.length} sockets passed by systemd (--listen ignored)`);
    if (passed.admin.length > 0) daemon.logger.warn({ event: 'socket_activation' }, 'a passed admin socket is not used: the admin endpoint binds --admin-listen itself');
    installSignalHandlers(daemon, (code) => process.exit(code));
    process.off('SIGHUP', onEarlyReloadSignal);
  } catch (err) {
    die(err);
  }
}

async function checkConfig(argv: Record<string, unknown>): Promise<void> {
  try {
    const cfg = configFrom(argv);
    process.stdout.write(`configuration OK: ${cfg.backends.length} backends, listen ${cfg.listen.length} addresses\n`);
  } catch (err) {
    // check-config's contract (CI pipelines, ExecStartPre=) is exit 0 valid / 1 invalid.
    if (err instanceof ConfigError) {
      process.stderr.write(`apilb: ${err.message}\n`);
      process.exit(1);
    }
    die(err);
  }
}

/** `apilb status`: reads GET /status from a running daemon's admin endpoint; a table, or the JSON with --json. */
async function status(argv: Record<string, unknown>): Promise<void> {
  const timeout = Number(argv.timeout);
  if (!(timeout > 0 && Number.isFinite(timeout))) die(new ConfigError([{ path: 'timeout', reason: `must be a number of seconds > 0, got ${String(argv.timeout)}` }]));
  try {
    const { doc, raw } = await fetchStatus(String(argv.adminListen), timeout * 1000);
    process.stdout.write(argv.json ? raw : formatStatus(doc, Date.now()));
  } catch (err) {
    die(err);
  }
}

async function demo(argv: Record<string, unknown>): Promise<void> {
  try {
    const { runDemo } = await import('./demo/run-demo.js');
    await runDemo(resolveInputFrom(argv, { allowNoBackends: true }), (code) => process.exit(code));
  } catch (err) {
    die(err);
  }
}

/** Builds the yargs parser (exported for tests of help output). */
export function buildCli(args: string[]): Argv {
  return yargs(args)
    .scriptName('apilb')
    .usage('$0 [run] --backend HOST:PORT [--backend HOST:PORT ...] [options]\n\nNode-local TCP/TLS-passthrough load balancer for the Kubernetes API server.')
    .command(['run', '$0'], 'run the load balancer (default command)', (y) => withOptions(y), (a) => run(a as Record<string, unknown>))
    .command('check-config', 'validate flags, environment and --config without starting (exit 0 valid, 1 invalid)', (y) => withOptions(y), (a) => checkConfig(a as Record<string, unknown>))
    .command(
      'status',
      'show backends, states and connections of the running apilb (reads GET /status from the admin endpoint)',
      (y) =>
        y
          .option('admin-listen', { type: 'string', default: process.env.APILB_ADMIN_LISTEN ?? '127.0.0.1:9643', describe: "the daemon's admin address (also APILB_ADMIN_LISTEN)" })
          .option('json', { type: 'boolean', default: false, describe: 'print the raw /status JSON' })
          .option('timeout', { type: 'number', default: 3, describe: 'seconds to wait for an answer' }),
      (a) => status(a as Record<string, unknown>),
    )
    .command('demo', 'run apilb in front of three local API-server stand-ins with a throwaway CA (what npm start runs)', (y) => withOptions(y), (a) => demo(a as Record<string, unknown>))
    .command('version', 'print the version', () => {}, () => {
      process.stdout.write(`apilb ${VERSION}\n`);
    })
    .strict()
    .version(VERSION)
    .help()
    .wrap(Math.min(120, process.stdout.columns || 100))
    .fail((msg, err) => {
      if (err) die(err);
      process.stderr.write(`apilb: ${msg}\nRun 'apilb --help' for usage.\n`);
      process.exit(EXIT_CONFIG);
    });
}

await buildCli(hideBin(process.argv)).parseAsync();
