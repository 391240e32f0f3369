// A port held by someone else on --metrics-listen never keeps apilb from starting: the bind is retried with the
// admin endpoint's backoff, said at error level and counted, and the listener comes up once the port is free.
import t from 'tap';
import { request } from 'node:http';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { resolveConfig } from '../src/config/config.js';
import { startDaemon } from '../src/daemon.js';
import { dial, echoServer, readBytes, until } from './support/net.js';
import { captureLogger } from './support/logs.js';

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('a taken --metrics-listen port: apilb starts and serves, retries the bind, binds once the port is free', async (tt) => {
  const holder: Server = createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
  const metricsPort = (holder.address() as AddressInfo).port;
  const backend = await echoServer();
  tt.teardown(() => backend.close());
  const { logger, lines } = captureLogger('info');
  const config = resolveConfig({
    flags: {
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      metricsListen: `127.0.0.1:${metricsPort}`,
      backends: [backend.address],
      healthCheckMode: 'tcp',
    },
    env: {},
  });
  const d = await startDaemon(config, { logger });
  tt.teardown(() => d.close(0));
  tt.ok(d.readiness().ready, 'started and ready although the metrics port is taken');
  const s = await dial((d.listeners[0]!.address() as AddressInfo).port);
  s.write('ping');
  tt.equal((await readBytes(s, 4)).toString(), 'ping', 'the data path serves');
  s.destroy();
  const failed = lines.filter((l) => l.event === 'metrics_bind_failed');
  tt.equal(failed.length, 1, 'logged once so far');
  tt.equal(failed[0]!.level, 'error', 'at error level');
  tt.equal(failed[0]!.code, 'APILB_ERR_ADDRESS_IN_USE');
  tt.match(String(failed[0]!.err), /--metrics-listen/, 'the message names the option that set the address');
  tt.match(String(failed[0]!.msg), /keeps serving clients/);
  tt.match(await d.metrics.render(), /^apilb_metrics_listener_bind_failures_total 1$/m, 'counted');
  // Real time (the daemon's health checks need it): the first retry comes 1 s later, the next one 2 s after that.
  await until(() => d.metricsBindFailures === 2, 'retried after 1 s', 5000);
  tt.equal(lines.filter((l) => l.event === 'metrics_bind_failed').at(-1)!.retryInMs, 2000, 'backing off: next retry in 2 s');
  // The holder lets go (the only way to test the successful retry is to free that very port).
  await new Promise<void>((r) => holder.close(() => r()));
  await until(() => d.metricsServer!.server.listening, 'bound on the next retry', 5000);
  const m = await get(metricsPort, '/metrics');
  tt.equal(m.status, 200, 'the metrics listener answers');
  tt.match(m.body, /^apilb_metrics_listener_bind_failures_total 2$/m, 'two failed binds, then success');
  tt.ok(
    lines.some((l) => l.event === 'metrics_bound'),
    'recovery logged',
  );
});

t.test('without --metrics-listen there is no metrics-listener series', async (tt) => {
  const backend = await echoServer();
  tt.teardown(() => backend.close());
  const config = resolveConfig({
    flags: { listen: ['127.0.0.1:0'], adminListen: '127.0.0.1:0', backends: [backend.address], healthCheckMode: 'tcp' },
    env: {},
  });
  const d = await startDaemon(config, { logger: captureLogger('info').logger });
  tt.teardown(() => d.close(0));
  tt.notMatch(await d.metrics.render(), /apilb_metrics_listener_bind_failures_total/);
});
