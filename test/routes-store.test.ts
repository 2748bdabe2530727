import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { RouteFeed, type RouteDelta } from '../libs/core/route-feed';
import { type Route, RouteConflictError, validateRoute } from '../libs/core/routes';
import { PostgresStore } from '../libs/core/store/postgres-store';
import type { AuthorityStore } from '../libs/core/store/repositories';
import { SqliteStore } from '../libs/core/store/sqlite-store';
import { dropSchema, POSTGRES_URL, randomSchema } from './support/postgres';

/* The route table on both stores: claims refused in the write's transaction, and the RouteFeed that
   carries route changes to the control plane, from this process and from another sharing the store. */

function route(id: string, fields: Record<string, unknown> = {}): Route {
  const result = validateRoute({
    id,
    frontend: { domains: [`${id}.oto.tools`] },
    backend: { targets: [{ hostname: '127.0.0.1', port: 8081 }] },
    ...fields,
  });
  if (!result.ok) throw new Error(JSON.stringify(result.issues));
  const at = new Date().toISOString();
  return { ...result.route, createdAt: at, updatedAt: at };
}

async function until<T>(read: () => T | undefined, timeoutMs: number): Promise<T> {
  const started = Date.now();
  for (;;) {
    const value = read();
    if (value !== undefined) return value;
    if (Date.now() - started > timeoutMs) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 5));
  }
}

const dirs: string[] = [];
const schemas: string[] = [];
after(async () => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  for (const schema of schemas) await dropSchema(schema);
});

/** Two handles on one fresh store: two replicas (PostgreSQL) or two processes' connections (SQLite). */
const kinds: [string, () => Promise<[AuthorityStore, AuthorityStore]>][] = [
  [
    'SQLite',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ta-routes-'));
      dirs.push(dir);
      return [new SqliteStore(join(dir, 'store.db')), new SqliteStore(join(dir, 'store.db'))];
    },
  ],
  [
    'PostgreSQL',
    async () => {
      const schema = randomSchema('routes');
      schemas.push(schema);
      return [await PostgresStore.open({ url: POSTGRES_URL, schema }), await PostgresStore.open({ url: POSTGRES_URL, schema })];
    },
  ],
];

for (const [kind, open] of kinds) {
  describe(`routes on ${kind}`, () => {
    it('creates, reads, pages, filters, modifies and deletes, with change log and audit entries', async () => {
      const [store, other] = await open();
      try {
        const head = await store.changes.head();
        assert.equal(await store.routes.create(route('foo'), { audit: () => draft('route.create', 'foo') }), true);
        assert.equal(await store.routes.create(route('foo')), false, 'the id is taken');
        await store.routes.createMany([route('bar', { enabled: false }), route('baz')]);
        assert.deepEqual((await store.routes.get('foo'))?.frontend.domains, ['foo.oto.tools']);
        assert.deepEqual(
          (await store.routes.getMany(['baz', 'nope', 'foo'])).map((found) => found?.id),
          ['baz', undefined, 'foo'],
        );
        const ids = async (query: Parameters<AuthorityStore['routes']['listPage']>[0]) =>
          (await other.routes.listPage(query)).map((found) => found.id);
        assert.deepEqual(await ids({ limit: 2 }), ['bar', 'baz']);
        assert.deepEqual(await ids({ limit: 2, after: 'baz' }), ['foo']);
        assert.deepEqual(await ids({ limit: 10, enabled: false }), ['bar']);
        assert.deepEqual(await ids({ limit: 10, domain: 'baz.oto.tools' }), ['baz']);

        const renamed = await store.routes.modify('foo', (current) => ({ ...current, name: 'Foo' }), {
          audit: () => draft('route.update', 'foo'),
        });
        assert.equal(renamed?.name, 'Foo');
        assert.equal(await store.routes.delete('baz', { audit: () => draft('route.delete', 'baz') }), true);
        assert.equal(await store.routes.delete('baz'), false);
        assert.equal(await other.routes.get('baz'), undefined);

        const changes = (await store.changes.since(head, 100)) ?? [];
        assert.deepEqual(
          changes.map((change) => `${change.entity}:${change.id}`),
          ['route:foo', 'route:bar', 'route:baz', 'route:foo', 'route:baz'],
        );
        const audit = await store.audit.listPage({ limit: 10, entity: 'route' });
        assert.deepEqual(
          audit.map((entry) => entry.action),
          ['route.create', 'route.update', 'route.delete'],
        );
      } finally {
        await Promise.all([store.close(), other.close()]);
      }
    });

    it('refuses a (domain, pathPrefix) an enabled route holds, writing nothing; disabled or deleted routes free it', async () => {
      const [store, other] = await open();
      try {
        await store.routes.create(route('foo', { frontend: { domains: ['a.oto.tools', 'b.oto.tools'] } }));
        const head = await store.changes.head();
        const claim = route('bar', { frontend: { domains: ['c.oto.tools', 'b.oto.tools'] } });
        await assert.rejects(other.routes.create(claim), (error: unknown) => {
          assert.ok(error instanceof RouteConflictError);
          assert.deepEqual(error.issues, [
            { path: 'frontend.domains.1', message: 'route foo already serves b.oto.tools with pathPrefix /' },
          ]);
          return true;
        });
        assert.equal(await other.routes.get('bar'), undefined, 'nothing written');
        assert.equal(await store.changes.head(), head, 'nothing logged');
        // Another prefix on the same domain is another claim.
        assert.equal(await other.routes.create(route('v2', { frontend: { domains: ['b.oto.tools'], pathPrefix: '/v2/' } })), true);
        // The claim of c.oto.tools was rolled back with the rest: a third route may take it.
        assert.equal(await other.routes.create(route('c', { frontend: { domains: ['c.oto.tools'] } })), true);

        // A modify into a conflict is refused too, and leaves the route as it was.
        await assert.rejects(
          store.routes.modify('c', (current) => ({ ...current, frontend: { ...current.frontend, domains: ['a.oto.tools'] } })),
          RouteConflictError,
        );
        assert.deepEqual((await store.routes.get('c'))?.frontend.domains, ['c.oto.tools']);
        await store.routes.delete('c');

        // Disabling foo frees its claims; enabling it again while another holds one is refused.
        await store.routes.modify('foo', (current) => ({ ...current, enabled: false }));
        assert.equal(await other.routes.create(claim), true);
        await assert.rejects(
          store.routes.modify('foo', (current) => ({ ...current, enabled: true })),
          RouteConflictError,
        );
        await store.routes.delete('bar');
        await store.routes.modify('foo', (current) => ({ ...current, enabled: true }));
        assert.equal((await store.routes.get('foo'))?.enabled, true);
        // createMany is one transaction: a conflict inside it writes none of them.
        await assert.rejects(store.routes.createMany([route('x1'), route('x2', { frontend: { domains: ['x1.oto.tools'] } })]));
        assert.equal(await store.routes.get('x1'), undefined);
      } finally {
        await Promise.all([store.close(), other.close()]);
      }
    });

    it('lets exactly one of two writers claiming the same domain at once win', async () => {
      const [store, other] = await open();
      try {
        const results = await Promise.allSettled([
          store.routes.create(route('one', { frontend: { domains: ['race.oto.tools'] } })),
          other.routes.create(route('two', { frontend: { domains: ['race.oto.tools'] } })),
        ]);
        assert.deepEqual(results.map((result) => result.status).sort(), ['fulfilled', 'rejected']);
        const kept = (await store.routes.listPage({ limit: 10, domain: 'race.oto.tools' })).map((found) => found.id);
        assert.equal(kept.length, 1);
      } finally {
        await Promise.all([store.close(), other.close()]);
      }
    });

    it("feeds the control plane a snapshot, then each route change as a delta, from this store and the other's writes", async () => {
      const [store, other] = await open();
      await store.routes.create(route('foo'));
      const feed = new RouteFeed(store, (error) => assert.fail(error));
      try {
        await feed.start();
        const deltas: RouteDelta[] = [];
        feed.subscribe((event) => {
          if (event !== 'resync') deltas.push(event);
        });
        const snapshot = await feed.snapshot();
        assert.deepEqual(
          snapshot.routes.map((found) => found.id),
          ['foo'],
        );
        assert.equal(snapshot.version, feed.version);

        await other.routes.create(route('bar'));
        const first = await until(() => deltas[0], 2000);
        assert.deepEqual(
          first.upserted.map((found) => found.id),
          ['bar'],
        );
        assert.deepEqual(first.removed, []);
        assert.equal(first.baseVersion, snapshot.version);

        // Another entity's change is not a route change: no delta, and the next one follows on from the last.
        await other.revocations.revoke('some-jti', Date.now() + 60_000);
        await other.routes.modify('foo', (current) => ({ ...current, enabled: false }));
        await other.routes.delete('bar');
        await until(() => (deltas.some((delta) => delta.removed.includes('bar')) ? true : undefined), 2000);
        const rest = deltas.slice(1);
        assert.equal(rest[0].baseVersion, first.version);
        const upserted = rest.flatMap((delta) => delta.upserted);
        assert.equal(upserted.find((found) => found.id === 'foo')?.enabled, false, 'a disabled route is upserted, not removed');
        assert.equal(feed.version, deltas[deltas.length - 1].version);
      } finally {
        feed.close();
        await Promise.all([store.close(), other.close()]);
      }
    });
  });
}

function draft(action: string, id: string) {
  return { at: new Date().toISOString(), actor: 'system', action, entity: 'route' as const, entityId: id, change: {} };
}

describe('routes in a SQLite backup', () => {
  it('come back with their claims on restore', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ta-routes-backup-'));
    dirs.push(dir);
    const store = new SqliteStore(join(dir, 'store.db'));
    try {
      await store.routes.create(route('foo'));
      await store.backupTo(join(dir, 'backup.db'));
      await store.routes.delete('foo');
      await store.routes.create(route('other', { frontend: { domains: ['other.oto.tools'] } }));
      await store.restoreFrom(join(dir, 'backup.db'));
      assert.deepEqual(
        (await store.routes.listPage({ limit: 10 })).map((found) => found.id),
        ['foo'],
      );
      await assert.rejects(store.routes.create(route('again', { frontend: { domains: ['foo.oto.tools'] } })), RouteConflictError);
      assert.equal(await store.routes.create(route('other', { frontend: { domains: ['other.oto.tools'] } })), true);
    } finally {
      await store.close();
    }
  });
});
