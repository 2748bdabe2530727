import { createHash } from 'node:crypto';
import { userInfo } from 'node:os';
import { canonicalJson } from './entity-tags';

export const REDACTED = '[redacted]';

/** Field names whose values are (or may be) secrets, at any depth, metadata included. */
const SECRET_LIKE = /secret|passw|private|token|credential|hash|pem|signature/i;
/** Secret-sounding names that hold no secret (a rotation's grace deadline). */
const NOT_SECRET = new Set(['previousSecretValidUntil']);

/** A copy of `value` in which every secret-like field's value is REDACTED. */
export function redact(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redact);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value).map(([key, inner]) => [key, SECRET_LIKE.test(key) && !NOT_SECRET.has(key) ? REDACTED : redact(inner)]),
  );
}

/** The top-level fields that differ, as `{ field: { before, after } }`, redacted; `ignore` fields left out. */
export function changedFields(
  before: Record<string, unknown>,
  after: Record<string, unknown>,
  ignore: string[] = [],
): Record<string, unknown> {
  const changes: Record<string, unknown> = {};
  for (const field of new Set([...Object.keys(before), ...Object.keys(after)])) {
    if (ignore.includes(field) || canonicalJson(before[field]) === canonicalJson(after[field])) continue;
    changes[field] = { before: before[field] ?? null, after: after[field] ?? null };
  }
  return redact(changes) as Record<string, unknown>;
}

/** The admin API's actor: which admin token made the change, without revealing it. */
export function adminTokenActor(token: string): string {
  return `admin-token:${createHash('sha256').update(token, 'utf8').digest('hex').slice(0, 12)}`;
}

/** The CLI's actor: the operating system user that ran it. */
export function cliActor(): string {
  try {
    return `cli:${userInfo().username}`;
  } catch {
    return `cli:${process.env.USER ?? 'unknown'}`;
  }
}

/** Changes nobody asked for through an admin interface (the default key pair made at first start). */
export const SYSTEM_ACTOR = 'system';
