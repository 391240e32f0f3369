/**
 * ClientOpening as a property: for any stream of TLS-like records and any way the network cuts it into chunks,
 * the opening is complete exactly when a whole-buffer reading of the same bytes says the first handshake
 * message (or a malformed or non-handshake header) has fully arrived. The chunking table of hostile clients
 * lives in test/hostile-clients.test.ts; this checks the streaming arithmetic against a reference.
 */
import t from 'tap';
import fc from 'fast-check';
import { ClientOpening } from '../src/proxy/client-opening.js';

const MAX_RECORD = 16384 + 2048;
const MAX_HANDSHAKE = 65536;

/**
 * Reference: the smallest prefix length of `b` after which the opening is complete (Infinity: never within `b`).
 * Reads the whole buffer at once, record by record, collecting handshake payload bytes in an array.
 */
function completeAt(b: Uint8Array): number {
  let off = 0;
  const payload: number[] = [];
  let msgLen = -1;
  for (;;) {
    if (off + 5 > b.length) return Infinity;
    const len = (b[off + 3]! << 8) | b[off + 4]!;
    if (b[off] !== 0x16 || len === 0 || len > MAX_RECORD) return off + 5;
    for (let k = 0; k < len; k++) {
      const at = off + 5 + k;
      if (at >= b.length) return Infinity;
      payload.push(b[at]!);
      if (payload.length === 4) {
        msgLen = (payload[1]! << 16) | (payload[2]! << 8) | payload[3]!;
        if (msgLen > MAX_HANDSHAKE) return at + 1;
      }
      if (payload.length >= 4 && payload.length - 4 === msgLen) return at + 1;
    }
    off += 5 + len;
  }
}

/** Records with mostly-handshake types and lengths from 0 to beyond the TLS limit; bodies at most 40 bytes. */
const record = fc
  .record({
    type: fc.constantFrom(0x16, 0x16, 0x16, 0x17),
    len: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.constantFrom(MAX_RECORD, MAX_RECORD + 1, 0xffff)),
    body: fc.uint8Array({ maxLength: 40 }),
  })
  .map(({ type, len, body }) => {
    const r = new Uint8Array(5 + Math.min(len, body.length));
    r.set([type, 3, 1, len >> 8, len & 0xff]);
    r.set(body.subarray(0, len), 5);
    return r;
  });

/** A stream of records whose first handshake message length (payload bytes 1..3) is set from `msgLen`. */
const stream = fc
  .record({
    records: fc.array(record, { minLength: 1, maxLength: 6 }),
    msgLen: fc.oneof(fc.integer({ min: 0, max: 120 }), fc.constantFrom(MAX_HANDSHAKE, MAX_HANDSHAKE + 1, 0xffffff)),
  })
  .map(({ records, msgLen }) => {
    const all = new Uint8Array(records.reduce((n, r) => n + r.length, 0));
    let off = 0;
    const payloadAt: number[] = [];
    for (const r of records) {
      all.set(r, off);
      for (let k = 5; k < r.length; k++) payloadAt.push(off + k);
      off += r.length;
    }
    // Payload byte i of the handshake stream sits at payloadAt[i] (if the records got that far).
    [msgLen >> 16, (msgLen >> 8) & 0xff, msgLen & 0xff].forEach((v, i) => {
      if (payloadAt[i + 1] !== undefined) all[payloadAt[i + 1]!] = v;
    });
    return all;
  });

t.test('complete after any chunking of any prefix exactly when the whole-buffer reference says so', async (tt) => {
  fc.assert(
    fc.property(stream, fc.array(fc.nat(), { maxLength: 8 }), fc.nat(), (bytes, cutsRaw, prefixRaw) => {
      const prefix = bytes.subarray(0, prefixRaw % (bytes.length + 1));
      const cuts = [...new Set(cutsRaw.map((c) => c % (prefix.length + 1)))].sort((a, b) => a - b);
      const o = new ClientOpening();
      let from = 0;
      for (const c of [...cuts, prefix.length]) {
        o.feed(prefix.subarray(from, c));
        from = c;
      }
      return o.complete === prefix.length >= completeAt(bytes);
    }),
    { numRuns: 2000 },
  );
  tt.pass('2000 random streams, prefixes and chunkings agree with the reference');
});
