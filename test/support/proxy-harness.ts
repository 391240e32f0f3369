/**
 * A TcpProxy over a given pool, serving on a fresh loopback listener (port 0), closed at the test's teardown.
 */
import { TcpProxy, type ProxyOptions } from '../../src/proxy/proxy.js';
import { bindListener, createListener } from '../../src/proxy/listen.js';
import { Pool } from '../../src/pool/pool.js';
import { parseAddress } from '../../src/config/values.js';

/** What {@link serveProxy} needs of a tap test. */
export interface Teardown {
  teardown(fn: () => unknown): void;
}

/** Starts a TcpProxy over `pool` with `opts` on 127.0.0.1:0; returns it and the port clients dial. */
export async function serveProxy(tt: Teardown, pool: Pool, opts: Partial<ProxyOptions> = {}): Promise<{ proxy: TcpProxy; port: number }> {
  const proxy = new TcpProxy({ ...opts, pool });
  const server = createListener();
  await bindListener(server, { host: '127.0.0.1', port: 0 });
  proxy.serve(server);
  tt.teardown(() => proxy.close(0));
  return { proxy, port: (server.address() as { port: number }).port };
}

/** {@link serveProxy} over a new Pool of `backends` (`HOST:PORT`): the data-path tests' harness. */
export async function proxyOver(tt: Teardown, backends: string[], opts: Partial<ProxyOptions> = {}): Promise<{ pool: Pool; proxy: TcpProxy; port: number }> {
  const pool = new Pool();
  for (const b of backends) pool.add({ address: parseAddress(b) });
  return { pool, ...(await serveProxy(tt, pool, opts)) };
}
