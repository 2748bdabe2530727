import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { PublicJwk } from './crypto/key-pairs';
import type { KeyRing } from './key-ring';
import { activeSecretHashes, grantableScopes, type ApiKeyRecord } from './model';
import { SerialPublisher } from './serial-publisher';
import type { AuthorityStore, Revocation, StoreChange } from './store/repositories';

/**
 * What a data plane (ext-authz) needs to decide alone, as updates: a snapshot, then only what
 * changed (Envoy's incremental xDS, carried by token_authority.v1.AuthorityWatch/DeltaWatch).
 * Entries carry the entity's whole current state, so applying one twice does no harm. All
 * parts of one update carry the same version and base version.
 * Times are epoch milliseconds.
 */
export interface DataPlaneUpdate {
  /** The version the data plane is at once this update (all its parts) is applied. */
  version: string;
  /** The version this update applies on top of; empty on a snapshot. */
  baseVersion: string;
  /** First part of a snapshot: forget everything. */
  reset: boolean;
  /** More parts of this update follow. */
  more: boolean;
  /** Set on snapshots. */
  issuer?: string;
  audience?: string;
  keyPairs: DataPlaneKeyPair[];
  removedKeyPairs: string[];
  apiKeys: DataPlaneApiKey[];
  removedApiKeys: string[];
  revokedTokens: Revocation[];
  generatedAt: number;
}

export interface DataPlaneKeyPair {
  keyPairId: string;
  /** Every key of the pair that may still verify a live token (replaces what the data plane had). */
  keys: DataPlaneKey[];
}

export interface DataPlaneKey {
  jwk: PublicJwk;
  verifyUntil?: number;
}

export interface DataPlaneApiKey {
  clientId: string;
  clientName: string;
  enabled: boolean;
  validUntil?: number;
  authorizedEntities: string[];
  scopes: string[];
  metadata: Record<string, string>;
  tags: string[];
  secrets: { hash: string; validUntil?: number }[];
  allowClientIdOnly: boolean;
  /** Otoroshi's quotas; absent from an authority that does not send them (no quota then). */
  quotas?: ApiKeyQuotas;
  /** Absent: bearer tokens too. `dpop` / `mtls`: only tokens bound that way (another value: none). */
  tokenBinding?: string;
}

/** Calls per second (`throttlingQuota`), per UTC day, per UTC month. */
export interface ApiKeyQuotas {
  throttlingQuota: number;
  dailyQuota: number;
  monthlyQuota: number;
}

export function toDataPlaneApiKey(apiKey: ApiKeyRecord, now: number): DataPlaneApiKey {
  return {
    clientId: apiKey.clientId,
    clientName: apiKey.clientName,
    enabled: apiKey.enabled,
    validUntil: apiKey.validUntil ?? undefined,
    authorizedEntities: apiKey.authorizedEntities,
    scopes: [...grantableScopes(apiKey)],
    metadata: apiKey.metadata,
    tags: apiKey.tags,
    secrets: activeSecretHashes(apiKey, now),
    allowClientIdOnly: apiKey.allowClientIdOnly ?? false,
    quotas: { throttlingQuota: apiKey.throttlingQuota, dailyQuota: apiKey.dailyQuota, monthlyQuota: apiKey.monthlyQuota },
    ...((apiKey as { tokenBinding?: string }).tokenBinding && (apiKey as { tokenBinding?: string }).tokenBinding !== 'bearer'
      ? { tokenBinding: (apiKey as { tokenBinding?: string }).tokenBinding }
      : {}),
  };
}

/**
 * Versions are `<store id>:<change-log position>:<tag of the change there>`: comparable only
 * within one store, and only while that position still holds the same change (a restored backup
 * gives positions out again, to other changes; see StoreChange.tag).
 */
export function formatVersion(storeId: string, seq: number, tag = ''): string {
  return `${storeId}:${seq}:${tag}`;
}

/** Undefined for anything else, including the `<store id>:<position>` of older versions (those read a snapshot). */
export function parseVersion(version: string): { storeId: string; seq: number; tag: string } | undefined {
  // Decimal digits only: Number() would also take '', ' 1', '0x10' or '1e3'.
  const match = /^([^:]+):(\d{1,15}):([A-Za-z0-9_-]*)$/.exec(version);
  return match ? { storeId: match[1], seq: Number(match[2]), tag: match[3] } : undefined;
}

/** Entries per message of a snapshot or catch-up: each part is read and encoded without holding the event loop for long. */
export const UPDATE_CHUNK = 1000;
/**
 * And at most about this many bytes of API keys per message, far below the 64 MiB message limit
 * of both ends: a key's metadata may be large (up to the admin API's body limit).
 */
export const UPDATE_BYTES = 4 * 1024 * 1024;

/** Roughly the encoded size of a key: its strings, plus a little per field. */
function approximateBytes(apiKey: DataPlaneApiKey): number {
  let bytes = 64 + apiKey.clientId.length + apiKey.clientName.length;
  for (const list of [apiKey.authorizedEntities, apiKey.scopes, apiKey.tags]) for (const item of list) bytes += item.length + 2;
  for (const [key, value] of Object.entries(apiKey.metadata)) bytes += key.length + value.length + 6;
  for (const secret of apiKey.secrets) bytes += secret.hash.length + 16;
  if (apiKey.quotas) bytes += 32;
  if (apiKey.tokenBinding) bytes += 8;
  return bytes;
}

/** Splits keys into runs that fit one message each (UPDATE_BYTES); never an empty run for a non-empty list. */
function byBytes(apiKeys: DataPlaneApiKey[]): DataPlaneApiKey[][] {
  const runs: DataPlaneApiKey[][] = [[]];
  let bytes = 0;
  for (const apiKey of apiKeys) {
    const size = approximateBytes(apiKey);
    if (bytes + size > UPDATE_BYTES && runs[runs.length - 1].length) {
      runs.push([]);
      bytes = 0;
    }
    runs[runs.length - 1].push(apiKey);
    bytes += size;
  }
  return runs;
}
/** Changes read from the log per delta: a larger burst becomes several deltas. */
const CHANGES_PER_DELTA = 5000;
/** How long changes are gathered before a delta is built (a burst of writes is one update). */
const DEBOUNCE_MS = 20;
/** Backoff of a failed delta: 100 ms, doubling up to 10 s, until it goes through. */
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 10_000;
/**
 * How long a data plane that resumes from a position this replica has not read yet waits for it
 * (another replica's commit reaches this one within LISTEN/NOTIFY or the SQLite poll) before it
 * is given a snapshot instead.
 */
const REACH_TIMEOUT_MS = 1000;

/** A listener gets every delta in order, or 'resync' when it must start over from a snapshot. */
export type UpdateListener = (update: DataPlaneUpdate | 'resync') => void;

const emptyUpdate = (version: string, baseVersion: string, now: number): DataPlaneUpdate => ({
  version,
  baseVersion,
  reset: false,
  more: false,
  keyPairs: [],
  removedKeyPairs: [],
  apiKeys: [],
  removedApiKeys: [],
  revokedTokens: [],
  generatedAt: now,
});

/**
 * Turns the store's change log into data plane updates. After every store change (ours, or
 * another process's), it reads the changes since the last delta, reads the current state of
 * just those entities and hands one delta to every subscriber: the cost follows the change,
 * not the number of API keys. Snapshots are read a page at a time.
 */
export class DataPlaneFeed {
  /** Where the feed has read the change log to. */
  private seq = 0;
  /**
   * The position of the data plane state last published, and the tag of the change there: that of
   * the last change a data plane sees. Route changes move `seq` alone: they reach Envoy over xDS
   * (the RouteFeed), ext-authz gets each route's policy from Envoy in the CheckRequest.
   */
  private publishedSeq = 0;
  private tag = '';
  /** The store id of `seq`: when the store gets a new one (a restored backup), every subscriber starts over. */
  private storeId: string;
  private readonly listeners = new Set<UpdateListener>();
  private readonly publisher: SerialPublisher;
  private readonly unsubscribeStore: () => void;
  private readonly ready: Promise<void>;
  /** Woken after each pass over the change log (reach). */
  private readonly positionWaiters = new Set<() => void>();
  private closed = false;

  constructor(
    private readonly store: AuthorityStore,
    private readonly keyRing: KeyRing,
    private readonly token: { issuer: string; audience: string },
    onError: (error: Error) => void,
    private readonly now: () => number = Date.now,
  ) {
    this.storeId = store.changes.storeId;
    this.ready = this.moveToHead();
    // The position moves only when a delta went out: a failed one (SQLITE_BUSY) is read again after the backoff.
    this.publisher = new SerialPublisher(() => this.publishOnce().finally(() => this.wakePositionWaiters()), {
      debounceMs: DEBOUNCE_MS,
      retryFirstMs: RETRY_FIRST_MS,
      retryMaxMs: RETRY_MAX_MS,
      onError,
      ready: this.ready,
    });
    this.unsubscribeStore = store.onChange(() => this.publisher.schedule());
  }

  /** Takes the change log's head (and its tag) as the feed's position. */
  private async moveToHead(): Promise<void> {
    const head = await this.store.changes.head();
    // A log entry never changes once written. One missing (a log emptied by hand) gives a tag no
    // data plane holds: it reads a snapshot.
    const tag = (await this.store.changes.tagAt(head)) ?? '-';
    this.seq = head;
    this.publishedSeq = head;
    this.tag = tag;
  }

  private wakePositionWaiters(): void {
    const waiters = [...this.positionWaiters];
    this.positionWaiters.clear();
    for (const wake of waiters) wake();
  }

  /**
   * Resolves once the feed has read the change log as far as `version` (that of a data plane
   * coming from a replica further along the same store), or after `timeoutMs`. Without the wait
   * that data plane would read a whole snapshot, at an older version, only because this replica
   * had not read the latest commit yet.
   */
  async reach(version: string | undefined, timeoutMs = REACH_TIMEOUT_MS): Promise<void> {
    await this.ready;
    const target = version ? parseVersion(version) : undefined;
    if (!target || target.storeId !== this.storeId) return;
    const deadline = Date.now() + timeoutMs;
    while (this.seq < target.seq && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) return;
      this.publisher.schedule();
      await new Promise<void>((done) => {
        const wake = () => {
          clearTimeout(timer);
          this.positionWaiters.delete(wake);
          done();
        };
        const timer = setTimeout(wake, Math.min(left, 100));
        this.positionWaiters.add(wake);
      });
    }
  }

  /** Resolves once the feed knows where the change log stands; call before serving. */
  start(): Promise<void> {
    return this.ready;
  }

  /** The version of the last delta published (what a new stream starts at). */
  get version(): string {
    return formatVersion(this.storeId, this.publishedSeq, this.tag);
  }

  subscribe(listener: UpdateListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The first update of a stream, at the version published when called: subscribe first, in
   * the same tick, and every later delta follows on from it. What changed since `resumeFrom`
   * when the change log still reaches back to it, the whole state otherwise, in parts of
   * UPDATE_CHUNK entries. Pages read after a change may already hold it; the delta that follows
   * repeats it harmlessly.
   */
  updatesFrom(resumeFrom?: string): AsyncGenerator<DataPlaneUpdate> {
    // Up to the last change read: what lies past the published position is route changes only.
    const to = this.seq;
    const version = this.version;
    const from = resumeFrom ? parseVersion(resumeFrom) : undefined;
    const resumable = from !== undefined && from.storeId === this.storeId && from.seq <= to;
    return resumable ? this.readCatchUp(resumeFrom!, from, to, version) : this.readSnapshot(version);
  }

  private async *readSnapshot(version: string): AsyncGenerator<DataPlaneUpdate> {
    const now = this.now();
    const first: DataPlaneUpdate = {
      ...emptyUpdate(version, '', now),
      reset: true,
      issuer: this.token.issuer,
      audience: this.token.audience,
      keyPairs: this.keyRing.keyPairKeys(),
    };
    let part = first;
    let after: string | undefined;
    for (;;) {
      const page = await this.store.apiKeys.listPage({ after, limit: UPDATE_CHUNK });
      if (!page.length) break;
      after = page[page.length - 1].clientId;
      for (const run of byBytes(page.map((apiKey) => toDataPlaneApiKey(apiKey, now)))) {
        part.apiKeys = run;
        yield { ...part, more: true };
        part = emptyUpdate(version, '', now);
      }
      await yieldToEventLoop();
    }
    let afterJti: string | undefined;
    for (;;) {
      const page = await this.store.revocations.listActivePage(now, afterJti, UPDATE_CHUNK);
      if (!page.length) break;
      part.revokedTokens = page;
      afterJti = page[page.length - 1].jti;
      yield { ...part, more: true };
      part = emptyUpdate(version, '', now);
      await yieldToEventLoop();
    }
    yield part;
  }

  /** The changes from `fromSeq` to `to`, or a snapshot at `to` when the log no longer reaches back. */
  private async *readCatchUp(
    fromVersion: string,
    from: { seq: number; tag: string },
    to: number,
    version: string,
  ): AsyncGenerator<DataPlaneUpdate> {
    // The position must still hold the change the data plane saw: after a restored backup it may
    // hold another one (or none), and what follows it is another history.
    if ((await this.store.changes.tagAt(from.seq)) !== from.tag) {
      yield* this.readSnapshot(version);
      return;
    }
    const fromSeq = from.seq;
    let seq = fromSeq;
    while (seq < to) {
      const changes = (await this.store.changes.since(seq, CHANGES_PER_DELTA))?.filter((change) => change.seq <= to);
      if (changes === undefined) {
        if (seq !== fromSeq) throw new Error('the change log was pruned during a catch-up');
        yield* this.readSnapshot(version);
        return;
      }
      if (!changes.length) break;
      seq = changes[changes.length - 1].seq;
      const own = changes.filter((change) => change.entity !== 'route');
      if (own.length) for (const part of await this.delta(own, version, fromVersion)) yield { ...part, more: true };
      await yieldToEventLoop();
    }
    yield emptyUpdate(version, fromVersion, this.now());
  }

  /** One delta (or a resync); true when the log has more past the changes read. */
  private async publishOnce(): Promise<boolean> {
    if (this.store.changes.storeId !== this.storeId) {
      // A new store id (a restored backup): positions of the old one mean nothing any more.
      const storeId = this.store.changes.storeId;
      await this.keyRing.reload();
      await this.moveToHead();
      this.storeId = storeId;
      this.listeners.forEach((listener) => listener('resync'));
      return false;
    }
    const changes = await this.store.changes.since(this.seq, CHANGES_PER_DELTA);
    if (changes === undefined) {
      // Fell further behind than the log keeps: every subscriber starts over from a snapshot.
      await this.moveToHead();
      this.listeners.forEach((listener) => listener('resync'));
      return false;
    }
    if (!changes.length) return false;
    const more = changes.length === CHANGES_PER_DELTA;
    const last = changes[changes.length - 1];
    const own = changes.filter((change) => change.entity !== 'route');
    if (!own.length) {
      // Routes alone changed: nothing for a data plane, so no update and no new version.
      this.seq = last.seq;
      return more;
    }
    const baseVersion = this.version;
    const newest = own[own.length - 1];
    const version = formatVersion(this.storeId, newest.seq, newest.tag);
    const parts = await this.delta(own, version, baseVersion);
    this.seq = last.seq;
    this.publishedSeq = newest.seq;
    this.tag = newest.tag;
    parts.forEach((part, index) => {
      const update = { ...part, more: index < parts.length - 1 };
      this.listeners.forEach((listener) => listener(update));
    });
    return more;
  }

  /** The current state of the entities `changes` name (no route changes: see publishedSeq), in parts of at most UPDATE_CHUNK API keys. */
  private async delta(changes: StoreChange[], version: string, baseVersion: string): Promise<DataPlaneUpdate[]> {
    const now = this.now();
    const ids = { apiKey: new Set<string>(), keyPair: new Set<string>(), revocation: new Set<string>(), route: new Set<string>() };
    for (const change of changes) ids[change.entity]?.add(change.id);
    const first = emptyUpdate(version, baseVersion, now);
    if (ids.keyPair.size) {
      // Signing follows key pair changes from any process: reload before anyone is told.
      await this.keyRing.reload();
      for (const id of ids.keyPair) {
        const [keyPair] = this.keyRing.keyPairKeys(id);
        if (keyPair) first.keyPairs.push(keyPair);
        else first.removedKeyPairs.push(id);
      }
    }
    for (const revocation of await this.store.revocations.getMany([...ids.revocation])) {
      if (revocation && revocation.expiresAt > now) first.revokedTokens.push(revocation);
    }
    const parts = [first];
    let part = first;
    let bytes = 0;
    const clientIds = [...ids.apiKey];
    const records = await this.store.apiKeys.getMany(clientIds);
    for (const [index, clientId] of clientIds.entries()) {
      const record = records[index];
      const apiKey = record && toDataPlaneApiKey(record, now);
      const size = apiKey ? approximateBytes(apiKey) : clientId.length + 2;
      if (part.apiKeys.length + part.removedApiKeys.length >= UPDATE_CHUNK || (bytes + size > UPDATE_BYTES && part.apiKeys.length)) {
        part = emptyUpdate(version, baseVersion, now);
        parts.push(part);
        bytes = 0;
      }
      bytes += size;
      if (apiKey) part.apiKeys.push(apiKey);
      else part.removedApiKeys.push(clientId);
    }
    return parts;
  }

  close(): void {
    this.closed = true;
    this.wakePositionWaiters();
    this.publisher.close();
    this.unsubscribeStore();
    this.listeners.clear();
  }
}
