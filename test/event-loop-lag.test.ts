// nodejs_eventloop_lag_*: sampled every 100 ms (not prom-client's 10 ms: 100 wake-ups a second at idle), with the
// values still say how late the loop was (a stall of S reads between S − 100 ms and S).
import t from 'tap';
import { collectDefaultMetrics, Registry } from '../src/metrics/prom.js';
import { parseExposition } from './support/prom-text.js';

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a 400 ms stall reads 0.3–0.4 s (the stall less up to one 100 ms interval); an idle loop reads ~0; a scrape resets the window', async (t) => {
  const registry = new Registry();
  const stop = collectDefaultMetrics({ register: registry });
  t.teardown(stop);
  // Idle for a few samples (waiting on timers is the subject here: the histogram samples real time).
  await pause(450);
  let m = parseExposition(await registry.metrics());
  t.ok(m.get('nodejs_eventloop_lag_p50_seconds')! < 0.05, `idle p50 ${m.get('nodejs_eventloop_lag_p50_seconds')} s: the 100 ms interval is not counted as lag`);
  t.ok(m.get('nodejs_eventloop_lag_max_seconds')! < 0.1, `idle max ${m.get('nodejs_eventloop_lag_max_seconds')} s`);
  const t0 = Date.now();
  while (Date.now() - t0 < 400); // a stall
  await pause(250);
  m = parseExposition(await registry.metrics());
  const max = m.get('nodejs_eventloop_lag_max_seconds')!;
  t.ok(max >= 0.29 && max < 0.5, `after a 400 ms stall, max ${max} s`);
  t.ok(m.get('nodejs_eventloop_lag_p99_seconds')! >= 0.29, 'the stall is the p99 of so few samples');
  await pause(350);
  m = parseExposition(await registry.metrics());
  t.ok(m.get('nodejs_eventloop_lag_max_seconds')! < 0.1, 'the next scrape covers only the time since the last one');
  for (const name of ['min', 'mean', 'stddev', 'p90'])
    t.ok(Number.isFinite(m.get(`nodejs_eventloop_lag_${name}_seconds`)), `nodejs_eventloop_lag_${name}_seconds exported`);
  t.ok(Number.isFinite(m.get('nodejs_eventloop_lag_seconds')), 'nodejs_eventloop_lag_seconds exported');
});

t.test("before any sample everything reads 0 (not the empty histogram's sentinel)", async (t) => {
  const registry = new Registry();
  const stop = collectDefaultMetrics({ register: registry });
  t.teardown(stop);
  const m = parseExposition(await registry.metrics());
  t.equal(m.get('nodejs_eventloop_lag_min_seconds'), 0);
  t.equal(m.get('nodejs_eventloop_lag_max_seconds'), 0);
});
