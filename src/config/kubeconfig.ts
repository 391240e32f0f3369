/**
 * Reading the CA and client credentials out of an existing kubeconfig (e.g. the kubelet's), from file paths
 * (relative to the kubeconfig's directory, as kubectl resolves them) or inline base64 `*-data` fields.
 */
import { readFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ApilbError } from '../errors.js';

/** Credentials found in a kubeconfig's current context. */
export interface KubeconfigCredentials {
  ca?: string;
  cert?: string;
  key?: string;
  /** The cluster entry's `tls-server-name`, if set. */
  serverName?: string;
  /** The cluster's `server` URL. */
  server?: string;
}

type Named<T> = { name?: string } & T;
interface KubeconfigDoc {
  'current-context'?: string;
  contexts?: Named<{ context?: { cluster?: string; user?: string } }>[];
  clusters?: Named<{ cluster?: Record<string, string> }>[];
  users?: Named<{ user?: Record<string, string> }>[];
}

function fail(path: string, reason: string, cause?: unknown): never {
  throw new ApilbError('APILB_ERR_KUBECONFIG_INVALID', `kubeconfig "${path}": ${reason}`, { cause });
}

/**
 * Loads the current context's cluster CA and user client certificate/key. Throws APILB_ERR_KUBECONFIG_INVALID.
 *
 * A referenced file that cannot be read (a hardened unit's dynamic user cannot read the kubelet's root-only
 * `/var/lib/kubelet/pki/kubelet-client-current.pem`) is looked up by its base name in `$CREDENTIALS_DIRECTORY`,
 * where `LoadCredential=kubelet-client-current.pem:/var/lib/kubelet/pki/kubelet-client-current.pem` puts it.
 * `env` defaults to `process.env`.
 */
export function loadKubeconfigCredentials(path: string, env: NodeJS.ProcessEnv = process.env): KubeconfigCredentials {
  let doc: KubeconfigDoc;
  try {
    doc = parseYaml(readFileSync(path, 'utf8')) as KubeconfigDoc;
  } catch (e) {
    fail(path, `cannot be read or parsed: ${(e as Error).message.split('\n')[0]}`, e);
  }
  if (!doc || typeof doc !== 'object') fail(path, 'is empty');
  const ctxName = doc['current-context'];
  const ctx = (doc.contexts ?? []).find((c) => c.name === ctxName) ?? (doc.contexts?.length === 1 ? doc.contexts[0] : undefined);
  if (!ctx?.context) fail(path, ctxName ? `current-context "${ctxName}" is not among its contexts` : 'has no current-context');
  const cluster = (doc.clusters ?? []).find((c) => c.name === ctx.context!.cluster)?.cluster;
  const user = (doc.users ?? []).find((u) => u.name === ctx.context!.user)?.user;
  if (!cluster) fail(path, `cluster "${ctx.context.cluster}" of context "${ctx.name}" is missing`);
  const base = dirname(path);
  const pick = (entry: Record<string, string> | undefined, dataKey: string, fileKey: string, what: string): string | undefined => {
    if (!entry) return undefined;
    if (entry[dataKey]) {
      const text = Buffer.from(entry[dataKey]!, 'base64').toString('utf8');
      if (!text.includes('-----BEGIN')) fail(path, `${dataKey} is not base64-encoded PEM`);
      return text;
    }
    if (entry[fileKey]) {
      const p = isAbsolute(entry[fileKey]!) ? entry[fileKey]! : resolve(base, entry[fileKey]!);
      try {
        return readFileSync(p, 'utf8');
      } catch (e) {
        const credDir = env.CREDENTIALS_DIRECTORY;
        if (credDir) {
          try {
            return readFileSync(join(credDir, basename(p)), 'utf8');
          } catch {
            // Report the path the kubeconfig names, below.
          }
        }
        fail(path, `${what} file "${p}" (${fileKey}) cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, e);
      }
    }
    return undefined;
  };
  const out: KubeconfigCredentials = {};
  const ca = pick(cluster, 'certificate-authority-data', 'certificate-authority', 'CA');
  if (ca) out.ca = ca;
  const cert = pick(user, 'client-certificate-data', 'client-certificate', 'client certificate');
  if (cert) out.cert = cert;
  const key = pick(user, 'client-key-data', 'client-key', 'client key');
  if (key) out.key = key;
  if (cluster['tls-server-name']) out.serverName = cluster['tls-server-name'];
  if (cluster.server) out.server = cluster.server;
  if (Boolean(out.cert) !== Boolean(out.key)) fail(path, 'has a client certificate without a key or a key without a certificate');
  return out;
}
