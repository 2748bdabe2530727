import type { ApiKeyRecord, KeyPairRecord } from '../model';

/**
 * The authority's storage, behind small interfaces so SQLite (embedded default) and Redis
 * (shared by replicas) are interchangeable. Every write is durable once its promise resolves.
 */
export interface ApiKeyRepository {
  get(clientId: string): Promise<ApiKeyRecord | undefined>;
  list(): Promise<ApiKeyRecord[]>;
  /** Returns false when the client id is taken. */
  create(apiKey: ApiKeyRecord): Promise<boolean>;
  /** Returns false when the key does not exist. */
  update(apiKey: ApiKeyRecord): Promise<boolean>;
  /**
   * Reads, changes and writes one key atomically (no other write in between); `change` must be
   * synchronous. Resolves to the new record, or undefined when the key does not exist.
   */
  modify(clientId: string, change: (current: ApiKeyRecord) => ApiKeyRecord): Promise<ApiKeyRecord | undefined>;
  delete(clientId: string): Promise<boolean>;
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

/** RFC 7009 revocations, kept until the token would have expired anyway. */
export interface RevocationRepository {
  revoke(jti: string, expiresAt: number): Promise<void>;
  isRevoked(jti: string): Promise<boolean>;
  /** Revocations of tokens that have not expired at `now`. */
  listActive(now: number): Promise<{ jti: string; expiresAt: number }[]>;
  purgeExpired(now: number): Promise<number>;
}

export interface AuthorityStore {
  apiKeys: ApiKeyRepository;
  keyPairs: KeyPairRepository;
  revocations: RevocationRepository;
  /** Calls `listener` after any change, by this process or another sharing the store. */
  onChange(listener: () => void): () => void;
  close(): Promise<void>;
}
