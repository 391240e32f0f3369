/**
 * TLS material for health checks (and discovery's API calls): the cluster CA and an optional client
 * certificate/key, read from files or from a kubeconfig. apilb never terminates client TLS; this is only for the
 * connections apilb itself opens to API servers.
 */
import { readFileSync } from 'node:fs';
import { ApilbError } from '../errors.js';
import type { Config } from './config.js';
import { loadKubeconfigCredentials } from './kubeconfig.js';

/** PEM material; undefined parts are simply not used. */
export interface TlsMaterial {
  ca?: string;
  cert?: string;
  key?: string;
  /** Name to verify the server certificate against (overrides the backend host). */
  serverName?: string;
  /** Skip verification (explicit --health-check-insecure). */
  insecure: boolean;
}

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new ApilbError('APILB_ERR_TLS_CONFIG', `cannot read ${what} "${path}": ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Loads the TLS material the configuration names. Explicit files win over the kubeconfig's entries, so an
 * operator can take the client identity from the kubelet's kubeconfig and still point at another CA.
 */
export function loadTlsMaterial(cfg: Config): TlsMaterial {
  const m: TlsMaterial = { insecure: cfg.healthCheckInsecure };
  if (cfg.kubeconfig) {
    const k = loadKubeconfigCredentials(cfg.kubeconfig);
    if (k.ca) m.ca = k.ca;
    if (k.cert) m.cert = k.cert;
    if (k.key) m.key = k.key;
    if (k.serverName) m.serverName = k.serverName;
  }
  if (cfg.caFile) m.ca = readPem(cfg.caFile, 'CA file');
  if (cfg.clientCertFile) m.cert = readPem(cfg.clientCertFile, 'client certificate');
  if (cfg.clientKeyFile) m.key = readPem(cfg.clientKeyFile, 'client key');
  if (cfg.tlsServerName) m.serverName = cfg.tlsServerName;
  return m;
}
