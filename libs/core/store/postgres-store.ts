import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';
import { StoreUnavailableError } from '../errors';
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
  Revocation,
  RevocationRepository,
  RoutePageQuery,
  RouteRepository,
  StoreChange,
  StoreStatus,
} from './repositories';
import { nextChangeTag } from './change-tag';
import { POSTGRES_MIGRATIONS } from './postgres-migrations';

/** How many changes the log keeps, as on SQLite: a data plane that missed more reads a snapshot. */
const CHANGES_RETAINED = 100_000;
const CHANGES_PRUNE_MS = 10_000;
/** Reconnect backoff of the LISTEN connection: 100 ms doubling up to 5 s. */
const LISTEN_RETRY_FIRST_MS = 100;
const LISTEN_RETRY_MAX_MS = 5_000;
/** The LISTEN connection is pinged this often, so a silently dead one is noticed and replaced. */
const LISTEN_PING_MS = 5_000;
/** A query (or getting a connection) taking longer means the database is unreachable for the caller. */
const QUERY_TIMEOUT_MS = 5_000;
/** Arbitrary, fixed: the advisory lock under which migrations run (one replica at a time). */
const MIGRATION_LOCK = 7_310_001;

export interface PostgresStoreOptions {
  url: string;
  /** Schema holding the tables; created when missing. Replicas sharing it share the data. */
  schema?: string;
  /** Logs connection loss and recovery (never the URL: it may carry a password). */
  log?: (level: 'info' | 'warn', message: string) => void;
}

/**
 * Reads served from memory until the data changes, like SQLite's ReadMemo, for async loads: a
 * load that started before an invalidation is returned but not kept, so an entry never holds a
 * state older than the newest change seen.
 */
export class AsyncReadMemo {
  private readonly entries = new Map<string, unknown>();
  private generation = 0;
  constructor(private readonly max: number) {}
  async get<T>(key: string, load: () => Promise<T>): Promise<T> {
    if (this.entries.has(key)) return this.entries.get(key) as T;
    const generation = this.generation;
    const value = await load();
    if (generation === this.generation) {
      if (this.entries.size >= this.max) this.entries.clear();
      this.entries.set(key, value);
    }
    return value;
  }
  /** As `get` for many keys: the ones not in memory are loaded together (`loadMany` answers in their order). */
  async getMany<T>(keys: string[], loadMany: (missing: string[]) => Promise<T[]>): Promise<T[]> {
    // What is in memory is taken now: a change notice (forget) or the size bound (clear) during the
    // load must not turn a key that was cached into undefined.
    const cached = new Map<string, unknown>();
    const missing: string[] = [];
    for (const key of keys) {
      if (this.entries.has(key)) cached.set(key, this.entries.get(key));
      else missing.push(key);
    }
    const generation = this.generation;
    const loaded = missing.length ? await loadMany(missing) : [];
    const fresh = new Map(missing.map((key, index) => [key, loaded[index]]));
    if (generation === this.generation) {
      if (this.entries.size + missing.length > this.max) this.entries.clear();
      for (const [key, value] of fresh) this.entries.set(key, value);
    }
    return keys.map((key) => (fresh.has(key) ? fresh.get(key) : cached.get(key)) as T);
  }
  forget(key: string): void {
    this.entries.delete(key);
    this.generation += 1;
  }
  clear(): void {
    this.entries.clear();
    this.generation += 1;
  }
}

/** An error thrown by the caller's code inside a transaction (an If-Match check, a refused change): rethrown as is. */
class CallerError {
  constructor(readonly cause: unknown) {}
}

/** Runs caller code inside a transaction so that what it throws is told apart from database errors. */
function callerCode<T>(run: () => T): T {
  try {
    return run();
  } catch (error) {
    throw new CallerError(error);
  }
}

/** SQLSTATE classes that mean the connection, not the statement, failed. */
const CONNECTION_SQLSTATE = /^(08|53|57P0)/;

/** Connection failures become StoreUnavailableError (503); a real SQL error stays what it is. */
function asStoreError(error: unknown): Error {
  if (error instanceof StoreUnavailableError) return error;
  const code = (error as { code?: unknown }).code;
  const isSqlError = error instanceof pg.DatabaseError || (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code));
  if (isSqlError && !CONNECTION_SQLSTATE.test(code as string)) return error as Error;
  return new StoreUnavailableError((error as Error).message ?? String(error));
}

/** Where a URL points, for messages: never its password. */
function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || 5432}${parsed.pathname}`;
  } catch {
    return 'STORE_URL (unparsable)';
  }
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** NOTIFY channel of a schema: readable when the schema name allows, hashed otherwise (63-byte limit). */
export function changeChannel(schema: string): string {
  return /^[a-z0-9_]{1,40}$/.test(schema)
    ? `authority_changes_${schema}`
    : `authority_changes_${createHash('sha256').update(schema).digest('hex').slice(0, 24)}`;
}

type Queryable = Pick<pg.PoolClient, 'query'>;

/**
 * The authority's store on PostgreSQL, for several replicas sharing one database.
 *
 * Writes: one transaction each, logging their change (`changes`, positions from a single
 * counter row whose lock also orders commits, so positions are gapless and commit in order)
 * and NOTIFYing the schema's channel at commit. Read-change-write (`modify`) locks the row
 * (SELECT ... FOR UPDATE): concurrent changes of one key from any replica serialize.
 *
 * Reads: API keys and revocation checks are served from memory after the first read (the token
 * hot path does not wait on the database); entries are dropped when a change is seen, from this
 * process at once, from other replicas through LISTEN (the change log names what changed). After
 * a lost LISTEN connection the store reconnects with backoff and reads the changes it missed.
 */
export class PostgresStore implements AuthorityStore {
  readonly apiKeys: ApiKeyRepository;
  readonly keyPairs: KeyPairRepository;
  readonly revocations: RevocationRepository;
  readonly routes: RouteRepository;
  readonly assertionReplays: AssertionReplayRepository;
  readonly changes: ChangeLog;
  readonly audit: AuditRepository;
  private readonly pool: pg.Pool;
  private readonly tables: Record<
    'apiKeys' | 'keyPairs' | 'revoked' | 'assertions' | 'routes' | 'routeClaims' | 'changes' | 'head' | 'meta' | 'audit',
    string
  >;
  private readonly channel: string;
  private readonly changeListeners = new Set<() => void>();
  private readonly memos: Record<ChangedEntity, AsyncReadMemo> = {
    apiKey: new AsyncReadMemo(100_000),
    keyPair: new AsyncReadMemo(1_000),
    revocation: new AsyncReadMemo(100_000),
    route: new AsyncReadMemo(20_000),
  };
  private storeIdValue = '';
  /** The newest change whose entity this process's memos no longer hold stale. */
  private seenSeq = 0;
  private listener: pg.Client | undefined;
  private listening = false;
  private listenFailures = 0;
  private listenRetry: NodeJS.Timeout | undefined;
  private listenPing: NodeJS.Timeout | undefined;
  private catchingUp: Promise<void> | undefined;
  private catchUpAgain = false;
  private lastError: string | undefined;
  private closed = false;
  private readonly pruneTimer: NodeJS.Timeout;

  /** Connects, migrates (under an advisory lock, so replicas starting together are safe) and starts listening. */
  static async open(options: PostgresStoreOptions): Promise<PostgresStore> {
    const store = new PostgresStore(options);
    try {
      await store.migrate();
      await store.startListening();
    } catch (error) {
      await store.close();
      if (error instanceof StoreUnavailableError)
        throw new Error(`cannot reach PostgreSQL at ${describeUrl(options.url)}: ${error.reason}`);
      throw error;
    }
    return store;
  }

  private constructor(private readonly options: PostgresStoreOptions) {
    const schema = options.schema ?? 'public';
    const table = (name: string) => `${quoteIdent(schema)}.${name}`;
    this.tables = {
      apiKeys: table('api_keys'),
      keyPairs: table('key_pairs'),
      revoked: table('revoked_tokens'),
      routes: table('routes'),
      routeClaims: table('route_claims'),
      assertions: table('used_assertions'),
      changes: table('changes'),
      head: table('change_head'),
      meta: table('meta'),
      audit: table('audit_log'),
    };
    this.channel = changeChannel(schema);
    this.pool = new pg.Pool({
      connectionString: options.url,
      max: 10,
      connectionTimeoutMillis: QUERY_TIMEOUT_MS,
      query_timeout: QUERY_TIMEOUT_MS,
      keepAlive: true,
    });
    // An idle connection cut by the server (restart, pg_terminate_backend): the pool drops it; not fatal.
    this.pool.on('error', (error) => this.noteFailure(error));

    const { tables } = this;
    const apiKeyMemo = this.memos.apiKey;
    const keyPairMemo = this.memos.keyPair;
    const revokedMemo = this.memos.revocation;
    const docs = <T>(rows: { doc: string }[]) => rows.map((row) => JSON.parse(row.doc) as T);

    this.apiKeys = {
      get: async (clientId) => {
        const doc = await apiKeyMemo.get(clientId, async () => {
          const { rows } = await this.query<{ doc: string }>(`SELECT doc::text AS doc FROM ${tables.apiKeys} WHERE client_id = $1`, [
            clientId,
          ]);
          return rows[0]?.doc;
        });
        return doc === undefined ? undefined : (JSON.parse(doc) as ApiKeyRecord);
      },
      getMany: async (clientIds) => {
        const docs = await apiKeyMemo.getMany(clientIds, async (missing) => {
          const { rows } = await this.query<{ client_id: string; doc: string }>(
            `SELECT client_id, doc::text AS doc FROM ${tables.apiKeys} WHERE client_id = ANY($1::text[])`,
            [missing],
          );
          const byId = new Map(rows.map((row) => [row.client_id, row.doc]));
          return missing.map((clientId) => byId.get(clientId));
        });
        return docs.map((doc) => (doc === undefined ? undefined : (JSON.parse(doc) as ApiKeyRecord)));
      },
      listPage: async (query) => {
        const { sql, values } = apiKeyPageSql(tables.apiKeys, query);
        return docs<ApiKeyRecord>((await this.query<{ doc: string }>(sql, values)).rows);
      },
      create: (apiKey, options) => this.insert('apiKey', tables.apiKeys, 'client_id', apiKey.clientId, apiKey, options),
      createMany: async (records) => {
        if (!records.length) return;
        await this.write(async (client) => {
          await client.query(`INSERT INTO ${tables.apiKeys} (client_id, doc) SELECT * FROM unnest($1::text[], $2::json[])`, [
            records.map((record) => record.clientId),
            records.map((record) => JSON.stringify(record)),
          ]);
          await this.logChanges(
            client,
            records.map((record) => ['apiKey', record.clientId]),
          );
        });
        for (const record of records) apiKeyMemo.forget(record.clientId);
        this.changed();
      },
      update: (apiKey) => this.replace('apiKey', tables.apiKeys, 'client_id', apiKey.clientId, apiKey),
      modify: (clientId, change, options) => this.modify('apiKey', tables.apiKeys, 'client_id', clientId, change, options),
      delete: (clientId, options) => this.remove('apiKey', tables.apiKeys, 'client_id', clientId, options),
    };

    this.keyPairs = {
      get: async (id) => {
        const doc = await keyPairMemo.get(id, async () => {
          const { rows } = await this.query<{ doc: string }>(`SELECT doc::text AS doc FROM ${tables.keyPairs} WHERE id = $1`, [id]);
          return rows[0]?.doc;
        });
        return doc === undefined ? undefined : (JSON.parse(doc) as KeyPairRecord);
      },
      list: async () =>
        docs<KeyPairRecord>((await this.query<{ doc: string }>(`SELECT doc::text AS doc FROM ${tables.keyPairs} ORDER BY id`)).rows),
      create: (keyPair, options) => this.insert('keyPair', tables.keyPairs, 'id', keyPair.id, keyPair, options),
      update: (keyPair) => this.replace('keyPair', tables.keyPairs, 'id', keyPair.id, keyPair),
      modify: (id, change, options) => this.modify('keyPair', tables.keyPairs, 'id', id, change, options),
      delete: (id, options) => this.remove('keyPair', tables.keyPairs, 'id', id, options),
    };

    const routeMemo = this.memos.route;
    const getRoutes = (ids: string[]) =>
      routeMemo.getMany(ids, async (missing) => {
        const { rows } = await this.query<{ id: string; doc: string }>(
          `SELECT id, doc::text AS doc FROM ${tables.routes} WHERE id = ANY($1::text[])`,
          [missing],
        );
        const byId = new Map(rows.map((row) => [row.id, row.doc]));
        return missing.map((id) => byId.get(id));
      });
    const keepClaims = (client: Queryable, id: string, after: Route | undefined) => this.keepRouteClaims(client, id, after);
    this.routes = {
      get: async (id) => {
        const [doc] = await getRoutes([id]);
        return doc === undefined ? undefined : (JSON.parse(doc) as Route);
      },
      getMany: async (ids) => (await getRoutes(ids)).map((doc) => (doc === undefined ? undefined : (JSON.parse(doc) as Route))),
      listPage: async (query) => {
        const { sql, values } = routePageSql(tables.routes, query);
        return docs<Route>((await this.query<{ doc: string }>(sql, values)).rows);
      },
      create: (route, options) => this.insert('route', tables.routes, 'id', route.id, route, options, keepClaims),
      createMany: async (records) => {
        if (!records.length) return;
        await this.write(async (client) => {
          await client.query(`INSERT INTO ${tables.routes} (id, doc) SELECT * FROM unnest($1::text[], $2::json[])`, [
            records.map((record) => record.id),
            records.map((record) => JSON.stringify(record)),
          ]);
          for (const record of records) await keepClaims(client, record.id, record);
          await this.logChanges(
            client,
            records.map((record) => ['route', record.id]),
          );
        });
        for (const record of records) routeMemo.forget(record.id);
        this.changed();
      },
      modify: (id, change, options) => this.modify('route', tables.routes, 'id', id, change, options, keepClaims),
      delete: (id, options) => this.remove('route', tables.routes, 'id', id, options, keepClaims),
    };

    const toRevocation = (row: { jti: string; expires_at: string }): Revocation => ({ jti: row.jti, expiresAt: Number(row.expires_at) });
    const getRevocation = async (jti: string) => {
      const { rows } = await this.query<{ jti: string; expires_at: string }>(
        `SELECT jti, expires_at FROM ${tables.revoked} WHERE jti = $1`,
        [jti],
      );
      return rows[0] && toRevocation(rows[0]);
    };
    this.revocations = {
      revoke: async (jti, expiresAt) => {
        const inserted = await this.write(async (client) => {
          const { rowCount } = await client.query(
            `INSERT INTO ${tables.revoked} (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
            [jti, expiresAt],
          );
          if (rowCount) await this.logChanges(client, [['revocation', jti]]);
          return rowCount === 1;
        });
        if (!inserted) return;
        revokedMemo.forget(jti);
        this.changed();
      },
      isRevoked: (jti) => revokedMemo.get(jti, async () => (await getRevocation(jti)) !== undefined),
      get: getRevocation,
      getMany: async (jtis) => {
        if (!jtis.length) return [];
        const { rows } = await this.query<{ jti: string; expires_at: string }>(
          `SELECT jti, expires_at FROM ${tables.revoked} WHERE jti = ANY($1::text[])`,
          [jtis],
        );
        const byJti = new Map(rows.map((row) => [row.jti, toRevocation(row)]));
        return jtis.map((jti) => byJti.get(jti));
      },
      listActivePage: async (now, after, limit) =>
        (
          await this.query<{ jti: string; expires_at: string }>(
            `SELECT jti, expires_at FROM ${tables.revoked} WHERE expires_at > $1 AND jti > $2 ORDER BY jti LIMIT $3`,
            [now, after ?? '', limit],
          )
        ).rows.map(toRevocation),
      // Expired revocations need no change-log entry: every reader drops them by their expiry.
      purgeExpired: async (now) => {
        const { rowCount } = await this.query(`DELETE FROM ${tables.revoked} WHERE expires_at <= $1`, [now]);
        if (rowCount) revokedMemo.clear();
        return rowCount ?? 0;
      },
    };

    this.assertionReplays = {
      // One statement: inserted, or taken over from an expired record; a live record is left alone (no row).
      useOnce: async (id, expiresAt, now) => {
        const { rowCount } = await this.query(
          `INSERT INTO ${tables.assertions} (id, expires_at) VALUES ($1, $2)
           ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at WHERE ${tables.assertions}.expires_at <= $3`,
          [id, expiresAt, now],
        );
        return rowCount === 1;
      },
      purgeExpired: async (now) => (await this.query(`DELETE FROM ${tables.assertions} WHERE expires_at <= $1`, [now])).rowCount ?? 0,
    };

    this.audit = {
      listPage: async (query: AuditPageQuery) => {
        const values: unknown[] = [query.after ?? 0];
        const conditions = ['id > $1'];
        if (query.entity !== undefined) {
          values.push(query.entity);
          conditions.push(`entity = $${values.length}`);
        }
        if (query.entityId !== undefined) {
          values.push(query.entityId);
          conditions.push(`entity_id = $${values.length}`);
        }
        values.push(query.limit);
        const { rows } = await this.query<Omit<AuditEntry, 'id' | 'change'> & { id: string; change: string }>(
          `SELECT id, at, actor, action, entity, entity_id AS "entityId", change::text AS change FROM ${tables.audit}
           WHERE ${conditions.join(' AND ')} ORDER BY id LIMIT $${values.length}`,
          values,
        );
        return rows.map((row) => ({ ...row, id: Number(row.id), change: JSON.parse(row.change) }) as AuditEntry);
      },
    };

    const store = this;
    this.changes = {
      get storeId() {
        return store.storeIdValue;
      },
      head: () => this.head(),
      tagAt: async (seq) => {
        if (seq === 0) return '';
        const { rows } = await this.query<{ tag: string }>(`SELECT coalesce(tag, '') AS tag FROM ${tables.changes} WHERE seq = $1`, [seq]);
        return rows[0]?.tag;
      },
      since: async (seq, limit) => {
        const changes = await this.readSince(seq, limit);
        // Whoever reads a change next reads the entity: never from a cached copy older than the change.
        for (const change of changes ?? []) this.memos[change.entity]?.forget(change.id);
        return changes;
      },
    };
    this.pruneTimer = setInterval(() => {
      this.query(`DELETE FROM ${tables.changes} WHERE seq <= (SELECT seq FROM ${tables.head}) - $1`, [CHANGES_RETAINED]).catch(() => {});
    }, CHANGES_PRUNE_MS).unref();
  }

  onChange(listener: () => void): () => void {
    this.changeListeners.add(listener);
    return () => this.changeListeners.delete(listener);
  }

  /** Reachable when the LISTEN connection is up (it is pinged): changes of other replicas are being seen. */
  status(): StoreStatus {
    return this.listening ? { available: true } : { available: false, reason: this.lastError ?? 'not connected' };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pruneTimer);
    clearTimeout(this.listenRetry);
    clearInterval(this.listenPing);
    this.changeListeners.clear();
    const listener = this.listener;
    this.listener = undefined;
    await listener?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }

  private changed(): void {
    for (const listener of this.changeListeners) listener();
  }

  /**
   * A new store id (after a backup was restored, with pg_restore say): data planes read a
   * snapshot instead of resuming from positions that may now mean other changes. Every replica
   * of the authority follows at the NOTIFY.
   */
  async rotateStoreId(): Promise<string> {
    const id = randomUUID();
    await this.write(async (client) => {
      await client.query(`UPDATE ${this.tables.meta} SET value = $1 WHERE name = 'store_id'`, [id]);
      await client.query('SELECT pg_notify($1, $2)', [this.channel, 'store_id']);
    });
    this.storeIdValue = id;
    for (const memo of Object.values(this.memos)) memo.clear();
    this.changed();
    return id;
  }

  private noteFailure(error: unknown): void {
    this.lastError = (error as Error)?.message ?? String(error);
  }

  private async query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(sql, values);
    } catch (error) {
      throw asStoreError(error);
    }
  }

  /** One transaction; a connection that failed is discarded rather than returned to the pool. */
  private async write<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (error) {
      throw asStoreError(error);
    }
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      const storeError = error instanceof CallerError ? undefined : asStoreError(error);
      if (storeError instanceof StoreUnavailableError) broken = storeError;
      else await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError));
      throw error instanceof CallerError ? error.cause : storeError;
    } finally {
      client.release(broken);
    }
  }

  /** Appends an audit entry in the write's transaction, after its change is logged (see migration 2). */
  private async appendAudit(client: Queryable, draft: AuditDraft | undefined): Promise<void> {
    if (!draft) return;
    await client.query(`INSERT INTO ${this.tables.audit} (at, actor, action, entity, entity_id, change) VALUES ($1, $2, $3, $4, $5, $6)`, [
      draft.at,
      draft.actor,
      draft.action,
      draft.entity,
      draft.entityId,
      JSON.stringify(draft.change ?? null),
    ]);
  }

  /**
   * Appends changes to the log and NOTIFYs at commit. Positions come from one counter row: its
   * lock is held until commit, so positions are given out in commit order, without gaps, and a
   * reader that saw position n has seen every position before it.
   */
  private async logChanges(client: Queryable, changes: [ChangedEntity, string][]): Promise<void> {
    const { tables } = this;
    const { rows } = await client.query<{ seq: string }>(`UPDATE ${tables.head} SET seq = seq + $1 RETURNING seq`, [changes.length]);
    const last = Number(rows[0].seq);
    const first = last - changes.length + 1;
    await client.query(
      `INSERT INTO ${tables.changes} (seq, entity, id, tag) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])`,
      [
        changes.map((_, index) => first + index),
        changes.map(([entity]) => entity),
        changes.map(([, id]) => id),
        changes.map(() => nextChangeTag()),
      ],
    );
    await client.query('SELECT pg_notify($1, $2)', [this.channel, String(last)]);
  }

  private async insert<T>(
    entity: ChangedEntity,
    table: string,
    key: string,
    id: string,
    doc: T,
    options: AuditedWrite<T> = {},
    sideWrite?: SideWrite<T>,
  ): Promise<boolean> {
    const inserted = await this.write(async (client) => {
      const { rowCount } = await client.query(`INSERT INTO ${table} (${key}, doc) VALUES ($1, $2) ON CONFLICT DO NOTHING`, [
        id,
        JSON.stringify(doc),
      ]);
      if (!rowCount) return false;
      await sideWrite?.(client, id, doc);
      await this.logChanges(client, [[entity, id]]);
      await this.appendAudit(
        client,
        callerCode(() => options.audit?.(undefined, doc)),
      );
      return true;
    });
    return this.afterWrite(entity, id, inserted);
  }

  private async replace<T>(entity: ChangedEntity, table: string, key: string, id: string, doc: T): Promise<boolean> {
    const updated = await this.write(async (client) => {
      const { rowCount } = await client.query(`UPDATE ${table} SET doc = $2 WHERE ${key} = $1`, [id, JSON.stringify(doc)]);
      if (rowCount) await this.logChanges(client, [[entity, id]]);
      return rowCount === 1;
    });
    return this.afterWrite(entity, id, updated);
  }

  /** Deletes under the row's lock, after the caller's check of the current record (If-Match). */
  private async remove<T>(
    entity: ChangedEntity,
    table: string,
    key: string,
    id: string,
    options: DeleteOptions<T> = {},
    sideWrite?: SideWrite<T>,
  ): Promise<boolean> {
    const deleted = await this.write(async (client) => {
      const { rows } = await client.query<{ doc: string }>(`SELECT doc::text AS doc FROM ${table} WHERE ${key} = $1 FOR UPDATE`, [id]);
      if (!rows.length) return false;
      const current = JSON.parse(rows[0].doc) as T;
      callerCode(() => options.check?.(current));
      await client.query(`DELETE FROM ${table} WHERE ${key} = $1`, [id]);
      await sideWrite?.(client, id, undefined);
      await this.logChanges(client, [[entity, id]]);
      await this.appendAudit(
        client,
        callerCode(() => options.audit?.(current, undefined)),
      );
      return true;
    });
    return this.afterWrite(entity, id, deleted);
  }

  /** Read-change-write under the row's lock: a concurrent modify (any replica) waits, then sees this one's result. */
  private async modify<T>(
    entity: ChangedEntity,
    table: string,
    key: string,
    id: string,
    change: (current: T) => T,
    options: AuditedWrite<T> = {},
    sideWrite?: SideWrite<T>,
  ): Promise<T | undefined> {
    const result = await this.write(async (client) => {
      const { rows } = await client.query<{ doc: string }>(`SELECT doc::text AS doc FROM ${table} WHERE ${key} = $1 FOR UPDATE`, [id]);
      if (!rows.length) return undefined;
      const current = JSON.parse(rows[0].doc) as T;
      const next = callerCode(() => change(current));
      // The change handed back the record it was given: nothing to write, log or audit.
      if (next === current) return { next, written: false };
      await client.query(`UPDATE ${table} SET doc = $2 WHERE ${key} = $1`, [id, JSON.stringify(next)]);
      await sideWrite?.(client, id, next);
      await this.logChanges(client, [[entity, id]]);
      await this.appendAudit(
        client,
        callerCode(() => options.audit?.(current, next)),
      );
      return { next, written: true };
    });
    this.afterWrite(entity, id, result?.written === true);
    return result?.next;
  }

  /**
   * Replaces route `id`'s claims with those of `after` (none after a delete). A pair another route
   * holds is not inserted (ON CONFLICT DO NOTHING keeps the transaction usable): its owner is read
   * and the write refused with RouteConflictError, rolled back whole. A concurrent claim of the same
   * pair waits on the unique index until the other transaction ends, so two replicas cannot both win.
   */
  private async keepRouteClaims(client: Queryable, id: string, after: Route | undefined): Promise<void> {
    const { tables } = this;
    await client.query(`DELETE FROM ${tables.routeClaims} WHERE route_id = $1`, [id]);
    const claims = after ? routeClaims(after) : [];
    if (!after || !claims.length) return;
    const { rows } = await client.query<{ domain: string }>(
      `INSERT INTO ${tables.routeClaims} (domain, path_prefix, route_id) SELECT d, $2, $3 FROM unnest($1::text[]) AS c(d)
       ON CONFLICT DO NOTHING RETURNING domain`,
      [claims.map((claim) => claim.domain), after.frontend.pathPrefix, id],
    );
    if (rows.length === claims.length) return;
    const { rows: owners } = await client.query<{ domain: string; route_id: string }>(
      `SELECT domain, route_id FROM ${tables.routeClaims} WHERE path_prefix = $1 AND domain = ANY($2::text[]) AND route_id <> $3`,
      [after.frontend.pathPrefix, claims.map((claim) => claim.domain), id],
    );
    throw new CallerError(new RouteConflictError(claimIssues(after, new Map(owners.map((row) => [row.domain, row.route_id])))));
  }

  private afterWrite(entity: ChangedEntity, id: string, changed: boolean): boolean {
    if (changed) {
      this.memos[entity].forget(id);
      this.changed();
    }
    return changed;
  }

  private async head(): Promise<number> {
    const { rows } = await this.query<{ seq: string }>(`SELECT seq FROM ${this.tables.head}`);
    return Number(rows[0]?.seq ?? 0);
  }

  /** As SQLite's: one snapshot (REPEATABLE READ) so the range check and the rows agree while another replica prunes. */
  private async readSince(seq: number, limit: number): Promise<StoreChange[] | undefined> {
    const { tables } = this;
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (error) {
      throw asStoreError(error);
    }
    let broken: Error | undefined;
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const { rows } = await client.query<{ head: string; oldest: string | null }>(
        `SELECT (SELECT seq FROM ${tables.head}) AS head, (SELECT min(seq) FROM ${tables.changes}) AS oldest`,
      );
      const newest = Number(rows[0].head);
      const first = rows[0].oldest === null ? newest + 1 : Number(rows[0].oldest);
      let result: StoreChange[] | undefined;
      // From the future (another store, a restored backup) or older than what is kept.
      if (!(seq > newest || seq < first - 1)) {
        const changes = await client.query<{ seq: string; entity: ChangedEntity; id: string; tag: string }>(
          `SELECT seq, entity, id, coalesce(tag, '') AS tag FROM ${tables.changes} WHERE seq > $1 ORDER BY seq LIMIT $2`,
          [seq, limit],
        );
        result = changes.rows.map((row) => ({ seq: Number(row.seq), entity: row.entity, id: row.id, tag: row.tag }));
      }
      await client.query('COMMIT');
      return result;
    } catch (error) {
      const storeError = asStoreError(error);
      broken = storeError instanceof StoreUnavailableError ? storeError : undefined;
      if (!broken) await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError));
      throw storeError;
    } finally {
      client.release(broken);
    }
  }

  /** Versioned migrations, each once, in order, under an advisory lock: two replicas starting at once take turns. */
  private async migrate(): Promise<void> {
    const schema = quoteIdent(this.options.schema ?? 'public');
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (error) {
      throw asStoreError(error);
    }
    try {
      await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
      try {
        await client.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
        await client.query(
          `CREATE TABLE IF NOT EXISTS ${schema}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
        );
        const { rows } = await client.query<{ version: number }>(`SELECT version FROM ${schema}.schema_migrations`);
        const applied = new Set(rows.map((row) => row.version));
        for (const migration of POSTGRES_MIGRATIONS) {
          if (applied.has(migration.version)) continue;
          await client.query('BEGIN');
          try {
            await client.query(migration.sql.replaceAll('{schema}', schema));
            await client.query(`INSERT INTO ${schema}.schema_migrations (version, name) VALUES ($1, $2)`, [
              migration.version,
              migration.name,
            ]);
            await client.query('COMMIT');
          } catch (error) {
            await client.query('ROLLBACK').catch(() => {});
            throw new Error(`migration ${migration.version} (${migration.name}) failed: ${(error as Error).message}`);
          }
        }
        await client.query(`INSERT INTO ${this.tables.meta} (name, value) VALUES ('store_id', $1) ON CONFLICT DO NOTHING`, [randomUUID()]);
        const stored = await client.query<{ value: string }>(`SELECT value FROM ${this.tables.meta} WHERE name = 'store_id'`);
        this.storeIdValue = stored.rows[0].value;
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {});
      }
    } finally {
      client.release();
    }
  }

  /** A dedicated connection LISTENing on the schema's channel; replaced with backoff when lost. */
  private async startListening(): Promise<void> {
    // query_timeout: a ping that hangs (a silently dead peer) counts as a lost connection too.
    const client = new pg.Client({
      connectionString: this.options.url,
      keepAlive: true,
      connectionTimeoutMillis: QUERY_TIMEOUT_MS,
      query_timeout: QUERY_TIMEOUT_MS,
    });
    let lost = false;
    const onLost = (error?: Error) => {
      if (lost) return;
      lost = true;
      clearInterval(this.listenPing);
      if (this.listener === client) this.listener = undefined;
      this.listening = false;
      if (error) this.noteFailure(error);
      client.end().catch(() => {});
      if (this.closed) return;
      this.options.log?.('warn', `store: lost the PostgreSQL LISTEN connection (${this.lastError}); reconnecting`);
      this.scheduleListen();
    };
    client.on('error', onLost);
    client.on('end', () => onLost());
    client.on('notification', () => this.catchUp());
    try {
      await client.connect();
      await client.query(`LISTEN ${quoteIdent(this.channel)}`);
    } catch (error) {
      onLost(error as Error);
      throw asStoreError(error);
    }
    if (this.closed) {
      await client.end().catch(() => {});
      return;
    }
    this.listener = client;
    const recovered = this.listenFailures > 0;
    this.listenFailures = 0;
    this.listening = true;
    this.lastError = undefined;
    this.listenPing = setInterval(() => {
      client.query('SELECT 1').catch((error: Error) => onLost(error));
    }, LISTEN_PING_MS).unref();
    if (recovered) this.options.log?.('info', 'store: PostgreSQL connection back; reading the changes missed');
    // Anything committed while we were not listening is in the change log: read it now.
    if (recovered) this.catchUp();
    else this.seenSeq = await this.head();
  }

  private scheduleListen(): void {
    this.listenFailures += 1;
    const delay = Math.min(LISTEN_RETRY_MAX_MS, LISTEN_RETRY_FIRST_MS * 2 ** (this.listenFailures - 1));
    clearTimeout(this.listenRetry);
    this.listenRetry = setTimeout(() => {
      this.startListening().catch(() => {});
    }, delay).unref();
  }

  /**
   * Drops from memory what the changes after `seenSeq` name, then tells the listeners (the data
   * plane feed publishes them). One run at a time; a failed run is retried by the next
   * notification or reconnection.
   */
  private catchUp(): void {
    if (this.catchingUp !== undefined) {
      this.catchUpAgain = true;
      return;
    }
    this.catchingUp = (async () => {
      do {
        this.catchUpAgain = false;
        // Another process may have given the store a new id (rotateStoreId): one row, read with the changes.
        const stored = await this.query<{ value: string }>(`SELECT value FROM ${this.tables.meta} WHERE name = 'store_id'`);
        if (stored.rows[0] && stored.rows[0].value !== this.storeIdValue) {
          this.storeIdValue = stored.rows[0].value;
          for (const memo of Object.values(this.memos)) memo.clear();
        }
        const changes = await this.readSince(this.seenSeq, 10_000);
        if (changes === undefined) {
          // Missed more than the log keeps (or the log is another's): forget everything.
          for (const memo of Object.values(this.memos)) memo.clear();
          this.seenSeq = await this.head();
        } else {
          for (const change of changes) this.memos[change.entity]?.forget(change.id);
          if (changes.length) this.seenSeq = changes[changes.length - 1].seq;
          if (changes.length === 10_000) this.catchUpAgain = true;
        }
        this.changed();
      } while (this.catchUpAgain);
    })()
      .catch((error) => this.noteFailure(error))
      .finally(() => {
        this.catchingUp = undefined;
      });
  }
}

/** What a route write does besides its row, in its transaction (its claims). */
type SideWrite<T> = (client: Queryable, id: string, after: T | undefined) => Promise<void>;

/** routes filtered in SQL, as SQLite's RoutePages. */
function routePageSql(table: string, query: RoutePageQuery): { sql: string; values: unknown[] } {
  const values: unknown[] = [query.after ?? ''];
  const conditions = ['id > $1'];
  const param = (value: unknown) => {
    values.push(value);
    return `$${values.length}`;
  };
  if (query.enabled !== undefined) conditions.push(`(doc->>'enabled')::boolean = ${param(query.enabled)}`);
  if (query.domain !== undefined)
    conditions.push(
      `EXISTS (SELECT 1 FROM json_array_elements_text(doc->'frontend'->'domains') AS d(value) WHERE value = ${param(query.domain)})`,
    );
  const sql = `SELECT doc::text AS doc FROM ${table} WHERE ${conditions.join(' AND ')} ORDER BY id LIMIT ${param(query.limit)}`;
  return { sql, values };
}

/** api_keys filtered in SQL (json operators), as SQLite's ApiKeyPages. */
function apiKeyPageSql(table: string, query: ApiKeyPageQuery): { sql: string; values: unknown[] } {
  const values: unknown[] = [query.after ?? ''];
  const conditions = ['client_id > $1'];
  const param = (value: unknown) => {
    values.push(value);
    return `$${values.length}`;
  };
  if (query.enabled !== undefined) conditions.push(`(doc->>'enabled')::boolean = ${param(query.enabled)}`);
  if (query.tag !== undefined)
    conditions.push(`EXISTS (SELECT 1 FROM json_array_elements_text(doc->'tags') AS t(value) WHERE value = ${param(query.tag)})`);
  if (query.authorizedEntity !== undefined)
    conditions.push(
      `EXISTS (SELECT 1 FROM json_array_elements_text(doc->'authorizedEntities') AS e(value) WHERE value = ${param(query.authorizedEntity)})`,
    );
  if (query.signKeyPair !== undefined) conditions.push(`doc->'metadata'->>'${SIGN_KEYPAIR_METADATA}' = ${param(query.signKeyPair)}`);
  const sql = `SELECT doc::text AS doc FROM ${table} WHERE ${conditions.join(' AND ')} ORDER BY client_id LIMIT ${param(query.limit)}`;
  return { sql, values };
}
