/**
 * The demo environment: a throwaway CA, `count` kube-apiserver stand-ins on loopback, a client certificate for
 * `demo-user` (group system:masters) and a kubeconfig using it, so `apilb demo` can put apilb in front and the user
 * can point kubectl at apilb.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OptionError } from '../errors.js';
import { createTestCA, type LeafCert, type TestCA } from './test-ca.js';
import { startFakeApiServer, type FakeApiServer } from './fake-apiserver.js';

/** Options of {@link startDemoBackends}. */
export interface DemoOptions {
  /** Number of stand-in API servers, 1..16. Default 3. Named apiserver-1..N. */
  count?: number;
  /**
   * Directory for the CA, certificates and kubeconfig (must exist; left in place by close() so the user can keep
   * the kubeconfig). Default: a new temporary directory, removed by close().
   */
  dir?: string;
  /** Server URL written into the kubeconfig (where apilb listens). Default `https://127.0.0.1:6443`. */
  server?: string;
  /** Host the stand-ins listen on. Default `127.0.0.1`. */
  host?: string;
  /** Watch event interval of the stand-ins. Default 1000 ms; 0 = initial event only. */
  watchIntervalMs?: number;
}

/** A running demo environment. */
export interface DemoBackends {
  ca: TestCA;
  servers: FakeApiServer[];
  /** Client certificate CN=demo-user O=system:masters. */
  client: LeafCert;
  /** Kubeconfig with the CA and client cert/key inline (`*-data`), cluster/user/context `apilb-demo`. */
  kubeconfigPath: string;
  /** `HOST:PORT` of each stand-in, in order. */
  backends: string[];
  /** Closes every stand-in; removes the directory if it was a temporary one. */
  close(): Promise<void>;
}

/** What {@link writeKubeconfig} needs. */
export interface KubeconfigSpec {
  /** Where to write it (mode 0600). */
  path: string;
  /** Server URL, e.g. `https://127.0.0.1:6443`. */
  server: string;
  /** PEM CA. */
  caCert: string;
  /** PEM client certificate. */
  cert: string;
  /** PEM client key. */
  key: string;
  /** Name of the cluster, user and context. Default `apilb-demo`. */
  name?: string;
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');

/** Writes a kubeconfig with one cluster/user/context, credentials inline as base64 `*-data`. Returns `path`. */
export function writeKubeconfig(spec: KubeconfigSpec): string {
  const name = spec.name ?? 'apilb-demo';
  const text = [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    `- name: ${name}`,
    '  cluster:',
    `    server: ${JSON.stringify(spec.server)}`,
    `    certificate-authority-data: ${b64(spec.caCert)}`,
    'users:',
    `- name: ${name}`,
    '  user:',
    `    client-certificate-data: ${b64(spec.cert)}`,
    `    client-key-data: ${b64(spec.key)}`,
    'contexts:',
    `- name: ${name}`,
    '  context:',
    `    cluster: ${name}`,
    `    user: ${name}`,
    `current-context: ${name}`,
    '',
  ].join('\n');
  writeFileSync(spec.path, text, { mode: 0o600 });
  return spec.path;
}

/** Starts the demo environment. Throws OptionError on bad options. */
export async function startDemoBackends(opts: DemoOptions = {}): Promise<DemoBackends> {
  const count = opts.count ?? 3;
  if (!Number.isInteger(count) || count < 1 || count > 16) throw new OptionError('count', `must be an integer 1..16, got ${count}`);
  const server = opts.server ?? 'https://127.0.0.1:6443';
  if (!/^https:\/\/\S+$/.test(server)) throw new OptionError('server', `must be an https:// URL, got ${JSON.stringify(server)}`);
  const ca = createTestCA(opts.dir !== undefined ? { dir: opts.dir, name: 'apilb-demo-ca' } : { name: 'apilb-demo-ca' });
  const servers: FakeApiServer[] = [];
  const close = async (): Promise<void> => {
    await Promise.all(servers.map((s) => s.close()));
    if (opts.dir === undefined) ca.remove();
  };
  try {
    const client = ca.client('demo-user', 'system:masters');
    for (let i = 1; i <= count; i++) {
      servers.push(
        await startFakeApiServer({
          ca,
          name: `apiserver-${i}`,
          ...(opts.host !== undefined ? { host: opts.host } : {}),
          ...(opts.watchIntervalMs !== undefined ? { watchIntervalMs: opts.watchIntervalMs } : {}),
        }),
      );
    }
    const kubeconfigPath = writeKubeconfig({ path: join(ca.dir, 'kubeconfig'), server, caCert: ca.cert, cert: client.cert, key: client.key });
    return { ca, servers, client, kubeconfigPath, backends: servers.map((s) => s.address), close };
  } catch (err) {
    await close();
    throw err;
  }
}
