import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ADMIN_TOKEN } from './support/authority';
import { runEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { dropSchema, POSTGRES_URL, randomSchema } from './support/postgres';
import { FOO, send } from './support/proxy-request';
import { AuthorityReplica } from './support/replicas';
import { type Backend, heldVersions, lastUpdated, namedBackend, within, xdsBootstrap } from './support/xds';

/*
 * Several Envoys and several authority replicas (issue 19): two token authority processes on one
 * PostgreSQL schema of this test's own, each the control plane (ADS) of one real Envoy 1.40.
 * Envoy 1 streams from A, Envoy 2 from B (each bootstrap lists both replicas in its xds cluster,
 * its own first: priority 0, the other priority 1, TCP health-checked), and ext-authz is fed by A.
 *
 * The config is the same from either replica, so the two Envoys get the same listener: they
 * share its port (Envoy sets SO_REUSEPORT, the kernel spreads connections over both), and which
 * Envoy answered is read from each one's own stats.
 */

const ROUTE_COUNTER = 'cluster.route_foo.upstream_rq_completed';

/** A counter of an Envoy's stats (0 when it does not exist yet). */
async function counter(envoy: TestEnvoy, name: string): Promise<number> {
  const text = await (await fetch(`${envoy.adminUrl}/stats?filter=${encodeURIComponent(`^${name.replaceAll('.', '\\.')}$`)}`)).text();
  const line = text.split('\n').find((each) => each.startsWith(`${name}: `));
  return line ? Number(line.slice(name.length + 2)) : 0;
}

/** A replica's xDS figures from its /metrics: open streams, resources sent by type. */
async function xdsMetrics(replica: AuthorityReplica): Promise<{ streams: number; sent: Record<string, number> }> {
  const text = await (await fetch(`${replica.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).text();
  const sent: Record<string, number> = { Listener: 0, RouteConfiguration: 0, Cluster: 0, ClusterLoadAssignment: 0 };
  for (const [, type, value] of text.matchAll(/^token_authority_xds_resources_sent_total\{type="(\w+)"\} (\d+)$/gm))
    sent[type] = Number(value);
  const streams = /^token_authority_xds_streams (\d+)$/m.exec(text);
  return { streams: streams ? Number(streams[1]) : -1, sent };
}

/** The port the ClusterLoadAssignment of route_foo sends to, as an Envoy holds it. */
async function endpointPort(envoy: TestEnvoy): Promise<number | undefined> {
  const dump = (await (await fetch(`${envoy.adminUrl}/config_dump?include_eds`)).json()) as { configs: Record<string, any>[] };
  for (const config of dump.configs)
    for (const item of config.dynamic_endpoint_configs ?? [])
      if (item.endpoint_config?.cluster_name === 'route_foo')
        return item.endpoint_config.endpoints?.[0]?.lb_endpoints?.[0]?.endpoint?.address?.socket_address?.port_value;
  return undefined;
}

describe('two Envoys on two authority replicas (one PostgreSQL): the same config from each, and a failover without a resend', () => {
  const schema = randomSchema('xds_replicas');
  const dir = mkdtempSync(path.join(tmpdir(), 'xds-replicas-'));
  let a: AuthorityReplica | undefined;
  let b: AuthorityReplica | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let backendA: Backend | undefined;
  let backendB: Backend | undefined;
  let envoy1: TestEnvoy | undefined;
  let envoy2: TestEnvoy | undefined;
  let bearer = '';
  const ports = { listener: 0, xdsA: 0, xdsB: 0, admin1: 0, admin2: 0 };
  const logs = () => `envoy 1:\n${envoy1?.log().slice(-1500)}\nenvoy 2:\n${envoy2?.log().slice(-1500)}`;

  before(async () => {
    for (const key of Object.keys(ports) as (keyof typeof ports)[]) ports[key] = await freePort();
    // The listener Envoy is given on loopback (the default is 0.0.0.0): the file's only setting.
    const configFile = path.join(dir, 'token-authority.yaml');
    writeFileSync(configFile, 'xds:\n  listener:\n    address: 127.0.0.1\n');
    const env = (xdsPort: number) => ({
      CONFIG_FILE: configFile,
      XDS_ENABLED: 'true',
      XDS_PORT: String(xdsPort),
      XDS_LISTENER_PORT: String(ports.listener),
      ROUTES_SEED: 'false',
    });
    a = await AuthorityReplica.create('xds-a', POSTGRES_URL, schema, env(ports.xdsA));
    b = await AuthorityReplica.create('xds-b', POSTGRES_URL, schema, env(ports.xdsB));
    await Promise.all([a.start(), b.start()]);
    [backendA, backendB] = [await namedBackend('A'), await namedBackend('B')];
    extAuthz = await startTestExtAuthz(a, { policies: {} });
    const extAuthzGrpc = Number(extAuthz.grpcAddress.split(':').pop());
    const portOf = (address: string) => Number(address.split(':').pop());
    const bootstrap = (admin: number, own: AuthorityReplica, xds: number[]) =>
      xdsBootstrap({ admin, xds, authorityHttp: portOf(own.url), authorityGrpc: portOf(own.grpcAddress), extAuthzGrpc });
    envoy1 = await runEnvoy(bootstrap(ports.admin1, a, [ports.xdsA, ports.xdsB]), {
      listener: ports.listener,
      admin: ports.admin1,
      baseId: ports.admin1,
    });
    envoy2 = await runEnvoy(bootstrap(ports.admin2, b, [ports.xdsB, ports.xdsA]), {
      listener: ports.listener,
      admin: ports.admin2,
      baseId: ports.admin2,
    });
    // Each Envoy on its own replica, each with the pushed listener bound.
    await within(10_000, async () => (await xdsMetrics(a!)).streams === 1 && (await xdsMetrics(b!)).streams === 1, 'one stream on each');
    for (const envoy of [envoy1, envoy2])
      await within(
        5000,
        async () => (await counter(envoy, 'listener_manager.total_listeners_active')) === 1,
        `listener on ${envoy.adminUrl}`,
      );
    assert.equal(
      (await a.admin('POST', '/api/apikeys', { clientId: 'rep-id', clientSecret: 'rep-secret', authorizedEntities: ['route_foo'] })).status,
      201,
    );
    await extAuthz.waitFor(() => extAuthz!.replica.apiKey('rep-id') !== undefined);
    bearer = `Bearer ${(await a.token('rep-id', 'rep-secret')).body.access_token}`;
  });

  after(async () => {
    for (const step of [
      () => envoy1?.stop(),
      () => envoy2?.stop(),
      () => extAuthz?.close(),
      () => backendA?.close(),
      () => backendB?.close(),
      () => a?.remove(),
      () => b?.remove(),
      () => dropSchema(schema),
    ]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  /** One request to the shared listener (a new connection: either Envoy may take it); its status. */
  const request = async () =>
    (await send(`http://127.0.0.1:${ports.listener}`, '/x', { host: FOO, headers: { authorization: bearer } })).status;

  it("serves a route created through A's API on both Envoys within 1 s, each with the same resource versions", async () => {
    const created = await a!.admin('POST', '/api/routes', {
      id: 'foo',
      frontend: { domains: [FOO], pathPrefix: '/' },
      backend: { targets: [{ hostname: '127.0.0.1', port: backendA!.port }] },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const served = await within(
      1000,
      async () => {
        const status = await request();
        assert.ok(status === 200 || status === 404, `status ${status}`);
        return (await counter(envoy1!, ROUTE_COUNTER)) > 0 && (await counter(envoy2!, ROUTE_COUNTER)) > 0;
      },
      'served by both Envoys',
    ).catch(async (error: Error) => {
      throw new Error(`${error.message}\n${logs()}\n${await (await fetch(`${envoy2!.adminUrl}/listeners`)).text()}`);
    });
    const [held1, held2] = [await heldVersions(envoy1!.adminUrl), await heldVersions(envoy2!.adminUrl)];
    assert.ok(held1.clusters.route_foo && held1.endpoints.route_foo && held1.listeners.ingress_http && held1.routes.ingress_http, logs());
    assert.deepEqual(held2, held1, 'Envoy 2 (from B) holds every resource at the version Envoy 1 (from A) holds');
    console.log(`# created on A, served by both Envoys in ${served} ms; versions ${JSON.stringify(held1)}`);
  });

  it('stopping B: its Envoy resumes on A with nothing sent again, no request fails under a steady load, and changes flow', async () => {
    const sentBefore = (await xdsMetrics(a!)).sent;
    const updatedBefore = await lastUpdated(envoy2!.adminUrl);
    const servedBefore = await counter(envoy2!, ROUTE_COUNTER);
    // A steady load (sequential, bounded in time and count) across B's stop and Envoy 2's move to A.
    const statuses: number[] = [];
    let loading = true;
    const load = (async () => {
      const until = Date.now() + 15_000;
      while (loading && Date.now() < until && statuses.length < 5000) statuses.push(await request().catch(() => 0));
    })();
    await new Promise((done) => setTimeout(done, 200));
    const stopped = Date.now();
    await b!.stop();
    const moved = await within(10_000, async () => (await xdsMetrics(a!)).streams === 2, "Envoy 2's stream on A");
    const resumed = Date.now() - stopped;
    await new Promise((done) => setTimeout(done, 300));
    loading = false;
    await load;
    const servedBy2 = (await counter(envoy2!, ROUTE_COUNTER)) - servedBefore;
    assert.ok(statuses.length > 20, `${statuses.length} requests under load`);
    assert.deepEqual(
      statuses.filter((status) => status !== 200),
      [],
      `every one of ${statuses.length} requests answered 200`,
    );
    assert.ok(servedBy2 > 0, `Envoy 2 took part in the load (${servedBy2} of ${statuses.length})\n${logs()}`);
    // Delta xDS: Envoy 2 said what it held (initial_resource_versions), the versions are A's: nothing sent again.
    const sentAfter = (await xdsMetrics(a!)).sent;
    assert.deepEqual(sentAfter, sentBefore, 'A sent no resource to the Envoy that moved to it');
    assert.deepEqual(await lastUpdated(envoy2!.adminUrl), updatedBefore, 'Envoy 2 took no resource again');
    console.log(
      `# B stopped: Envoy 2 on A after ${resumed} ms (polled ${moved} ms), ${statuses.length} requests under load (${servedBy2} by Envoy 2), none failed, 0 resources resent`,
    );
    // Both Envoys now follow A: a change made there reaches both within 1 s.
    const changed = await a!.admin('PATCH', '/api/routes/foo', {
      backend: { targets: [{ hostname: '127.0.0.1', port: backendB!.port }] },
    });
    assert.equal(changed.status, 200, JSON.stringify(changed.body));
    const both = await within(
      1000,
      async () => (await endpointPort(envoy1!)) === backendB!.port && (await endpointPort(envoy2!)) === backendB!.port,
      'the new backend on both Envoys',
    );
    assert.deepEqual(await heldVersions(envoy2!.adminUrl), await heldVersions(envoy1!.adminUrl));
    assert.equal(await request(), 200);
    console.log(`# a change on A after the failover: on both Envoys in ${both} ms`);
  });
});
