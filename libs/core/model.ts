import type { SigningAlgorithm } from './config';
import type { SealedPrivateKey } from './crypto/key-encryption';

/** An API key as the store keeps it: Otoroshi's model, the secret only as hashes. */
export interface ApiKeyRecord {
  clientId: string;
  /** Hash of the current secret (see crypto/secret-hash.ts). */
  secretHash: string;
  /** During a rotation's grace period the previous secret still authenticates. */
  previousSecretHash?: string;
  previousSecretValidUntil?: number;
  clientName: string;
  description: string;
  /** Otoroshi's `route_<name>` / `group_<name>` entries this key may call. */
  authorizedEntities: string[];
  enabled: boolean;
  /** Epoch ms after which the key no longer authenticates; null for never. */
  validUntil: number | null;
  metadata: Record<string, string>;
  tags: string[];
  /** Scopes this key may ask for. */
  scope: string[];
  /** Otoroshi's `allowClientIdOnly`: a gateway may identify the key by its client id alone. */
  allowClientIdOnly: boolean;
  /** Otoroshi's rotation settings, in hours; `gracePeriod` is how long a replaced secret still works. */
  rotation: { enabled: boolean; rotationEvery: number; gracePeriod: number };
  throttlingQuota: number;
  dailyQuota: number;
  monthlyQuota: number;
  createdAt: number;
  updatedAt: number;
}

/**
 * A named signing identity (what `defaultKeyPair` and `jwt-sign-keypair` reference) with its
 * key versions. Rotation adds a version with a new `kid`; the old one is retired and keeps
 * verifying (and stays in the JWKS) until the last token it signed has expired.
 */
export interface KeyPairRecord {
  id: string;
  algorithm: SigningAlgorithm;
  description: string;
  createdAt: number;
  versions: KeyVersion[];
}

export interface KeyVersion {
  kid: string;
  publicKeyPem: string;
  /** The private key in plaintext (no key-encryption key set when it was stored)... */
  privateKeyPem?: string;
  /** ... or sealed by envelope encryption (crypto/key-encryption.ts). */
  sealedPrivateKey?: SealedPrivateKey;
  createdAt: number;
  /** Set when retired: it signs nothing more. */
  retiredAt?: number;
  /** Epoch ms after which no token it signed can be valid; it leaves the JWKS then. */
  verifyUntil?: number;
}

/** The version that signs: the one not retired (at most one). */
export function activeVersion(keyPair: KeyPairRecord): KeyVersion | undefined {
  return keyPair.versions.find((version) => version.retiredAt === undefined);
}

/** Metadata key with which an API key picks its own signing key pair (Otoroshi's name). */
export const SIGN_KEYPAIR_METADATA = 'jwt-sign-keypair';

/** The scopes an API key may ask for: its `scope` field, or metadata `scope` (space or comma separated). */
export function grantableScopes(apiKey: ApiKeyRecord): Set<string> {
  const fromMetadata = (apiKey.metadata.scope ?? '').split(/[\s,]+/).filter(Boolean);
  return new Set([...apiKey.scope, ...fromMetadata]);
}

/** The secret hashes that authenticate at `now`: the current one, and the previous during its grace period. */
export function activeSecretHashes(apiKey: ApiKeyRecord, now: number): { hash: string; validUntil?: number }[] {
  const hashes: { hash: string; validUntil?: number }[] = [{ hash: apiKey.secretHash }];
  if (apiKey.previousSecretHash && (apiKey.previousSecretValidUntil ?? 0) > now) {
    hashes.push({ hash: apiKey.previousSecretHash, validUntil: apiKey.previousSecretValidUntil });
  }
  return hashes;
}

/** Whether the key may authenticate now (enabled and not past validUntil). */
export function isApiKeyUsable(apiKey: ApiKeyRecord, now: number): boolean {
  return apiKey.enabled && (apiKey.validUntil === null || apiKey.validUntil > now);
}
