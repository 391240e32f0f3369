#!/usr/bin/env node
// Regenerates the option table in docs/configuration.md from src/config/options.ts (run `npm run build` first).
// Usage: node scripts/gen-config-doc.js [--check]   (--check exits 1 when the doc is out of date)
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DOC_BEGIN, DOC_END, optionsTable } from '../dist/config/options-doc.js';

const path = fileURLToPath(new URL('../docs/configuration.md', import.meta.url));
const text = readFileSync(path, 'utf8');
const start = text.indexOf(DOC_BEGIN);
const end = text.indexOf(DOC_END);
if (start < 0 || end < start) {
  process.stderr.write(`${path}: markers not found\n`);
  process.exit(1);
}
const next = text.slice(0, start + DOC_BEGIN.length) + '\n' + optionsTable() + '\n' + text.slice(end);
if (process.argv.includes('--check')) {
  if (next !== text) {
    process.stderr.write(`${path} is out of date: run node scripts/gen-config-doc.js\n`);
    process.exit(1);
  }
} else if (next !== text) {
  writeFileSync(path, next);
  process.stdout.write(`updated ${path}\n`);
}
