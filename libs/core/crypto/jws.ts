import { constants, sign, verify, KeyObject } from 'node:crypto';
import type { SigningAlgorithm } from '../config';

/**
 * Compact JWS on node:crypto directly. jose's WebCrypto path is several times slower for
 * RSA, and the async form of `crypto.sign` runs on libuv's thread pool, so signing uses
 * every core while the event loop keeps serving requests.
 */

type SignOptions = { digest: string | null; key: (key: KeyObject) => Parameters<typeof sign>[2] };

const ALGORITHMS: Record<SigningAlgorithm, SignOptions> = {
  RS256: { digest: 'sha256', key: (key) => key },
  // RFC 7518 §3.5: the salt is as long as the hash.
  PS256: { digest: 'sha256', key: (key) => ({ key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }) },
  // RFC 7518 §3.4: R || S, not DER.
  ES256: { digest: 'sha256', key: (key) => ({ key, dsaEncoding: 'ieee-p1363' }) },
  EdDSA: { digest: null, key: (key) => key },
};

const encodeJson = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

export interface SigningKey {
  kid: string;
  algorithm: SigningAlgorithm;
  privateKey: KeyObject;
}

export function signJwt(key: SigningKey, header: Record<string, unknown>, claims: Record<string, unknown>): Promise<string> {
  const signingInput = `${encodeJson({ ...header, alg: key.algorithm, kid: key.kid })}.${encodeJson(claims)}`;
  const options = ALGORITHMS[key.algorithm];
  return new Promise((resolve, reject) =>
    sign(options.digest, Buffer.from(signingInput), options.key(key.privateKey), (error, signature) =>
      error ? reject(error) : resolve(`${signingInput}.${signature.toString('base64url')}`),
    ),
  );
}

export interface VerificationKey {
  algorithm: SigningAlgorithm;
  publicKey: KeyObject;
}

export type JwsFailure = 'malformed' | 'unknown_key' | 'algorithm_mismatch' | 'bad_signature';

export type JwsResult = { ok: true; header: Record<string, unknown>; claims: Record<string, unknown> } | { ok: false; reason: JwsFailure };

const BASE64URL = /^[A-Za-z0-9_-]+$/;

export function decodeJsonObject(part: string): Record<string, unknown> | undefined {
  if (!BASE64URL.test(part)) return undefined;
  try {
    const value: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Verifies a compact JWS against our keys. The algorithm comes from the key, never from the
 * token: `alg: none`, HS256 signed with a public key, or any alg other than the key's fail.
 */
/** Whether `signature` (base64url) signs `signingInput` with `publicKey` under `algorithm`. */
export function verifySignature(algorithm: SigningAlgorithm, publicKey: KeyObject, signingInput: string, signature: string): boolean {
  const options = ALGORITHMS[algorithm];
  return verify(
    options.digest,
    Buffer.from(signingInput),
    options.key(publicKey) as Parameters<typeof verify>[2],
    Buffer.from(signature, 'base64url'),
  );
}

export function verifyJws(token: string, findKey: (kid: string) => VerificationKey | undefined): JwsResult {
  const parts = token.split('.');
  if (parts.length !== 3 || !BASE64URL.test(parts[2])) return { ok: false, reason: 'malformed' };
  const header = decodeJsonObject(parts[0]);
  const claims = decodeJsonObject(parts[1]);
  if (!header || !claims || typeof header.kid !== 'string' || typeof header.alg !== 'string') {
    return { ok: false, reason: 'malformed' };
  }
  // RFC 7515 §4.1.11: we understand no critical extension.
  if (header.crit !== undefined) return { ok: false, reason: 'malformed' };
  const key = findKey(header.kid);
  if (!key) return { ok: false, reason: 'unknown_key' };
  if (header.alg !== key.algorithm) return { ok: false, reason: 'algorithm_mismatch' };
  const options = ALGORITHMS[key.algorithm];
  const valid = verify(
    options.digest,
    Buffer.from(`${parts[0]}.${parts[1]}`),
    options.key(key.publicKey) as Parameters<typeof verify>[2],
    Buffer.from(parts[2], 'base64url'),
  );
  return valid ? { ok: true, header, claims } : { ok: false, reason: 'bad_signature' };
}
