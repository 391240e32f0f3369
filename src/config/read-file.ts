/**
 * Bounded reads of operator-named files (config, kubeconfig, CA, certificates, keys, tokens). A path that names a
 * directory, a device (`/dev/zero`) or a huge file must give a clear error, not an unbounded read.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

/** Largest file apilb reads as configuration or credentials: 1 MiB (a CA bundle of ~500 certificates). */
export const MAX_FILE_BYTES = 1024 * 1024;

/** A file could not be read; `code` is the errno code (`ENOENT`, `EISDIR`, ...) or `EFBIG` past the bound. */
export class FileReadError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'FileReadError';
    this.code = code;
  }
}

/**
 * Reads at most `max` bytes (default {@link MAX_FILE_BYTES}) of `path` as UTF-8. Throws FileReadError naming the
 * file (never its contents): `ENOENT` does not exist, `EISDIR` is a directory, `EFBIG` is larger than `max`
 * (devices like /dev/zero included: they are read only up to the bound).
 */
export function readBoundedFile(path: string, what: string, max = MAX_FILE_BYTES): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw describe(e, path, what);
  }
  try {
    if (fstatSync(fd).isDirectory()) throw new FileReadError('EISDIR', `${what} "${path}" is a directory, not a file`);
    const buf = Buffer.allocUnsafe(Math.min(max + 1, 64 * 1024));
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        throw describe(e, path, what);
      }
      if (n === 0) break;
      total += n;
      if (total > max) throw new FileReadError('EFBIG', `${what} "${path}" is larger than ${Math.round(max / 1024)} KiB: is it the right file?`);
      chunks.push(Buffer.from(buf.subarray(0, n)));
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function describe(e: unknown, path: string, what: string): FileReadError {
  if (e instanceof FileReadError) return e;
  const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
  const reason =
    code === 'ENOENT'
      ? 'does not exist'
      : code === 'EISDIR'
        ? 'is a directory, not a file'
        : code === 'EACCES'
          ? 'is not readable (EACCES: permission denied)'
          : `cannot be read (${code})`;
  return new FileReadError(code, `${what} "${path}" ${reason}`);
}

/**
 * True when an operator-supplied value looks like file contents or a secret rather than a path or a setting
 * (a PEM block, several lines, a very long string). Such values are never echoed in messages.
 */
export function looksLikeContent(value: string): boolean {
  return value.includes('-----BEGIN') || value.includes('\n') || value.length > 1024;
}
