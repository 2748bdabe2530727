import { isAbsolute, resolve } from 'node:path';
import type { AuthorityConfig } from '../config';
import { PostgresStore } from './postgres-store';
import type { AuthorityStore } from './repositories';
import { SqliteStore } from './sqlite-store';

export function isPostgresUrl(url: string | undefined): url is string {
  return url !== undefined && /^postgres(ql)?:\/\//i.test(url);
}

/** The SQLite file the settings name: `store.url` when it is a path, else `store.path`, under `dataDir` when relative. */
export function storePath(config: AuthorityConfig): string {
  const path = config.store.url ?? config.store.path;
  return isAbsolute(path) ? path : resolve(config.dataDir, path);
}

/** The store the settings name: PostgreSQL for a `postgres://` STORE_URL, SQLite otherwise (the embedded default). */
export async function openStore(config: AuthorityConfig, log?: (level: 'info' | 'warn', message: string) => void): Promise<AuthorityStore> {
  if (isPostgresUrl(config.store.url)) return PostgresStore.open({ url: config.store.url, schema: config.store.schema, log });
  return new SqliteStore(storePath(config));
}
