/**
 * node:http, taken with `process.getBuiltinModule` instead of an ESM import. On Node.js 22 and later,
 * `import … from 'node:http'` builds the module namespace from every export, and one of them is a lazy getter
 * (`WebSocket`) that loads Node's bundled undici: 12.7 MB of RSS on Node.js 24 for a WebSocket apilb never
 * opens (issue 18, bench/RESULTS.md). Type-only imports from 'node:http' cost nothing and stay as they are.
 */
const http = process.getBuiltinModule('node:http');

export const createServer = http.createServer;
export const get = http.get;

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
