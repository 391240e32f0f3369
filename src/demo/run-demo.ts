/**
 * `apilb demo` (what `npm start` runs): the real daemon in front of three local kube-apiserver stand-ins with a
 * throwaway CA, all on loopback, and the lines to paste to see kubectl and curl go through apilb.
 */
import { resolveConfig, type Layer, type ResolveInput } from '../config/config.js';
import { formatAddress } from '../config/values.js';
import { installSignalHandlers, startDaemon } from '../daemon.js';
import { listenerAddress } from '../proxy/listen.js';
import { startDemoBackends, writeKubeconfig } from './demo.js';

/**
 * Starts the stand-ins and apilb with the operator's flags (listen, admin, timeouts...) and the demo's backends
 * and CA. `exit` ends the process (only the CLI passes process.exit). Resolves once everything is up.
 */
export async function runDemo(input: ResolveInput, exit: (code: number) => void): Promise<void> {
  // Validate the operator's flags first (no backends needed yet), so a bad flag fails before anything starts.
  const base = resolveConfig({ ...input, allowNoBackends: true, flags: { ...input.flags, healthCheckInsecure: true } });
  // The stand-ins live in a temporary directory (CA key included) that close() removes on exit.
  const demo = await startDemoBackends({ server: `https://${formatAddress(base.listen[0]!)}` });
  const flags: Layer = { ...input.flags, backends: demo.backends, caFile: demo.ca.certFile };
  let daemon;
  try {
    const config = resolveConfig({ ...input, flags });
    daemon = await startDaemon(config, { resolveInput: { ...input, flags } });
  } catch (err) {
    await demo.close();
    throw err;
  }
  const d = daemon;
  installSignalHandlers(d, (code) => {
    void demo.close().finally(() => exit(code));
  });
  // With --listen HOST:0 the kernel picks the port: point the kubeconfig at the address actually bound.
  const url = `https://${listenerAddress(d.listeners[0]!)}`;
  const c = demo.client;
  writeKubeconfig({ path: demo.kubeconfigPath, server: url, caCert: demo.ca.cert, cert: c.cert, key: c.key });
  const admin = d.adminAddress;
  process.stderr.write(
    [
      '',
      `apilb demo: apilb listens on ${d.listeners.map(listenerAddress).join(' and ')} in front of ${demo.backends.length} API-server stand-ins (${demo.backends.join(', ')}).`,
      `TLS is passed through untouched: the stand-ins see your client certificate (CN=demo-user) through apilb.`,
      '',
      'Try, in another terminal:',
      `  kubectl --kubeconfig ${demo.kubeconfigPath} get --raw /readyz`,
      `  kubectl --kubeconfig ${demo.kubeconfigPath} auth whoami`,
      `  curl --cacert ${demo.ca.certFile} --cert ${c.certFile} --key ${c.keyFile} ${url}/whoami   # answered by a different apiserver-N each time`,
      `  curl http://${admin}/status        # or: node dist/cli.js status --admin-listen ${admin}`,
      `  curl http://${admin}/metrics`,
      '',
      'Press Ctrl-C to stop (graceful shutdown; a second Ctrl-C exits at once). The demo CA and kubeconfig are deleted on exit.',
      '',
    ].join('\n'),
  );
}
