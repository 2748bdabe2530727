import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { authorityConfigSchema } from '../libs/core/config';
import { createAuthority } from '../libs/core/authority';
import { StoreUnavailableError } from '../libs/core/errors';
import type { ApiKeyRecord } from '../libs/core/model';
import { POSTGRES_MIGRATIONS } from '../libs/core/store/postgres-migrations';
import { PostgresStore } from '../libs/core/store/postgres-store';
import { adminQuery, dropSchema, POSTGRES_URL, randomSchema } from './support/postgres';
import { TcpProxy } from './support/tcp-proxy';
import { apiKeyRecord } from './support/records';

const apiKey = (clientId: string, fields: Partial<ApiKeyRecord> = {}) =>
  apiKeyRecord(clientId, { secretHash: 'x', authorizedEntities: [], ...fields });

const quiet = { info: () => {}, warn: () => {} };

async function until(predicate: () => Promise<boolean> | boolean, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (!(await predicate())) {
    if (Date.now() - started > timeoutMs) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 5));
  }
  return Date.now() - started;
}

describe('PostgreSQL store', () => {
  const schemas: string[] = [];
  const fresh = () => {
    const schema = randomSchema('pgstore');
    schemas.push(schema);
    return schema;
  };
  after(async () => {
    for (const schema of schemas) await dropSchema(schema);
  });

  it('migrates once when two replicas start at once on an empty schema, and they share one store id', async () => {
    const schema = fresh();
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => PostgresStore.open({ url: POSTGRES_URL, schema })));
    try {
      assert.equal(a.changes.storeId, b.changes.storeId);
      assert.equal(b.changes.storeId, c.changes.storeId);
      const versions = await adminQuery<{ version: number }>(`SELECT version FROM "${schema}".schema_migrations`);
      assert.deepEqual(
        versions.map((row) => row.version).sort(),
        POSTGRES_MIGRATIONS.map((migration) => migration.version),
      );
    } finally {
      await Promise.all([a.close(), b.close(), c.close()]);
    }
  });

  it('loses no change when two replicas modify one key at once', async () => {
    const schema = fresh();
    const a = await PostgresStore.open({ url: POSTGRES_URL, schema });
    const b = await PostgresStore.open({ url: POSTGRES_URL, schema });
    try {
      assert.equal(await a.apiKeys.create(apiKey('shared')), true);
      assert.equal(await b.apiKeys.create(apiKey('shared')), false, 'the id is taken, seen from the other replica');
      const writes = Array.from({ length: 40 }, (_, index) =>
        (index % 2 ? a : b).apiKeys.modify('shared', (current) => ({ ...current, tags: [...current.tags, `t${index}`] })),
      );
      await Promise.all(writes);
      const stored = await adminQuery<{ doc: ApiKeyRecord }>(`SELECT doc FROM "${schema}".api_keys WHERE client_id = 'shared'`);
      assert.equal(stored[0].doc.tags.length, 40, 'every change kept');
      assert.equal(new Set(stored[0].doc.tags).size, 40);
      // Positions are gapless and in commit order: 1 create + 40 modifies.
      assert.equal(await a.changes.head(), 41);
      const log = await a.changes.since(0, 100);
      assert.deepEqual(
        log?.map((change) => change.seq),
        Array.from({ length: 41 }, (_, index) => index + 1),
      );
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('creates the default key pair once when two replicas start at once', async () => {
    const schema = fresh();
    const config = authorityConfigSchema.parse({ store: { url: POSTGRES_URL, schema }, log: { level: 'silent' } });
    const [a, b] = await Promise.all([1, 2].map(() => createAuthority(config, quiet, { adminApi: false })));
    try {
      const keyPairs = await adminQuery<{ id: string }>(`SELECT id FROM "${schema}".key_pairs`);
      assert.deepEqual(
        keyPairs.map((row) => row.id),
        ['otoroshi-jwt-signing'],
      );
      assert.ok(a.keyRing.signingKey('otoroshi-jwt-signing'));
      // Both sign with the stored one (the loser of the race read it back).
      await until(() => a.keyRing.signingKey('otoroshi-jwt-signing')?.kid === b.keyRing.signingKey('otoroshi-jwt-signing')?.kid, 1000);
      assert.deepEqual(a.keyRing.jwks(), b.keyRing.jwks());
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("pushes one replica's writes to another within 1 s: its cached reads are dropped and its listeners called", async () => {
    const schema = fresh();
    const a = await PostgresStore.open({ url: POSTGRES_URL, schema });
    const b = await PostgresStore.open({ url: POSTGRES_URL, schema });
    try {
      await a.apiKeys.create(apiKey('pushed'));
      assert.equal((await b.apiKeys.get('pushed'))?.enabled, true, 'cached on b');
      assert.equal(await b.revocations.isRevoked('jti-pushed'), false, 'cached on b');
      let notified = 0;
      b.onChange(() => {
        notified += 1;
      });
      const started = Date.now();
      await a.apiKeys.modify('pushed', (current) => ({ ...current, enabled: false }));
      await a.revocations.revoke('jti-pushed', Date.now() + 60_000);
      const elapsed = await until(
        async () => (await b.apiKeys.get('pushed'))?.enabled === false && (await b.revocations.isRevoked('jti-pushed')),
        1000,
      );
      assert.ok(notified > 0);
      assert.ok(Date.now() - started < 1000, `seen after ${elapsed} ms`);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('fails to open with a message naming where, never the password, when the database is unreachable at start', async () => {
    const proxy = new TcpProxy('127.0.0.1', 5432);
    await proxy.start();
    await proxy.cut();
    await assert.rejects(
      PostgresStore.open({ url: `postgres://postgres:s3cret-password@127.0.0.1:${proxy.port}/postgres`, schema: fresh() }),
      (error: Error) => {
        assert.match(error.message, new RegExp(`^cannot reach PostgreSQL at 127\\.0\\.0\\.1:${proxy.port}/postgres: `));
        assert.ok(!error.message.includes('s3cret'));
        return true;
      },
    );
  });

  it('answers StoreUnavailableError while the database is unreachable, serves cached reads, and recovers by itself', async () => {
    const schema = fresh();
    const proxy = new TcpProxy('127.0.0.1', 5432);
    await proxy.start();
    const url = `postgres://postgres@127.0.0.1:${proxy.port}/postgres`;
    const writer = await PostgresStore.open({ url: POSTGRES_URL, schema });
    const store = await PostgresStore.open({ url, schema });
    try {
      await writer.apiKeys.create(apiKey('cached'));
      assert.equal((await store.apiKeys.get('cached'))?.clientId, 'cached');
      await proxy.cut();
      await until(() => !store.status().available, 2000);
      assert.equal((await store.apiKeys.get('cached'))?.clientId, 'cached', 'a cached read still answers');
      await assert.rejects(store.apiKeys.get('not-cached'), StoreUnavailableError);
      await assert.rejects(store.apiKeys.create(apiKey('while-away')), StoreUnavailableError);
      // Written elsewhere meanwhile: read from the change log once back.
      await writer.apiKeys.modify('cached', (current) => ({ ...current, description: 'changed while away' }));
      await proxy.start();
      const recovery = await until(
        async () => store.status().available && (await store.apiKeys.get('cached'))?.description === 'changed while away',
        10_000,
      );
      assert.ok(recovery < 10_000);
      assert.equal(await store.apiKeys.create(apiKey('after')), true);
    } finally {
      await Promise.all([writer.close(), store.close()]);
      await proxy.stop();
    }
  });
});
