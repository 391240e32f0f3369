/**
 * Entry run by failover.test.ts inside a network namespace it created (`ip netns exec`): runs scenarios (a JSON
 * array in argv[2]) one after the other with everything on that namespace's loopback, and prints one
 * `RESULT <json>` line per scenario on stdout (`ERROR <json>` for one that threw).
 */
import { createTestCA } from '../../src/demo/test-ca.js';
import { runScenario, type Scenario } from './failover-scenarios.js';

const list = JSON.parse(process.argv[2] ?? '') as Scenario[];
const ca = createTestCA();
const other = createTestCA({ name: 'other-ca' });
try {
  for (const sc of list) {
    try {
      const out = await runScenario(sc, ca, other, { inNetns: true });
      process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
    } catch (err) {
      process.stdout.write(`ERROR ${JSON.stringify({ name: sc.name, error: (err as Error).stack ?? String(err) })}\n`);
      process.exitCode = 1;
    }
  }
} finally {
  ca.remove();
  other.remove();
}
