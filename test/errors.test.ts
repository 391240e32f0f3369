/**
 * docs/errors.md and src/errors.ts ERROR_CODES list exactly the same codes, each documented with its meaning, a
 * typical cause and what to do; and every `APILB_ERR_*` string used in src/ is a real code (a typo in a log
 * line's `code` field would otherwise go unnoticed until someone greps for it).
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { ERROR_CODES } from '../src/errors.js';
import { createLogger, subscribeLogger } from '../src/logging.js';
import { Pool } from '../src/pool/pool.js';
import type { TcpProxy } from '../src/proxy/proxy.js';

const root = fileURLToPath(new URL('..', import.meta.url));

interface Section {
  code: string;
  body: string;
}

function docSections(): Section[] {
  const text = readFileSync(join(root, 'docs/errors.md'), 'utf8');
  const parts = text.split(/^## /m).slice(1);
  return parts.map((p) => {
    const nl = p.indexOf('\n');
    return { code: p.slice(0, nl).trim(), body: p.slice(nl + 1) };
  });
}

function field(body: string, name: string): string | undefined {
  const m = new RegExp(`^\\*\\*${name}:\\*\\* ([\\s\\S]*?)(?=\\n\\n|\\n?$)`, 'm').exec(body);
  return m?.[1]?.replace(/\s+/g, ' ').trim();
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

t.test('docs/errors.md documents exactly the codes of ERROR_CODES, in the same order', async (tt) => {
  const sections = docSections();
  tt.same(
    sections.map((s) => s.code),
    Object.keys(ERROR_CODES),
  );
});

t.test('each documented code has a meaning (matching src/errors.ts), a typical cause and what to do', async (tt) => {
  for (const s of docSections()) {
    const meaning = field(s.body, 'Meaning');
    const want = (ERROR_CODES as Record<string, string>)[s.code];
    tt.equal(meaning, want === undefined ? undefined : `${want}.`, `${s.code}: meaning matches ERROR_CODES`);
    tt.ok((field(s.body, 'Typical cause')?.length ?? 0) > 40, `${s.code}: typical cause`);
    tt.ok((field(s.body, 'What to do')?.length ?? 0) > 40, `${s.code}: what to do`);
  }
});

t.test('every code is raised somewhere in src/ (a quoted use: thrown, passed to ApilbError, or logged)', async (tt) => {
  const uses = new Map<string, string[]>();
  for (const f of sourceFiles(join(root, 'src'))) {
    // The ERROR_CODES table declares codes as unquoted keys; every use is a string literal.
    for (const m of readFileSync(f, 'utf8').matchAll(/'(APILB_ERR_[A-Z0-9_]+)'/g)) {
      uses.set(m[1]!, [...(uses.get(m[1]!) ?? []), f.slice(root.length)]);
    }
  }
  for (const code of Object.keys(ERROR_CODES)) tt.ok(uses.has(code), `${code} is used in ${[...new Set(uses.get(code) ?? ['no file'])].join(', ')}`);
});

t.test('every APILB_ERR_* string in src/ is a defined code', async (tt) => {
  const known = new Set(Object.keys(ERROR_CODES));
  const files = sourceFiles(join(root, 'src'));
  tt.ok(files.length > 10);
  let seen = 0;
  for (const f of files) {
    for (const m of readFileSync(f, 'utf8').matchAll(/APILB_ERR_[A-Z0-9_]+/g)) {
      seen++;
      tt.ok(known.has(m[0]), `${m[0]} in ${f.slice(root.length)} is in ERROR_CODES`);
    }
  }
  tt.ok(seen > known.size, 'codes are referenced from the sources');
});

t.test('docs/errors.md lists every exit code of EXIT_CODES with its kind', async (tt) => {
  const { EXIT_CODES } = await import('../src/errors.js');
  const text = readFileSync(join(root, 'docs/errors.md'), 'utf8');
  const rows = [...text.matchAll(/^\| `(\d+)` \| (\w+) \|/gm)].map((m) => [m[2], Number(m[1])]);
  tt.same(Object.fromEntries(rows), EXIT_CODES);
});

t.test('dial timeouts, first-byte timeouts and all-backends-failed closes are logged with their codes', async (tt) => {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const pool = new Pool();
  const backend = pool.add({ address: { host: '127.0.0.1', port: 6443 } });
  const proxy = new EventEmitter();
  const unsubscribe = subscribeLogger(createLogger('debug', sink), pool, proxy as unknown as TcpProxy);
  for (const reason of ['timeout', 'first_byte_timeout', 'refused']) proxy.emit('dial-failure', { backend, reason });
  proxy.emit('close', { backend: undefined, reason: 'all_backends_failed', bytesFromClient: 0, bytesToClient: 0, durationMs: 1 });
  proxy.emit('close', { backend, reason: 'normal', bytesFromClient: 0, bytesToClient: 0, durationMs: 1 });
  unsubscribe();
  const got = lines.filter((l) => l.event === 'dial_failure' || l.event === 'connection_closed').map((l) => [l.event, l.reason, l.code]);
  tt.same(got, [
    ['dial_failure', 'timeout', 'APILB_ERR_DIAL_TIMEOUT'],
    ['dial_failure', 'first_byte_timeout', 'APILB_ERR_FIRST_BYTE_TIMEOUT'],
    ['dial_failure', 'refused', undefined],
    ['connection_closed', 'all_backends_failed', 'APILB_ERR_ALL_BACKENDS_FAILED'],
    ['connection_closed', 'normal', undefined],
  ]);
});
