/**
 * The option model: one table that drives the command-line flags (yargs), the `APILB_*` environment
 * variables, the YAML keys and validation. A new setting is one row here plus its use.
 *
 * Names: flag `--health-check-interval` ⇔ YAML/config key `healthCheckInterval` ⇔ env
 * `APILB_HEALTH_CHECK_INTERVAL`. Repeatable flags take plural YAML keys (`--backend` ⇔ `backends:`).
 */
import { BALANCE_POLICIES } from '../pool/pool.js';
import type { Config } from './config.js';

/** The value kinds an option can have. */
export type OptionKind = 'duration' | 'int' | 'string' | 'bool' | 'address' | 'address-list' | 'enum' | 'file';

/** One row of the option table. */
export interface OptionSpec {
  /** Config key (camelCase); also the key in the resolved Config (a typo here is a compile error). */
  key: keyof Config;
  /** Flag name without dashes (kebab-case). */
  flag: string;
  /** YAML key when it differs from `key` (plural for repeatable flags). */
  fileKey?: string;
  kind: OptionKind;
  /** Default as an operator would write it (string for durations/addresses); undefined = unset. */
  default?: unknown;
  describe: string;
  /** For `enum`. */
  choices?: readonly string[];
  /** Smallest accepted value for `int` and `duration` (ms). */
  min?: number;
  /**
   * Largest accepted value for `int` and `duration` (ms; durations never exceed MAX_DURATION_MS, Node's timer
   * limit); for `address-list`, the most entries.
   */
  max?: number;
  /** Port 0 allowed (listeners only; lets tests bind a free port). */
  allowPortZero?: boolean;
  /** `https://HOST[:PORT]` accepted too, scheme stripped (backends: a kubeconfig's `server:` pasted as is). */
  allowHttpsUrl?: boolean;
  /** Help group. */
  group: string;
}

const G_DATA = 'Data path:';
const G_HEALTH = 'Health checks:';
const G_TLS = 'TLS for health checks:';
const G_OPS = 'Operations:';
const G_DISC = 'Discovery:';
const G_BAL = 'Balancing:';

/** Every option apilb understands, in help order. */
export const OPTIONS: readonly OptionSpec[] = [
  {
    key: 'listen',
    flag: 'listen',
    kind: 'address-list',
    allowPortZero: true,
    group: G_DATA,
    describe: 'address to accept clients on, repeatable (default 127.0.0.1:6443, plus [::1]:6443 when the host has IPv6 loopback)',
  },
  {
    key: 'backends',
    flag: 'backend',
    kind: 'address-list',
    allowHttpsUrl: true,
    max: 256,
    group: G_DATA,
    describe: 'API server HOST:PORT or https://HOST:PORT, repeatable (at most 256); a DNS name expands to every A/AAAA record',
  },
  {
    key: 'connectTimeout',
    flag: 'connect-timeout',
    kind: 'duration',
    default: '1s',
    min: 1,
    group: G_DATA,
    describe: 'TCP connect timeout per backend attempt; the next backend is tried after it',
  },
  {
    key: 'firstByteTimeout',
    flag: 'first-byte-timeout',
    kind: 'duration',
    default: '1s',
    min: 0,
    group: G_DATA,
    describe:
      "time a backend has to send its first byte after the client's opening message (TLS ClientHello) is complete before apilb replays the client's opening bytes to the next backend; 0 disables",
  },
  {
    key: 'maxConnections',
    flag: 'max-connections',
    kind: 'int',
    default: 10000,
    min: 1,
    group: G_DATA,
    describe: 'client connections allowed at once; excess ones are closed at once and counted',
  },
  {
    key: 'healthCheckMode',
    flag: 'health-check-mode',
    kind: 'enum',
    choices: ['https', 'tcp'],
    default: 'https',
    group: G_HEALTH,
    describe: 'https: GET --health-check-path and expect 200; tcp: connect (and TLS handshake when a CA is set)',
  },
  {
    key: 'healthCheckPath',
    flag: 'health-check-path',
    kind: 'string',
    default: '/readyz',
    group: G_HEALTH,
    describe: 'path requested by https checks; starts with /',
  },
  {
    key: 'healthCheckInterval',
    flag: 'health-check-interval',
    kind: 'duration',
    default: '2s',
    min: 100,
    group: G_HEALTH,
    describe: 'time between checks of one backend (jittered ±10%)',
  },
  {
    key: 'healthCheckTimeout',
    flag: 'health-check-timeout',
    kind: 'duration',
    default: '1s',
    min: 10,
    group: G_HEALTH,
    describe: 'a check that takes longer fails',
  },
  { key: 'rise', flag: 'rise', kind: 'int', default: 2, min: 1, max: 100, group: G_HEALTH, describe: 'consecutive successful checks that make a backend up' },
  {
    key: 'fall',
    flag: 'fall',
    kind: 'int',
    default: 2,
    min: 1,
    max: 100,
    group: G_HEALTH,
    describe: 'consecutive transport failures that make a backend down',
  },
  {
    key: 'drainTimeout',
    flag: 'drain-timeout',
    kind: 'duration',
    default: '60s',
    min: 0,
    group: G_HEALTH,
    describe:
      'connections to a draining or removed backend are closed after this (spread over --close-spread), and only while another backend is up; 0: as soon as one is',
  },
  {
    key: 'healthCheckInsecure',
    flag: 'health-check-insecure',
    kind: 'bool',
    default: false,
    group: G_TLS,
    describe: 'do not verify the API server certificate in health checks (explicit opt-out)',
  },
  { key: 'caFile', flag: 'ca-file', kind: 'file', group: G_TLS, describe: 'cluster CA bundle used to verify API servers in health checks' },
  {
    key: 'tlsServerName',
    flag: 'tls-server-name',
    kind: 'string',
    group: G_TLS,
    describe: 'name checked against the API server certificate (e.g. kubernetes); default: the backend host',
  },
  {
    key: 'clientCertFile',
    flag: 'client-cert-file',
    kind: 'file',
    group: G_TLS,
    describe: 'client certificate for health checks when anonymous auth is off (followed as it rotates; may not exist yet at start)',
  },
  {
    key: 'clientKeyFile',
    flag: 'client-key-file',
    kind: 'file',
    group: G_TLS,
    describe: 'client key for health checks (read from $CREDENTIALS_DIRECTORY when given as a bare name there)',
  },
  {
    key: 'kubeconfig',
    flag: 'kubeconfig',
    kind: 'file',
    group: G_TLS,
    describe:
      'take the CA and the client identity (certificate/key, token, tokenFile or an exec plugin) from this kubeconfig, e.g. /etc/kubernetes/kubelet.conf; followed as it changes, and may not exist yet at start',
  },
  {
    key: 'dnsRefresh',
    flag: 'dns-refresh',
    kind: 'duration',
    default: '30s',
    min: 1000,
    group: G_DISC,
    describe: 'how often DNS-named backends are re-resolved (jittered)',
  },
  {
    key: 'discoverEndpointslices',
    flag: 'discover-endpointslices',
    kind: 'bool',
    default: false,
    group: G_DISC,
    describe: 'follow the kubernetes Service EndpointSlices (needs --kubeconfig); --backend entries stay as seeds',
  },
  {
    key: 'stateDir',
    flag: 'state-dir',
    kind: 'string',
    group: G_DISC,
    describe: 'directory to persist the last discovered backend list (default $STATE_DIRECTORY when set)',
  },
  {
    key: 'adminListen',
    flag: 'admin-listen',
    kind: 'address',
    default: '127.0.0.1:9643',
    allowPortZero: true,
    group: G_OPS,
    describe: 'admin HTTP endpoint (/metrics, /healthz, /readyz, /status); keep it on loopback',
  },
  {
    key: 'shutdownTimeout',
    flag: 'shutdown-timeout',
    kind: 'duration',
    default: '10s',
    min: 0,
    group: G_OPS,
    describe: 'on SIGTERM, time open connections get to finish before they are closed',
  },
  {
    key: 'logLevel',
    flag: 'log-level',
    kind: 'enum',
    choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
    default: 'info',
    group: G_OPS,
    describe: 'log level (per-connection lines at debug)',
  },
  {
    key: 'closeSpread',
    flag: 'close-spread',
    kind: 'duration',
    default: '30s',
    min: 0,
    group: G_HEALTH,
    describe:
      "closes that can wait (drain timeout, backends removed by reload or discovery) are spread evenly over this window from a random per-node phase; 0 closes them at once. A down backend's connections are always closed at once",
  },
  {
    key: 'metricsListen',
    flag: 'metrics-listen',
    kind: 'address',
    allowPortZero: true,
    group: G_OPS,
    describe: 'extra HTTP listener serving only GET /metrics, e.g. on the node IP for Prometheus (default: off); the admin endpoint stays on --admin-listen',
  },
  {
    key: 'balance',
    flag: 'balance',
    kind: 'enum',
    choices: BALANCE_POLICIES,
    default: 'least-connections',
    group: G_BAL,
    describe:
      'how new connections pick an eligible backend: least-connections (fewest open, ties in turn; a backend that comes back fills first) or round-robin',
  },
  {
    key: 'rebalance',
    flag: 'rebalance',
    kind: 'bool',
    default: true,
    group: G_BAL,
    describe: 'move long-lived connections off over-loaded backends by closing them at a quiet moment (docs/rebalancing.md); false turns it off',
  },
  {
    key: 'rebalanceInterval',
    flag: 'rebalance-interval',
    kind: 'duration',
    default: '10s',
    min: 100,
    group: G_BAL,
    describe: 'time between rebalancing rounds (jittered ±50% per round, so nodes do not move in lockstep)',
  },
  {
    key: 'rebalanceTolerance',
    flag: 'rebalance-tolerance',
    kind: 'int',
    default: 20,
    min: 1,
    max: 100,
    group: G_BAL,
    describe: 'percent: shares are even enough when every backend is within this much of the fair share',
  },
  {
    key: 'rebalanceMaxMovesPercent',
    flag: 'rebalance-max-moves-percent',
    kind: 'int',
    default: 10,
    min: 1,
    max: 100,
    group: G_BAL,
    describe: "at most this percent of the node's connections are moved per round (at least one)",
  },
  {
    key: 'rebalanceMinAge',
    flag: 'rebalance-min-age',
    kind: 'duration',
    default: '30s',
    min: 0,
    group: G_BAL,
    describe: 'a connection younger than this is never moved',
  },
  {
    key: 'rebalanceQuiet',
    flag: 'rebalance-quiet',
    kind: 'duration',
    default: '1s',
    min: 10,
    group: G_BAL,
    describe:
      "a connection is moved only after this long without bytes either way, the last ones from the API server and sent at least this long after the client's",
  },
  {
    key: 'clientHelloTimeout',
    flag: 'client-hello-timeout',
    kind: 'duration',
    default: '10s',
    min: 0,
    group: G_DATA,
    describe:
      'time a client has after connecting to send its complete opening message (TLS ClientHello); idle or stalled clients are closed so they cannot hold --max-connections slots; 0 disables',
  },
  {
    key: 'replayBufferTotal',
    flag: 'replay-buffer-total',
    kind: 'int',
    default: 16777216,
    min: 0,
    group: G_DATA,
    describe:
      'bytes of client opening messages kept for first-byte replay by all connections together; past it new bytes are not kept and the connection commits to its backend without replay; 0 = no bound',
  },
  {
    key: 'discoveryAllowLocal',
    flag: 'discovery-allow-local',
    kind: 'bool',
    default: false,
    group: G_DISC,
    describe:
      "accept loopback and link-local (169.254.0.0/16, fe80::/10) addresses from EndpointSlices; apilb's own listeners, multicast, broadcast and unspecified addresses are refused regardless",
  },
  {
    key: 'adminAllowedHosts',
    flag: 'admin-allowed-hosts',
    kind: 'string',
    group: G_OPS,
    describe:
      'comma-separated extra names accepted in the Host header of admin requests (loopback names and the admin address are always accepted; anything else gets 421, against DNS rebinding)',
  },
];

/** Looks up an option by its config key. */
export function optionByKey(key: string): OptionSpec | undefined {
  return OPTIONS.find((o) => o.key === key);
}

/** `healthCheckInterval` → `APILB_HEALTH_CHECK_INTERVAL`. */
export function envName(spec: OptionSpec): string {
  return 'APILB_' + spec.flag.replace(/-/g, '_').toUpperCase();
}

/** The YAML key of an option (plural for repeatable flags). */
export function fileKey(spec: OptionSpec): string {
  return spec.fileKey ?? spec.key;
}
