/**
 * A small reader of the Prometheus text exposition format for tests: samples with their labels, and the
 * declared type of each metric family. Also runs promtool, which must be installed (Debian package `prometheus`).
 */
import { spawnSync } from 'node:child_process';

/** One sample line. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parsed exposition. */
export interface Exposition {
  samples: Sample[];
  /** Family name → `counter`, `gauge`, `histogram`, ... */
  types: Map<string, string>;
  /** Samples whose name is `name` and whose labels are exactly `labels`. */
  get(name: string, labels?: Record<string, string>): number | undefined;
  /** Every sample named `name`. */
  all(name: string): Sample[];
}

const LABEL_RE = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Parses `text`. Throws on a line it cannot read. */
export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name!, type!);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unreadable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? '').matchAll(LABEL_RE)) labels[lm[1]!] = lm[2]!.replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  function same(a: Record<string, string>, b: Record<string, string>): boolean {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
  }
  return {
    samples,
    types,
    get(name, labels = {}) {
      return samples.find((s) => s.name === name && same(s.labels, labels))?.value;
    },
    all(name) {
      return samples.filter((s) => s.name === name);
    },
  };
}

/** Result of a promtool run. */
export interface PromtoolResult {
  status: number | null;
  output: string;
}

/**
 * Runs `promtool ...args` with `input` on stdin. Throws (a loud failure, never a skip) when promtool is missing:
 * CI installs it with `apt-get install prometheus`.
 */
export function promtool(args: string[], input?: string): PromtoolResult {
  const r = spawnSync('promtool', args, { input, encoding: 'utf8', timeout: 30_000 });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    throw new Error(
      code === 'ENOENT'
        ? 'promtool is not installed: install the Debian package `prometheus` (apt-get install -y prometheus); these tests must not be skipped'
        : `promtool failed to run: ${r.error.message}`,
    );
  }
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}
