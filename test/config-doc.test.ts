/**
 * docs/configuration.md documents every option: its generated table equals the option table's rendering, and
 * each option's flag, YAML key and environment variable appear in it.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DOC_BEGIN, DOC_END, optionsTable } from '../src/config/options-doc.js';
import { envName, fileKey, OPTIONS } from '../src/config/options.js';

const doc = readFileSync(fileURLToPath(new URL('../docs/configuration.md', import.meta.url)), 'utf8');

t.test('the option table in docs/configuration.md is up to date', async (tt) => {
  const start = doc.indexOf(DOC_BEGIN);
  const end = doc.indexOf(DOC_END);
  tt.ok(start >= 0 && end > start, 'markers present');
  const table = doc.slice(start + DOC_BEGIN.length, end).trim();
  tt.equal(table, optionsTable(), 'regenerate with: npm run build && node scripts/gen-config-doc.js');
});

t.test('every option appears with its flag, YAML key and environment variable', async (tt) => {
  const rows = doc.split('\n').filter((l) => l.startsWith('| `--'));
  for (const spec of OPTIONS) {
    const row = rows.find((r) => r.startsWith(`| \`--${spec.flag}\``));
    tt.ok(row, `--${spec.flag} has a row`);
    tt.match(row, `\`${fileKey(spec)}\``, `${spec.key}: YAML key`);
    tt.match(row, `\`${envName(spec)}\``, `${spec.key}: environment variable`);
  }
  tt.equal(rows.length, OPTIONS.length, 'no stale rows');
});
