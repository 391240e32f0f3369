/**
 * node:http, taken with `process.getBuiltinModule` instead of an ESM import. On Node.js 22 and later,
 * `import … from 'node:http'` builds the module namespace from every export, and one of them is a lazy getter
 * (`WebSocket`) that loads Node's bundled undici: 12.7 MB of RSS on Node.js 24 for a WebSocket apilb never
 * opens (issue 18, bench/RESULTS.md). Type-only imports from 'node:http' cost nothing and stay as they are.
 */
import type { RequestListener, Server } from 'node:http';

const http = process.getBuiltinModule('node:http');

export const createServer = http.createServer;
export const get = http.get;

/**
 * An HTTP server for the admin and metrics listeners, whose clients are scrapers and humans: short timeouts (10 s
 * per request, 5 s for the headers and between keep-alive requests) keep a stuck or hostile client from holding a
 * socket. Callers add their own socket or header limits.
 */
export function createAdminHttpServer(handler: RequestListener): Server {
  const server = createServer(handler);
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  return server;
}

/** Stops `server` and closes its connections, idle or busy; resolves at once when it is not listening. */
export function closeHttpServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * Reads a body (an IncomingMessage or any stream of Buffers) to its end as UTF-8 text. Rejects with "the answer
 * is larger than `limit` bytes" as soon as it grows past `limit` (the caller drops the connection), and with the
 * stream's error if it fails.
 */
export async function readBodyText(body: AsyncIterable<Buffer>, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > limit) throw new Error(`the answer is larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
