import type { ApiKeyRecord, KeyPairRecord } from '../model';

/**
 * The authority's storage, behind small interfaces so SQLite (embedded default) and a shared
 * database (replicas) are interchangeable. Every write is durable once its promise resolves.
 */
export interface ApiKeyRepository {
  get(clientId: string): Promise<ApiKeyRecord | undefined>;
  /**
   * One page in client id order, after `after` (exclusive), optionally filtered: what the admin
   * list and data plane snapshots read, so neither holds every key at once.
   */
  listPage(query: ApiKeyPageQuery): Promise<ApiKeyRecord[]>;
  /** Returns false when the client id is taken. */
  create(apiKey: ApiKeyRecord): Promise<boolean>;
  /** Creates many keys in one transaction (imports, benchmarks); fails whole if one id is taken. */
  createMany(apiKeys: ApiKeyRecord[]): Promise<void>;
  /** Returns false when the key does not exist. */
  update(apiKey: ApiKeyRecord): Promise<boolean>;
  /**
   * Reads, changes and writes one key atomically (no other write in between); `change` must be
   * synchronous. Resolves to the new record, or undefined when the key does not exist.
   */
  modify(clientId: string, change: (current: ApiKeyRecord) => ApiKeyRecord): Promise<ApiKeyRecord | undefined>;
  delete(clientId: string): Promise<boolean>;
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
  create(keyPair: KeyPairRecord): Promise<boolean>;
  update(keyPair: KeyPairRecord): Promise<boolean>;
  /** As ApiKeyRepository.modify. */
  modify(id: string, change: (current: KeyPairRecord) => KeyPairRecord): Promise<KeyPairRecord | undefined>;
  delete(id: string): Promise<boolean>;
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
  /** One page (in jti order, after `after`) of the revocations of tokens not expired at `now`. */
  listActivePage(now: number, after: string | undefined, limit: number): Promise<Revocation[]>;
  purgeExpired(now: number): Promise<number>;
}

/** What a write changed, as the change log records it (the entity's id; its state is read anew). */
export type ChangedEntity = 'apiKey' | 'keyPair' | 'revocation';

export interface StoreChange {
  /** Position in the log: increases with every change, never reused by this store. */
  seq: number;
  entity: ChangedEntity;
  id: string;
}

/**
 * Every write appends to the change log in the same transaction, so what changed since any
 * position can be read back, by this process or any other sharing the store. It keeps the
 * newest changes only (`retained`); older positions answer undefined (read a snapshot instead).
 */
export interface ChangeLog {
  /** Names this store's log: positions of another store's log mean nothing here. */
  readonly storeId: string;
  /** The position of the newest change (0 for none). */
  head(): Promise<number>;
  /** Changes after `seq`, oldest first, at most `limit`; undefined when the log no longer reaches back to `seq`. */
  since(seq: number, limit: number): Promise<StoreChange[] | undefined>;
}

export interface AuthorityStore {
  apiKeys: ApiKeyRepository;
  keyPairs: KeyPairRepository;
  revocations: RevocationRepository;
  changes: ChangeLog;
  /** Calls `listener` after any change, by this process or another sharing the store. */
  onChange(listener: () => void): () => void;
  /** Whether the store is reachable now (a shared database may not be); an embedded one always is. */
  status?(): StoreStatus;
  close(): Promise<void>;
}

export type StoreStatus = { available: true } | { available: false; reason: string };
