import { type ClientDuplexStream, credentials, Metadata, makeGenericClientConstructor, type ServiceError, status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { RouteInput, RouteSpec } from '../libs/core/routes';
import { CLUSTER, CLUSTER_LOAD_ASSIGNMENT, ROUTE_CONFIGURATION } from '../libs/xds/envoy-types';
import { ADMIN_TOKEN, basic, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { runEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { FOO, send } from './support/proxy-request';
import { type Backend, namedBackend, route, within, xdsBootstrap } from './support/xds';

/*
 * The token authority as Envoy's control plane (libs/xds), with a real Envoy 1.40 started from
 * envoy/envoy-xds.yaml (only the control plane, ext-authz and the authority are static there),
 * a real ext-authz with no policy file (each route's policy reaches it in context_extensions) and
 * two backends that say their name. Routes are written to the authority's store (its route
 * repository) and reach Envoy through the route feed: delta xDS end to end.
 */

const OAUTH = 'oauth.oto.tools';
const ROUTE_BASE: RouteInput = {
  id: 'foo',
  frontend: { domains: [FOO], pathPrefix: '/' },
  backend: { targets: [{ hostname: '127.0.0.1', port: 1 }] },
  apikeys: { publicPathPrefixes: ['/public/'] },
};

describe('the authority as Envoy control plane (ADS, delta xDS), with a real Envoy', () => {
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let backendA: Backend | undefined;
  let backendB: Backend | undefined;
  let envoy: TestEnvoy | undefined;
  const ports = { grpc: 0, http: 0, listener: 0, admin: 0, xds: 0 };
  let dataDir = '';
  let routes: RouteSpec[] = [];
  const log = () => envoy?.log().slice(-4000) ?? '';

  const settings = () => ({
    domain: OAUTH,
    http: { host: '127.0.0.1', port: ports.http },
    grpc: { host: '127.0.0.1', port: ports.grpc },
    xds: { enabled: true, port: ports.xds, listener: { address: '127.0.0.1', port: ports.listener } },
  });

  /** envoy/envoy-xds.yaml for 127.0.0.1: the control plane, the authority and ext-authz of this test. */
  const bootstrap = (adminPort: number, edit = (text: string) => text) =>
    xdsBootstrap(
      {
        admin: adminPort,
        xds: ports.xds,
        authorityHttp: ports.http,
        authorityGrpc: ports.grpc,
        extAuthzGrpc: Number(extAuthz!.grpcAddress.split(':').pop()),
      },
      edit,
    );

  /** Makes the store's routes these (written as the admin API does, through the route repository). */
  const setRoutes = async (next: RouteSpec[]) => {
    routes = next;
    const store = authority!.authority.store.routes;
    const now = new Date().toISOString();
    for (const old of await store.listPage({ limit: 1000 })) if (!next.some((each) => each.id === old.id)) await store.delete(old.id);
    for (const spec of next) {
      if (await store.get(spec.id)) await store.modify(spec.id, (current) => ({ ...spec, createdAt: current.createdAt, updatedAt: now }));
      else assert.ok(await store.create({ ...spec, createdAt: now, updatedAt: now }));
    }
  };

  before(async () => {
    [ports.grpc, ports.http, ports.listener, ports.admin, ports.xds] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    [backendA, backendB] = [await namedBackend('A'), await namedBackend('B')];
    routes = [route({ ...ROUTE_BASE, backend: { targets: [{ hostname: '127.0.0.1', port: backendA.port }] } })];
    // A data folder of the test's own: the restart below finds its API keys there.
    dataDir = mkdtempSync(path.join(tmpdir(), 'xds-test-'));
    authority = await startTestAuthority(settings(), dataDir);
    await setRoutes(routes);
    // No policy file: every policy comes with the route.
    extAuthz = await startTestExtAuthz(authority, { policies: {} });
    envoy = await runEnvoy(bootstrap(ports.admin), { listener: ports.listener, admin: ports.admin });
    // The listener comes over xDS: ready once it answers.
    await within(10_000, async () => (await send(envoy!.url, '/public/x')).status === 200, 'the first route through Envoy');
  });

  after(async () => {
    for (const step of [
      () => envoy?.stop(),
      () => extAuthz?.close(),
      () => backendA?.close(),
      () => backendB?.close(),
      () => authority?.stop(),
    ]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const token = async () => {
    const answer = await send(envoy!.url, TOKEN_PATH, {
      host: OAUTH,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: 'xds-id', client_secret: 'xds-secret' }),
    });
    assert.equal(answer.status, 200, `${answer.body}\n${log()}`);
    return (JSON.parse(answer.body) as { access_token: string }).access_token;
  };
  it("serves the authority's host with no ext_authz, and a route's policy reaches ext-authz in context_extensions", async () => {
    const created = await authority!.admin('POST', '/api/apikeys', {
      clientId: 'xds-id',
      clientSecret: 'xds-secret',
      authorizedEntities: ['route_foo'],
    });
    assert.equal(created.status, 201);
    const bearer = `Bearer ${await token()}`;
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('xds-id') !== undefined);
    const none = await send(envoy!.url, '/api/items', { host: FOO });
    assert.equal(none.status, 401, `${none.body}\n${log()}`);
    assert.match(String(none.headers['www-authenticate']), /^Bearer realm="foo"/);
    const good = await send(envoy!.url, '/api/items', { host: `${FOO}:8080`, headers: { authorization: bearer } });
    assert.equal(good.status, 200, good.body);
    assert.equal((JSON.parse(good.body) as { headers: Record<string, string> }).headers['x-client-id'], 'xds-id');
    // A key for another route is refused: authorizedEntities came with the route (route_foo).
    await setRoutes([route({ ...ROUTE_BASE, apikeys: { authorizedEntities: ['route_other'] }, backend: routes[0].backend })]);
    await within(
      1000,
      async () => (await send(envoy!.url, '/', { host: FOO, headers: { authorization: bearer } })).status === 403,
      '403 for another entity',
    );
    assert.equal((await send(envoy!.url, '/public/page', { host: FOO })).status, 401, 'the public prefix went with the change');
  });

  it('moves a route to another backend within 1 s, disables it (404 within 1 s), turns Basic on (within 1 s)', async () => {
    const bearer = `Bearer ${await token()}`;
    const to = (backend: Backend, extra: Partial<RouteInput> = {}) =>
      route({ ...ROUTE_BASE, backend: { targets: [{ hostname: '127.0.0.1', port: backend.port }] }, ...extra });
    const answeredBy = async (authorization = bearer) => {
      const answer = await send(envoy!.url, '/x', { host: FOO, headers: { authorization } });
      return answer.status === 200 ? (JSON.parse(answer.body) as { backend: string }).backend : String(answer.status);
    };
    await setRoutes([to(backendA!)]);
    await within(1000, async () => (await answeredBy()) === 'A', 'on A');
    // A steady load (sequential, bounded) across the change: no request fails while the route moves.
    const statuses: string[] = [];
    let loading = true;
    const load = (async () => {
      const until = Date.now() + 5000;
      while (loading && Date.now() < until && statuses.length < 2000) statuses.push(await answeredBy());
    })();
    await new Promise((done) => setTimeout(done, 100));
    await setRoutes([to(backendB!)]);
    const moved = await within(1000, async () => (await answeredBy()) === 'B', 'moved to B');
    await new Promise((done) => setTimeout(done, 100));
    loading = false;
    await load;
    assert.ok(statuses.length > 10, `${statuses.length} requests under load`);
    assert.deepEqual(
      statuses.filter((answer) => answer !== 'A' && answer !== 'B'),
      [],
      'every request answered by A or B',
    );
    assert.equal(statuses.at(-1), 'B');
    await setRoutes([to(backendB!, { enabled: false })]);
    const disabled = await within(1000, async () => (await answeredBy()) === '404', 'disabled: 404');
    assert.equal(await answeredBy(basic('xds-id', 'xds-secret')), '404');
    await setRoutes([to(backendB!, { apikeys: { extractors: ['bearer', 'basic'] } })]);
    const basicOn = await within(1000, async () => (await answeredBy(basic('xds-id', 'xds-secret'))) === 'B', 'Basic accepted');
    console.log(
      `# moved in ${moved} ms (${statuses.length} requests under load, none failed), 404 in ${disabled} ms, Basic on in ${basicOn} ms`,
    );
  });

  it("reports a config Envoy rejects (NACK) on the route, with Envoy's error, and the last accepted config keeps serving", async () => {
    const bearer = `Bearer ${await token()}`;
    const nacksBefore = authority!.xds!.nackCount;
    const good = routes.filter((each) => each.id === 'foo');
    // What validation refuses but the builder would carry to Envoy: a domain with a line break (not a header value).
    const bad = { ...route({ ...ROUTE_BASE, id: 'bad', frontend: { domains: ['bad.oto.tools'], pathPrefix: '/' } }) };
    bad.frontend = { ...bad.frontend, domains: ['bad.oto.tools\r\nx: y'] };
    await setRoutes([...good, bad]);
    await within(2000, async () => authority!.xds!.nacks().has('bad'), 'NACK recorded');
    const nack = authority!.xds!.nacks().get('bad')!;
    assert.equal(nack.typeUrl, ROUTE_CONFIGURATION);
    assert.ok(nack.message.length > 0, 'Envoy says why');
    assert.ok(nack.reason.length > 0);
    assert.equal(authority!.xds!.nackCount, nacksBefore + 1, 'one NACK, not a resend loop');
    const metrics = await fetch(`${authority!.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }).then((r) => r.text());
    assert.match(metrics, /token_authority_xds_nack_total\{type="RouteConfiguration"\} [1-9]/);
    assert.match(metrics, /token_authority_xds_rejected_routes 1/);
    // The old route still answers, and nothing is sent again while nothing changes.
    assert.equal((await send(envoy!.url, '/x', { host: FOO, headers: { authorization: bearer } })).status, 200);
    await new Promise((done) => setTimeout(done, 300));
    assert.equal(authority!.xds!.nackCount, nacksBefore + 1);
    // Fixed: accepted, the route is no longer reported.
    await setRoutes(good);
    await within(2000, async () => !authority!.xds!.nacks().has('bad'), 'NACK cleared once a config without it is accepted');
  });

  it('keeps traffic flowing while the authority is down, and resyncs when it is back (delta: only what changed is sent)', async () => {
    const bearer = `Bearer ${await token()}`;
    const ok = async () => {
      const answer = await send(envoy!.url, '/x', { host: FOO, headers: { authorization: bearer } });
      assert.equal(answer.status, 200, `${answer.body}\n${log()}`);
      return true;
    };
    assert.ok(await ok());
    await authority!.stop();
    authority = undefined;
    for (let i = 0; i < 10; i++) {
      assert.ok(await ok(), `request ${i} with the authority down\n${log()}`);
      await new Promise((done) => setTimeout(done, 50));
    }
    // Same ports, same data: Envoy reconnects on its own and states what it holds.
    authority = await startTestAuthority(settings(), dataDir);
    await within(15_000, async () => authority!.xds!.connectedStreams > 0, 'Envoy reconnected');
    await new Promise((done) => setTimeout(done, 300));
    assert.equal(authority.xds!.resourcesSent.get(CLUSTER) ?? 0, 0, 'no cluster sent again: Envoy held them all');
    assert.equal(authority.xds!.resourcesSent.get(CLUSTER_LOAD_ASSIGNMENT) ?? 0, 0, 'no endpoints sent again');
    assert.equal(authority.xds!.resourcesSent.get(ROUTE_CONFIGURATION) ?? 0, 0, 'no routes sent again');
    assert.ok(await ok());
    // And changes flow again.
    await setRoutes([route({ ...ROUTE_BASE, backend: { targets: [{ hostname: '127.0.0.1', port: backendA!.port }] } })]);
    await within(
      1000,
      async () => {
        const answer = await send(envoy!.url, '/x', { host: FOO, headers: { authorization: bearer } });
        return answer.status === 200 && (JSON.parse(answer.body) as { backend: string }).backend === 'A';
      },
      'a change after the restart',
    );
  });

  it('refuses an ADS stream without the data plane token (UNAUTHENTICATED)', async () => {
    const Client = makeGenericClientConstructor(
      {
        DeltaAggregatedResources: {
          path: '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources',
          requestStream: true,
          responseStream: true,
          requestSerialize: (bytes: Buffer) => bytes,
          requestDeserialize: (bytes: Buffer) => bytes,
          responseSerialize: (bytes: Buffer) => bytes,
          responseDeserialize: (bytes: Buffer) => bytes,
        },
      },
      'Ads',
    );
    const client = new Client(`127.0.0.1:${ports.xds}`, credentials.createInsecure());
    try {
      for (const authorization of [undefined, 'Bearer not-the-token-0123456789']) {
        const metadata = new Metadata();
        if (authorization) metadata.set('authorization', authorization);
        const call = (
          client as unknown as { DeltaAggregatedResources(metadata: Metadata): ClientDuplexStream<Buffer, Buffer> }
        ).DeltaAggregatedResources(metadata);
        const code = await new Promise<number>((resolve) => {
          call.on('data', () => resolve(-1));
          call.on('error', (error: ServiceError) => resolve(error.code));
        });
        assert.equal(code, status.UNAUTHENTICATED);
      }
    } finally {
      client.close();
    }
  });

  it('serves the state-of-the-world variant too (api_type GRPC): the routes, then a change within 1 s', async () => {
    const bearer = `Bearer ${await token()}`;
    // The delta Envoy leaves the listener's port to this one.
    await envoy!.stop();
    envoy = await runEnvoy(
      bootstrap(ports.admin, (text) => text.replace('api_type: DELTA_GRPC', 'api_type: GRPC')),
      { listener: ports.listener, admin: ports.admin },
    );
    const backendOf = async () => {
      const answer = await send(envoy!.url, '/x', { host: FOO, headers: { authorization: bearer } });
      return answer.status === 200 ? (JSON.parse(answer.body) as { backend: string }).backend : String(answer.status);
    };
    await within(5000, async () => (await backendOf()) === 'A', 'served over SotW');
    await setRoutes([route({ ...ROUTE_BASE, backend: { targets: [{ hostname: '127.0.0.1', port: backendB!.port }] } })]);
    await within(1000, async () => (await backendOf()) === 'B', 'a change over SotW');
    // A rejected RouteConfiguration: reported once, the last accepted one keeps serving.
    const nacks = authority!.xds!.nackCount;
    const bad = route({ ...ROUTE_BASE, id: 'bad', frontend: { domains: ['bad.oto.tools'], pathPrefix: '/' } });
    await setRoutes([...routes, { ...bad, frontend: { ...bad.frontend, domains: ['bad.oto.tools\nx'] } }]);
    await within(2000, async () => authority!.xds!.nacks().has('bad'), 'NACK over SotW');
    await new Promise((done) => setTimeout(done, 300));
    assert.equal(authority!.xds!.nackCount, nacks + 1);
    assert.equal(await backendOf(), 'B');
  });
});
