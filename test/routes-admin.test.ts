import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { RouteDelta } from '../libs/core/route-feed';
import { seedRoutesOnFirstStart } from '../libs/core/route-seed';
import { ADMIN_TOKEN, startTestAuthority, storedRows, storeEnv, type TestAuthority } from './support/authority';
import { runNode } from './support/node-process';

const CLI = resolve(__dirname, '../services/token-authority/cli.js');

/* /api/routes over real HTTP on a real authority (SQLite, or PostgreSQL with TEST_STORE_URL): the
   conventions of /api/apikeys (ETag/If-Match, paging, merge and JSON Patch, audit), and bad input
   refused with 400 naming the field, nothing written. */

const body = (id: string, domains = [`${id}.routes.test`], fields: Record<string, unknown> = {}) => ({
  id,
  frontend: { domains },
  backend: { targets: [{ hostname: '127.0.0.1', port: 8081 }] },
  ...fields,
});

describe('admin API: /api/routes', () => {
  let authority: TestAuthority;
  before(async () => {
    authority = await startTestAuthority();
  });
  after(() => authority.stop());

  async function call(method: string, path: string, payload?: unknown, headers: Record<string, string> = {}) {
    const response = await fetch(`${authority.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${ADMIN_TOKEN}`,
        ...(payload === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    const text = await response.text();
    return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : undefined };
  }

  /** What a refused write must leave untouched: the stored rows and the audit log. */
  const snapshot = async () =>
    `${await storedRows(authority, 'routes')}|${await storedRows(authority, 'route_claims')}|${await storedRows(authority, 'audit_log')}`;

  it('creates a route with defaults and an ETag, reads it back, refuses its id twice', async () => {
    const created = await call('POST', '/api/routes', body('alpha'));
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.match(created.headers.get('etag') ?? '', /^"/);
    assert.equal(created.body.name, 'alpha');
    assert.deepEqual(created.body.apikeys.authorizedEntities, ['route_alpha']);
    assert.deepEqual(created.body.apikeys.extractors, ['bearer']);
    assert.equal(created.body.backend.connectTimeoutMs, 2000);
    assert.ok(Date.parse(created.body.createdAt) > 0);

    const read = await call('GET', '/api/routes/alpha');
    assert.equal(read.status, 200);
    assert.deepEqual(read.body, created.body);
    assert.equal(read.headers.get('etag'), created.headers.get('etag'));

    const again = await call('POST', '/api/routes', body('alpha', ['other.routes.test']));
    assert.equal(again.status, 409);
    assert.equal((await call('GET', '/api/routes/nope')).status, 404);
  });

  const refused: [string, unknown, string][] = [
    ['an unknown extractor', body('bad1', undefined, { apikeys: { extractors: ['bearer', 'cookie'] } }), 'apikeys.extractors.1'],
    ['a domain that is not a host pattern', body('bad2', ['not a host']), 'frontend.domains.0'],
    ['a port out of range', { ...body('bad3'), backend: { targets: [{ hostname: '127.0.0.1', port: 70000 }] } }, 'backend.targets.0.port'],
    ['a domain and prefix another route serves', body('bad4', ['x.routes.test', 'alpha.routes.test']), 'frontend.domains.1'],
    ['no id', { ...body('bad5'), id: undefined }, 'id'],
  ];
  for (const [what, input, path] of refused) {
    it(`refuses ${what}: 400 naming ${path}, nothing written`, async () => {
      const before = await snapshot();
      const answer = await call('POST', '/api/routes', input);
      assert.equal(answer.status, 400, JSON.stringify(answer.body));
      assert.ok(
        (answer.body.details as { path: string }[]).some((issue) => issue.path === path),
        JSON.stringify(answer.body),
      );
      assert.equal(await snapshot(), before);
    });
  }

  it('lists in id order, a page at a time with a Link to the next, filtered by enabled and domain', async () => {
    for (const id of ['list-a', 'list-b', 'list-c']) assert.equal((await call('POST', '/api/routes', body(id))).status, 201);
    await call('PATCH', '/api/routes/list-b', { enabled: false });
    const all = await call('GET', '/api/routes?limit=1000');
    const ids: string[] = all.body.map((route: { id: string }) => route.id);
    assert.deepEqual(ids, [...ids].sort());
    const first = await call('GET', '/api/routes?limit=1&after=list-a');
    assert.deepEqual(
      first.body.map((route: { id: string }) => route.id),
      ['list-b'],
    );
    assert.match(first.headers.get('link') ?? '', /after=list-b.*rel="next"/);
    const disabled = await call('GET', '/api/routes?enabled=false');
    assert.ok(disabled.body.every((route: { enabled: boolean }) => !route.enabled));
    assert.ok(disabled.body.some((route: { id: string }) => route.id === 'list-b'));
    const byDomain = await call('GET', '/api/routes?domain=LIST-C.routes.test');
    assert.deepEqual(
      byDomain.body.map((route: { id: string }) => route.id),
      ['list-c'],
    );
    assert.equal((await call('GET', '/api/routes?limit=0')).status, 400);
    assert.equal((await call('GET', '/api/routes?color=red')).status, 400);
  });

  it('replaces with PUT under If-Match; fields left out go back to their defaults; id and timestamps stay', async () => {
    const created = await call(
      'POST',
      '/api/routes',
      body('put', undefined, { description: 'first', apikeys: { extractors: ['basic'], stripCredential: true } }),
    );
    const etag = created.headers.get('etag')!;
    const replaced = await call('PUT', '/api/routes/put', { ...body('put'), name: 'Put' }, { 'if-match': etag });
    assert.equal(replaced.status, 200, JSON.stringify(replaced.body));
    assert.equal(replaced.body.name, 'Put');
    assert.equal(replaced.body.description, '');
    assert.deepEqual(replaced.body.apikeys.extractors, ['bearer']);
    assert.equal(replaced.body.createdAt, created.body.createdAt);
    assert.notEqual(replaced.headers.get('etag'), etag);

    assert.equal((await call('PUT', '/api/routes/put', body('put'), { 'if-match': etag })).status, 412, 'stale ETag');
    const moved = await call('PUT', '/api/routes/put', body('elsewhere'));
    assert.equal(moved.status, 400);
    assert.equal(moved.body.details[0].path, 'id');
    const backdated = await call('PUT', '/api/routes/put', { ...replaced.body, createdAt: '2000-01-01T00:00:00.000Z' });
    assert.equal(backdated.status, 400);
    // GET, edit, PUT: the body as read goes back with its read-only fields.
    const edited = await call('PUT', '/api/routes/put', { ...replaced.body, description: 'edited' });
    assert.equal(edited.status, 200, JSON.stringify(edited.body));
    assert.equal(edited.body.description, 'edited');
    // The same body again changes nothing: same ETag, same updatedAt.
    const same = await call('PUT', '/api/routes/put', edited.body);
    assert.equal(same.headers.get('etag'), edited.headers.get('etag'));
    assert.equal((await call('PUT', '/api/routes/nope', body('nope'))).status, 404);
  });

  it('ignores a status sent back on writes (what GET shows of Envoy, never stored); no status without xDS', async () => {
    const status = { xds: { state: 'rejected', envoys: 1, error: 'sent by a client' } };
    const created = await call('POST', '/api/routes', { ...body('with-status'), status });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.status, undefined);
    const read = await call('GET', '/api/routes/with-status');
    assert.equal(read.body.status, undefined, 'xds.enabled is off here');
    const put = await call('PUT', '/api/routes/with-status', { ...read.body, status, description: 'put' });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    const patched = await call('PATCH', '/api/routes/with-status', { status, description: 'patched' });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    assert.equal(patched.body.status, undefined);
    assert.equal((await storedRows(authority, 'routes')).includes('sent by a client'), false, 'nothing of it stored');
  });

  it('merge-patches (nested objects merge, null resets) and JSON-patches, a failed test op being 409', async () => {
    await call('POST', '/api/routes', body('patch', undefined, { description: 'kept', apikeys: { requiredScopes: ['read'] } }));
    const merged = await call(
      'PATCH',
      '/api/routes/patch',
      { apikeys: { extractors: ['basic', 'customHeaders'] }, description: null },
      { 'content-type': 'application/merge-patch+json' },
    );
    assert.equal(merged.status, 200, JSON.stringify(merged.body));
    assert.deepEqual(merged.body.apikeys.extractors, ['basic', 'customHeaders']);
    assert.deepEqual(merged.body.apikeys.requiredScopes, ['read'], 'the rest of apikeys is kept');
    assert.equal(merged.body.description, '', 'null resets to the default');

    const patched = await call('PATCH', '/api/routes/patch', [
      { op: 'test', path: '/enabled', value: true },
      { op: 'replace', path: '/backend/targets/0/port', value: 9090 },
    ]);
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    assert.equal(patched.body.backend.targets[0].port, 9090);
    assert.equal((await call('PATCH', '/api/routes/patch', [{ op: 'test', path: '/enabled', value: false }])).status, 409);

    const before = await snapshot();
    const bad = await call('PATCH', '/api/routes/patch', { backend: { targets: [{ hostname: 'x', port: 0 }] } });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.details[0].path, 'backend.targets.0.port');
    assert.equal((await call('PATCH', '/api/routes/patch', 'text')).status, 400);
    assert.equal(await snapshot(), before);
  });

  it('frees a domain when its route is disabled; enabling it again while another holds it is refused', async () => {
    await call('POST', '/api/routes', body('holder', ['shared.routes.test']));
    assert.equal((await call('POST', '/api/routes', body('taker', ['shared.routes.test']))).status, 400);
    assert.equal((await call('PATCH', '/api/routes/holder', { enabled: false })).status, 200);
    assert.equal((await call('POST', '/api/routes', body('taker', ['shared.routes.test']))).status, 201);
    const back = await call('PATCH', '/api/routes/holder', { enabled: true });
    assert.equal(back.status, 400);
    assert.match(back.body.details[0].message, /route taker already serves shared\.routes\.test/);
  });

  it('deletes under If-Match, and audits every change under the admin token', async () => {
    const created = await call('POST', '/api/routes', body('gone'));
    assert.equal((await call('DELETE', '/api/routes/gone', undefined, { 'if-match': '"stale"' })).status, 412);
    assert.equal((await call('DELETE', '/api/routes/gone', undefined, { 'if-match': created.headers.get('etag')! })).status, 204);
    assert.equal((await call('DELETE', '/api/routes/gone')).status, 404);
    const audit = await call('GET', '/api/audit?entity=route&entityId=gone');
    assert.deepEqual(
      audit.body.map((entry: { action: string }) => entry.action),
      ['route.create', 'route.delete'],
    );
    assert.match(audit.body[0].actor, /^admin-token:/);
    const put = await call('GET', '/api/audit?entity=route&entityId=put');
    assert.deepEqual(Object.keys(put.body[1].change).sort(), ['apikeys', 'description', 'name']);
  });

  it('hands each API change to the control plane feed (authority.routes)', async () => {
    const deltas: RouteDelta[] = [];
    const off = authority.authority.routes.subscribe((event) => {
      if (event !== 'resync') deltas.push(event);
    });
    const seen = async (found: (delta: RouteDelta) => boolean) => {
      const started = Date.now();
      while (!deltas.some(found)) {
        assert.ok(Date.now() - started < 2000, `not within 2 s: ${JSON.stringify(deltas)}`);
        await new Promise((done) => setTimeout(done, 5));
      }
    };
    try {
      await call('POST', '/api/routes', body('fed'));
      await seen((delta) => delta.upserted.some((route) => route.id === 'fed' && route.enabled));
      await call('PATCH', '/api/routes/fed', { enabled: false });
      await seen((delta) => delta.upserted.some((route) => route.id === 'fed' && !route.enabled));
      await call('DELETE', '/api/routes/fed');
      await seen((delta) => delta.removed.includes('fed'));
    } finally {
      off();
    }
  });

  it('has CLI commands: routes create, list, get, update, delete; bad input exits 1 naming the field', async () => {
    const cli = (...args: string[]) => runNode([CLI, 'routes', ...args], { env: { ...process.env, ...storeEnv(authority) } });
    const created = await cli(
      'create',
      'cli',
      '--domain',
      'cli.routes.test',
      '--target',
      'https://backend.local:8443',
      '--extractor',
      'basic',
      '--extractor',
      'customHeaders',
      '--strip-credential',
      '--public-prefix',
      '/public/',
    );
    assert.equal(created.status, 0, created.stderr);
    const route = JSON.parse(created.stdout);
    assert.deepEqual(route.backend.targets, [{ hostname: 'backend.local', port: 8443, tls: true, weight: 1 }]);
    assert.deepEqual(route.apikeys.extractors, ['basic', 'customHeaders']);
    assert.equal(route.apikeys.stripCredential, true);
    // The running server reads what the CLI wrote (SQLite: within its 250 ms poll).
    assert.equal((await call('GET', '/api/routes/cli')).status, 200);
    assert.ok(JSON.parse((await cli('list', '--domain', 'cli.routes.test')).stdout).some((found: { id: string }) => found.id === 'cli'));
    assert.equal(JSON.parse((await cli('update', 'cli', '--disable')).stdout).enabled, false);
    assert.equal(JSON.parse((await cli('get', 'cli')).stdout).enabled, false);

    const bad = await cli('create', 'cli-bad', '--domain', 'cli-bad.routes.test', '--target', 'backend:0');
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /backend\.targets\.0\.port/);
    assert.equal((await cli('get', 'cli-bad')).status, 4);
    assert.equal((await cli('delete', 'cli')).status, 0);
    const audit = await call('GET', '/api/audit?entity=route&entityId=cli');
    assert.match(audit.body[0].actor, /^cli:/);
  });

  it('refuses a call without the admin token', async () => {
    const answer = await fetch(`${authority.url}/api/routes`);
    assert.equal(answer.status, 401);
  });
});

describe('seed routes', () => {
  it("a store's first start gets foo and bar as envoy/*.yaml and config/ext-authz.yaml describe them, once", async () => {
    const first = await startTestAuthority({ routes: { seed: true, seedBackend: '127.0.0.1:18081' } });
    try {
      const foo = await first.admin('GET', '/api/routes/foo');
      assert.equal(foo.status, 200);
      assert.deepEqual(foo.body.frontend, { domains: ['foo.oto.tools', 'foo.oto.tools:*'], pathPrefix: '/' });
      assert.deepEqual(foo.body.backend.targets, [{ hostname: '127.0.0.1', port: 18081, tls: false, weight: 1 }]);
      assert.deepEqual(foo.body.apikeys.extractors, ['bearer']);
      assert.deepEqual(foo.body.apikeys.authorizedEntities, ['route_foo']);
      assert.deepEqual(foo.body.apikeys.publicPathPrefixes, ['/public/']);
      const bar = await first.admin('GET', '/api/routes/bar');
      assert.deepEqual(bar.body.apikeys.extractors, ['basic', 'customHeaders']);
      assert.equal(bar.body.apikeys.stripCredential, true);
      const audit = await first.admin('GET', '/api/audit?entity=route');
      assert.deepEqual(
        audit.body.map((entry: { actor: string; entityId: string }) => `${entry.actor} ${entry.entityId}`),
        ['system foo', 'system bar'],
      );
      // Deleted on purpose: not brought back by the next start (what createAuthority calls at every start).
      assert.equal((await first.admin('DELETE', '/api/routes/bar')).status, 204);
      assert.deepEqual(
        await seedRoutesOnFirstStart(first.authority.store, first.authority.admin, { hostname: '127.0.0.1', port: 18081 }),
        [],
      );
      assert.equal((await first.admin('GET', '/api/routes/bar')).status, 404);
    } finally {
      await first.stop();
    }
  });
});
