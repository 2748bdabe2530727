import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { authorityConfigSchema, type AuthorityConfig } from '../../libs/core/config';
import { startTokenAuthority, type TokenAuthorityApp } from '../../services/token-authority/app';
import { DatabaseSync } from 'node:sqlite';
import { isPostgresUrl } from '../../libs/core/store/open-store';
import { adminQuery, dropAtExit, dropSchema, schemaForDataDir, TEST_STORE_URL } from './postgres';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface TestAuthority extends TokenAuthorityApp {
  config: AuthorityConfig;
  dataDir: string;
  /** Admin API call with the admin token. */
  admin(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  /** POST a form to an OAuth endpoint. */
  postForm(path: string, form: Record<string, string>, headers?: Record<string, string>): Promise<Response>;
  postJson(path: string, body: unknown, headers?: Record<string, string>): Promise<Response>;
  stop(): Promise<void>;
}

export const TOKEN_PATH = '/.well-known/otoroshi/oauth/token';
export const INTROSPECT_PATH = '/.well-known/otoroshi/oauth/token/introspect';
export const REVOKE_PATH = '/.well-known/otoroshi/oauth/token/revoke';
export const JWKS_PATH = '/.well-known/otoroshi/oauth/jwks.json';

export function basic(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

/** Starts a real token authority on 127.0.0.1 with a random port and its own data folder. */
export async function startTestAuthority(settings: Record<string, unknown> = {}, dataDir?: string): Promise<TestAuthority> {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), 'ta-test-'));
  // On PostgreSQL (TEST_STORE_URL), a schema per data folder stands for the SQLite file in it.
  const schema = TEST_STORE_URL && settings.store === undefined ? schemaForDataDir(dir) : undefined;
  if (schema) dropAtExit(schema);
  const config = authorityConfigSchema.parse({
    dataDir: dir,
    adminToken: ADMIN_TOKEN,
    http: { host: '127.0.0.1', port: 0 },
    grpc: { host: '127.0.0.1', port: 0 },
    log: { level: 'silent' },
    ...(schema ? { store: { url: TEST_STORE_URL, schema } } : {}),
    // Every test client comes from 127.0.0.1: the failure limits would mix unrelated tests up.
    // test/abuse-limits.test.ts sets its own.
    authFailures: { perClientAddress: 1_000_000, perAddress: 1_000_000 },
    // No seed routes unless a test asks (test/routes-admin.test.ts): most count the store's changes and audit entries.
    routes: { seed: false },
    ...settings,
  });
  const app = await startTokenAuthority(config);
  const request = (path: string, init: RequestInit) => fetch(`${app.url}${path}`, init);
  return {
    ...app,
    config,
    dataDir: dir,
    async admin(method, path, body) {
      const response = await request(path, {
        method,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await response.text();
      return { status: response.status, body: text ? JSON.parse(text) : undefined };
    },
    postForm(path, form, headers = {}) {
      return request(path, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
        body: new URLSearchParams(form).toString(),
      });
    },
    postJson(path, body, headers = {}) {
      return request(path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
    },
    async stop() {
      await app.close();
      if (!dataDir) {
        rmSync(dir, { recursive: true, force: true });
        if (schema) await dropSchema(schema, TEST_STORE_URL);
      }
    },
  };
}

/** Environment for another process (the CLI) on the same store as `authority`: its data folder, and its PostgreSQL schema if any. */
export function storeEnv(authority: { config: AuthorityConfig }): Record<string, string> {
  const { dataDir, store } = authority.config;
  return isPostgresUrl(store.url) ? { DATA_DIR: dataDir, STORE_URL: store.url, STORE_SCHEMA: store.schema } : { DATA_DIR: dataDir };
}

/** A table's rows as the database holds them, read without the store's code (node:sqlite or a pg client), as JSON text. */
export async function storedRows(authority: { config: AuthorityConfig }, table: string): Promise<string> {
  const { dataDir, store } = authority.config;
  if (isPostgresUrl(store.url)) return JSON.stringify(await adminQuery(`SELECT * FROM "${store.schema}".${table}`));
  const db = new DatabaseSync(join(dataDir, 'token-authority.sqlite'), { readOnly: true });
  try {
    return JSON.stringify(db.prepare(`SELECT * FROM ${table}`).all());
  } finally {
    db.close();
  }
}
