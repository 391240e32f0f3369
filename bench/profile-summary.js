// Summarises a V8 .cpuprofile (from `node --cpu-prof`, e.g. `npm run bench -- --cpu-prof`): self time per
// function and per category, so the data path's cost can be read without a flame-graph viewer.
// Usage: node bench/profile-summary.js FILE.cpuprofile [top=25] [skip=0]
//   skip: seconds at the start of the profile left out (start-up: module loading, compilation).
import { readFileSync } from 'node:fs';

const [file, topArg, skipArg] = process.argv.slice(2);
const prof = JSON.parse(readFileSync(file, 'utf8'));
const dt = [];
for (let i = 0; i < prof.timeDeltas.length; i++) dt.push(prof.timeDeltas[i]);
const selfUs = new Map();
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const skipUs = Number(skipArg ?? 0) * 1e6;
let at = 0;
for (let i = 0; i < prof.samples.length; i++) {
  at += dt[i] ?? 0;
  if (at >= skipUs) selfUs.set(prof.samples[i], (selfUs.get(prof.samples[i]) ?? 0) + (dt[i] ?? 0));
}
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
const fn = new Map();
const cat = new Map();
for (const [id, us] of selfUs) {
  const n = byId.get(id);
  const cf = n.callFrame;
  const where = cf.url ? cf.url.replace(/^.*\/(node_modules|dist|src|lib)\//, '$1/').replace(/^node:/, '') : '';
  const key = `${cf.functionName || '(anonymous)'} ${where}:${cf.lineNumber + 1}`;
  fn.set(key, (fn.get(key) ?? 0) + us);
  const c = cf.functionName === '(idle)' ? 'idle' : cf.functionName === '(garbage collector)' ? 'gc'
    : cf.functionName === '(program)' ? 'native/program (syscalls, libuv, C++)' : /dist\//.test(cf.url) ? 'apilb JS'
      : /^node:/.test(cf.url) ? 'node core JS' : cf.url ? 'other JS' : 'native';
  cat.set(c, (cat.get(c) ?? 0) + us);
}
const busy = total - (cat.get('idle') ?? 0);
console.log(`profile ${file}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(2)} s busy`);
console.log('\nby category (% of busy):');
for (const [c, us] of [...cat].sort((a, b) => b[1] - a[1])) if (c !== 'idle') console.log(`  ${(100 * us / busy).toFixed(1).padStart(5)}%  ${c}`);
console.log(`\ntop functions by self time (% of busy):`);
for (const [k, us] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, Number(topArg ?? 25))) {
  if (k.startsWith('(idle)')) continue;
  console.log(`  ${(100 * us / busy).toFixed(1).padStart(5)}%  ${k}`);
}
