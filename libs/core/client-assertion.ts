import { createHash, createPublicKey } from 'node:crypto';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';
import { LRUCache } from 'lru-cache';
import type { ApiKeyRecord, PublicJwks } from './model';

/**
 * `private_key_jwt` client authentication (RFC 7523 §2.2 and §3, OpenID Connect Core §9): the
 * client signs a short-lived JWT with a private key whose public half its API key holds (`jwks`)
 * or points to (`jwks_uri`). Verification is jose's (`jwtVerify` over a local JWKS), with the
 * rules below on top; every failure is a reason the caller turns into `invalid_client`.
 */

export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/**
 * What assertions may be signed with: asymmetric only, so `none` and every HS* are refused before
 * any key is looked at. Ed25519 is EdDSA under its fully-specified name (RFC 9864), which
 * openid-client (oauth4webapi) writes for an Ed25519 key.
 */
export const ASSERTION_ALGORITHMS = ['RS256', 'PS256', 'ES256', 'EdDSA', 'Ed25519'] as const;
/** An assertion's `exp` may be at most this far ahead (seconds): a leaked one is worth little, and its jti is kept only that long. */
export const ASSERTION_MAX_LIFETIME_S = 300;
/** Clock skew allowed on `exp`, `nbf` and `iat` (seconds). */
export const ASSERTION_CLOCK_TOLERANCE_S = 30;
const MAX_JTI_LENGTH = 256;

export type AssertionFailure = 'no_jwks' | 'jwks_unavailable' | 'invalid_assertion' | 'replayed_assertion';

/** The `jti`s seen, shared by every replica through the store; see AssertionReplayRepository. */
export interface AssertionReplays {
  /** Records `id` until `expiresAt` (epoch ms); false when it is already recorded and not expired at `now`. */
  useOnce(id: string, expiresAt: number, now: number): Promise<boolean>;
}

/** What verifying an assertion needs beyond the key: who it must be addressed to, where remote keys come from, the seen jtis. */
export interface AssertionContext {
  /** Accepted `aud` values: the token endpoint's URL and the issuer (any one of them, or an array holding one). */
  audiences: readonly string[];
  /** The keys at a `jwks_uri` (fetched and cached, remote-jwks.ts); `refresh` after a kid was not found in them. */
  remoteJwks?: (uri: string, refresh: boolean) => Promise<PublicJwks>;
  replays: AssertionReplays;
}

/** The claimed client of an assertion, read without verifying anything (to find the key, and for the failure limits): `sub`, else `iss`. */
export function assertionSubject(assertion: string): string {
  const parts = assertion.split('.');
  if (parts.length !== 3 || !/^[A-Za-z0-9_-]+$/.test(parts[1])) return '';
  try {
    const claims: unknown = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    if (typeof claims !== 'object' || claims === null) return '';
    const { sub, iss } = claims as Record<string, unknown>;
    return typeof sub === 'string' ? sub : typeof iss === 'string' ? iss : '';
  } catch {
    return '';
  }
}

/** Imported key sets, by their JSON: an API key's keys are imported once, not on every request. */
const localSets = new LRUCache<string, ReturnType<typeof createLocalJWKSet>>({ max: 1_000 });

function localSet(jwks: PublicJwks): ReturnType<typeof createLocalJWKSet> {
  const text = JSON.stringify(jwks);
  let set = localSets.get(text);
  if (!set) {
    set = createLocalJWKSet(jwks as JSONWebKeySet);
    localSets.set(text, set);
  }
  return set;
}

class AssertionRefused extends Error {
  constructor(readonly reason: AssertionFailure) {
    super(reason);
  }
}

async function verifyWith(assertion: string, jwks: PublicJwks, clientId: string, context: AssertionContext, now: number) {
  const { payload } = await jwtVerify(assertion, localSet(jwks), {
    algorithms: [...ASSERTION_ALGORITHMS],
    issuer: clientId,
    subject: clientId,
    audience: [...context.audiences],
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'jti'],
    clockTolerance: ASSERTION_CLOCK_TOLERANCE_S,
    currentDate: new Date(now),
  });
  return payload;
}

/**
 * Verifies `assertion` as `apiKey`'s: signature by one of its keys (the header's `kid` picks it;
 * without a kid, the one key that fits the alg), `iss` = `sub` = the client id, `aud` one of
 * `context.audiences`, `exp` present, not past and at most ASSERTION_MAX_LIFETIME_S ahead, a
 * `jti`, and that jti not used before (recorded until the assertion expires). Returns undefined
 * when it is valid, else why not. The jti is recorded last, so only a valid assertion uses it up.
 */
export async function verifyClientAssertion(
  assertion: string,
  apiKey: ApiKeyRecord,
  context: AssertionContext,
  now: number,
): Promise<AssertionFailure | undefined> {
  try {
    let payload: Awaited<ReturnType<typeof verifyWith>>;
    if (apiKey.jwks) {
      payload = await verifyWith(assertion, apiKey.jwks, apiKey.clientId, context, now).catch(refused);
    } else if (apiKey.jwks_uri && context.remoteJwks) {
      const uri = apiKey.jwks_uri;
      const keys = await context.remoteJwks(uri, false).catch(unavailable);
      try {
        payload = await verifyWith(assertion, keys, apiKey.clientId, context, now);
      } catch (error) {
        // A kid we do not know yet: the client may have rotated its keys; look again (the cache bounds how often).
        if ((error as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw refused();
        const fresh = await context.remoteJwks(uri, true).catch(unavailable);
        payload = await verifyWith(assertion, fresh, apiKey.clientId, context, now).catch(refused);
      }
    } else {
      return 'no_jwks';
    }
    const nowSeconds = Math.floor(now / 1000);
    const { exp, jti } = payload;
    if (typeof exp !== 'number' || exp > nowSeconds + ASSERTION_MAX_LIFETIME_S + ASSERTION_CLOCK_TOLERANCE_S) return 'invalid_assertion';
    if (typeof jti !== 'string' || jti.length === 0 || jti.length > MAX_JTI_LENGTH) return 'invalid_assertion';
    // Kept as long as the assertion could still be accepted: exp and the tolerance.
    const expiresAt = (exp + ASSERTION_CLOCK_TOLERANCE_S) * 1000;
    if (!(await context.replays.useOnce(replayId(apiKey.clientId, jti), expiresAt, now))) return 'replayed_assertion';
    return undefined;
  } catch (error) {
    if (error instanceof AssertionRefused) return error.reason;
    throw error;
  }
}

const refused = (): never => {
  throw new AssertionRefused('invalid_assertion');
};
const unavailable = (): never => {
  throw new AssertionRefused('jwks_unavailable');
};

/** The store's key for a used jti: per client (jtis are unique per issuer), hashed to a fixed length. */
export function replayId(clientId: string, jti: string): string {
  return createHash('sha256').update(clientId).update('\0').update(jti).digest('base64url');
}

// ----- Validation of a client's keys (admin API, and what a jwks_uri answers) -----

const KEY_TYPES: Record<string, { algorithms: readonly string[]; curves?: readonly string[] }> = {
  RSA: { algorithms: ['RS256', 'PS256'] },
  EC: { algorithms: ['ES256'], curves: ['P-256'] },
  OKP: { algorithms: ['EdDSA', 'Ed25519'], curves: ['Ed25519'] },
};
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
export const MAX_JWKS_KEYS = 20;
export const MAX_JWKS_BYTES = 64 * 1024;

export interface JwksIssue {
  path: string;
  message: string;
}

/**
 * Problems of a client's JWKS, each with the path of the member at fault under `field`: at least
 * one and at most MAX_JWKS_KEYS public signing keys an assertion algorithm can use (RSA of 2048
 * bits or more, EC P-256, OKP Ed25519), no private or symmetric key, distinct kids.
 */
export function jwksIssues(input: unknown, field = 'jwks'): JwksIssue[] {
  const issue = (path: string, message: string) => [{ path: [field, path].filter(Boolean).join('.'), message }];
  if (typeof input !== 'object' || input === null || Array.isArray(input)) return issue('', 'a JSON Web Key Set: {"keys": [...]}');
  if (JSON.stringify(input).length > MAX_JWKS_BYTES) return issue('', `at most ${MAX_JWKS_BYTES} bytes`);
  const { keys, ...others } = input as Record<string, unknown>;
  const extra = Object.keys(others);
  if (extra.length) return issue(extra[0], 'unknown member; a JWKS has only "keys"');
  if (!Array.isArray(keys) || keys.length === 0 || keys.length > MAX_JWKS_KEYS) return issue('keys', `1 to ${MAX_JWKS_KEYS} keys`);
  const kids = new Set<string>();
  for (const [index, key] of keys.entries()) {
    const at = (member: string) => (member ? `keys.${index}.${member}` : `keys.${index}`);
    if (typeof key !== 'object' || key === null || Array.isArray(key)) return issue(at(''), 'a JSON Web Key object');
    const jwk = key as Record<string, unknown>;
    const type = typeof jwk.kty === 'string' ? KEY_TYPES[jwk.kty] : undefined;
    if (!type) return issue(at('kty'), 'RSA, EC or OKP (symmetric keys are refused: assertions are checked with public keys)');
    const secret = PRIVATE_MEMBERS.find((member) => member in jwk);
    if (secret) return issue(at(secret), 'a private key member: give the public key only');
    if (jwk.kid !== undefined) {
      if (typeof jwk.kid !== 'string' || jwk.kid.length === 0 || jwk.kid.length > 200)
        return issue(at('kid'), 'a string of 1 to 200 characters');
      if (kids.has(jwk.kid)) return issue(at('kid'), 'another key has this kid');
      kids.add(jwk.kid);
    }
    if (jwk.alg !== undefined && !type.algorithms.includes(jwk.alg as string))
      return issue(at('alg'), `for ${jwk.kty} keys: ${type.algorithms.join(' or ')}`);
    if (jwk.use !== undefined && jwk.use !== 'sig') return issue(at('use'), '"sig" (or leave it out)');
    if (type.curves && !type.curves.includes(jwk.crv as string)) return issue(at('crv'), type.curves.join(' or '));
    try {
      const publicKey = createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' });
      const bits = publicKey.asymmetricKeyDetails?.modulusLength;
      if (jwk.kty === 'RSA' && (bits ?? 0) < 2048) return issue(at('n'), 'an RSA modulus of at least 2048 bits');
    } catch (error) {
      return issue(at(''), `not a usable public key: ${(error as Error).message}`);
    }
  }
  return [];
}

/**
 * Why a `jwks_uri` is refused, or undefined: https, or plain http only to a loopback address
 * (a JWKS server on the same machine, tests); no credentials or fragment; at most 2048 characters.
 */
export function jwksUriProblem(uri: string): string | undefined {
  if (uri.length > 2048) return 'at most 2048 characters';
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return 'not an absolute URL';
  }
  if (url.username || url.password) return 'no credentials in the URL';
  if (url.hash) return 'no fragment';
  if (url.protocol === 'https:') return undefined;
  if (url.protocol === 'http:' && isLoopbackHost(url.hostname)) return undefined;
  return 'https, or http to a loopback address (127.0.0.0/8, [::1], localhost)';
}

function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}
