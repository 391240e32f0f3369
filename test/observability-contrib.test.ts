/**
 * contrib/prometheus-rules.yaml and contrib/grafana-dashboard.json: promtool validates the rules and runs their
 * unit tests (test/fixtures/prometheus-rules.test.yaml), every dashboard query parses as PromQL, and every metric
 * either file names is one apilb actually exports (a renamed metric breaks this test, not a 3 a.m. page).
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EventEmitter } from 'node:events';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { createMetrics } from '../src/metrics/metrics.js';
import type { HealthCheckEvent } from '../src/health/health-monitor.js';
import { parseAddress } from '../src/config/values.js';
import { Pool } from '../src/pool/pool.js';
import { TcpProxy } from '../src/proxy/proxy.js';
import { parseExposition, promtool } from './support/prom-text.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const RULES = join(root, 'contrib/prometheus-rules.yaml');
const RULE_TESTS = join(root, 'test/fixtures/prometheus-rules.test.yaml');
const DASHBOARD = join(root, 'contrib/grafana-dashboard.json');

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { uid?: string };
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: { expr: string; refId: string }[];
}

/** What apilb exports with every optional part on: a backend, a check observation, DNS, discovery, defaults. */
async function exported(): Promise<ReturnType<typeof parseExposition>> {
  const pool = new Pool();
  const proxy = new TcpProxy({ pool });
  const b = pool.add({ address: parseAddress('127.0.0.1:6443') });
  const health = new EventEmitter<{ check: [HealthCheckEvent] }>();
  const metrics = createMetrics({
    pool,
    proxy,
    health,
    version: 'test',
    counters: { dnsFailures: new Map([['api:6443', 1]]) },
    discovery: () => undefined,
    metricsListener: () => ({ bindFailures: 0 }),
  });
  health.emit('check', { backend: b, result: { ok: true, latencyMs: 1 } });
  const m = parseExposition(await metrics.render());
  metrics.close();
  await proxy.close(0);
  return m;
}

/** Sample names apilb exports (histograms as their _bucket/_sum/_count series). */
async function exportedFamilies(): Promise<Set<string>> {
  return new Set((await exported()).samples.map((s) => s.name));
}

/** Prometheus' own per-target metric: never exported by apilb, always there for a scrape job. */
const SCRAPE_UP = 'up';

/** `apilb_*`, `process_*` and `nodejs_*` metric names (and Prometheus' `up{...}`) used in a PromQL expression. */
function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\b((?:apilb|process|nodejs)_[a-z0-9_]+|up(?=\{))/g)].map((m) => m[1]!);
}

function dashboardExprs(): { title: string; expr: string }[] {
  const d = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] };
  return d.panels.flatMap((p) => (p.targets ?? []).map((tg) => ({ title: p.title, expr: tg.expr })));
}

interface Rule {
  alert: string;
  expr: string;
  annotations: Record<string, string>;
}

function ruleExprs(): Rule[] {
  const doc = parseYaml(readFileSync(RULES, 'utf8')) as { groups: { rules: Rule[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

t.test('promtool check rules and promtool test rules pass on contrib/prometheus-rules.yaml', async (tt) => {
  const check = promtool(['check', 'rules', RULES]);
  tt.equal(check.status, 0, check.output);
  tt.match(check.output, new RegExp(`SUCCESS: ${ruleExprs().length} rules found`));
  const unit = promtool(['test', 'rules', RULE_TESTS]);
  tt.equal(unit.status, 0, unit.output);
  tt.match(unit.output, /SUCCESS/);
  const alerts = ruleExprs().map((r) => r.alert);
  // The alerts the issue asks for (a backend down on many nodes, a node with no backend up, panic, check latency).
  for (const name of ['ApilbBackendDownOnManyNodes', 'ApilbNoBackendUp', 'ApilbPanicMode', 'ApilbHealthCheckLatencyHigh']) tt.ok(alerts.includes(name), name);
  // And the ones watching apilb itself (issue #16).
  for (const name of [
    'ApilbTargetDown',
    'ApilbNotReady',
    'ApilbFileDescriptorsHigh',
    'ApilbEventLoopLag',
    'ApilbDiscoveryStale',
    'ApilbConfigReloadFailed',
    'ApilbHealthCheckUnauthenticated',
  ]) {
    tt.ok(alerts.includes(name), name);
  }
});

t.test('every alert has a promtool case where it fires, and an absolute runbook_url to an existing section', async (tt) => {
  const cases = parseYaml(readFileSync(RULE_TESTS, 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] };
  const firing = new Set(cases.tests.flatMap((c) => (c.alert_rule_test ?? []).filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
  const runbook = readFileSync(join(root, 'docs/runbook.md'), 'utf8');
  // GitHub's heading anchors: lower case, spaces to dashes (alert names have neither spaces nor punctuation).
  const anchors = new Set([...runbook.matchAll(/^## (.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/ /g, '-')));
  for (const r of ruleExprs()) {
    tt.ok(firing.has(r.alert), `${r.alert} fires in a promtool test case`);
    const url = r.annotations.runbook_url ?? '';
    tt.match(url, /^https:\/\/github\.com\/apilb\/apilb\/blob\/main\/docs\/runbook\.md#[a-z0-9-]+$/, `${r.alert}: absolute runbook_url`);
    tt.ok(anchors.has(url.split('#')[1]!), `${r.alert}: docs/runbook.md has the section ${url.split('#')[1]}`);
    tt.equal(r.annotations.runbook, undefined, `${r.alert}: no relative runbook label`);
  }
});

t.test('every metric named by the rules and the dashboard is exported', async (tt) => {
  const families = await exportedFamilies();
  const used = [
    ...ruleExprs().map((r) => ({ where: `alert ${r.alert}`, expr: r.expr })),
    ...dashboardExprs().map((p) => ({ where: `panel "${p.title}"`, expr: p.expr })),
  ];
  tt.ok(used.length > 20);
  for (const u of used) {
    const names = metricNames(u.expr);
    tt.ok(names.length > 0, `${u.where} queries an apilb metric`);
    for (const n of names) if (n !== SCRAPE_UP) tt.ok(families.has(n), `${u.where}: ${n} is exported`);
  }
});

t.test('every dashboard query is valid PromQL (checked by promtool as recording rules)', async (tt) => {
  const dir = mkdtempSync(join(tmpdir(), 'apilb-dash-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // Grafana variables become what they select by default: "All" (.*) and a concrete rate interval.
  const rules = dashboardExprs().map((p, i) => ({
    record: `apilb_dashboard:query_${i}`,
    expr: p.expr.replace(/\$__rate_interval/g, '2m').replace(/\$(job|instance|backend)/g, '.*'),
  }));
  const file = join(dir, 'dashboard-queries.yaml');
  writeFileSync(file, stringifyYaml({ groups: [{ name: 'dashboard', rules }] }));
  const r = promtool(['check', 'rules', file]);
  tt.equal(r.status, 0, r.output);
  tt.match(r.output, new RegExp(`SUCCESS: ${rules.length} rules found`));
});

t.test('dashboard structure: unique ids, a datasource variable, panels within the grid', async (tt) => {
  const d = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { uid: string; panels: Panel[]; templating: { list: { name: string; type: string }[] } };
  tt.equal(d.uid, 'apilb-overview');
  tt.same(
    d.templating.list.map((v) => v.name),
    ['datasource', 'job', 'instance', 'backend'],
  );
  const ids = d.panels.map((p) => p.id);
  tt.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  for (const p of d.panels) {
    tt.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title} fits the 24-column grid`);
    if (p.type === 'row') continue;
    tt.equal(p.datasource?.uid, '${datasource}', `${p.title} uses the datasource variable`);
    tt.ok((p.targets ?? []).length > 0, `${p.title} has a query`);
  }
  const titles = d.panels.map((p) => p.title);
  // What the issue asks the dashboard to show: backend states per node, failovers, connections, check latency.
  for (const want of ['Backend state per node', 'Connections closed because their backend failed', 'Active connections per backend', 'Health-check latency']) {
    tt.ok(titles.includes(want), want);
  }
});

t.test('docs/observability.md lists every apilb_ metric with its type, and nothing else', async (tt) => {
  const m = await exported();
  const want = new Map([...m.types].filter(([name]) => name.startsWith('apilb_')));
  const doc = readFileSync(join(root, 'docs/observability.md'), 'utf8');
  const rows = [...doc.matchAll(/^\| `(apilb_[a-z0-9_]+)` \| ([a-z]+) \|/gm)].map((r) => [r[1]!, r[2]!] as const);
  tt.ok(rows.length >= 20);
  tt.same(new Map(rows), want, 'metric table of docs/observability.md = exported apilb_ families and types');
});
