/**
 * Reading the CA and the user's credentials out of an existing kubeconfig (e.g. the kubelet's): client
 * certificate and key (file paths relative to the kubeconfig's directory, as kubectl resolves them, or inline
 * base64 `*-data`), `token`, `tokenFile` and `exec` (parsed here, run by credentials.ts). `auth-provider` and basic
 * auth users are refused by name: apilb never falls back to anonymous checks silently.
 */
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { ApilbError } from '../errors.js';
import { parseExecSpec, type ExecSpec } from './exec-credential.js';
import { FileReadError, looksLikeContent, readBoundedFile } from './read-file.js';
import { loadYaml } from './yaml.js';

/** Credentials found in a kubeconfig's current context. */
export interface KubeconfigCredentials {
  ca?: string;
  cert?: string;
  key?: string;
  /** Bearer token (`token`, or the trimmed contents of `tokenFile`). Never logged. */
  token?: string;
  /** The user's exec plugin, when it has one (credentials.ts runs it). */
  exec?: ExecSpec;
  /** Where each part came from, for messages: a file path, or `kubeconfig "P": client-key-data`. */
  sources: { ca?: string; cert?: string; key?: string; token?: string };
  /** The cluster entry's `tls-server-name`, if set. */
  serverName?: string;
  /** The cluster's `server` URL. */
  server?: string;
  /** Every file the kubeconfig references (found or not): watched for changes. */
  files: string[];
  /** Referenced files that do not exist yet (kubelet's TLS bootstrap has not written them): not fatal. */
  missing: string[];
}

type Named<T> = { name?: string } & T;
interface KubeconfigDoc {
  'current-context'?: string;
  contexts?: Named<{ context?: { cluster?: string; user?: string } }>[];
  clusters?: Named<{ cluster?: Record<string, unknown> }>[];
  users?: Named<{ user?: Record<string, unknown> }>[];
}

function fail(path: string, reason: string, cause?: unknown): never {
  throw new ApilbError('APILB_ERR_KUBECONFIG_INVALID', `kubeconfig "${path}": ${reason}`, { cause });
}

/** User fields that name a way of authenticating apilb does not implement, and what to use instead. */
const UNSUPPORTED_AUTH: Record<string, string> = {
  'auth-provider': 'an auth-provider plugin (auth-provider), which apilb does not support',
  username: 'basic authentication (username/password), which kube-apiserver no longer supports',
  password: 'basic authentication (username/password), which kube-apiserver no longer supports',
};

/**
 * Loads the current context's cluster CA and user credentials. Throws APILB_ERR_KUBECONFIG_INVALID for a
 * kubeconfig that cannot be used (unparsable, no context, an `auth-provider` user, a malformed `exec`, a
 * referenced path that is a directory),
 * and FileReadError(ENOENT) when the kubeconfig itself does not exist. Referenced files that do not exist yet are
 * listed in `missing` and left out.
 *
 * A referenced file that cannot be read for lack of permission is looked up by its base name in
 * `$CREDENTIALS_DIRECTORY` (`LoadCredential=`). `env` defaults to `process.env`.
 */
export function loadKubeconfigCredentials(path: string, env: NodeJS.ProcessEnv = process.env): KubeconfigCredentials {
  let text: string;
  try {
    text = readBoundedFile(path, 'kubeconfig');
  } catch (e) {
    if (e instanceof FileReadError && e.code === 'ENOENT') throw e;
    fail(path, (e as Error).message.replace(`kubeconfig "${path}" `, ''), e);
  }
  let doc: KubeconfigDoc;
  try {
    doc = loadYaml().parse(text) as KubeconfigDoc;
  } catch (e) {
    // The first line of yaml's message names the position, never the contents.
    fail(path, `cannot be parsed: ${(e as Error).message.split('\n')[0]}`, e);
  }
  if (doc === null || doc === undefined) fail(path, 'is empty');
  if (typeof doc !== 'object' || Array.isArray(doc)) fail(path, 'is not a kubeconfig (not a YAML mapping; a certificate or key file?)');
  const ctxName = doc['current-context'];
  const ctx = (doc.contexts ?? []).find((c) => c.name === ctxName) ?? (doc.contexts?.length === 1 ? doc.contexts[0] : undefined);
  if (!ctx?.context) fail(path, ctxName ? `current-context "${ctxName}" is not among its contexts` : 'has no current-context');
  const cluster = (doc.clusters ?? []).find((c) => c.name === ctx.context!.cluster)?.cluster;
  const userName = ctx.context.user;
  const user = (doc.users ?? []).find((u) => u.name === userName)?.user;
  if (!cluster) fail(path, `cluster "${ctx.context.cluster}" of context "${ctx.name}" is missing`);
  if (user) {
    for (const [field, what] of Object.entries(UNSUPPORTED_AUTH)) {
      if (user[field] !== undefined) {
        fail(
          path,
          `user "${userName}" uses ${what}: give apilb a kubeconfig whose user has client-certificate/client-key (like kubelet.conf), token, tokenFile or exec`,
        );
      }
    }
  }
  const base = dirname(path);
  const out: KubeconfigCredentials = { sources: {}, files: [], missing: [] };
  const readRef = (p: string, what: string, fileKey: string): string | undefined => {
    out.files.push(p);
    try {
      return readBoundedFile(p, `${what} file`);
    } catch (e) {
      const code = (e as FileReadError).code;
      const credDir = env.CREDENTIALS_DIRECTORY;
      if (credDir && (code === 'ENOENT' || code === 'EACCES')) {
        try {
          return readBoundedFile(join(credDir, basename(p)), `${what} file`);
        } catch {
          // Report the path the kubeconfig names, below.
        }
      }
      if (code === 'ENOENT') {
        out.missing.push(p);
        return undefined;
      }
      fail(path, `${(e as Error).message} (${fileKey})`, e);
    }
  };
  const pick = (entry: Record<string, unknown> | undefined, dataKey: string, fileKey: string, what: string): { text: string; source: string } | undefined => {
    if (!entry) return undefined;
    const data = entry[dataKey];
    if (data !== undefined) {
      if (typeof data !== 'string') fail(path, `${dataKey} must be a base64 string`);
      const text = Buffer.from(data, 'base64').toString('utf8');
      if (!text.includes('-----BEGIN')) fail(path, `${dataKey} is not base64-encoded PEM`);
      return { text, source: `kubeconfig "${path}" ${dataKey}` };
    }
    const ref = entry[fileKey];
    if (ref === undefined) return undefined;
    if (typeof ref !== 'string' || ref.trim() === '') fail(path, `${fileKey} must be a file path`);
    if (looksLikeContent(ref)) fail(path, `${fileKey} holds what looks like file contents (not shown), not a path: use ${dataKey} for inline PEM (base64)`);
    const p = isAbsolute(ref) ? ref : resolve(base, ref);
    const text = readRef(p, what, fileKey);
    return text === undefined ? undefined : { text, source: p };
  };
  const ca = pick(cluster, 'certificate-authority-data', 'certificate-authority', 'CA');
  if (ca) [out.ca, out.sources.ca] = [ca.text, ca.source];
  const cert = pick(user, 'client-certificate-data', 'client-certificate', 'client certificate');
  const key = pick(user, 'client-key-data', 'client-key', 'client key');
  const certSet = user?.['client-certificate'] !== undefined || user?.['client-certificate-data'] !== undefined;
  const keySet = user?.['client-key'] !== undefined || user?.['client-key-data'] !== undefined;
  if (certSet !== keySet) fail(path, 'has a client certificate without a key or a key without a certificate');
  // Both or neither: a certificate whose key is not there yet (or the reverse) cannot be presented.
  if (cert && key) {
    [out.cert, out.sources.cert] = [cert.text, cert.source];
    [out.key, out.sources.key] = [key.text, key.source];
  }
  if (user?.token !== undefined) {
    if (typeof user.token !== 'string' || user.token.trim() === '') fail(path, `user "${userName}" has an empty token`);
    [out.token, out.sources.token] = [user.token.trim(), `kubeconfig "${path}" token`];
  } else if (user?.tokenFile !== undefined) {
    if (typeof user.tokenFile !== 'string' || user.tokenFile.trim() === '') fail(path, 'tokenFile must be a file path');
    if (looksLikeContent(user.tokenFile)) fail(path, 'tokenFile holds what looks like file contents (not shown), not a path');
    const p = isAbsolute(user.tokenFile) ? user.tokenFile : resolve(base, user.tokenFile);
    const text = readRef(p, 'token', 'tokenFile');
    if (text !== undefined) {
      const token = text.trim();
      if (token === '' || /\s/.test(token)) fail(path, `token file "${p}" (tokenFile) ${token === '' ? 'is empty' : 'holds more than one word'}`);
      [out.token, out.sources.token] = [token, p];
    }
  }
  if (user?.exec !== undefined) {
    try {
      out.exec = parseExecSpec(user.exec, path);
    } catch (e) {
      fail(path, `user "${userName}": ${(e as Error).message}`);
    }
  }
  if (typeof cluster['tls-server-name'] === 'string') out.serverName = cluster['tls-server-name'];
  if (typeof cluster.server === 'string') out.server = cluster.server;
  return out;
}
