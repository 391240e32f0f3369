/**
 * Properties of the config address parser (`HOST:PORT`, `[v6]:PORT`): what formatAddress writes parses back to the
 * same address, ports outside the range are refused, unbracketed IPv6 is refused with a bracketed hint, and any
 * string either parses to a valid address that round-trips or throws a message naming the input.
 */
import t from 'tap';
import fc from 'fast-check';
import { isIP } from 'node:net';
import { formatAddress, parseAddress } from '../src/config/values.js';

const port = fc.integer({ min: 1, max: 65535 });
const host = fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain());

t.test('property: formatAddress output parses back to the same address (IPv4, IPv6, DNS names)', async (tt) => {
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(host, port, fc.constantFrom('', ' ', '\t'), (h, p, pad) => {
        const text = `${pad}${formatAddress({ host: h, port: p })}${pad}`;
        const got = parseAddress(text);
        if (got.host !== h || got.port !== p) throw new Error(`${JSON.stringify(text)} parsed as ${JSON.stringify(got)}`);
      }),
      { numRuns: 1000 },
    ),
  );
});

t.test('property: ports outside 1-65535 are refused (0 only where allowed)', async (tt) => {
  const bad = fc.oneof(fc.constant(0), fc.integer({ min: 65536, max: 99999 }));
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(host, bad, (h, p) => {
        const text = formatAddress({ host: h, port: p });
        let msg = '';
        try {
          parseAddress(text);
        } catch (err) {
          msg = (err as Error).message;
        }
        if (!msg.includes('out of range')) throw new Error(`${text}: ${msg || 'accepted'}`);
        if (p === 0 && parseAddress(text, { allowPortZero: true }).port !== 0) throw new Error(`${text}: port 0 refused with allowPortZero`);
      }),
      { numRuns: 500 },
    ),
  );
});

t.test('property: IPv6 without brackets is refused with a bracketed suggestion', async (tt) => {
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(fc.ipV6(), port, (h, p) => {
        const text = `${h}:${p}`;
        try {
          parseAddress(text);
        } catch (err) {
          const msg = (err as Error).message;
          if (!/write it in brackets with a port, like \[/.test(msg)) throw new Error(`${text}: ${msg}`, { cause: err });
          return;
        }
        throw new Error(`${text} accepted`);
      }),
      { numRuns: 500 },
    ),
  );
});

t.test('property: any string parses to a valid address that round-trips, or throws a message quoting it', async (tt) => {
  // Strings over the alphabet addresses are made of, so that many of them come close to valid.
  const chars = fc.constantFrom(...'0123456789abcdefABCDEF.:[]-_ '.split(''));
  const text = fc.oneof(
    fc.string(),
    fc.string({ unit: chars, maxLength: 30 }),
    fc.tuple(host, port).map(([h, p]) => `${h}:${p}`),
  );
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(text, (s) => {
        let got;
        try {
          got = parseAddress(s);
        } catch (err) {
          if (!(err instanceof Error) || !err.message.includes('"'))
            throw new Error(`unhelpful error for ${JSON.stringify(s)}: ${String(err)}`, { cause: err });
          return;
        }
        if (!Number.isInteger(got.port) || got.port < 1 || got.port > 65535) throw new Error(`${JSON.stringify(s)}: port ${got.port}`);
        if (got.host.length === 0 || (got.host.includes(':') && isIP(got.host) !== 6)) throw new Error(`${JSON.stringify(s)}: host ${got.host}`);
        const again = parseAddress(formatAddress(got));
        if (again.host !== got.host || again.port !== got.port) throw new Error(`${JSON.stringify(s)} does not round-trip`);
      }),
      { numRuns: 2000 },
    ),
  );
});
