import { createPublicKey, type JsonWebKey } from 'node:crypto';
import type { SigningAlgorithm } from '../core/config';
import type { VerificationKey } from '../core/crypto/jws';
import type { DataPlaneApiKey, DataPlaneKeyPair, DataPlaneUpdate } from '../core/data-plane';

export type ReplicaStatus = 'starting' | 'synced' | 'degraded';

interface ReplicaKey extends VerificationKey {
  jwkJson: string;
  verifyUntil?: number;
}

/** The replicated state proper: swapped whole when a snapshot completes, changed in place by deltas. */
class ReplicaState {
  readonly keys = new Map<string, ReplicaKey>();
  readonly kidsByKeyPair = new Map<string, string[]>();
  readonly apiKeys = new Map<string, DataPlaneApiKey>();
  readonly revoked = new Map<string, number>();
  issuer = '';
  audience = '';

  /** Replaces a key pair's keys; KeyObjects of unchanged keys are reused (building one costs more than comparing JSON). */
  setKeyPair({ keyPairId, keys }: DataPlaneKeyPair, previous: ReplicaState): void {
    this.removeKeyPair(keyPairId);
    const kids: string[] = [];
    for (const { jwk, verifyUntil } of keys) {
      const jwkJson = JSON.stringify(jwk);
      const known = previous.keys.get(jwk.kid);
      const publicKey = known?.jwkJson === jwkJson ? known.publicKey : createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
      this.keys.set(jwk.kid, { algorithm: jwk.alg as SigningAlgorithm, publicKey, jwkJson, verifyUntil });
      kids.push(jwk.kid);
    }
    this.kidsByKeyPair.set(keyPairId, kids);
  }

  removeKeyPair(keyPairId: string): void {
    for (const kid of this.kidsByKeyPair.get(keyPairId) ?? []) this.keys.delete(kid);
    this.kidsByKeyPair.delete(keyPairId);
  }

  apply(update: DataPlaneUpdate, previous: ReplicaState): void {
    if (update.issuer !== undefined) this.issuer = update.issuer;
    if (update.audience !== undefined) this.audience = update.audience;
    for (const keyPair of update.keyPairs) this.setKeyPair(keyPair, previous);
    for (const keyPairId of update.removedKeyPairs) this.removeKeyPair(keyPairId);
    for (const apiKey of update.apiKeys) this.apiKeys.set(apiKey.clientId, apiKey);
    for (const clientId of update.removedApiKeys) this.apiKeys.delete(clientId);
    for (const { jti, expiresAt } of update.revokedTokens) this.revoked.set(jti, expiresAt);
  }

  /** Revocations of expired tokens serve no purpose: the token is refused for its `exp` anyway. */
  dropExpiredRevocations(now: number): void {
    for (const [jti, expiresAt] of this.revoked) if (expiresAt <= now) this.revoked.delete(jti);
  }
}

/** What `apply` made of an update. */
export type ApplyOutcome = 'applied' | 'partial' | 'out_of_sync';

const REVOCATION_SWEEP_MS = 60_000;

/**
 * The authority's state in memory: what Check reads instead of calling anyone. Built from a
 * snapshot, then kept current by deltas from the DeltaWatch stream; kept as it is while the
 * authority is unreachable.
 */
export class AuthorityReplica {
  private state = new ReplicaState();
  /** A snapshot being received: it replaces `state` once its last part has arrived. */
  private incoming: ReplicaState | undefined;
  /** The version of the update whose parts are arriving (snapshot or multi-part delta). */
  private partsOf: string | undefined;
  version = '';
  lastUpdateAt: number | undefined;
  /** Complete snapshots and deltas applied since start (metrics; tests tell a resume from a snapshot). */
  readonly applied = { snapshots: 0, deltas: 0 };
  private lastSweep = 0;
  private connected = false;
  private listeners = new Set<() => void>();

  constructor(private readonly now: () => number = Date.now) {}

  get issuer(): string {
    return this.state.issuer;
  }

  get audience(): string {
    return this.state.audience;
  }

  /**
   * Applies one message of the stream. 'out_of_sync' means it does not follow on from what this
   * replica holds (nothing is changed then): read a snapshot.
   */
  apply(update: DataPlaneUpdate): ApplyOutcome {
    if (update.reset) {
      this.incoming = new ReplicaState();
      this.partsOf = update.version;
    } else if (this.partsOf !== undefined) {
      if (update.version !== this.partsOf) return this.outOfSync();
    } else if (update.baseVersion !== this.version || !this.ready) {
      return this.outOfSync();
    }
    (this.incoming ?? this.state).apply(update, this.state);
    if (update.more) {
      this.partsOf = update.version;
      return 'partial';
    }
    if (this.incoming) this.state = this.incoming;
    this.applied[this.incoming ? 'snapshots' : 'deltas'] += 1;
    this.incoming = undefined;
    this.partsOf = undefined;
    this.version = update.version;
    this.lastUpdateAt = this.now();
    if (this.lastUpdateAt - this.lastSweep > REVOCATION_SWEEP_MS) {
      this.state.dropExpiredRevocations(this.lastUpdateAt);
      this.lastSweep = this.lastUpdateAt;
    }
    this.listeners.forEach((listener) => listener());
    return 'applied';
  }

  private outOfSync(): ApplyOutcome {
    this.incoming = undefined;
    this.partsOf = undefined;
    return 'out_of_sync';
  }

  /** Forgets a half-received update (the stream broke); the last complete state stays. */
  abandonPartial(): void {
    this.outOfSync();
  }

  /** Called on every completed update (tests and metrics wait on it). */
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
    const key = this.state.keys.get(kid);
    if (!key || (key.verifyUntil !== undefined && key.verifyUntil <= this.now())) return undefined;
    return key;
  };

  apiKey(clientId: string): DataPlaneApiKey | undefined {
    return this.state.apiKeys.get(clientId);
  }

  isRevoked(jti: string): boolean {
    return this.state.revoked.has(jti);
  }

  get counts(): { keys: number; apiKeys: number; revokedTokens: number } {
    return { keys: this.state.keys.size, apiKeys: this.state.apiKeys.size, revokedTokens: this.state.revoked.size };
  }
}
