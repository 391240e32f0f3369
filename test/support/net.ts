/**
 * Loopback socket helpers for data-path tests: backends that echo, sink, refuse, or never answer, and a
 * client that collects everything. Everything binds port 0 and is closed by the caller's teardown.
 */
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net';

/** A started loopback server with its address and a registry of accepted sockets. */
export interface TestServer {
  server: Server;
  port: number;
  address: string;
  sockets: Set<Socket>;
  accepted: number;
  close(): Promise<void>;
}

/** Starts a TCP server on 127.0.0.1:0 with `onSocket` for each connection (allowHalfOpen). */
export async function startServer(onSocket: (s: Socket, srv: TestServer) => void, opts: { host?: string } = {}): Promise<TestServer> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true });
  const ts: TestServer = {
    server,
    port: 0,
    address: '',
    sockets,
    accepted: 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        if (!server.listening) return resolve();
        server.close(() => resolve());
      }),
  };
  server.on('connection', (s) => {
    ts.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onSocket(s, ts);
  });
  await new Promise<void>((resolve) => server.listen(0, opts.host ?? '127.0.0.1', resolve));
  ts.port = (server.address() as AddressInfo).port;
  ts.address = `${opts.host ?? '127.0.0.1'}:${ts.port}`;
  return ts;
}

/** Echo backend: writes back what it reads; ends when the client ends (half-close aware). Tags with `name`. */
export function echoServer(name?: string): Promise<TestServer> {
  return startServer((s) => {
    if (name) s.write(`${name}\n`);
    s.pipe(s);
  });
}

/** A server that accepts and never reads or writes (a hung process from the client's point of view). */
export function silentServer(): Promise<TestServer> {
  return startServer((s) => s.pause());
}

/** A server that speaks first: writes `banner` on accept, then echoes. */
export function bannerServer(banner: string): Promise<TestServer> {
  return startServer((s) => {
    s.write(banner);
    s.pipe(s);
  });
}

/** Connects to 127.0.0.1:`port`; resolves once connected. */
export function dial(port: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Reads everything until the peer ends (or the socket closes); resolves with the bytes. */
export function readAll(s: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('close', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}

/** Reads until at least `n` bytes arrived. */
export function readBytes(s: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    function onData(c: Buffer): void {
      chunks.push(c);
      got += c.length;
      if (got >= n) {
        s.off('data', onData);
        s.off('error', reject);
        s.off('close', onClose);
        s.pause();
        resolve(Buffer.concat(chunks));
      }
    }
    function onClose(): void {
      reject(new Error(`socket closed after ${got} of ${n} bytes`));
    }
    s.on('data', onData);
    s.once('error', reject);
    s.once('close', onClose);
    s.resume();
  });
}

/** Resolves when `s` emits close. */
export function closed(s: Socket): Promise<boolean> {
  return new Promise((resolve) => {
    if (s.destroyed && s.closed) return resolve(true);
    s.once('close', (hadError) => resolve(hadError));
  });
}

/** What a truthy value of type `T` can be. */
export type Truthy<T> = Exclude<T, undefined | null | false | 0 | ''>;

/**
 * The tests' one polling loop: polls `fn` until it returns truthy, at most `timeoutMs` (default 5000). Rejects with
 * `what` on timeout; an error thrown by `fn` rejects at once (index.ts's waitFor retries through errors instead).
 */
export async function until<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 5000, intervalMs = 10): Promise<Truthy<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as Truthy<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolves when the peer ended or closed `s` (resumes it: readBytes leaves sockets paused, hiding the FIN). */
export function ended(s: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (s.readableEnded || s.destroyed) return resolve();
    s.once('end', () => resolve());
    s.once('close', () => resolve());
    s.resume();
  });
}
