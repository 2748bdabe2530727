import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, readlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError } from '../config/load-config';

/**
 * A secret kept in a file that several processes may share (a volume of docker-compose): the
 * token authority's generated admin token hash and data plane token, which ext-authz reads.
 */

/**
 * A secret file that is there but cannot be used (a dangling symbolic link): a deployment
 * problem, so a ConfigError, which the services' start reports in one line (exit 2).
 */
export class SecretFileError extends ConfigError {}

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
    const theirs = readSecretFile(file);
    if (theirs === undefined) throw new SecretFileError(unreadableEntry(file));
    return { value: theirs, created: false };
  } finally {
    unlinkSync(aside);
  }
}

/**
 * Why `file` is there (link refused with EEXIST) yet reads as absent: a symbolic link whose target
 * does not exist. Generating a value would keep it nowhere, so nothing is generated.
 */
function unreadableEntry(file: string): string {
  let target: string | undefined;
  try {
    target = readlinkSync(file);
  } catch {
    // Not a link (or gone since): said without a target.
  }
  return target === undefined
    ? `${file} exists but cannot be read; remove it so that a new secret is generated there`
    : `${file} is a symbolic link to ${resolve(dirname(file), target)}, which does not exist; ` +
        'create the target, or remove the link so that a new secret is generated there';
}
