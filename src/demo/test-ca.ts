/**
 * A throwaway certificate authority for the demo and the tests, made with the `openssl` command (present on
 * every Debian machine; no native addon). Server certificates carry the SANs an API server cert has
 * (`kubernetes`, `localhost`, `127.0.0.1`, `::1`); client certificates carry CN/O like kubelet's.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** PEM material of one leaf certificate. */
export interface LeafCert {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
}

/** A CA on disk in its own temporary directory. */
export interface TestCA {
  dir: string;
  cert: string;
  certFile: string;
  /** Issues a server certificate with the given DNS/IP SANs (default: kubernetes, localhost, 127.0.0.1, ::1). */
  server(name?: string, sans?: string[]): LeafCert;
  /** Issues a client certificate with CN and optional O (group), like `system:node:node-1` / `system:nodes`. */
  client(cn: string, org?: string): LeafCert;
  /** Deletes the directory. */
  remove(): void;
}

const DEFAULT_SANS = ['DNS:kubernetes', 'DNS:kubernetes.default', 'DNS:localhost', 'IP:127.0.0.1', 'IP:::1'];

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Creates a fresh CA (EC P-256, valid 2 days) in a new temporary directory (or `dir`). */
export function createTestCA(opts: { dir?: string; name?: string } = {}): TestCA {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'apilb-ca-'));
  const ecParams = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(
    [
      'req',
      '-x509',
      ...ecParams,
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '2',
      '-subj',
      `/CN=${opts.name ?? 'apilb-test-ca'}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  let serial = 0;
  const leaf = (base: string, subj: string, ext: string): LeafCert => {
    serial++;
    const b = `${base}-${serial}`;
    writeFileSync(join(dir, `${b}.ext`), ext);
    openssl(['req', ...ecParams, '-keyout', `${b}.key`, '-out', `${b}.csr`, '-subj', subj], dir);
    openssl(
      [
        'x509',
        '-req',
        '-in',
        `${b}.csr`,
        '-CA',
        'ca.crt',
        '-CAkey',
        'ca.key',
        '-set_serial',
        String(1000 + serial),
        '-days',
        '2',
        '-out',
        `${b}.crt`,
        '-extfile',
        `${b}.ext`,
      ],
      dir,
    );
    const certFile = join(dir, `${b}.crt`);
    const keyFile = join(dir, `${b}.key`);
    return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8'), certFile, keyFile };
  };
  return {
    dir,
    certFile: join(dir, 'ca.crt'),
    cert: readFileSync(join(dir, 'ca.crt'), 'utf8'),
    server(name = 'kube-apiserver', sans) {
      const list = sans ?? DEFAULT_SANS;
      return leaf(
        'server',
        `/CN=${name}`,
        `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${list.join(',')}\n`,
      );
    },
    client(cn, org) {
      const subj = org ? `/O=${org}/CN=${cn}` : `/CN=${cn}`;
      return leaf('client', subj, 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n');
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
