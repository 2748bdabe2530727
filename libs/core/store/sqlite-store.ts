import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { ApiKeyRecord, KeyPairRecord } from '../model';
import type { ApiKeyRepository, AuthorityStore, KeyPairRepository, RevocationRepository } from './repositories';

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS api_keys (client_id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS key_pairs (id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS revoked_tokens (jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) STRICT;
  CREATE INDEX IF NOT EXISTS revoked_tokens_expiry ON revoked_tokens (expires_at);
`;

/**
 * Reads are served from memory until the data changes: our own writes clear the memo at once,
 * and commits by other connections (the CLI, another process) are seen through SQLite's
 * `data_version`, polled every CHANGE_POLL_MS. Without it two SQLite lookups per request were
 * the largest cost of introspection.
 */
const CHANGE_POLL_MS = 250;

class ReadMemo {
  private readonly entries = new Map<string, unknown>();
  constructor(
    private readonly max: number,
    private readonly onClear: () => void = () => {},
  ) {}
  get<T>(key: string, load: () => T): T {
    if (this.entries.has(key)) return this.entries.get(key) as T;
    const value = load();
    if (this.entries.size >= this.max) this.entries.clear();
    this.entries.set(key, value);
    return value;
  }
  clear(): void {
    this.entries.clear();
    this.onClear();
  }
}

/** A table of JSON documents keyed by id: the shape both entities need. */
class DocumentTable<T> {
  private readonly getStatement;
  private readonly listStatement;
  private readonly insertStatement;
  private readonly updateStatement;
  private readonly deleteStatement;

  private readonly modifyTransaction;

  constructor(db: Database.Database, table: string, key: string, private readonly memo: ReadMemo) {
    this.getStatement = db.prepare<[string], { doc: string }>(`SELECT doc FROM ${table} WHERE ${key} = ?`);
    this.listStatement = db.prepare<[], { doc: string }>(`SELECT doc FROM ${table} ORDER BY ${key}`);
    this.insertStatement = db.prepare(`INSERT OR IGNORE INTO ${table} (${key}, doc) VALUES (?, ?)`);
    this.updateStatement = db.prepare(`UPDATE ${table} SET doc = ? WHERE ${key} = ?`);
    this.deleteStatement = db.prepare(`DELETE FROM ${table} WHERE ${key} = ?`);
    // BEGIN IMMEDIATE: the read and the write hold the write lock together, across processes too.
    this.modifyTransaction = db.transaction((id: string, change: (current: T) => T): T | undefined => {
      const row = this.getStatement.get(id);
      if (!row) return undefined;
      const next = change(JSON.parse(row.doc) as T);
      this.updateStatement.run(JSON.stringify(next), id);
      return next;
    }).immediate;
  }

  /** Callers get their own copy: the memo keeps the JSON text, not a shared object. */
  get(id: string): T | undefined {
    const doc = this.memo.get(id, () => this.getStatement.get(id)?.doc);
    return doc === undefined ? undefined : (JSON.parse(doc) as T);
  }
  list(): T[] {
    return this.listStatement.all().map((row) => JSON.parse(row.doc) as T);
  }
  create(id: string, doc: T): boolean {
    return this.afterWrite(this.insertStatement.run(id, JSON.stringify(doc)).changes);
  }
  update(id: string, doc: T): boolean {
    return this.afterWrite(this.updateStatement.run(JSON.stringify(doc), id).changes);
  }
  delete(id: string): boolean {
    return this.afterWrite(this.deleteStatement.run(id).changes);
  }
  modify(id: string, change: (current: T) => T): T | undefined {
    const next = this.modifyTransaction(id, change);
    if (next !== undefined) this.memo.clear();
    return next;
  }
  /** Clears the memo once the write is committed, so nobody reads the old row from memory. */
  private afterWrite(changes: number): boolean {
    if (changes > 0) this.memo.clear();
    return changes === 1;
  }
}

/**
 * The embedded default store. WAL with synchronous=FULL: a write is on disk before its
 * promise resolves, so a SIGKILL (or power loss) after an acknowledged write loses nothing.
 */
export class SqliteStore implements AuthorityStore {
  readonly apiKeys: ApiKeyRepository;
  readonly keyPairs: KeyPairRepository;
  readonly revocations: RevocationRepository;
  private readonly db: Database.Database;
  private readonly changePoll: NodeJS.Timeout;
  private readonly changeListeners = new Set<() => void>();

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);

    // Every write clears a memo, so "a memo was cleared" is "the data changed".
    const changed = () => this.changeListeners.forEach((listener) => listener());
    const apiKeyMemo = new ReadMemo(100_000, changed);
    const keyPairMemo = new ReadMemo(1_000, changed);
    const revokedMemo = new ReadMemo(100_000, changed);
    const memos = [apiKeyMemo, keyPairMemo, revokedMemo];
    const dataVersion = this.db.prepare<[], number>('PRAGMA data_version').pluck();
    let seenVersion = dataVersion.get();
    this.changePoll = setInterval(() => {
      const version = dataVersion.get();
      if (version !== seenVersion) memos.forEach((memo) => memo.clear());
      seenVersion = version;
    }, CHANGE_POLL_MS).unref();

    const apiKeys = new DocumentTable<ApiKeyRecord>(this.db, 'api_keys', 'client_id', apiKeyMemo);
    this.apiKeys = {
      get: async (clientId) => apiKeys.get(clientId),
      list: async () => apiKeys.list(),
      create: async (apiKey) => apiKeys.create(apiKey.clientId, apiKey),
      update: async (apiKey) => apiKeys.update(apiKey.clientId, apiKey),
      modify: async (clientId, change) => apiKeys.modify(clientId, change),
      delete: async (clientId) => apiKeys.delete(clientId),
    };

    const keyPairs = new DocumentTable<KeyPairRecord>(this.db, 'key_pairs', 'id', keyPairMemo);
    this.keyPairs = {
      get: async (id) => keyPairs.get(id),
      list: async () => keyPairs.list(),
      create: async (keyPair) => keyPairs.create(keyPair.id, keyPair),
      update: async (keyPair) => keyPairs.update(keyPair.id, keyPair),
      modify: async (id, change) => keyPairs.modify(id, change),
      delete: async (id) => keyPairs.delete(id),
    };

    const revoke = this.db.prepare('INSERT OR IGNORE INTO revoked_tokens (jti, expires_at) VALUES (?, ?)');
    const isRevoked = this.db.prepare<[string], { found: number }>('SELECT 1 AS found FROM revoked_tokens WHERE jti = ?');
    const purge = this.db.prepare('DELETE FROM revoked_tokens WHERE expires_at <= ?');
    const listActive = this.db.prepare<[number], { jti: string; expiresAt: number }>('SELECT jti, expires_at AS expiresAt FROM revoked_tokens WHERE expires_at > ? ORDER BY jti');
    this.revocations = {
      revoke: async (jti, expiresAt) => {
        if (revoke.run(jti, expiresAt).changes > 0) revokedMemo.clear();
      },
      isRevoked: async (jti) => revokedMemo.get(jti, () => isRevoked.get(jti) !== undefined),
      listActive: async (now) => listActive.all(now),
      purgeExpired: async (now) => {
        const { changes } = purge.run(now);
        if (changes > 0) revokedMemo.clear();
        return changes;
      },
    };
  }

  onChange(listener: () => void): () => void {
    this.changeListeners.add(listener);
    return () => this.changeListeners.delete(listener);
  }

  async close(): Promise<void> {
    clearInterval(this.changePoll);
    this.changeListeners.clear();
    if (this.db.open) this.db.close();
  }
}
