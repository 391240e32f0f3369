/**
 * What the shipped unit's sandbox takes away, faced in-process: `RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX`
 * forbids AF_NETLINK, so `os.networkInterfaces()` throws ERR_SYSTEM_ERROR ("uv_interface_addresses returned Unknown
 * system error 97"). Config resolution asks it whether `[::1]:6443` belongs in the default listen list; that
 * question must never crash `apilb check-config` or `apilb run` (issue 14, finding 1). The real unit is booted by
 * test/real-node.test.ts.
 */
import t from 'tap';
import type { networkInterfaces } from 'node:os';
import { detectIPv6Loopback } from '../src/config/config.js';

/** What libuv's failure looks like from JavaScript. */
function netlinkForbidden(): never {
  throw Object.assign(new Error('A system error occurred: uv_interface_addresses returned Unknown system error 97 (Unknown system error 97)'), {
    code: 'ERR_SYSTEM_ERROR',
  });
}

const LO6 = '00000000000000000000000000000001 01 80 10 80       lo\n';
const ETH6 = 'fe800000000000000000000000000001 02 40 20 80     eth0\n';
const unreadable = (): string => {
  throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
};

const cases: { name: string; interfaces: () => ReturnType<typeof networkInterfaces>; ifInet6: () => string; want: boolean }[] = [
  {
    name: 'netlink works, ::1 on lo',
    interfaces: () => ({
      lo: [
        {
          address: '::1',
          netmask: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff',
          family: 'IPv6',
          mac: '00:00:00:00:00:00',
          internal: true,
          cidr: '::1/128',
          scopeid: 0,
        },
      ],
    }),
    ifInet6: unreadable,
    want: true,
  },
  { name: 'netlink works, no IPv6 at all', interfaces: () => ({}), ifInet6: () => LO6, want: false },
  { name: 'netlink forbidden, /proc lists ::1', interfaces: netlinkForbidden, ifInet6: () => ETH6 + LO6, want: true },
  { name: 'netlink forbidden, /proc lists no loopback', interfaces: netlinkForbidden, ifInet6: () => ETH6, want: false },
  { name: 'netlink forbidden, no /proc/net/if_inet6 (IPv6 disabled)', interfaces: netlinkForbidden, ifInet6: unreadable, want: false },
];

t.test('detectIPv6Loopback never throws; without netlink it reads /proc/net/if_inet6', async (t) => {
  for (const c of cases) {
    let got: boolean | Error;
    try {
      got = detectIPv6Loopback(c.interfaces, c.ifInet6);
    } catch (err) {
      got = err as Error;
    }
    t.equal(got, c.want, c.name);
  }
});

t.test('the /proc fallback agrees with netlink on this host', async (t) => {
  t.equal(detectIPv6Loopback(netlinkForbidden), detectIPv6Loopback(), 'same answer with and without netlink');
});
