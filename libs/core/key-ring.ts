import { createPrivateKey, createPublicKey, KeyObject } from 'node:crypto';
import { publicJwk, PublicJwk } from './crypto/key-pairs';
import type { SigningKey, VerificationKey } from './crypto/jws';
import { KeyProtector } from './crypto/key-encryption';
import type { KeyPairRecord } from './model';
import type { KeyPairRepository } from './store/repositories';

interface LoadedVersion extends VerificationKey {
  kid: string;
  keyPairId: string;
  privateKey?: KeyObject;
  verifyUntil?: number;
  jwk: PublicJwk;
}

/**
 * The key pairs as crypto objects, built once per change rather than per request.
 * `reload()` runs after every admin change; the store stays the source of truth.
 */
export class KeyRing {
  private byKid = new Map<string, LoadedVersion>();
  private signerByPair = new Map<string, SigningKey>();
  private keyPairIds: string[] = [];
  private fingerprint = '';

  constructor(
    private readonly repository: KeyPairRepository,
    private readonly now: () => number,
    /** Opens private keys sealed at rest (and seals new ones, for the admin service). */
    readonly protector: KeyProtector = new KeyProtector(),
  ) {}

  /** Rebuilds the crypto objects when the stored key pairs changed (by anyone: API, CLI, another replica). */
  async reload(): Promise<void> {
    const keyPairs = await this.repository.list();
    const fingerprint = JSON.stringify(keyPairs);
    if (fingerprint === this.fingerprint) return;
    const byKid = new Map<string, LoadedVersion>();
    const signerByPair = new Map<string, SigningKey>();
    for (const keyPair of keyPairs) this.load(keyPair, byKid, signerByPair);
    this.byKid = byKid;
    this.signerByPair = signerByPair;
    this.keyPairIds = keyPairs.map((keyPair) => keyPair.id);
    this.fingerprint = fingerprint;
  }

  private load(keyPair: KeyPairRecord, byKid: Map<string, LoadedVersion>, signerByPair: Map<string, SigningKey>): void {
    for (const version of keyPair.versions) {
      const publicKey = createPublicKey(version.publicKeyPem);
      const loaded: LoadedVersion = {
        kid: version.kid,
        keyPairId: keyPair.id,
        algorithm: keyPair.algorithm,
        publicKey,
        verifyUntil: version.verifyUntil,
        jwk: publicJwk(publicKey, version.kid, keyPair.algorithm),
      };
      if (version.retiredAt === undefined) {
        loaded.privateKey = createPrivateKey(this.protector.privateKeyPem(version, keyPair.id));
        signerByPair.set(keyPair.id, { kid: version.kid, algorithm: keyPair.algorithm, privateKey: loaded.privateKey });
      }
      byKid.set(version.kid, loaded);
    }
  }

  /** The key that signs for a key pair, or undefined when it is missing or retired. */
  signingKey(keyPairId: string): SigningKey | undefined {
    return this.signerByPair.get(keyPairId);
  }

  /** A key that may still verify: active, or retired with tokens that can still be live. */
  verificationKey = (kid: string): (VerificationKey & { keyPairId: string }) | undefined => {
    const version = this.byKid.get(kid);
    if (!version) return undefined;
    if (version.verifyUntil !== undefined && version.verifyUntil <= this.now()) return undefined;
    return version;
  };

  /** Every key that can still verify a live token, with the end of its window when retired. */
  verificationKeys(): { jwk: PublicJwk; verifyUntil?: number; keyPairId: string }[] {
    const now = this.now();
    return [...this.byKid.values()]
      .filter((version) => version.verifyUntil === undefined || version.verifyUntil > now)
      .map((version) => ({ jwk: version.jwk, verifyUntil: version.verifyUntil, keyPairId: version.keyPairId }));
  }

  /** Those keys by key pair: every stored key pair (or the one named; none if it does not exist), even one with no live key. */
  keyPairKeys(onlyId?: string): { keyPairId: string; keys: { jwk: PublicJwk; verifyUntil?: number }[] }[] {
    const ids = onlyId === undefined ? this.keyPairIds : this.keyPairIds.filter((id) => id === onlyId);
    const keys = this.verificationKeys();
    return ids.map((keyPairId) => ({
      keyPairId,
      keys: keys.filter((key) => key.keyPairId === keyPairId).map(({ jwk, verifyUntil }) => ({ jwk, verifyUntil })),
    }));
  }

  /** The JWKS: every public key that can still verify a live token. */
  jwks(): { keys: PublicJwk[] } {
    return { keys: this.verificationKeys().map((key) => key.jwk) };
  }
}
