import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { nextChangeTag } from './change-tag';
import { AdminError } from '../errors';
import { SIGN_KEYPAIR_METADATA, type ApiKeyRecord, type KeyPairRecord } from '../model';
import { claimIssues, type Route, RouteConflictError, routeClaims } from '../routes';
import type {
  ApiKeyPageQuery,
  ApiKeyRepository,
  AssertionReplayRepository,
  AuditDraft,
  AuditedWrite,
  AuditEntry,
  AuditPageQuery,
  AuditRepository,
  AuthorityStore,
  ChangedEntity,
  ChangeLog,
  DeleteOptions,
  KeyPairRepository,
  RevocationRepository,
  RoutePageQuery,
  RouteRepository,
  StoreChange,
} from './repositories';

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS api_keys (client_id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS key_pairs (id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS revoked_tokens (jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) STRICT;
  CREATE INDEX IF NOT EXISTS revoked_tokens_expiry ON revoked_tokens (expires_at);
  CREATE TABLE IF NOT EXISTS used_assertions (id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) STRICT;
  CREATE INDEX IF NOT EXISTS used_assertions_expiry ON used_assertions (expires_at);
  CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, id TEXT NOT NULL, tag TEXT) STRICT;
  CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    entity TEXT NOT NULL, entity_id TEXT NOT NULL, change TEXT NOT NULL
  ) STRICT;
  CREATE INDEX IF NOT EXISTS audit_log_entity ON audit_log (entity, entity_id, id);
  CREATE TABLE IF NOT EXISTS routes (id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS route_claims (
    domain TEXT NOT NULL, path_prefix TEXT NOT NULL, route_id TEXT NOT NULL, PRIMARY KEY (domain, path_prefix)
  ) STRICT;
  CREATE INDEX IF NOT EXISTS route_claims_route ON route_claims (route_id);
`;

/**
 * Reads are served from memory until the data changes: our own writes drop what they changed
 * at once, and commits by other connections (the CLI, another process) are seen through
 * SQLite's `data_version`, polled every CHANGE_POLL_MS. Without it two SQLite lookups per
 * request were the largest cost of introspection.
 */
const CHANGE_POLL_MS = 250;
/** How many changes the log keeps: a data plane that missed more reads a snapshot. */
const CHANGES_RETAINED = 100_000;
const CHANGES_PRUNE_MS = 10_000;

class ReadMemo {
  private readonly entries = new Map<string, unknown>();
  constructor(private readonly max: number) {}
  get<T>(key: string, load: () => T): T {
    if (this.entries.has(key)) return this.entries.get(key) as T;
    const value = load();
    if (this.entries.size >= this.max) this.entries.clear();
    this.entries.set(key, value);
    return value;
  }
  forget(key: string): void {
    this.entries.delete(key);
  }
  clear(): void {
    this.entries.clear();
  }
}

/** A table of JSON documents keyed by id: the shape both entities need. Each write logs its change (and its audit entry, if any). */
class DocumentTable<T> {
  private readonly getStatement;
  private readonly listStatement;
  private readonly insertStatement;
  private readonly updateStatement;
  private readonly deleteStatement;
  private readonly write;
  private readonly createTransaction;
  private readonly modifyTransaction;
  private readonly deleteTransaction;
  readonly insertMany;

  constructor(
    db: Database.Database,
    table: string,
    key: string,
    entity: ChangedEntity,
    private readonly memo: ReadMemo,
    logChange: (entity: ChangedEntity, id: string) => void,
    appendAudit: (draft: AuditDraft | undefined) => void,
    private readonly afterCommit: () => void,
    /** Called in each write's transaction with the record before and after (routes keep their claims); may throw to abort. */
    sideWrite: (id: string, before: T | undefined, after: T | undefined) => void = () => {},
  ) {
    this.getStatement = db.prepare<[string], { doc: string }>(`SELECT doc FROM ${table} WHERE ${key} = ?`);
    this.listStatement = db.prepare<[], { doc: string }>(`SELECT doc FROM ${table} ORDER BY ${key}`);
    this.insertStatement = db.prepare(`INSERT OR IGNORE INTO ${table} (${key}, doc) VALUES (?, ?)`);
    this.updateStatement = db.prepare(`UPDATE ${table} SET doc = ? WHERE ${key} = ?`);
    this.deleteStatement = db.prepare(`DELETE FROM ${table} WHERE ${key} = ?`);
    // A write and its change-log entry commit together, or neither does.
    this.write = db.transaction((id: string, run: () => number): number => {
      const changes = run();
      if (changes > 0) logChange(entity, id);
      return changes;
    }).immediate;
    this.createTransaction = db.transaction((id: string, doc: T, options: AuditedWrite<T>): number => {
      if (this.insertStatement.run(id, JSON.stringify(doc)).changes === 0) return 0;
      sideWrite(id, undefined, doc);
      logChange(entity, id);
      appendAudit(options.audit?.(undefined, doc));
      return 1;
    }).immediate;
    // BEGIN IMMEDIATE: the read and the write hold the write lock together, across processes too.
    this.modifyTransaction = db.transaction(
      (id: string, change: (current: T) => T, options: AuditedWrite<T>): { next: T; written: boolean } | undefined => {
        const row = this.getStatement.get(id);
        if (!row) return undefined;
        const current = JSON.parse(row.doc) as T;
        const next = change(current);
        // The change function handed back the record it was given: nothing to write.
        if (next === current) return { next, written: false };
        this.updateStatement.run(JSON.stringify(next), id);
        sideWrite(id, current, next);
        logChange(entity, id);
        appendAudit(options.audit?.(current, next));
        return { next, written: true };
      },
    ).immediate;
    this.deleteTransaction = db.transaction((id: string, options: DeleteOptions<T>): number => {
      const row = this.getStatement.get(id);
      if (!row) return 0;
      const current = JSON.parse(row.doc) as T;
      options.check?.(current);
      this.deleteStatement.run(id);
      sideWrite(id, current, undefined);
      logChange(entity, id);
      appendAudit(options.audit?.(current, undefined));
      return 1;
    }).immediate;
    const strictInsert = db.prepare(`INSERT INTO ${table} (${key}, doc) VALUES (?, ?)`);
    this.insertMany = db.transaction((docs: [string, T][]) => {
      for (const [id, doc] of docs) {
        strictInsert.run(id, JSON.stringify(doc));
        sideWrite(id, undefined, doc);
        logChange(entity, id);
      }
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
  create(id: string, doc: T, options: AuditedWrite<T> = {}): boolean {
    return this.afterWrite(id, this.createTransaction(id, doc, options));
  }
  createMany(docs: [string, T][]): void {
    this.insertMany(docs);
    for (const [id] of docs) this.memo.forget(id);
    this.afterCommit();
  }
  update(id: string, doc: T): boolean {
    return this.afterWrite(
      id,
      this.write(id, () => this.updateStatement.run(JSON.stringify(doc), id).changes),
    );
  }
  delete(id: string, options: DeleteOptions<T> = {}): boolean {
    return this.afterWrite(id, this.deleteTransaction(id, options));
  }
  modify(id: string, change: (current: T) => T, options: AuditedWrite<T> = {}): T | undefined {
    const result = this.modifyTransaction(id, change, options);
    if (result?.written) this.afterWrite(id, 1);
    return result?.next;
  }
  /** Drops the memo entry once the write is committed, so nobody reads the old row from memory. */
  private afterWrite(id: string, changes: number): boolean {
    if (changes > 0) {
      this.memo.forget(id);
      this.afterCommit();
    }
    return changes === 1;
  }
}

/** The audit log, filtered and paged in SQL (one prepared statement per filter combination). */
class AuditPages {
  private readonly statements = new Map<string, Database.Statement<unknown[], AuditRow>>();
  constructor(private readonly db: Database.Database) {}

  page(query: AuditPageQuery): AuditEntry[] {
    const conditions = ['id > ?'];
    const values: unknown[] = [query.after ?? 0];
    if (query.entity !== undefined) {
      conditions.push('entity = ?');
      values.push(query.entity);
    }
    if (query.entityId !== undefined) {
      conditions.push('entity_id = ?');
      values.push(query.entityId);
    }
    const sql = `SELECT id, at, actor, action, entity, entity_id AS entityId, change FROM audit_log WHERE ${conditions.join(' AND ')} ORDER BY id LIMIT ?`;
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare<unknown[], AuditRow>(sql);
      this.statements.set(sql, statement);
    }
    return statement.all(...values, query.limit).map((row) => ({ ...row, change: JSON.parse(row.change) }) as AuditEntry);
  }
}

type AuditRow = Omit<AuditEntry, 'change'> & { change: string };

/** api_keys filtered in SQL (json_extract / json_each), one prepared statement per filter combination. */
class ApiKeyPages {
  private readonly statements = new Map<string, Database.Statement<unknown[], { doc: string }>>();
  constructor(private readonly db: Database.Database) {}

  page(query: ApiKeyPageQuery): ApiKeyRecord[] {
    const conditions = ['client_id > ?'];
    const values: unknown[] = [query.after ?? ''];
    if (query.enabled !== undefined) {
      conditions.push("json_extract(doc, '$.enabled') = ?");
      values.push(query.enabled ? 1 : 0);
    }
    if (query.tag !== undefined) {
      conditions.push("EXISTS (SELECT 1 FROM json_each(doc, '$.tags') WHERE value = ?)");
      values.push(query.tag);
    }
    if (query.authorizedEntity !== undefined) {
      conditions.push("EXISTS (SELECT 1 FROM json_each(doc, '$.authorizedEntities') WHERE value = ?)");
      values.push(query.authorizedEntity);
    }
    if (query.signKeyPair !== undefined) {
      conditions.push(`json_extract(doc, '$.metadata."${SIGN_KEYPAIR_METADATA}"') = ?`);
      values.push(query.signKeyPair);
    }
    const sql = `SELECT doc FROM api_keys WHERE ${conditions.join(' AND ')} ORDER BY client_id LIMIT ?`;
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare<unknown[], { doc: string }>(sql);
      this.statements.set(sql, statement);
    }
    return statement.all(...values, query.limit).map((row) => JSON.parse(row.doc) as ApiKeyRecord);
  }
}

/** routes filtered in SQL, as ApiKeyPages. */
class RoutePages {
  private readonly statements = new Map<string, Database.Statement<unknown[], { doc: string }>>();
  constructor(private readonly db: Database.Database) {}

  page(query: RoutePageQuery): Route[] {
    const conditions = ['id > ?'];
    const values: unknown[] = [query.after ?? ''];
    if (query.enabled !== undefined) {
      conditions.push("json_extract(doc, '$.enabled') = ?");
      values.push(query.enabled ? 1 : 0);
    }
    if (query.domain !== undefined) {
      conditions.push("EXISTS (SELECT 1 FROM json_each(doc, '$.frontend.domains') WHERE value = ?)");
      values.push(query.domain);
    }
    const sql = `SELECT doc FROM routes WHERE ${conditions.join(' AND ')} ORDER BY id LIMIT ?`;
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare<unknown[], { doc: string }>(sql);
      this.statements.set(sql, statement);
    }
    return statement.all(...values, query.limit).map((row) => JSON.parse(row.doc) as Route);
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
  readonly routes: RouteRepository;
  readonly assertionReplays: AssertionReplayRepository;
  readonly changes: ChangeLog;
  readonly audit: AuditRepository;
  private readonly db: Database.Database;
  private readonly timers: NodeJS.Timeout[];
  private readonly changeListeners = new Set<() => void>();
  private readonly keptStatements: Database.Statement[] = [];

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    // exec, not pragma(), and the one-off statements below kept: better-sqlite3 12.11 on Node 24
    // can abort the process (RemoveEnvironmentCleanupHook: env != nullptr) when V8 collects a
    // Statement from a task outside any JS context, so no statement is left to the collector early.
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000');
    this.db.exec(SCHEMA);
    // Stores written before change tags: add the column (another process may do it at the same time).
    const columns = this.db.prepare<[], string>("SELECT name FROM pragma_table_info('changes')").pluck();
    this.keptStatements.push(columns);
    if (!columns.all().includes('tag')) {
      try {
        this.db.exec('ALTER TABLE changes ADD COLUMN tag TEXT');
      } catch (error) {
        if (!/duplicate column/i.test((error as Error).message)) throw error;
      }
    }
    // Two processes creating the file at once both keep the first id written.
    const insertStoreId = this.db.prepare("INSERT OR IGNORE INTO meta (name, value) VALUES ('store_id', ?)");
    const selectStoreId = this.db.prepare<[], string>("SELECT value FROM meta WHERE name = 'store_id'").pluck();
    this.keptStatements.push(insertStoreId, selectStoreId);
    insertStoreId.run(randomUUID());
    // Re-read when another connection commits: `store rotate-id` or `store restore` by the CLI.
    let storeId = selectStoreId.get()!;
    const updateStoreId = this.db.prepare("UPDATE meta SET value = ? WHERE name = 'store_id'");
    this.keptStatements.push(updateStoreId);
    this.setStoreId = (id) => {
      updateStoreId.run(id);
      storeId = id;
    };

    const changed = () => {
      for (const listener of this.changeListeners) listener();
    };
    const apiKeyMemo = new ReadMemo(100_000);
    const keyPairMemo = new ReadMemo(1_000);
    const revokedMemo = new ReadMemo(100_000);
    const routeMemo = new ReadMemo(20_000);
    const insertChange = this.db.prepare('INSERT INTO changes (entity, id, tag) VALUES (?, ?, ?)');
    const logChange = (entity: ChangedEntity, id: string) => insertChange.run(entity, id, nextChangeTag());
    const insertAudit = this.db.prepare('INSERT INTO audit_log (at, actor, action, entity, entity_id, change) VALUES (?, ?, ?, ?, ?, ?)');
    const appendAudit = (draft: AuditDraft | undefined) => {
      if (draft) insertAudit.run(draft.at, draft.actor, draft.action, draft.entity, draft.entityId, JSON.stringify(draft.change ?? null));
    };
    const auditPages = new AuditPages(this.db);
    this.audit = { listPage: async (query) => auditPages.page(query) };

    // Another connection committed: we cannot tell what from here cheaply, so forget all reads.
    const dataVersion = this.db.prepare<[], number>('PRAGMA data_version').pluck();
    let seenVersion = dataVersion.get();
    const changePoll = setInterval(() => {
      const version = dataVersion.get();
      if (version === seenVersion) return;
      seenVersion = version;
      storeId = selectStoreId.get()!;
      for (const memo of [apiKeyMemo, keyPairMemo, revokedMemo, routeMemo]) memo.clear();
      changed();
    }, CHANGE_POLL_MS).unref();

    const apiKeys = new DocumentTable<ApiKeyRecord>(
      this.db,
      'api_keys',
      'client_id',
      'apiKey',
      apiKeyMemo,
      logChange,
      appendAudit,
      changed,
    );
    const apiKeyPages = new ApiKeyPages(this.db);
    this.apiKeys = {
      get: async (clientId) => apiKeys.get(clientId),
      getMany: async (clientIds) => clientIds.map((clientId) => apiKeys.get(clientId)),
      listPage: async (query) => apiKeyPages.page(query),
      create: async (apiKey, options) => apiKeys.create(apiKey.clientId, apiKey, options),
      createMany: async (records) => apiKeys.createMany(records.map((apiKey) => [apiKey.clientId, apiKey])),
      update: async (apiKey) => apiKeys.update(apiKey.clientId, apiKey),
      modify: async (clientId, change, options) => apiKeys.modify(clientId, change, options),
      delete: async (clientId, options) => apiKeys.delete(clientId, options),
    };

    const keyPairs = new DocumentTable<KeyPairRecord>(this.db, 'key_pairs', 'id', 'keyPair', keyPairMemo, logChange, appendAudit, changed);
    this.keyPairs = {
      get: async (id) => keyPairs.get(id),
      list: async () => keyPairs.list(),
      create: async (keyPair, options) => keyPairs.create(keyPair.id, keyPair, options),
      update: async (keyPair) => keyPairs.update(keyPair.id, keyPair),
      modify: async (id, change, options) => keyPairs.modify(id, change, options),
      delete: async (id, options) => keyPairs.delete(id, options),
    };

    // A route's claims follow it in its write's transaction; the primary key refuses a pair held by another route.
    const deleteClaims = this.db.prepare('DELETE FROM route_claims WHERE route_id = ?');
    const claimOwner = this.db
      .prepare<[string, string], string>('SELECT route_id FROM route_claims WHERE domain = ? AND path_prefix = ?')
      .pluck();
    const insertClaim = this.db.prepare('INSERT INTO route_claims (domain, path_prefix, route_id) VALUES (?, ?, ?)');
    const keepClaims = (id: string, _before: Route | undefined, after: Route | undefined) => {
      deleteClaims.run(id);
      if (!after) return;
      const owners = new Map<string, string>();
      for (const claim of routeClaims(after)) {
        const owner = claimOwner.get(claim.domain, claim.pathPrefix);
        if (owner === undefined) insertClaim.run(claim.domain, claim.pathPrefix, id);
        else owners.set(claim.domain, owner);
      }
      if (owners.size) throw new RouteConflictError(claimIssues(after, owners));
    };
    const routes = new DocumentTable<Route>(this.db, 'routes', 'id', 'route', routeMemo, logChange, appendAudit, changed, keepClaims);
    const routePages = new RoutePages(this.db);
    this.routes = {
      get: async (id) => routes.get(id),
      getMany: async (ids) => ids.map((id) => routes.get(id)),
      listPage: async (query) => routePages.page(query),
      create: async (route, options) => routes.create(route.id, route, options),
      createMany: async (records) => routes.createMany(records.map((route) => [route.id, route])),
      modify: async (id, change, options) => routes.modify(id, change, options),
      delete: async (id, options) => routes.delete(id, options),
    };

    const insertRevocation = this.db.prepare('INSERT OR IGNORE INTO revoked_tokens (jti, expires_at) VALUES (?, ?)');
    const revoke = this.db.transaction((jti: string, expiresAt: number): boolean => {
      if (insertRevocation.run(jti, expiresAt).changes === 0) return false;
      logChange('revocation', jti);
      return true;
    }).immediate;
    const getRevocation = this.db.prepare<[string], { jti: string; expiresAt: number }>(
      'SELECT jti, expires_at AS expiresAt FROM revoked_tokens WHERE jti = ?',
    );
    const purge = this.db.prepare('DELETE FROM revoked_tokens WHERE expires_at <= ?');
    const activePage = this.db.prepare<[number, string, number], { jti: string; expiresAt: number }>(
      'SELECT jti, expires_at AS expiresAt FROM revoked_tokens WHERE expires_at > ? AND jti > ? ORDER BY jti LIMIT ?',
    );
    this.revocations = {
      revoke: async (jti, expiresAt) => {
        if (!revoke(jti, expiresAt)) return;
        revokedMemo.forget(jti);
        changed();
      },
      isRevoked: async (jti) => revokedMemo.get(jti, () => getRevocation.get(jti) !== undefined),
      get: async (jti) => getRevocation.get(jti),
      getMany: async (jtis) => jtis.map((jti) => getRevocation.get(jti)),
      listActivePage: async (now, after, limit) => activePage.all(now, after ?? '', limit),
      // Expired revocations need no change-log entry: every reader drops them by their expiry.
      purgeExpired: async (now) => {
        const { changes } = purge.run(now);
        if (changes > 0) revokedMemo.clear();
        return changes;
      },
    };

    // One statement: inserted, or taken over from an expired record; a live record is left alone (0 changes).
    const useAssertion = this.db.prepare(
      'INSERT INTO used_assertions (id, expires_at) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at WHERE used_assertions.expires_at <= ?',
    );
    const purgeAssertions = this.db.prepare('DELETE FROM used_assertions WHERE expires_at <= ?');
    this.assertionReplays = {
      useOnce: async (id, expiresAt, now) => useAssertion.run(id, expiresAt, now).changes === 1,
      purgeExpired: async (now) => purgeAssertions.run(now).changes,
    };

    const head = this.db.prepare<[], number>("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)").pluck();
    const oldest = this.db.prepare<[], number | null>('SELECT min(seq) FROM changes').pluck();
    const since = this.db.prepare<[number, number], StoreChange>(
      "SELECT seq, entity, id, coalesce(tag, '') AS tag FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
    );
    const tagAt = this.db.prepare<[number], string>("SELECT coalesce(tag, '') FROM changes WHERE seq = ?").pluck();
    const prune = this.db.prepare('DELETE FROM changes WHERE seq <= ?');
    const memoOf: Record<ChangedEntity, ReadMemo> = { apiKey: apiKeyMemo, keyPair: keyPairMemo, revocation: revokedMemo, route: routeMemo };
    // One read transaction: the range check and the rows see the same state, even while another
    // process prunes (positions have no gaps, so a pruned range cannot pass for a short one).
    const readSince = this.db.transaction((seq: number, limit: number): StoreChange[] | undefined => {
      const newest = head.get()!;
      const first = oldest.get() ?? newest + 1;
      // From the future (another store, a restored backup) or older than what is kept.
      if (seq > newest || seq < first - 1) return undefined;
      return since.all(seq, limit);
    });
    this.changes = {
      get storeId() {
        return storeId;
      },
      head: async () => head.get()!,
      tagAt: async (seq) => (seq === 0 ? '' : tagAt.get(seq)),
      since: async (seq, limit) => {
        const changes = readSince(seq, limit);
        // Whoever reads a change next reads the entity: never from a cached copy older than the
        // change (another process's commit is otherwise noticed only by the data_version poll).
        for (const change of changes ?? []) memoOf[change.entity]?.forget(change.id);
        return changes;
      },
    };
    const pruneChanges = setInterval(() => prune.run(head.get()! - CHANGES_RETAINED), CHANGES_PRUNE_MS).unref();
    this.timers = [changePoll, pruneChanges];
    this.memos = [apiKeyMemo, keyPairMemo, revokedMemo, routeMemo];
    this.changed = changed;
  }

  private readonly setStoreId: (id: string) => void;
  private readonly memos: ReadMemo[];
  private readonly changed: () => void;

  /**
   * A new store id: versions of the old one name another store, so every data plane reads a
   * snapshot instead of resuming from positions that may now mean other changes (after a backup
   * was restored by copying the file back, say). Another process sees it within the poll interval.
   */
  async rotateStoreId(): Promise<string> {
    const id = randomUUID();
    this.setStoreId(id);
    this.changed();
    return id;
  }

  /** A consistent copy of the store in one file (SQLite's online backup), while others read and write. */
  async backupTo(path: string): Promise<void> {
    await this.db.backup(path);
  }

  /**
   * Replaces every table with a backup's (a file written by backupTo, or a copy of a store file),
   * in one transaction, and gives the store a new id (rotateStoreId): running servers and data
   * planes start over from the restored state instead of taking its positions for theirs.
   */
  async restoreFrom(path: string): Promise<string> {
    if (!existsSync(path)) throw new AdminError(400, `no backup at ${path}`);
    // What is wrong with the file, in one line (the CLI prints it as is): a 400, not a stack.
    const refuse = (why: string) => new AdminError(400, `${path} is not a store backup (${why})`);
    const fromBackup = <T>(read: () => T): T => {
      try {
        return read();
      } catch (error) {
        if (error instanceof Database.SqliteError) throw refuse(error.message);
        throw error;
      }
    };
    if (!statSync(path).isFile()) throw refuse('not a file');
    const id = randomUUID();
    fromBackup(() => this.db.prepare('ATTACH DATABASE ? AS restored').run(path));
    try {
      const tables = ['api_keys', 'key_pairs', 'revoked_tokens', 'changes', 'meta', 'audit_log'];
      const { problems, present } = fromBackup(() => ({
        // Every page read once: a truncated or damaged file is refused before anything is replaced.
        problems: this.db.prepare<[], string>('PRAGMA restored.quick_check(3)').pluck().all(),
        present: new Set(this.db.prepare<[], string>("SELECT name FROM restored.sqlite_master WHERE type = 'table'").pluck().all()),
      }));
      if (problems.join() !== 'ok') throw refuse(`damaged: ${problems.join('; ')}`);
      const missing = tables.filter((table) => !present.has(table));
      if (missing.length) throw refuse(`no ${missing.join(', ')}`);
      // The columns both have, by name: a backup from before a column was added (changes.tag) restores
      // with that column empty; one without a column the store needs is refused.
      const columnsOf = this.db.prepare<[string, string], { name: string; notnull: number }>(
        'SELECT name, "notnull" FROM pragma_table_info(?, ?)',
      );
      // Tables a backup from before them lacks (routes): emptied when it has none.
      const optional = ['routes', 'route_claims'];
      const copies = [...tables, ...optional.filter((table) => present.has(table))].map((table) => {
        const have = new Set(fromBackup(() => columnsOf.all(table, 'restored')).map((column) => column.name));
        const wanted = columnsOf.all(table, 'main');
        const lacking = wanted.filter((column) => column.notnull && !have.has(column.name)).map((column) => column.name);
        if (lacking.length) throw refuse(`${table} has no ${lacking.join(', ')}`);
        const columns = wanted
          .filter((column) => have.has(column.name))
          .map((column) => `"${column.name}"`)
          .join(', ');
        return `DELETE FROM main.${table}; INSERT INTO main.${table} (${columns}) SELECT ${columns} FROM restored.${table};`;
      });
      for (const table of optional.filter((name) => !present.has(name))) copies.push(`DELETE FROM main.${table};`);
      const restore = this.db.transaction(() => {
        for (const copy of copies) this.db.exec(copy);
        // The change log's and the audit log's positions go back with their rows.
        this.db.exec("DELETE FROM main.sqlite_sequence WHERE name IN ('changes', 'audit_log')");
        if (present.has('sqlite_sequence')) {
          this.db.exec(
            "INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM restored.sqlite_sequence WHERE name IN ('changes', 'audit_log')",
          );
        }
        this.setStoreId(id);
      });
      try {
        restore.immediate();
      } catch (error) {
        // Rows the store's tables refuse (a wrong type, a duplicate key): rolled back, the store unchanged.
        const code = (error as { code?: unknown }).code;
        if (error instanceof Database.SqliteError && typeof code === 'string' && /^SQLITE_(CONSTRAINT|MISMATCH|CORRUPT)/.test(code))
          throw refuse(error.message);
        throw error;
      }
    } finally {
      this.db.exec('DETACH DATABASE restored');
    }
    for (const memo of this.memos) memo.clear();
    this.changed();
    return id;
  }

  onChange(listener: () => void): () => void {
    this.changeListeners.add(listener);
    return () => this.changeListeners.delete(listener);
  }

  async close(): Promise<void> {
    this.timers.forEach(clearInterval);
    this.changeListeners.clear();
    if (this.db.open) this.db.close();
  }
}
