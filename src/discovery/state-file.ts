/**
 * The discovery state file, `<stateDir>/endpoints.json`: the last good list of API servers EndpointSlice
 * discovery applied, so that a node rebooting during a control-plane outage (or after the seeds went stale)
 * still knows every API server before its first successful LIST. It is tagged with the cluster CA's
 * fingerprints: a file written for another cluster (a node re-joined elsewhere, a copied disk image) is ignored.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { formatAddress, parseAddress, type Address } from '../config/values.js';

/** File name inside the state directory. */
export const STATE_FILE_NAME = 'endpoints.json';

/** Current format version; a file with another version is ignored (never misread). */
export const STATE_FILE_VERSION = 1;

/** The JSON document on disk. */
export interface StateFileDoc {
  version: number;
  /**
   * SHA-256 of the DER of every certificate in the cluster CA bundle that wrote the file, lowercase hex. A file
   * matches when it shares at least one fingerprint with the current bundle, so a CA rotation that keeps the old
   * CA in the bundle for a while does not throw the list away.
   */
  caFingerprints: string[];
  /** ISO time of the write. */
  savedAt: string;
  /** `HOST:PORT` of every discovered API server. */
  backends: string[];
}

/** Outcome of {@link loadStateFile}. `loaded` carries the addresses; the others say why nothing was loaded. */
export type StateFileLoad =
  | { result: 'loaded'; backends: Address[]; savedAt: string }
  | { result: 'missing' }
  | { result: 'other-cluster'; fileFingerprints: string[] }
  | { result: 'invalid'; reason: string };

/**
 * SHA-256 fingerprints (lowercase hex, no colons) of every certificate in a PEM bundle, in bundle order.
 * Returns [] when the text holds no certificate.
 */
export function caFingerprints(pem: string): string[] {
  const out: string[] = [];
  const re = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g;
  for (let m = re.exec(pem); m; m = re.exec(pem)) {
    const der = Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
    out.push(createHash('sha256').update(der).digest('hex'));
  }
  return out;
}

/**
 * Reads `<dir>/endpoints.json` synchronously (it is small and read once, at startup, before the first LIST).
 * Never throws: a missing, unreadable, malformed or foreign file is reported, and the caller falls back to the
 * seeds.
 */
export function loadStateFile(dir: string, fingerprints: readonly string[]): StateFileLoad {
  let text: string;
  try {
    text = readFileSync(join(dir, STATE_FILE_NAME), 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return { result: 'missing' };
    return { result: 'invalid', reason: `cannot be read: ${code ?? (e as Error).message}` };
  }
  let doc: Partial<StateFileDoc>;
  try {
    doc = JSON.parse(text) as Partial<StateFileDoc>;
  } catch (e) {
    return { result: 'invalid', reason: `is not JSON: ${(e as Error).message}` };
  }
  if (!doc || typeof doc !== 'object') return { result: 'invalid', reason: 'is not a JSON object' };
  if (doc.version !== STATE_FILE_VERSION) return { result: 'invalid', reason: `has version ${String(doc.version)}, expected ${STATE_FILE_VERSION}` };
  if (!Array.isArray(doc.caFingerprints) || !doc.caFingerprints.every((f) => typeof f === 'string')) {
    return { result: 'invalid', reason: 'has no caFingerprints' };
  }
  if (!doc.caFingerprints.some((f) => fingerprints.includes(f))) return { result: 'other-cluster', fileFingerprints: doc.caFingerprints };
  if (!Array.isArray(doc.backends)) return { result: 'invalid', reason: 'has no backends list' };
  const backends: Address[] = [];
  for (const b of doc.backends) {
    try {
      backends.push(parseAddress(String(b)));
    } catch (e) {
      return { result: 'invalid', reason: `backend ${JSON.stringify(b)}: ${(e as Error).message}` };
    }
  }
  return { result: 'loaded', backends, savedAt: typeof doc.savedAt === 'string' ? doc.savedAt : '' };
}

let tmpSeq = 0;

/**
 * Writes `<dir>/endpoints.json` atomically: a temporary file in the same directory is written and fsynced, then
 * renamed over the old one, so a crash or power loss leaves either the old or the new list, never half of one.
 * Creates `dir` (mode 0700) when missing. Rejects on I/O errors (the caller logs them; discovery goes on).
 */
export async function saveStateFile(dir: string, backends: readonly Address[], fingerprints: readonly string[], now: Date = new Date()): Promise<void> {
  const doc: StateFileDoc = {
    version: STATE_FILE_VERSION,
    caFingerprints: [...fingerprints],
    savedAt: now.toISOString(),
    backends: backends.map(formatAddress),
  };
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const final = join(dir, STATE_FILE_NAME);
  const tmp = join(dir, `.${STATE_FILE_NAME}.${process.pid}.${++tmpSeq}.tmp`);
  // Exclusive creation: a temporary name planted in advance (a symlink to a file elsewhere) is removed, never
  // followed; if something recreates it between the unlink and the open, the open fails instead of writing through it.
  await unlink(tmp).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(JSON.stringify(doc, null, 2) + '\n');
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fh.close();
  try {
    await rename(tmp, final);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  // The rename is durable only once the directory entry is; not every filesystem allows fsync on a directory.
  const dh = await open(dir, 'r').catch(() => undefined);
  if (!dh) return;
  try {
    await dh.sync();
  } catch {
    // EINVAL/EISDIR on some filesystems: the rename is done, only its durability is up to the filesystem.
  } finally {
    await dh.close();
  }
}
