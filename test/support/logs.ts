/** Log capture for tests: a real pino logger (apilb's createLogger) whose JSON lines are parsed into an array. */
import { Writable } from 'node:stream';
import { createLogger } from '../../src/logging.js';

/** A pino logger whose lines land in `lines` (parsed). */
export function captureLogger(level = 'debug'): { logger: ReturnType<typeof createLogger>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger(level, dest), lines };
}
