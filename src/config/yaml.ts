/**
 * The YAML parser, loaded on first use: a node run with flags or `APILB_*` variables only never reads YAML, and
 * the module costs 5-10 MB of RSS (issue 18). `require` keeps config loading synchronous; yaml ships CommonJS.
 */
import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';

let yaml: typeof Yaml | undefined;

/** The `yaml` module, required on the first call. */
export function loadYaml(): typeof Yaml {
  return (yaml ??= createRequire(import.meta.url)('yaml') as typeof Yaml);
}
