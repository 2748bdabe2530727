import { createHash } from 'node:crypto';
import { AdminError } from './errors';

/**
 * JSON with object keys sorted at every level: the same record gives the same text however it
 * was built or stored (a patched copy, a document read back from either store, or a jsonb column
 * should a store ever use one, which does not keep key order), so tags and "did anything change"
 * comparisons do not depend on key order.
 */
export function canonicalJson(value: unknown): string | undefined {
  return JSON.stringify(value, (_key, inner: unknown) =>
    inner !== null && typeof inner === 'object' && !Array.isArray(inner)
      ? Object.fromEntries(Object.entries(inner).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : inner,
  );
}

/**
 * The strong ETag of a stored record: a digest of its whole stored form, so any stored change
 * (secret hashes and key versions included) gives a new tag, and the digest reveals none of it.
 */
export function entityTag(record: unknown): string {
  return `"${createHash('sha256')
    .update(canonicalJson(record) ?? '')
    .digest('base64url')
    .slice(0, 27)}"`;
}

/** A parsed If-Match header (RFC 9110 §13.1.1): `*`, or the strong and weak tags it lists. */
export type IfMatch = { any: true } | { any: false; tags: { weak: boolean; tag: string }[] };

const ETAG_CHARACTER = /[\x21\x23-\x7e\x80-\xff]/;

/** Undefined when the header is absent (the write goes ahead unconditionally, as Otoroshi's clients expect). */
export function parseIfMatch(header: string | string[] | undefined): IfMatch | undefined {
  if (header === undefined) return undefined;
  const value = (Array.isArray(header) ? header.join(',') : header).trim();
  if (value === '*') return { any: true };
  const tags: { weak: boolean; tag: string }[] = [];
  const malformed = () =>
    new AdminError(400, 'If-Match must be * or a comma-separated list of entity tags such as "abc" (RFC 9110 §13.1.1)', [
      { path: 'If-Match', message: 'not an entity tag list' },
    ]);
  let at = 0;
  const skipSpace = () => {
    while (value[at] === ' ' || value[at] === '\t') at += 1;
  };
  while (at < value.length) {
    skipSpace();
    if (value[at] === ',') {
      at += 1;
      continue;
    }
    const weak = value.startsWith('W/', at);
    if (weak) at += 2;
    if (value[at] !== '"') throw malformed();
    const end = value.indexOf('"', at + 1);
    if (end < 0) throw malformed();
    const opaque = value.slice(at + 1, end);
    for (const character of opaque) if (!ETAG_CHARACTER.test(character)) throw malformed();
    tags.push({ weak, tag: `"${opaque}"` });
    at = end + 1;
    skipSpace();
    if (at < value.length && value[at] !== ',') throw malformed();
  }
  return { any: false, tags };
}

/**
 * Strong comparison (RFC 9110 §8.8.3.2): a weak tag never matches. Called inside the write's
 * transaction on the stored record, so the check and the write are one atomic step.
 */
export function assertMatches(ifMatch: IfMatch | undefined, record: unknown, what: string): void {
  if (ifMatch === undefined || ifMatch.any) return;
  const current = entityTag(record);
  if (ifMatch.tags.some((candidate) => !candidate.weak && candidate.tag === current)) return;
  throw new AdminError(412, `${what} has changed since the ETag you sent in If-Match: read it again (GET) and retry with its new ETag`);
}
