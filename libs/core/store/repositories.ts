import type { ApiKeyRecord, KeyPairRecord } from '../model';
import type { Route } from '../routes';

/**
 * The authority's storage, behind small interfaces so SQLite (embedded default) and a shared
 * database (replicas) are interchangeable. Every write is durable once its promise resolves.
 */
export interface ApiKeyRepository {
  get(clientId: string): Promise<ApiKeyRecord | undefined>;
  /** As `get`, for many ids at once, in their order (a data plane delta after a bulk change: one query, not one per key). */
  getMany(clientIds: string[]): Promise<(ApiKeyRecord | undefined)[]>;
  /**
   * One page in client id order, after `after` (exclusive), optionally filtered: what the admin
   * list and data plane snapshots read, so neither holds every key at once.
   */
  listPage(query: ApiKeyPageQuery): Promise<ApiKeyRecord[]>;
  /** Returns false when the client id is taken. */
  create(apiKey: ApiKeyRecord, options?: AuditedWrite<ApiKeyRecord>): Promise<boolean>;
  /** Creates many keys in one transaction (imports, benchmarks); fails whole if one id is taken. */
  createMany(apiKeys: ApiKeyRecord[]): Promise<void>;
  /** Returns false when the key does not exist. */
  update(apiKey: ApiKeyRecord): Promise<boolean>;
  /**
   * Reads, changes and writes one key atomically (no other write in between); `change` must be
   * synchronous. Resolves to the new record, or undefined when the key does not exist. `change`
   * may throw to abort (nothing is written, the error reaches the caller: how a stale If-Match
   * is refused), or return `current` itself to write nothing (no change log or audit entry).
   */
  modify(
    clientId: string,
    change: (current: ApiKeyRecord) => ApiKeyRecord,
    options?: AuditedWrite<ApiKeyRecord>,
  ): Promise<ApiKeyRecord | undefined>;
  /** Returns false when the key does not exist. */
  delete(clientId: string, options?: DeleteOptions<ApiKeyRecord>): Promise<boolean>;
}

export interface ApiKeyPageQuery {
  after?: string;
  limit: number;
  enabled?: boolean;
  tag?: string;
  authorizedEntity?: string;
  /** Keys whose `jwt-sign-keypair` metadata names this key pair. */
  signKeyPair?: string;
}

export interface KeyPairRepository {
  get(id: string): Promise<KeyPairRecord | undefined>;
  list(): Promise<KeyPairRecord[]>;
  create(keyPair: KeyPairRecord, options?: AuditedWrite<KeyPairRecord>): Promise<boolean>;
  update(keyPair: KeyPairRecord): Promise<boolean>;
  /** As ApiKeyRepository.modify. */
  modify(
    id: string,
    change: (current: KeyPairRecord) => KeyPairRecord,
    options?: AuditedWrite<KeyPairRecord>,
  ): Promise<KeyPairRecord | undefined>;
  delete(id: string, options?: DeleteOptions<KeyPairRecord>): Promise<boolean>;
}

/**
 * An admin write that leaves a trace in the audit log. `audit` is called (synchronously) inside
 * the write's transaction with the record before and after the write (undefined before a
 * create, after a delete); the entry it returns is appended in that same transaction, so the
 * change and its audit entry commit together or not at all. Not called when nothing is written.
 */
export interface AuditedWrite<T> {
  audit?: (before: T | undefined, after: T | undefined) => AuditDraft | undefined;
}

export interface DeleteOptions<T> extends AuditedWrite<T> {
  /** Called (synchronously) on the current record inside the delete's transaction; throw to abort it (If-Match). */
  check?: (current: T) => void;
}

/**
 * Routes (libs/core/routes.ts), validated before they get here. Every write also keeps the
 * route's claims ((domain, pathPrefix) pairs of an enabled route) under a unique index in the same
 * transaction: a write claiming a pair another route holds throws RouteConflictError and writes
 * nothing, on any replica.
 */
export interface RouteRepository {
  get(id: string): Promise<Route | undefined>;
  /** As `get`, for many ids at once, in their order (what a route change names: one query). */
  getMany(ids: string[]): Promise<(Route | undefined)[]>;
  /** One page in id order after `after` (exclusive), optionally filtered. */
  listPage(query: RoutePageQuery): Promise<Route[]>;
  /** Returns false when the id is taken. */
  create(route: Route, options?: AuditedWrite<Route>): Promise<boolean>;
  /** Many routes in one transaction (the seed data, imports); fails whole if one id or claim is taken. */
  createMany(routes: Route[]): Promise<void>;
  /** As ApiKeyRepository.modify. */
  modify(id: string, change: (current: Route) => Route, options?: AuditedWrite<Route>): Promise<Route | undefined>;
  delete(id: string, options?: DeleteOptions<Route>): Promise<boolean>;
}

export interface RoutePageQuery {
  after?: string;
  limit: number;
  enabled?: boolean;
  /** Routes listing this domain pattern (exactly, lower-case). */
  domain?: string;
}

export type AuditEntity = 'apikey' | 'keypair' | 'route';

/** One admin change, as the audit log keeps it. Never a secret: the core redacts `change` before it gets here. */
export interface AuditEntry {
  /**
   * Assigned by the store: increases in commit order, never reused (what `after` pages by). A
   * store whose ids can commit out of order (a PostgreSQL sequence under concurrent writers) must
   * serialise appends, e.g. with a transaction-scoped advisory lock, or a reader could skip one.
   */
  id: number;
  /** ISO 8601 time of the change. */
  at: string;
  /** Who: `admin-token:<12 hex of the token's SHA-256>`, `cli:<os user>`, `system`. */
  actor: string;
  /** `<entity>.<verb>`, e.g. `apikey.create`, `keypair.rotate`. */
  action: string;
  entity: AuditEntity;
  entityId: string;
  /** JSON: the created or deleted entity, or for updates `{ field: { before, after } }`. */
  change: unknown;
}

export type AuditDraft = Omit<AuditEntry, 'id'>;

export interface AuditPageQuery {
  /** Entries with an id greater than this. */
  after?: number;
  limit: number;
  entity?: AuditEntity;
  entityId?: string;
}

/**
 * The audit log's read side; entries are appended by the audited writes above, never on their
 * own. Retention: entries are kept until removed by hand (admin changes are few; nothing prunes).
 */
export interface AuditRepository {
  /** One page in id order (oldest first), optionally filtered by entity and entity id. */
  listPage(query: AuditPageQuery): Promise<AuditEntry[]>;
}

export interface Revocation {
  jti: string;
  expiresAt: number;
}

/** RFC 7009 revocations, kept until the token would have expired anyway. */
export interface RevocationRepository {
  revoke(jti: string, expiresAt: number): Promise<void>;
  isRevoked(jti: string): Promise<boolean>;
  /** The revocation of `jti`, if any. */
  get(jti: string): Promise<Revocation | undefined>;
  /** As `get`, for many at once, in their order. */
  getMany(jtis: string[]): Promise<(Revocation | undefined)[]>;
  /** One page (in jti order, after `after`) of the revocations of tokens not expired at `now`. */
  listActivePage(now: number, after: string | undefined, limit: number): Promise<Revocation[]>;
  purgeExpired(now: number): Promise<number>;
}

/**
 * The jtis of accepted private_key_jwt assertions (RFC 7523 §3 item 7), shared by every process on
 * the store so an assertion is accepted once across replicas; not in the change log (data planes
 * never need them), dropped once expired.
 */
export interface AssertionReplayRepository {
  /**
   * Records `id` until `expiresAt` (epoch ms), atomically: true if it was not recorded or its
   * record had expired at `now`, false (nothing written) if it is recorded and live.
   */
  useOnce(id: string, expiresAt: number, now: number): Promise<boolean>;
  purgeExpired(now: number): Promise<number>;
}

/** What a write changed, as the change log records it (the entity's id; its state is read anew). */
export type ChangedEntity = 'apiKey' | 'keyPair' | 'revocation' | 'route';

export interface StoreChange {
  /** Position in the log: increases with every change, never reused by this store. */
  seq: number;
  entity: ChangedEntity;
  id: string;
  /**
   * Random, given with the change: names this change at this position, so a position given out
   * again to another change (a restored backup, a database failover that lost the newest
   * commits) is told apart from the one a data plane saw. '' for changes logged before tags.
   */
  tag: string;
}

/**
 * Every write appends to the change log in the same transaction, so what changed since any
 * position can be read back, by this process or any other sharing the store. It keeps the
 * newest changes only (`retained`); older positions answer undefined (read a snapshot instead).
 */
export interface ChangeLog {
  /** Names this store's log: positions of another store's log mean nothing here. Changes only by rotateStoreId. */
  readonly storeId: string;
  /** The position of the newest change (0 for none). */
  head(): Promise<number>;
  /** Changes after `seq`, oldest first, at most `limit`; undefined when the log no longer reaches back to `seq`. */
  since(seq: number, limit: number): Promise<StoreChange[] | undefined>;
  /** The tag of the change at `seq` ('' at 0, before any change); undefined when the log does not hold it. */
  tagAt(seq: number): Promise<string | undefined>;
}

export interface AuthorityStore {
  apiKeys: ApiKeyRepository;
  keyPairs: KeyPairRepository;
  revocations: RevocationRepository;
  routes: RouteRepository;
  assertionReplays: AssertionReplayRepository;
  changes: ChangeLog;
  audit: AuditRepository;
  /** Calls `listener` after any change, by this process or another sharing the store. */
  onChange(listener: () => void): () => void;
  /** Whether the store is reachable now (a shared database may not be); an embedded one always is. */
  status?(): StoreStatus;
  /**
   * Gives the store a new `changes.storeId` (after a backup was restored): data planes then read
   * a snapshot instead of resuming from positions that may now mean other changes. Every process
   * on the store follows (fires onChange).
   */
  rotateStoreId(): Promise<string>;
  close(): Promise<void>;
}

export type StoreStatus = { available: true } | { available: false; reason: string };
