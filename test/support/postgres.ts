import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import pg from 'pg';
import { PostgresStore } from '../../libs/core/store/postgres-store';
import type { AuthorityStore } from '../../libs/core/store/repositories';
import { SqliteStore } from '../../libs/core/store/sqlite-store';

/** The PostgreSQL the tests use (trust auth on loopback; `.ci/run` starts it). */
export const POSTGRES_URL = process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/**
 * Set (to a postgres:// URL) to run the store-dependent suites on PostgreSQL: startTestAuthority
 * then gives each authority a schema of its own (`npm run test:pg`). Unset: SQLite, as always.
 */
export const TEST_STORE_URL = process.env.TEST_STORE_URL;

/** A fresh schema name for one test (dropped by dropSchema / at exit). */
export function randomSchema(prefix = 't'): string {
  return `${prefix}_${randomBytes(6).toString('hex')}`;
}

/** The schema of a data folder: an authority restarted on the same folder finds its data again. */
export function schemaForDataDir(dataDir: string): string {
  return `t_${createHash('sha256').update(dataDir).digest('hex').slice(0, 16)}`;
}

const toDrop = new Set<string>();

export async function dropSchema(schema: string, url = POSTGRES_URL): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    toDrop.delete(schema);
  } finally {
    await client.end();
  }
}

/** Dropped when the test process is done, whoever forgot it. */
export function dropAtExit(schema: string): void {
  if (!toDrop.size) {
    process.once('beforeExit', () => {
      void Promise.all([...toDrop].map((schema) => dropSchema(schema).catch(() => {})));
    });
  }
  toDrop.add(schema);
}

/** Runs SQL as the superuser (faults: pg_terminate_backend; checks). */
export async function adminQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    return (await client.query<R>(sql, values)).rows;
  } finally {
    await client.end();
  }
}

/**
 * A store for a test that works on the store directly: SQLite in `dataDir`, or (TEST_STORE_URL)
 * the PostgreSQL schema of that folder, dropped at exit. Opened twice, it is one store seen by two "processes".
 */
export async function openTestStore(dataDir: string): Promise<AuthorityStore> {
  if (!TEST_STORE_URL) return new SqliteStore(join(dataDir, 'store.sqlite'));
  const schema = schemaForDataDir(dataDir);
  dropAtExit(schema);
  return PostgresStore.open({ url: TEST_STORE_URL, schema });
}
