#!/usr/bin/env node
/**
 * The command line: `apilb [run]`, `apilb check-config`, `apilb demo`, `apilb version`. Flags come from the
 * option table (config/options.ts). The only place that calls process.exit.
 *
 * yargs is loaded only when it is needed: `apilb run` with plain flags (how the units and the launcher start
 * the daemon) is parsed by {@link parseRunArgs} with node:util's parseArgs, because yargs stays in memory for
 * the daemon's whole life (about 4 MB of RSS on every node, issue 18). Everything else goes through yargs.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { Argv } from 'yargs';
import { fetchStatus, formatStatus } from './admin/status.js';
import { formatConfig, resolveAdminListen, resolveConfig, type Config, type Layer, type ResolveInput } from './config/config.js';
import { loadCredentials } from './config/credentials.js';
import { formatAddress } from './config/values.js';
import { OPTIONS } from './config/options.js';
import { installSignalHandlers, startDaemon } from './daemon.js';
import { listenFds, listenOnFds, splitListenFds } from './systemd/listen-fds.js';
import { ApilbError, ConfigError, EXIT_CODES, exitCodeOf } from './errors.js';
import { VERSION } from './version.js';

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

/** The flags the operator actually set, keyed by config key (exported for the tests of {@link parseRunArgs}). */
export function flagLayer(argv: Record<string, unknown>): Layer {
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

/** Prints `err` and exits with its kind's code (errors.ts EXIT_CODES: the same in every subcommand). */
function die(err: unknown): never {
  if (err instanceof ConfigError) process.stderr.write(`apilb: ${err.message}\n`);
  else if (err instanceof ApilbError) process.stderr.write(`apilb: ${err.message} [${err.code}]\n`);
  else process.stderr.write(`apilb: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(exitCodeOf(err));
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
    if (listeners)
      daemon.logger.info(
        { event: 'socket_activation', sockets: passed.listeners.map((f) => f.name) },
        `serving on ${listeners.length} sockets passed by systemd (--listen ignored)`,
      );
    if (passed.admin.length > 0)
      daemon.logger.warn({ event: 'socket_activation' }, 'a passed admin socket is not used: the admin endpoint binds --admin-listen itself');
    installSignalHandlers(daemon, (code) => process.exit(code));
    process.off('SIGHUP', onEarlyReloadSignal);
  } catch (err) {
    die(err);
  }
}

async function checkConfig(argv: Record<string, unknown>): Promise<void> {
  let cfg: Config;
  try {
    // The same resolution and validation as `run` (credentials and PEM files included): what passes here starts.
    cfg = configFrom(argv);
  } catch (err) {
    die(err);
  }
  for (const w of cfg.warnings) process.stderr.write(`apilb: warning: ${w}\n`);
  if (argv.print) {
    // Like `nginx -T`: the effective configuration after flags, environment, file and defaults; credential files
    // are named and described, never printed.
    const creds = loadCredentials(cfg)
      .summary.map((l) => `#   ${l}`)
      .join('\n');
    process.stdout.write(
      `# effective configuration (flags > APILB_* environment > ${cfg.configFile ?? 'no config file'} > defaults)\n${formatConfig(cfg)}# credentials:\n${creds}\n`,
    );
    return;
  }
  process.stdout.write(`configuration OK: ${cfg.backends.length} backends, listen ${cfg.listen.length} addresses\n`);
}

/** `apilb status`: reads GET /status from a running daemon's admin endpoint; a table, or the JSON with --json. */
async function status(argv: Record<string, unknown>): Promise<void> {
  const timeout = Number(argv.timeout);
  if (!(timeout > 0 && Number.isFinite(timeout)))
    die(new ConfigError([{ path: 'timeout', reason: `must be a number of seconds > 0, got ${String(argv.timeout)}` }]));
  try {
    const configFile = (argv.config as string | undefined) ?? process.env.APILB_CONFIG;
    const admin = resolveAdminListen({
      ...(argv.adminListen !== undefined ? { flag: String(argv.adminListen) } : {}),
      env: process.env,
      ...(configFile ? { configFile } : {}),
    });
    const { doc, raw } = await fetchStatus(formatAddress(admin), timeout * 1000);
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

/**
 * Joins `--flag -1s` into `--flag=-1s` for options that take a value: yargs would read `-1s` as the short flags
 * `-1` and `-s` ("Unknown arguments: 1, s"), hiding the real problem (a negative duration) from the operator.
 */
export function joinNegativeValues(args: readonly string[]): string[] {
  const valued = new Set(['--config', '--admin-listen', '--timeout', ...OPTIONS.filter((o) => o.kind !== 'bool').map((o) => `--${o.flag}`)]);
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (valued.has(a) && next !== undefined && (/^-[\d.]/.test(next) || next.startsWith('-----'))) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** parseArgs options for `run`: `--config` and every row of the option table, as yargs declares them. */
function runParseOptions(): NonNullable<ParseArgsConfig['options']> {
  const options: NonNullable<ParseArgsConfig['options']> = { config: { type: 'string' } };
  for (const spec of OPTIONS) {
    options[spec.flag] = spec.kind === 'bool' ? { type: 'boolean' } : { type: 'string', multiple: spec.kind === 'address-list' };
  }
  return options;
}

/**
 * Parses `apilb [run] --flag value ...` without yargs, into the same camelCase keys yargs gives `run`. Returns
 * undefined, so that yargs parses (and explains) the arguments instead, for anything but plain flags of the
 * option table: another command, a positional argument, --help, --version, an unknown or camelCase flag,
 * `--no-FLAG`, `--bool=value`, a single-value flag given twice (yargs makes a list of it), a missing value, a value
 * starting with `-` that joinNegativeValues does not join, or an enum value outside its choices.
 * test/cli-run-args.test.ts checks that whatever this accepts, yargs reads the same way.
 */
export function parseRunArgs(args: readonly string[]): Record<string, unknown> | undefined {
  const rest = args[0] === 'run' ? args.slice(1) : args;
  const options = runParseOptions();
  let parsed: ReturnType<typeof parseArgs<{ options: typeof options; strict: true; allowPositionals: false; tokens: true }>>;
  try {
    parsed = parseArgs({ args: joinNegativeValues(rest), options, strict: true, allowPositionals: false, tokens: true });
  } catch {
    return undefined;
  }
  const seen = new Set<string>();
  for (const token of parsed.tokens) {
    if (token.kind !== 'option') return undefined; // `--` and anything after it
    if (seen.has(token.name) && options[token.name]!.multiple !== true) return undefined;
    // An empty value (`--backend=`): yargs drops it from an array and reads it its own way elsewhere.
    if (token.value === '') return undefined;
    seen.add(token.name);
  }
  const argv: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(parsed.values)) {
    const spec = OPTIONS.find((o) => o.flag === name);
    if (spec?.kind === 'enum' && !(spec.choices ?? []).includes(value as string)) return undefined;
    argv[camel(name)] = value;
  }
  return argv;
}

/**
 * Builds the yargs parser (loaded on this first use). `handlers` replaces what `run` does and what a parse
 * failure does (tests compare yargs' reading of the arguments with {@link parseRunArgs}'s).
 */
export async function buildCli(
  args: string[],
  handlers: { run?: (argv: Record<string, unknown>) => Promise<void>; fail?: (msg: string, err: Error | undefined) => void } = {},
): Promise<Argv> {
  const { default: yargs } = await import('yargs');
  const runCommand = handlers.run ?? run;
  return yargs(joinNegativeValues(args))
    .scriptName('apilb')
    .usage('$0 [run] --backend HOST:PORT [--backend HOST:PORT ...] [options]\n\nNode-local TCP/TLS-passthrough load balancer for the Kubernetes API server.')
    .command(
      ['run', '$0'],
      'run the load balancer (default command)',
      (y) => withOptions(y),
      (a) => runCommand(a as Record<string, unknown>),
    )
    .command(
      'check-config',
      'validate flags, environment and --config (credential files included) without starting, as run does (exit 0 valid, 2 invalid)',
      (y) =>
        withOptions(y).option('print', {
          type: 'boolean',
          default: false,
          describe: 'print the effective configuration (credential files named, never their contents)',
          group: 'Operations:',
        }),
      (a) => checkConfig(a as Record<string, unknown>),
    )
    .command(
      'status',
      'show backends, states and connections of the running apilb (reads GET /status from the admin endpoint)',
      (y) =>
        y
          .option('admin-listen', {
            type: 'string',
            describe: "the daemon's admin address (default: APILB_ADMIN_LISTEN, else adminListen in --config, else 127.0.0.1:9643)",
          })
          .option('config', { type: 'string', describe: 'read adminListen from this YAML config file (also APILB_CONFIG)' })
          .option('json', { type: 'boolean', default: false, describe: 'print the raw /status JSON' })
          .option('timeout', { type: 'number', default: 3, describe: 'seconds to wait for an answer' }),
      (a) => status(a as Record<string, unknown>),
    )
    .command(
      'demo',
      'run apilb in front of three local API-server stand-ins with a throwaway CA (what npm start runs)',
      (y) => withOptions(y),
      (a) => demo(a as Record<string, unknown>),
    )
    .command(
      'version',
      'print the version',
      () => {},
      () => {
        process.stdout.write(`apilb ${VERSION}\n`);
      },
    )
    .strict()
    .version(VERSION)
    .help()
    .wrap(Math.min(120, process.stdout.columns || 100))
    .fail((msg, err) => {
      if (handlers.fail) return handlers.fail(msg, err);
      if (err) die(err);
      process.stderr.write(`apilb: ${msg}\nRun 'apilb --help' for usage.\n`);
      process.exit(EXIT_CODES.config);
    });
}

/** `apilb ARGS...`: `run` with plain flags without yargs, everything else through it. */
async function main(args: string[]): Promise<void> {
  const runArgs = parseRunArgs(args);
  if (runArgs) await run(runArgs);
  else await (await buildCli(args)).parseAsync();
}

/** True when this module is the program (`node dist/cli.js`, the launcher, npm's bin link), not imported by a test. */
function isMain(): boolean {
  try {
    return realpathSync(process.argv[1] ?? '') === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

// yargs' hideBin: the arguments after `node cli.js`.
if (isMain()) await main(process.argv.slice(2));
