import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { credentials, makeGenericClientConstructor, status as GrpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { tokenAuthorityClient } from './support/grpc';
import { adminQuery, dropSchema, randomSchema } from './support/postgres';
import { AuthorityReplica, within } from './support/replicas';
import { TcpProxy } from './support/tcp-proxy';

/*
 * Faults under load, on real processes and the real PostgreSQL: the database's connections
 * killed, the database unreachable, a replica SIGKILLed. Loads are bounded in time and count.
 */
const pgUrl = (port: number, application: string) => `postgres://postgres@127.0.0.1:${port}/postgres?application_name=${application}`;

interface LoadOutcome {
  statuses: Map<number, number>;
  created: string[];
}

/** `workers` loops creating API keys on `replica` until `until` resolves (at most `maxEach` each); records every status. */
async function createKeysUnderLoad(
  replica: AuthorityReplica,
  prefix: string,
  until: Promise<unknown>,
  workers = 4,
  maxEach = 400,
): Promise<LoadOutcome> {
  let done = false;
  void until.then(() => {
    done = true;
  });
  const outcome: LoadOutcome = { statuses: new Map(), created: [] };
  await Promise.all(
    Array.from({ length: workers }, async (_, worker) => {
      for (let index = 0; index < maxEach && !done; index += 1) {
        const clientId = `${prefix}-${worker}-${index}`;
        const { status, body } = await replica
          .admin('POST', '/api/apikeys', { clientId, clientSecret: 'load-secret-long-enough-for-sha256-0123456789' })
          .catch(() => ({ status: 0, body: undefined }));
        outcome.statuses.set(status, (outcome.statuses.get(status) ?? 0) + 1);
        if (status === 201) outcome.created.push(clientId);
        else if (status === 503) assert.equal(body.error, 'temporarily_unavailable');
        else if (status !== 0) assert.fail(`unexpected ${status}: ${JSON.stringify(body)}`);
      }
    }),
  );
  return outcome;
}

async function storedIds(schema: string, prefix: string): Promise<Set<string>> {
  const rows = await adminQuery<{ client_id: string }>(`SELECT client_id FROM "${schema}".api_keys WHERE client_id LIKE $1`, [
    `${prefix}-%`,
  ]);
  return new Set(rows.map((row) => row.client_id));
}

const HealthClient = makeGenericClientConstructor(healthService as any, 'Health');

async function grpcHealth(address: string): Promise<string> {
  const client = new HealthClient(address, credentials.createInsecure()) as Client & Record<string, (...args: any[]) => void>;
  try {
    return await new Promise((resolve, reject) =>
      client.Check({ service: '' }, { deadline: Date.now() + 3_000 }, (error: ServiceError | null, response: { status: string }) =>
        error ? reject(error) : resolve(response.status),
      ),
    );
  } finally {
    client.close();
  }
}

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

describe('replica faults on PostgreSQL', () => {
  const schema = randomSchema('faults');
  const proxy = new TcpProxy('127.0.0.1', 5432);
  let a: AuthorityReplica;
  let b: AuthorityReplica;
  const timings: Record<string, number> = {};

  before(async () => {
    await proxy.start();
    // A reaches PostgreSQL through a proxy the test can cut; B directly.
    a = await AuthorityReplica.create('fault-a', pgUrl(proxy.port, `fault_a_${schema}`), schema);
    b = await AuthorityReplica.create('fault-b', pgUrl(5432, `fault_b_${schema}`), schema);
    await a.start();
    await b.start();
    assert.equal((await a.admin('POST', '/api/apikeys', { clientId: 'steady', clientSecret: 'steady-secret-0123456789' })).status, 201);
    await within(1000, async () => (await b.token('steady', 'steady-secret-0123456789')).status === 200);
  });

  after(async () => {
    console.log(`fault timings (ms): ${JSON.stringify(timings)}`);
    await Promise.all([a?.remove(), b?.remove()]);
    await proxy.stop();
    await dropSchema(schema);
  });

  it("pg_terminate_backend of a replica's connections mid-load: no 500, nothing acknowledged lost, resumes without a restart", async () => {
    const killed = sleep(400).then(() =>
      adminQuery('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [`fault_a_${schema}`]),
    );
    const load = await createKeysUnderLoad(
      a,
      'term',
      killed.then(() => sleep(600)),
    );
    const terminated = (await killed).length;
    console.log(`statuses while A's connections were terminated: ${JSON.stringify(Object.fromEntries(load.statuses))}`);
    assert.ok(terminated >= 2, `terminated ${terminated} connections (pool and LISTEN)`);
    assert.ok(load.created.length > 0, `statuses ${JSON.stringify([...load.statuses])}`);
    const stored = await storedIds(schema, 'term');
    for (const id of load.created) assert.ok(stored.has(id), `acknowledged ${id} is stored`);
    // A reconnected its LISTEN: a change made on B reaches A's cached reads again.
    timings.terminateToListenBack = await within(5000, async () => (await a.admin('GET', '/health')).status === 200);
    await a.token('steady', 'steady-secret-0123456789');
    assert.equal((await b.admin('PATCH', '/api/apikeys/steady', { description: 'after terminate' })).status, 200);
    timings.changeOnBSeenByAAfterTerminate = await within(
      1000,
      async () => (await a.admin('GET', '/api/apikeys/steady')).body.description === 'after terminate',
    );
    assert.equal(a.exitDescription(), undefined, 'A never restarted');
  });

  it('database unreachable: 503 temporarily_unavailable where it is needed, /health 503, cached keys keep issuing, recovery by itself', async () => {
    // A has caught up with every change so far (its feed published the database's head): no late
    // catch-up from the previous case can drop 'steady' from memory after it is read below.
    const head = async () => Number((await adminQuery<{ seq: string }>(`SELECT seq FROM "${schema}".change_head`))[0].seq);
    const published = async () =>
      Number(/token_authority_data_plane_position (\d+)/.exec(await (await fetch(`${a.url}/metrics`)).text())?.[1]);
    await within(10_000, async () => (await published()) === (await head()));
    assert.equal((await a.token('steady', 'steady-secret-0123456789')).status, 200, 'steady is cached on A');
    const seenToken = (await a.token('steady', 'steady-secret-0123456789')).body.access_token as string;
    assert.equal((await a.introspect(seenToken, 'steady', 'steady-secret-0123456789')).body.active, true);
    // A token A has never checked: whether it is revoked is a question for the database.
    const unseenToken = (await b.token('steady', 'steady-secret-0123456789')).body.access_token as string;
    const cutAt = performance.now();
    await proxy.cut();
    timings.cutToHealth503 = await within(10_000, async () => (await a.admin('GET', '/health')).status === 503);
    const unknown = await a.token('never-seen', 'whatever-secret-0123');
    assert.equal(unknown.status, 503);
    assert.deepEqual(unknown.body, { error: 'temporarily_unavailable', error_description: 'the store is unreachable; retry shortly' });
    const write = await a.admin('POST', '/api/apikeys', { clientId: 'while-away' });
    assert.equal(write.status, 503);
    const grpc = tokenAuthorityClient(a.grpcAddress);
    try {
      const issued = await grpc.call('IssueToken', {
        grant_type: 'client_credentials',
        client: { client_id: 'never-seen', client_secret: 'whatever-secret-0123' },
      });
      assert.equal(issued.ok, false);
      assert.equal(!issued.ok && issued.error.code, GrpcStatus.UNAVAILABLE);
    } finally {
      grpc.close();
    }
    timings.cutToGrpcHealthNotServing = await within(5000, async () => (await grpcHealth(a.grpcAddress)) === 'NOT_SERVING');
    assert.equal((await a.token('steady', 'steady-secret-0123456789')).status, 200, 'served from memory meanwhile');
    assert.equal((await a.introspect(seenToken, 'steady', 'steady-secret-0123456789')).body.active, true, 'checked before: from memory');
    const unseen = await a.introspect(unseenToken, 'steady', 'steady-secret-0123456789');
    assert.equal(unseen.status, 503);
    assert.equal(unseen.body.error, 'temporarily_unavailable');
    assert.equal((await b.token('steady', 'steady-secret-0123456789')).status, 200, 'B is not affected');
    await sleep(Math.max(0, 1000 - (performance.now() - cutAt)));
    const restoredAt = performance.now();
    await proxy.start();
    await within(10_000, async () => (await a.admin('POST', '/api/apikeys', { clientId: 'back-again' })).status === 201);
    timings.restoreToWrites = Math.round(performance.now() - restoredAt);
    timings.restoreToHealth200 = await within(10_000, async () => (await a.admin('GET', '/health')).status === 200);
    await within(5000, async () => (await grpcHealth(a.grpcAddress)) === 'SERVING');
    assert.equal(a.exitDescription(), undefined, 'A never restarted');
  });

  it('a replica SIGKILLed mid-load: the other keeps serving, the killed one restarts cleanly', async () => {
    const issued = { ok: 0, failed: 0 };
    let stop = false;
    const tokenLoad = (async () => {
      for (let index = 0; index < 2000 && !stop; index += 1) {
        const { status } = await b.token('steady', 'steady-secret-0123456789');
        if (status === 200) issued.ok += 1;
        else issued.failed += 1;
      }
    })();
    const killed = sleep(300).then(() => process.kill(a.pid!, 'SIGKILL'));
    const load = await createKeysUnderLoad(
      a,
      'kill',
      killed.then(() => sleep(100)),
      2,
      200,
    );
    await sleep(500);
    stop = true;
    await tokenLoad;
    assert.equal(issued.failed, 0, 'B kept serving');
    assert.ok(issued.ok > 0);
    const stored = await storedIds(schema, 'kill');
    for (const id of load.created) assert.ok(stored.has(id), `acknowledged ${id} is stored`);
    const restartAt = performance.now();
    await a.start();
    timings.sigkillRestartToHealthy = Math.round(performance.now() - restartAt);
    assert.equal((await a.token('steady', 'steady-secret-0123456789')).status, 200);
    assert.equal((await a.admin('POST', '/api/apikeys', { clientId: 'after-restart' })).status, 201);
    await within(1000, async () => (await b.admin('GET', '/api/apikeys/after-restart')).status === 200);
  });
});
