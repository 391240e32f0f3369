/**
 * docs/errors.md and src/errors.ts ERROR_CODES list exactly the same codes, each documented with its meaning, a
 * typical cause and what to do; and every `APILB_ERR_*` string used in src/ is a real code (a typo in a log
 * line's `code` field would otherwise go unnoticed until someone greps for it).
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES } from '../src/errors.js';

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
  tt.same(sections.map((s) => s.code), Object.keys(ERROR_CODES));
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
