/**
 * The parts of prom-client apilb uses, loaded without prom-client's index. The index also loads the Pushgateway
 * (http, https, zlib), Summary (tdigest), cluster aggregation and, through its CPU metric, `@opentelemetry/api`
 * (for exemplars): measured 15 MB of RSS on Node.js 24 that every node would pay for nothing (issue 18,
 * bench/RESULTS.md). prom-client has no `exports` map, so its `lib/` files are importable; the paths are those of
 * prom-client 15, and test/metrics.test.ts checks the metric names these produce.
 */
import { createRequire } from 'node:module';
import { createHistogram, performance } from 'node:perf_hooks';
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

/**
 * prom-client's default metrics (its `collectDefaultMetrics` list) except the CPU and event-loop-lag ones, replaced
 * below.
 */
const DEFAULT_METRICS = [
  'processStartTime',
  'osMemoryHeap',
  'processOpenFileDescriptors',
  'processMaxFileDescriptors',
  'processResources',
  'processHandles',
  'processRequests',
  'heapSizeAndUsed',
  'heapSpacesSizeAndUsed',
  'version',
  'gc',
];

/**
 * Sampling interval of the event-loop delay histogram. prom-client samples every 10 ms: 100 wake-ups a second,
 * half of an idle apilb's CPU (issue 18: 0.62 % of a core idle with it, 0.25 % without). Every 100 ms is enough
 * to see the stalls that matter to failover (the ApilbEventLoopLag alert fires at 250 ms).
 */
const LAG_RESOLUTION_MS = 100;

/**
 * Registers prom-client's default `process_*` and `nodejs_*` metrics in `registry`: the same names and help as
 * `collectDefaultMetrics({ register })`, with the three CPU counters implemented here (prom-client's own module
 * loads `@opentelemetry/api`) and the event-loop lag sampled every {@link LAG_RESOLUTION_MS}. Returns a function
 * that stops the lag sampler.
 */
export function collectDefaultMetrics({ register: registry }: { register: Registry }): () => void {
  const config = {};
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
  const stopLag = registerEventLoopLag(registry);
  for (const name of DEFAULT_METRICS) (require(`prom-client/lib/metrics/${name}`) as DefaultMetric)(registry, config);
  return stopLag;
}

/**
 * prom-client's `nodejs_eventloop_lag_*` gauges (same names and meaning: how late the loop was) from a timer every
 * {@link LAG_RESOLUTION_MS} that records its own lateness. Not `monitorEventLoopDelay`: its samples include the
 * interval (idle reads 100.1 ms at a 100 ms resolution) and its reset() drops the first interval after it, so a
 * stall that starts right after a scrape would be missed. Reset at each scrape, like prom-client's.
 */
function registerEventLoopLag(registry: Registry): () => void {
  const histogram = createHistogram();
  let last = performance.now();
  const timer = setInterval(function sampleEventLoopLag() {
    const now = performance.now();
    // Nanoseconds late; record() takes integers ≥ 1.
    histogram.record(Math.max(1, Math.round((now - last - LAG_RESOLUTION_MS) * 1e6)));
    last = now;
  }, LAG_RESOLUTION_MS);
  timer.unref();
  const seconds = (ns: number): number => (histogram.count === 0 ? 0 : ns / 1e9);
  const gauge = (name: string, help: string, collect?: (this: Gauge) => void): Gauge =>
    new Gauge({ name: `nodejs_eventloop_lag_${name}`, help, registers: [registry], ...(collect ? { collect } : {}) });
  // One collect sets every gauge from one histogram reading (prom-client's arrangement).
  gauge('seconds', 'Lag of event loop in seconds.', function collectLag(this: Gauge) {
    const start = process.hrtime.bigint();
    setImmediate(() => this.set(Number(process.hrtime.bigint() - start) / 1e9));
    min.set(seconds(histogram.min));
    max.set(seconds(histogram.max));
    mean.set(seconds(histogram.mean));
    stddev.set(seconds(histogram.stddev));
    p50.set(seconds(histogram.percentile(50)));
    p90.set(seconds(histogram.percentile(90)));
    p99.set(seconds(histogram.percentile(99)));
    histogram.reset();
  });
  const min = gauge('min_seconds', 'The minimum recorded event loop delay.');
  const max = gauge('max_seconds', 'The maximum recorded event loop delay.');
  const mean = gauge('mean_seconds', 'The mean of the recorded event loop delays.');
  const stddev = gauge('stddev_seconds', 'The standard deviation of the recorded event loop delays.');
  const p50 = gauge('p50_seconds', 'The 50th percentile of the recorded event loop delays.');
  const p90 = gauge('p90_seconds', 'The 90th percentile of the recorded event loop delays.');
  const p99 = gauge('p99_seconds', 'The 99th percentile of the recorded event loop delays.');
  return () => clearInterval(timer);
}
