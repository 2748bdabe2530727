import { createPrivateKey, createPublicKey, KeyObject } from 'node:crypto';
import { publicJwk, PublicJwk } from './crypto/key-pairs';
import type { SigningKey, VerificationKey } from './crypto/jws';
import { KeyProtector } from './crypto/key-encryption';
import type { KeyPairRecord } from './model';
import type { KeyPairRepository } from './store/repositories';

/** A version that signs from `from` until `until` (a scheduled rotation's switch), each bound open when unset. */
interface Signer extends SigningKey {
  from?: number;
  until?: number;
}

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
  private signersByPair = new Map<string, Signer[]>();
  private keyPairIds: string[] = [];
  private records: KeyPairRecord[] = [];
  private fingerprint = '';
  /** Called after a reload that found the key pairs changed. */
  onChange?: () => void;

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
    const signersByPair = new Map<string, Signer[]>();
    for (const keyPair of keyPairs) this.load(keyPair, byKid, signersByPair);
    this.byKid = byKid;
    this.signersByPair = signersByPair;
    this.keyPairIds = keyPairs.map((keyPair) => keyPair.id);
    this.records = keyPairs;
    this.fingerprint = fingerprint;
    this.onChange?.();
  }

  private load(keyPair: KeyPairRecord, byKid: Map<string, LoadedVersion>, signersByPair: Map<string, Signer[]>): void {
    const signers: Signer[] = [];
    const now = this.now();
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
      // Signing now or later (published ahead of a scheduled switch): the window is checked per token.
      if (version.retiredAt === undefined || version.retiredAt > now) {
        loaded.privateKey = createPrivateKey(this.protector.privateKeyPem(version, keyPair.id));
        signers.push({
          kid: version.kid,
          algorithm: keyPair.algorithm,
          privateKey: loaded.privateKey,
          from: version.activatesAt,
          until: version.retiredAt,
        });
      }
      byKid.set(version.kid, loaded);
    }
    signersByPair.set(keyPair.id, signers);
  }

  /** The stored key pairs as last loaded (private keys as stored: never to be shown). */
  keyPairRecords(): readonly KeyPairRecord[] {
    return this.records;
  }

  /** The key that signs for a key pair now, or undefined when it is missing or retired. */
  signingKey(keyPairId: string): SigningKey | undefined {
    const now = this.now();
    return this.signersByPair
      .get(keyPairId)
      ?.find(
        (candidate) => (candidate.from === undefined || candidate.from <= now) && (candidate.until === undefined || candidate.until > now),
      );
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
