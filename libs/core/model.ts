import type { SigningAlgorithm } from './config';
import type { SealedPrivateKey } from './crypto/key-encryption';

/** An API key as the store keeps it: Otoroshi's model, the secret only as hashes. */
export interface ApiKeyRecord {
  clientId: string;
  /** Hash of the current secret (see crypto/secret-hash.ts); '' for a key without a secret (private_key_jwt only). */
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
  /** RFC 7591 `jwks`: the public keys the client signs its `private_key_jwt` assertions with. */
  jwks?: PublicJwks;
  /** RFC 7591 `jwks_uri`: where those keys are fetched from instead (https, or http on loopback). */
  jwks_uri?: string;
  /**
   * RFC 8705 §2.1.2 (tls_client_auth): the one certificate attribute the client's certificate
   * must hold, from a CA the proxy in front verifies: the subject DN (RFC 4514), or a SAN.
   */
  tls_client_auth_subject_dn?: string;
  tls_client_auth_san_dns?: string;
  tls_client_auth_san_uri?: string;
  tls_client_auth_san_ip?: string;
  tls_client_auth_san_email?: string;
  /**
   * How the key's access tokens are bound: `bearer` (absent: Otoroshi's bearer tokens, a DPoP
   * proof optional, certificate-bound when the client presents a certificate), `dpop`: a token is
   * issued only with a DPoP proof, bound to its key (RFC 9449 §5.2's `dpop_bound_access_tokens`),
   * and ext-authz takes no bearer token of the key; or `mtls`: a token is issued only to a request
   * with a client certificate, and is bound to it (RFC 8705 §3).
   */
  tokenBinding?: TokenBinding;
  createdAt: number;
  updatedAt: number;
}

export const TOKEN_BINDINGS = ['bearer', 'dpop', 'mtls'] as const;
export type TokenBinding = (typeof TOKEN_BINDINGS)[number];

/** A JSON Web Key Set of public keys (RFC 7517 §5), as admin-validated (client-assertion.ts). */
export interface PublicJwks {
  keys: Record<string, unknown>[];
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
  /** Scheduled rotation (key-rotation.ts); absent: the key pair rotates only when asked. */
  rotation?: KeyRotationPolicy;
}

/** How a key pair rotates itself; durations in seconds. */
export interface KeyRotationPolicy {
  /** A new key starts signing this long after the current one started. */
  rotateEvery: number;
  /** The new key is published (JWKS, data planes) this long before it starts signing. */
  publishAhead: number;
  /** Added to the token lifetime before a replaced key leaves the JWKS (clock skew between replicas). */
  leeway: number;
}

export interface KeyVersion {
  kid: string;
  publicKeyPem: string;
  /** The private key in plaintext (no key-encryption key set when it was stored)... */
  privateKeyPem?: string;
  /** ... or sealed by envelope encryption (crypto/key-encryption.ts). */
  sealedPrivateKey?: SealedPrivateKey;
  createdAt: number;
  /** Set on a key published ahead of a scheduled rotation: it signs from then on. Absent: from its creation. */
  activatesAt?: number;
  /** Set when retired (or, for a scheduled rotation, when it will be): it signs nothing from then on. */
  retiredAt?: number;
  /** Epoch ms after which no token it signed can be valid; it leaves the JWKS then. */
  verifyUntil?: number;
}

export type KeyVersionStatus = 'pending' | 'active' | 'retired';

/** Where a version stands at `now`: published ahead of its start (pending), signing (active), or past its end (retired). */
export function versionStatus(version: KeyVersion, now: number): KeyVersionStatus {
  if (version.activatesAt !== undefined && version.activatesAt > now) return 'pending';
  if (version.retiredAt !== undefined && version.retiredAt <= now) return 'retired';
  return 'active';
}

/** The version that signs at `now` (at most one: a scheduled rotation ends one where the next starts). */
export function activeVersion(keyPair: KeyPairRecord, now: number): KeyVersion | undefined {
  return keyPair.versions.find((version) => versionStatus(version, now) === 'active');
}

/** The version published ahead of a scheduled rotation, not signing yet. */
export function pendingVersion(keyPair: KeyPairRecord, now: number): KeyVersion | undefined {
  return keyPair.versions.find((version) => versionStatus(version, now) === 'pending');
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
  const hashes: { hash: string; validUntil?: number }[] = apiKey.secretHash ? [{ hash: apiKey.secretHash }] : [];
  if (apiKey.previousSecretHash && (apiKey.previousSecretValidUntil ?? 0) > now) {
    hashes.push({ hash: apiKey.previousSecretHash, validUntil: apiKey.previousSecretValidUntil });
  }
  return hashes;
}

/** Whether the key may authenticate now (enabled and not past validUntil). */
export function isApiKeyUsable(apiKey: ApiKeyRecord, now: number): boolean {
  return apiKey.enabled && (apiKey.validUntil === null || apiKey.validUntil > now);
}
