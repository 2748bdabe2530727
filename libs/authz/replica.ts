import { createPublicKey, type JsonWebKey } from 'node:crypto';
import type { SigningAlgorithm } from '../core/config';
import type { VerificationKey } from '../core/crypto/jws';
import type { DataPlaneApiKey, DataPlaneKeyPair, DataPlaneUpdate } from '../core/data-plane';

export type ReplicaStatus = 'starting' | 'synced' | 'degraded';

interface ReplicaKey extends VerificationKey {
  jwkJson: string;
  verifyUntil?: number;
}

/** A key pair's keys with their KeyObjects built: the slow part of applying an update, done before anything changes. */
interface PreparedKeyPair {
  kids: string[];
  keys: Map<string, ReplicaKey>;
}

/**
 * The parts of one delta received so far, with the work of each part (building KeyObjects) already
 * done: committed to the live state in one synchronous step once the last part arrives, so a
 * Check sees the whole delta or none of it. Later parts win over earlier ones for the same entity
 * (a catch-up may name an entity in two of its runs).
 */
class PendingDelta {
  issuer: string | undefined;
  audience: string | undefined;
  /** By key pair id: its new keys, or null when removed. */
  readonly keyPairs = new Map<string, PreparedKeyPair | null>();
  /** By client id: its new state, or null when removed. */
  readonly apiKeys = new Map<string, DataPlaneApiKey | null>();
  readonly revoked = new Map<string, number>();

  add(update: DataPlaneUpdate, live: ReplicaState): void {
    // Everything that can throw (a JWK the crypto module refuses) runs here, before any map is touched.
    const prepared = update.keyPairs.map((keyPair) => [keyPair.keyPairId, prepareKeyPair(keyPair, live)] as const);
    if (update.issuer !== undefined) this.issuer = update.issuer;
    if (update.audience !== undefined) this.audience = update.audience;
    for (const [keyPairId, keyPair] of prepared) this.keyPairs.set(keyPairId, keyPair);
    for (const keyPairId of update.removedKeyPairs) this.keyPairs.set(keyPairId, null);
    for (const apiKey of update.apiKeys) this.apiKeys.set(apiKey.clientId, apiKey);
    for (const clientId of update.removedApiKeys) this.apiKeys.set(clientId, null);
    for (const { jti, expiresAt } of update.revokedTokens) this.revoked.set(jti, expiresAt);
  }
}

/** Builds a key pair's KeyObjects; those of keys the live state already holds unchanged are reused (building one costs more than comparing JSON). */
function prepareKeyPair({ keys }: DataPlaneKeyPair, live: ReplicaState): PreparedKeyPair {
  const prepared: PreparedKeyPair = { kids: [], keys: new Map() };
  for (const { jwk, verifyUntil } of keys) {
    const jwkJson = JSON.stringify(jwk);
    const known = live.keys.get(jwk.kid);
    const publicKey = known?.jwkJson === jwkJson ? known.publicKey : createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
    prepared.keys.set(jwk.kid, { algorithm: jwk.alg as SigningAlgorithm, publicKey, jwkJson, verifyUntil });
    prepared.kids.push(jwk.kid);
  }
  return prepared;
}

/** The replicated state proper: replaced whole when a snapshot completes, changed by a delta's commit only. */
class ReplicaState {
  readonly keys = new Map<string, ReplicaKey>();
  readonly kidsByKeyPair = new Map<string, string[]>();
  readonly apiKeys = new Map<string, DataPlaneApiKey>();
  readonly revoked = new Map<string, number>();
  issuer = '';
  audience = '';

  private setKeyPair(keyPairId: string, { kids, keys }: PreparedKeyPair): void {
    this.removeKeyPair(keyPairId);
    for (const [kid, key] of keys) this.keys.set(kid, key);
    this.kidsByKeyPair.set(keyPairId, kids);
  }

  private removeKeyPair(keyPairId: string): void {
    for (const kid of this.kidsByKeyPair.get(keyPairId) ?? []) this.keys.delete(kid);
    this.kidsByKeyPair.delete(keyPairId);
  }

  /** Applies a delta's gathered parts. Map writes only: it cannot fail halfway. */
  commit(delta: PendingDelta): void {
    if (delta.issuer !== undefined) this.issuer = delta.issuer;
    if (delta.audience !== undefined) this.audience = delta.audience;
    for (const [keyPairId, keyPair] of delta.keyPairs) {
      if (keyPair) this.setKeyPair(keyPairId, keyPair);
      else this.removeKeyPair(keyPairId);
    }
    for (const [clientId, apiKey] of delta.apiKeys) {
      if (apiKey) this.apiKeys.set(clientId, apiKey);
      else this.apiKeys.delete(clientId);
    }
    for (const [jti, expiresAt] of delta.revoked) this.revoked.set(jti, expiresAt);
  }

  /** Applies a snapshot's part straight to a state nobody reads yet (no staging: a snapshot is swapped whole anyway). */
  fill(update: DataPlaneUpdate, live: ReplicaState): void {
    if (update.issuer !== undefined) this.issuer = update.issuer;
    if (update.audience !== undefined) this.audience = update.audience;
    for (const keyPair of update.keyPairs) this.setKeyPair(keyPair.keyPairId, prepareKeyPair(keyPair, live));
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
  /** A multi-part delta being received: committed to `state` at once when its last part arrives. */
  private pending: PendingDelta | undefined;
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
      this.pending = undefined;
      this.partsOf = update.version;
    } else if (this.partsOf !== undefined) {
      if (update.version !== this.partsOf) return this.outOfSync();
    } else if (update.baseVersion !== this.version || !this.ready) {
      return this.outOfSync();
    }
    // A snapshot's part goes straight into its own state, which nobody reads before it is whole;
    // a delta's parts are gathered and committed together.
    this.pending ??= this.incoming ? undefined : new PendingDelta();
    try {
      if (this.incoming) this.incoming.fill(update, this.state);
      else this.pending?.add(update, this.state);
    } catch (error) {
      // Nothing of this update reaches Check; the caller reads a snapshot.
      this.outOfSync();
      throw error;
    }
    if (update.more) {
      this.partsOf = update.version;
      return 'partial';
    }
    if (this.incoming) this.state = this.incoming;
    else if (this.pending) this.state.commit(this.pending);
    this.applied[this.incoming ? 'snapshots' : 'deltas'] += 1;
    this.incoming = undefined;
    this.pending = undefined;
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
    this.pending = undefined;
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
