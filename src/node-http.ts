/**
 * node:http, taken with `process.getBuiltinModule` instead of an ESM import. On Node.js 22 and later,
 * `import … from 'node:http'` builds the module namespace from every export, and one of them is a lazy getter
 * (`WebSocket`) that loads Node's bundled undici: 12.7 MB of RSS on Node.js 24 for a WebSocket apilb never
 * opens (issue 18, bench/RESULTS.md). Type-only imports from 'node:http' cost nothing and stay as they are.
 */
const http = process.getBuiltinModule('node:http');

export const createServer = http.createServer;
export const get = http.get;
