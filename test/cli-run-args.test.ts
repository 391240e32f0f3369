/**
 * `apilb run` parsed without yargs (src/cli.ts parseRunArgs, issue 18): whatever the yargs-free parser accepts,
 * yargs must read the same way (same flags layer, same --config) and accept too; everything else must be left to
 * yargs. A property over random argument lists built from the option table, plus tables of the invocations the
 * units use and of what must go to yargs.
 */
import t from 'tap';
import fc from 'fast-check';
import { buildCli, flagLayer, parseRunArgs } from '../src/cli.js';
import { OPTIONS } from '../src/config/options.js';

/** yargs' reading of `args` for `run`: its argv, or its failure message; `run` itself never starts. */
async function viaYargs(args: string[]): Promise<{ argv?: Record<string, unknown>; failed?: string }> {
  let argv: Record<string, unknown> | undefined;
  let failed: string | undefined;
  const cli = await buildCli(args, {
    run: async (a) => {
      argv = a;
    },
    fail: (msg, err) => {
      failed = msg ?? err?.message ?? 'failed';
    },
  });
  await cli.parseAsync();
  return { ...(argv ? { argv } : {}), ...(failed ? { failed } : {}) };
}

const bools = OPTIONS.filter((o) => o.kind === 'bool').map((o) => o.flag);
const lists = OPTIONS.filter((o) => o.kind === 'address-list').map((o) => o.flag);
const enums = OPTIONS.filter((o) => o.kind === 'enum');
const scalars = OPTIONS.filter((o) => o.kind !== 'bool' && o.kind !== 'address-list').map((o) => o.flag);

/** Values as operators write them, and some a parser may trip on. */
const value = fc.oneof(
  fc.constantFrom('127.0.0.1:6443', '[::1]:6443', 'api.example:6443', '5s', '-1s', '-5', '0', '', 'true', 'false', 'a b', '--', '-x', '/etc/apilb/apilb.yaml'),
  fc.constantFrom(...enums.flatMap((e) => [...(e.choices ?? []), `${e.choices?.[0] ?? ''}x`])),
  fc.string({ maxLength: 6 }),
);

/** One argument group: a flag with its value in any spelling yargs or parseArgs know, a flag twice, or a stray word. */
const group = fc.oneof(
  fc.tuple(fc.constantFrom(...scalars, ...lists, 'config'), value, fc.boolean()).map(([f, v, inline]) => (inline ? [`--${f}=${v}`] : [`--${f}`, v])),
  fc.tuple(fc.constantFrom('config', 'listen', ...scalars.slice(0, 3)), value, value).map(([f, a, b]) => [`--${f}`, a, `--${f}`, b]),
  fc.constantFrom(...bools).map((f) => [`--${f}`]),
  fc.tuple(fc.constantFrom(...bools), fc.constantFrom('true', 'false')).map(([f, v]) => [`--${f}=${v}`]),
  fc.constantFrom(...bools).map((f) => [`--no-${f}`]),
  fc.constantFrom(['--help'], ['--version'], ['run'], ['status'], ['--adminListen', 'x:1'], ['-h'], ['--unknown-flag'], ['stray']),
);

t.test('whatever parseRunArgs accepts, yargs accepts and reads the same way', async (tt) => {
  let accepted = 0;
  await fc.assert(
    fc.asyncProperty(fc.boolean(), fc.array(group, { maxLength: 6 }), async (withRun, groups) => {
      const args = [...(withRun ? ['run'] : []), ...groups.flat()];
      const fast = parseRunArgs(args);
      if (fast === undefined) return true;
      accepted++;
      const y = await viaYargs(args);
      if (y.failed !== undefined || y.argv === undefined) return false;
      tt.same(flagLayer(fast), flagLayer(y.argv), `flags of ${JSON.stringify(args)}`);
      tt.equal(fast.config, y.argv.config, `--config of ${JSON.stringify(args)}`);
      return true;
    }),
    { numRuns: 400 },
  );
  tt.ok(accepted > 50, `the property exercised the yargs-free path (${accepted} of 400 argument lists)`);
});

t.test('the invocations of the units, the launcher and the benchmarks need no yargs', async (tt) => {
  const cases: Array<{ args: string[]; layer: Record<string, unknown>; config?: string }> = [
    { args: ['run', '--config', '/etc/apilb/apilb.yaml'], layer: {}, config: '/etc/apilb/apilb.yaml' },
    { args: [], layer: {} },
    {
      args: ['run', '--listen', '127.0.0.1:0', '--backend', '127.0.0.1:1', '--backend', '127.0.0.1:2', '--admin-listen', '127.0.0.1:0'],
      layer: { listen: ['127.0.0.1:0'], backends: ['127.0.0.1:1', '127.0.0.1:2'], adminListen: '127.0.0.1:0' },
    },
    {
      args: ['--backend=10.0.0.1:6443', '--health-check-insecure', '--connect-timeout', '-1s'],
      layer: { backends: ['10.0.0.1:6443'], healthCheckInsecure: true, connectTimeout: '-1s' },
    },
  ];
  for (const c of cases) {
    const fast = parseRunArgs(c.args);
    tt.ok(fast, `${JSON.stringify(c.args)} parsed without yargs`);
    tt.same(flagLayer(fast ?? {}), c.layer, `${JSON.stringify(c.args)}: flags`);
    tt.equal(fast?.config, c.config, `${JSON.stringify(c.args)}: --config`);
  }
});

t.test('left to yargs: other commands, help, unknown or repeated single flags, bad enum values', async (tt) => {
  const toYargs: string[][] = [
    ['--help'],
    ['run', '--help'],
    ['--version'],
    ['version'],
    ['check-config', '--config', 'x.yaml'],
    ['status'],
    ['run', 'extra'],
    ['--backend', 'a:1', 'b:2'], // yargs reads both into the list
    ['--unknown'],
    ['--adminListen', '127.0.0.1:1'],
    ['--no-health-check-insecure'],
    ['--health-check-insecure=false'],
    ['--config', 'a.yaml', '--config', 'b.yaml'],
    ['--log-level', 'loud'],
    ['--config'],
    ['--', '--backend', 'a:1'],
    ['-h'],
    ['--backend='], // yargs drops an empty list entry; found by the property above
    ['--connect-timeout='],
  ];
  for (const args of toYargs) tt.equal(parseRunArgs(args), undefined, JSON.stringify(args));
});
