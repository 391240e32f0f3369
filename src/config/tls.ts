/**
 * TLS material for health checks (and discovery's API calls): the cluster CA, an optional client
 * certificate/key and an optional bearer token, read from files or from a kubeconfig. apilb never terminates
 * client TLS; this is only for the connections apilb itself opens to API servers. Loading, validation and
 * following the files as they rotate live in credentials.ts.
 */
import type { ConnectionOptions } from 'node:tls';
import type { Config } from './config.js';
import { loadCredentials } from './credentials.js';

/** PEM material (and a token); undefined parts are simply not used. */
export interface TlsMaterial {
  ca?: string;
  cert?: string;
  key?: string;
  /** Bearer token sent as `Authorization: Bearer ...` (kubeconfig `token`/`tokenFile`). Never logged. */
  token?: string;
  /** Name to verify the server certificate against (overrides the backend host). */
  serverName?: string;
  /** Skip verification (explicit --health-check-insecure). */
  insecure: boolean;
}

/**
 * Loads the TLS material the configuration names (see {@link loadCredentials}); files that do not exist yet are
 * left out. Explicit files win over the kubeconfig's entries.
 */
export function loadTlsMaterial(cfg: Config): TlsMaterial {
  return loadCredentials(cfg).material;
}

/** The TLS part of a client connection's options (node:tls `connect`, node:https `Agent`). */
export type TlsClientOptions = Pick<ConnectionOptions, 'ca' | 'cert' | 'key' | 'servername' | 'rejectUnauthorized'>;

/**
 * TLS options for a connection apilb opens to an API server: verified against `tls.ca` unless `tls.insecure`,
 * with the client identity when there is one. `servername` undefined: Node sends no SNI for an IP literal and
 * verifies the certificate's IP SAN. Undefined parts are left out (never passed as `undefined`).
 */
export function tlsClientOptions(tls: TlsMaterial, servername: string | undefined): TlsClientOptions {
  const opts: TlsClientOptions = { rejectUnauthorized: !tls.insecure };
  if (tls.ca) opts.ca = tls.ca;
  if (tls.cert) opts.cert = tls.cert;
  if (tls.key) opts.key = tls.key;
  if (servername) opts.servername = servername;
  return opts;
}
