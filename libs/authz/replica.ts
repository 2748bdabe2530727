import { createPublicKey, type JsonWebKey } from 'node:crypto';
import type { SigningAlgorithm } from '../core/config';
import type { VerificationKey } from '../core/crypto/jws';
import type { DataPlaneApiKey, DataPlaneState } from '../core/data-plane';

export type ReplicaStatus = 'starting' | 'synced' | 'degraded';

interface ReplicaKey extends VerificationKey {
  jwkJson: string;
  verifyUntil?: number;
}

/**
 * The authority's state in memory: what Check reads instead of calling anyone. Replaced whole on
 * every update from the Watch stream; kept as it is while the authority is unreachable.
 */
export class AuthorityReplica {
  private keys = new Map<string, ReplicaKey>();
  private apiKeys = new Map<string, DataPlaneApiKey>();
  private revoked = new Map<string, number>();
  issuer = '';
  audience = '';
  version = '';
  lastUpdateAt: number | undefined;
  private connected = false;
  private listeners = new Set<() => void>();

  constructor(private readonly now: () => number = Date.now) {}

  apply(state: DataPlaneState): void {
    const keys = new Map<string, ReplicaKey>();
    for (const { jwk, verifyUntil } of state.keys) {
      const jwkJson = JSON.stringify(jwk);
      const previous = this.keys.get(jwk.kid);
      // Building a KeyObject costs more than comparing JSON: reuse unchanged keys.
      const publicKey = previous?.jwkJson === jwkJson ? previous.publicKey : createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
      keys.set(jwk.kid, { algorithm: jwk.alg as SigningAlgorithm, publicKey, jwkJson, verifyUntil });
    }
    this.keys = keys;
    this.apiKeys = new Map(state.apiKeys.map((apiKey) => [apiKey.clientId, apiKey]));
    this.revoked = new Map(state.revokedTokens.map((revoked) => [revoked.jti, revoked.expiresAt]));
    this.issuer = state.issuer;
    this.audience = state.audience;
    this.version = state.version;
    this.lastUpdateAt = this.now();
    this.listeners.forEach((listener) => listener());
  }

  /** Called on every state change (tests and metrics wait on it). */
  onUpdate(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  setConnected(connected: boolean): void {
    this.connected = connected;
  }

  get ready(): boolean {
    return this.lastUpdateAt !== undefined;
  }

  get status(): ReplicaStatus {
    if (!this.ready) return 'starting';
    return this.connected ? 'synced' : 'degraded';
  }

  verificationKey = (kid: string): VerificationKey | undefined => {
    const key = this.keys.get(kid);
    if (!key || (key.verifyUntil !== undefined && key.verifyUntil <= this.now())) return undefined;
    return key;
  };

  apiKey(clientId: string): DataPlaneApiKey | undefined {
    return this.apiKeys.get(clientId);
  }

  isRevoked(jti: string): boolean {
    return this.revoked.has(jti);
  }

  get counts(): { keys: number; apiKeys: number; revokedTokens: number } {
    return { keys: this.keys.size, apiKeys: this.apiKeys.size, revokedTokens: this.revoked.size };
  }
}
