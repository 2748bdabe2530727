import { createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { SigningAlgorithm } from './config';
import { decodeJsonObject, verifySignature } from './crypto/jws';
import type { DpopNonces } from './dpop-nonce';
import { OAuthError } from './errors';

/**
 * DPoP proofs at the token endpoint (RFC 9449 §4): a JWT the client signs with a key of its own,
 * whose public half is in the proof's header. A valid proof binds the access token to that key:
 * the token carries `cnf.jkt`, the key's RFC 7638 thumbprint, and `token_type` is `DPoP`.
 */

/** The algorithms a proof may use (asymmetric only: RFC 9449 §4.2 forbids `none` and MACs). */
export const DPOP_ALGORITHMS: readonly SigningAlgorithm[] = ['ES256', 'RS256', 'PS256', 'EdDSA'];

/** A proof's `iat` may be this old (s), or this far ahead of our clock (s). */
export const DPOP_MAX_AGE = 60;
export const DPOP_FUTURE_LEEWAY = 5;
/** Longest proof we read (a 4096-bit RSA key in the header is about 1 KB). */
const MAX_PROOF_LENGTH = 8192;

const invalidProof = (description: string) => new OAuthError('invalid_dpop_proof', description, 400);
/** RFC 9449 §8/§9: the proof needs (another) nonce; the one to use goes in `DPoP-Nonce`. */
export const DPOP_NONCE_HEADER = 'DPoP-Nonce';
export const useDpopNonce = (description: string, nonce: string) =>
  new OAuthError('use_dpop_nonce', description, 400, undefined, undefined, { [DPOP_NONCE_HEADER]: nonce });

/** RFC 7638: the SHA-256 of the required members, in lexicographic order, base64url. */
export function jwkThumbprint(jwk: JsonWebKey): string {
  const members: Record<string, readonly string[]> = { EC: ['crv', 'kty', 'x', 'y'], RSA: ['e', 'kty', 'n'], OKP: ['crv', 'kty', 'x'] };
  const names = members[String(jwk.kty)];
  if (!names) throw new Error(`no thumbprint for kty ${String(jwk.kty)}`);
  const canonical = `{${names.map((name) => `${JSON.stringify(name)}:${JSON.stringify(jwk[name])}`).join(',')}}`;
  return createHash('sha256').update(canonical).digest('base64url');
}

/** The key type each algorithm needs: a proof's jwk must be of that type. */
function fits(algorithm: SigningAlgorithm, key: KeyObject): boolean {
  const type = key.asymmetricKeyType;
  if (algorithm === 'ES256') return type === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
  if (algorithm === 'EdDSA') return type === 'ed25519';
  return type === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048;
}

/** Private members of a JWK (RFC 7518 §6): a proof's jwk must hold none. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

export interface DpopCheck {
  /** The request's method (`htm`). */
  method: string;
  /** URLs `htu` may name: the endpoint as the issuer publishes it, and as this request reached us. */
  urls: string[];
  /** Epoch ms. */
  now: number;
  /** At a resource (RFC 9449 §7): the access token the proof goes with (its SHA-256 must be `ath`) and its `cnf.jkt`. */
  accessToken?: string;
  jkt?: string;
}

/** `htu` compared without query and fragment (RFC 9449 §4.3 item 9), scheme and host case-insensitive. */
function normalizedUrl(value: string): string | undefined {
  try {
    const url = new URL(value);
    return `${url.protocol}//${url.host}${url.pathname}`;
  } catch {
    return undefined;
  }
}

/** How long a proof's jti is remembered: as long as its iat is accepted (ms). */
export const DPOP_REPLAY_TTL = (DPOP_MAX_AGE + DPOP_FUTURE_LEEWAY) * 1000;

/**
 * Where used proofs are remembered: `useOnce` is true the first time an id is given within
 * `ttlMs`, false after. In this process's memory (MemoryReplays), or shared by replicas (the
 * authority's store, ext-authz's Redis: a promise then).
 */
export interface DpopReplayMemory {
  useOnce(id: string, ttlMs: number): boolean | Promise<boolean>;
}

/** Used proofs in this process's memory: an LRU of at most `max` ids for DPOP_REPLAY_TTL. */
export class MemoryReplays implements DpopReplayMemory {
  /**
   * Made at the first proof: lru-cache allocates its arrays for `max` at once (3 MB of heap and
   * 1 MB of typed arrays at 100,000), which a process that never sees a DPoP proof needs not hold.
   */
  private seen: LRUCache<string, true> | undefined;
  constructor(private readonly max = 100_000) {}
  useOnce(id: string, ttlMs: number): boolean {
    this.seen ??= new LRUCache({ max: this.max, ttl: DPOP_REPLAY_TTL });
    if (this.seen.has(id)) return false;
    this.seen.set(id, true, { ttl: ttlMs });
    return true;
  }
}

/** A valid proof: the thumbprint (`cnf.jkt`) of its key, and a fresh nonce to send back when its nonce was the previous one. */
export interface DpopProof {
  jkt: string;
  nonce?: string;
}

export interface DpopVerifierOptions {
  /** Where used jtis are remembered (default: this process's memory). */
  replays?: DpopReplayMemory;
  /** When set, every proof must carry a nonce these issued (RFC 9449 §8, §9). */
  nonces?: DpopNonces;
}

/**
 * Checks DPoP proofs (RFC 9449 §4.3), their nonce when nonces are required, and remembers their
 * `jti`s for as long as their `iat` is accepted, so a proof is used once: in `replays`, this
 * process's memory unless a shared one is given.
 */
export class DpopVerifier {
  private readonly replays: DpopReplayMemory;
  readonly nonces: DpopNonces | undefined;

  constructor(options: DpopVerifierOptions = {}) {
    this.replays = options.replays ?? new MemoryReplays();
    this.nonces = options.nonces;
  }

  /**
   * A valid, unused proof (synchronously with an in-memory replay memory); throws (or rejects
   * with) invalid_dpop_proof, or use_dpop_nonce when a nonce is required and the proof has none
   * of ours.
   */
  verify(headerValues: string | string[] | undefined, check: DpopCheck): DpopProof | Promise<DpopProof> {
    const values = headerValues === undefined ? [] : Array.isArray(headerValues) ? headerValues : [headerValues];
    // Node joins repeated headers with ', ' (no comma is in a compact JWS).
    if (values.length !== 1 || values[0].includes(',')) throw invalidProof('send exactly one DPoP header');
    const proof = values[0].trim();
    if (proof.length > MAX_PROOF_LENGTH) throw invalidProof('the DPoP proof is too long');
    const parts = proof.split('.');
    if (parts.length !== 3 || !/^[A-Za-z0-9_-]+$/.test(parts[2])) throw invalidProof('the DPoP proof is not a compact JWS');
    const header = decodeJsonObject(parts[0]);
    const claims = decodeJsonObject(parts[1]);
    if (!header || !claims) throw invalidProof('the DPoP proof is not a compact JWS');
    if (header.typ !== 'dpop+jwt') throw invalidProof('the DPoP proof must have typ dpop+jwt');
    const algorithm = header.alg as SigningAlgorithm;
    if (typeof header.alg !== 'string' || !DPOP_ALGORITHMS.includes(algorithm))
      throw invalidProof(`the DPoP proof's alg must be one of ${DPOP_ALGORITHMS.join(', ')}`);
    if (header.crit !== undefined) throw invalidProof('the DPoP proof has critical extensions we do not understand');
    const jwk = header.jwk;
    if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw invalidProof('the DPoP proof has no jwk header');
    if (PRIVATE_MEMBERS.some((member) => member in jwk)) throw invalidProof("the DPoP proof's jwk holds a private key");
    let key: KeyObject;
    let thumbprint: string;
    try {
      key = createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
      thumbprint = jwkThumbprint(jwk as JsonWebKey);
    } catch {
      throw invalidProof("the DPoP proof's jwk is not a public key");
    }
    if (!fits(algorithm, key)) throw invalidProof(`the DPoP proof's jwk cannot sign ${algorithm}`);
    if (!verifySignature(algorithm, key, `${parts[0]}.${parts[1]}`, parts[2]))
      throw invalidProof('the DPoP proof signature does not verify');
    if (typeof claims.jti !== 'string' || claims.jti.length < 8 || claims.jti.length > 256)
      throw invalidProof('the DPoP proof needs a jti of 8 to 256 characters');
    if (claims.htm !== check.method) throw invalidProof(`the DPoP proof's htm must be ${check.method}`);
    const htu = typeof claims.htu === 'string' ? normalizedUrl(claims.htu) : undefined;
    if (htu === undefined || !check.urls.some((url) => normalizedUrl(url) === htu))
      throw invalidProof(`the DPoP proof's htu must be this endpoint's URL (${check.urls[0]})`);
    const nowSeconds = check.now / 1000;
    if (typeof claims.iat !== 'number' || !Number.isFinite(claims.iat)) throw invalidProof('the DPoP proof needs a numeric iat');
    if (claims.iat < nowSeconds - DPOP_MAX_AGE || claims.iat > nowSeconds + DPOP_FUTURE_LEEWAY)
      throw invalidProof(`the DPoP proof's iat must be within the last ${DPOP_MAX_AGE} s`);
    if (check.accessToken !== undefined && claims.ath !== createHash('sha256').update(check.accessToken).digest('base64url'))
      throw invalidProof("the DPoP proof's ath must be the access token's SHA-256");
    if (check.jkt !== undefined && thumbprint !== check.jkt)
      throw invalidProof('the DPoP proof is signed by another key than the token is bound to');
    const result: DpopProof = { jkt: thumbprint };
    if (this.nonces) {
      const nonce = this.nonces.check(claims.nonce, check.now);
      if (nonce === 'invalid')
        throw useDpopNonce(
          claims.nonce === undefined
            ? 'a nonce is required in the DPoP proof: use the DPoP-Nonce header'
            : "the DPoP proof's nonce is not current: use the DPoP-Nonce header",
          this.nonces.issue(check.now),
        );
      if (nonce === 'stale') result.nonce = this.nonces.issue(check.now);
    }
    // Replay: once per (key, jti), after every other check so a forged proof cannot burn a jti.
    const replayId = createHash('sha256').update(`${thumbprint}:${claims.jti}`).digest('base64url');
    const first = this.replays.useOnce(replayId, DPOP_REPLAY_TTL);
    if (first === true) return result;
    if (first === false) throw replayed();
    return first.then((unused) => {
      if (!unused) throw replayed();
      return result;
    });
  }
}

const replayed = () => invalidProof('the DPoP proof was already used (jti replayed)');
