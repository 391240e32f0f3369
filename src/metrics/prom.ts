/**
 * The parts of prom-client apilb uses, loaded without prom-client's index. The index also loads the Pushgateway
 * (http, https, zlib), Summary (tdigest), cluster aggregation and, through its CPU metric, `@opentelemetry/api`
 * (for exemplars): measured 15 MB of RSS on Node.js 24 that every node would pay for nothing (issue 18,
 * bench/RESULTS.md). prom-client has no `exports` map, so its `lib/` files are importable; the paths are those of
 * prom-client 15, and test/metrics.test.ts checks the metric names these produce.
 */
import { createRequire } from 'node:module';
import type * as Prom from 'prom-client';

const require = createRequire(import.meta.url);

export const Registry = require('prom-client/lib/registry') as typeof Prom.Registry;
export type Registry = Prom.Registry;
export const Counter = require('prom-client/lib/counter') as typeof Prom.Counter;
export type Counter<T extends string = string> = Prom.Counter<T>;
export const Gauge = require('prom-client/lib/gauge') as typeof Prom.Gauge;
export type Gauge<T extends string = string> = Prom.Gauge<T>;
export const Histogram = require('prom-client/lib/histogram') as typeof Prom.Histogram;
export type Histogram<T extends string = string> = Prom.Histogram<T>;

type DefaultMetric = (registry: Registry, config: object) => void;

/** prom-client's default metrics (its `collectDefaultMetrics` list) except the CPU one, replaced below. */
const DEFAULT_METRICS = [
  'processStartTime',
  'osMemoryHeap',
  'processOpenFileDescriptors',
  'processMaxFileDescriptors',
  'eventLoopLag',
  'processResources',
  'processHandles',
  'processRequests',
  'heapSizeAndUsed',
  'heapSpacesSizeAndUsed',
  'version',
  'gc',
];

/**
 * Registers prom-client's default `process_*` and `nodejs_*` metrics in `registry`: the same names and help as
 * `collectDefaultMetrics({ register })`, with the three CPU counters implemented here (prom-client's own module
 * loads `@opentelemetry/api`).
 */
export function collectDefaultMetrics({ register: registry }: { register: Registry }): void {
  const config = { eventLoopMonitoringPrecision: 10 };
  let last = process.cpuUsage();
  // Registered in prom-client's order (user, system, total); the user counter's collect sets all three from one
  // cpuUsage() reading.
  new Counter({
    name: 'process_cpu_user_seconds_total',
    help: 'Total user CPU time spent in seconds.',
    registers: [registry],
    collect(this: Counter) {
      const now = process.cpuUsage();
      const user = (now.user - last.user) / 1e6;
      const sys = (now.system - last.system) / 1e6;
      last = now;
      this.inc(user);
      system.inc(sys);
      total.inc(user + sys);
    },
  });
  const system = new Counter({ name: 'process_cpu_system_seconds_total', help: 'Total system CPU time spent in seconds.', registers: [registry] });
  const total = new Counter({ name: 'process_cpu_seconds_total', help: 'Total user and system CPU time spent in seconds.', registers: [registry] });
  for (const name of DEFAULT_METRICS) (require(`prom-client/lib/metrics/${name}`) as DefaultMetric)(registry, config);
}
