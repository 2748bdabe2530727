import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * A secret kept in a file that several processes may share (a volume of docker-compose): the
 * token authority's generated admin token hash and data plane token, which ext-authz reads.
 */

/** The file's content without surrounding whitespace; undefined when the file does not exist. */
export function readSecretFile(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/**
 * The secret in `file`, or `make()` written there (mode 0600) when there is none. The file appears
 * whole or not at all (written aside, then hard-linked into place), so when several processes
 * start at once on one folder exactly one creates it and every other reads that one.
 */
export function readOrCreateSecretFile(file: string, make: () => string): { value: string; created: boolean } {
  const existing = readSecretFile(file);
  if (existing !== undefined) return { value: existing, created: false };
  mkdirSync(dirname(file), { recursive: true });
  const value = make();
  const aside = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  writeFileSync(aside, value, { mode: 0o600 });
  try {
    linkSync(aside, file);
    return { value, created: true };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    // Another process created it between our read and our link: theirs wins.
    return { value: readSecretFile(file) ?? value, created: false };
  } finally {
    unlinkSync(aside);
  }
}
