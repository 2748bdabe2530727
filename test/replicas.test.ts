import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { httpRequest } from './support/http';
import { adminQuery, dropSchema, POSTGRES_URL, randomSchema } from './support/postgres';
import { AuthorityReplica, within } from './support/replicas';

/*
 * Two token authority processes and one ext-authz (fed by B) on one PostgreSQL schema: what one
 * replica changes, the other serves, each within 1 s (the time measured is printed).
 */
const BOUND_MS = 1000;

const kidOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[0], 'base64url').toString()).kid as string;

describe('two authority replicas and ext-authz on one PostgreSQL', () => {
  const schema = randomSchema('replicas');
  let a: AuthorityReplica;
  let b: AuthorityReplica;
  let extAuthz: TestExtAuthz;
  const timings: Record<string, number> = {};

  before(async () => {
    a = await AuthorityReplica.create('replica-a', POSTGRES_URL, schema);
    b = await AuthorityReplica.create('replica-b', POSTGRES_URL, schema);
    // Both start at once on an empty schema: migrations and the default key pair race.
    await Promise.all([a.start(), b.start()]);
    extAuthz = await startTestExtAuthz(b);
  });

  after(async () => {
    console.log(`cross-replica timings (ms): ${JSON.stringify(timings)}`);
    await extAuthz?.close();
    await Promise.all([a?.remove(), b?.remove()]);
    await dropSchema(schema);
  });

  it('start together on an empty schema with one default key pair, and publish the same JWKS', async () => {
    const rows = await adminQuery<{ id: string }>(`SELECT id FROM "${schema}".key_pairs`);
    assert.deepEqual(
      rows.map((row) => row.id),
      ['otoroshi-jwt-signing'],
    );
    const jwks = async (replica: AuthorityReplica) => (await fetch(`${replica.url}/.well-known/otoroshi/oauth/jwks.json`)).json();
    assert.deepEqual(await jwks(a), await jwks(b));
  });

  it('a key created on A issues tokens on B', async () => {
    assert.equal(
      (await a.admin('POST', '/api/apikeys', { clientId: 'made-on-a', clientSecret: 'secret-on-a', scope: 'read' })).status,
      201,
    );
    timings.keyCreatedOnAIssuesOnB = await within(BOUND_MS, async () => (await b.token('made-on-a', 'secret-on-a')).status === 200);
  });

  it('a token issued by A introspects active on B; revoked on B, it is inactive on A within 1 s', async () => {
    await a.admin('POST', '/api/apikeys', { clientId: 'revoker', clientSecret: 'revoker-secret' });
    const issued = await a.token('revoker', 'revoker-secret');
    assert.equal(issued.status, 200);
    const token = issued.body.access_token as string;
    timings.tokenOfAActiveOnB = await within(
      BOUND_MS,
      async () => (await b.introspect(token, 'revoker', 'revoker-secret')).body.active === true,
    );
    // Cached as active on A before the revocation.
    assert.equal((await a.introspect(token, 'revoker', 'revoker-secret')).body.active, true);
    const revoke = await fetch(`${b.url}/.well-known/otoroshi/oauth/token/revoke`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from('revoker:revoker-secret').toString('base64')}`,
      },
      body: new URLSearchParams({ token }).toString(),
    });
    assert.equal(revoke.status, 200);
    timings.revokedOnBInactiveOnA = await within(
      BOUND_MS,
      async () => (await a.introspect(token, 'revoker', 'revoker-secret')).body.active === false,
    );
  });

  it('a key disabled on A is denied by the ext-authz fed by B within 1 s', async () => {
    await a.admin('POST', '/api/apikeys', { clientId: 'gated', clientSecret: 'gated-secret', authorizedEntities: ['route_foo'] });
    const token = (await a.token('gated', 'gated-secret')).body.access_token as string;
    const check = () => httpRequest(`${extAuthz.url}/authz/foo/`, { headers: { authorization: `Bearer ${token}` } });
    await within(BOUND_MS * 2, async () => (await check()).status === 200);
    assert.equal((await a.admin('PATCH', '/api/apikeys/gated', { enabled: false })).status, 200);
    timings.disabledOnADeniedByExtAuthzOfB = await within(BOUND_MS, async () => (await check()).status === 401);
  });

  it('two admins changing one key at once, on A and on B, lose neither change', async () => {
    await a.admin('POST', '/api/apikeys', { clientId: 'contended', clientSecret: 'contended-secret' });
    for (let round = 0; round < 10; round += 1) {
      const [onA, onB] = await Promise.all([
        a.admin('PATCH', '/api/apikeys/contended', { description: `from A, round ${round}` }),
        b.admin('PATCH', '/api/apikeys/contended', { tags: [`from-b-${round}`] }),
      ]);
      assert.deepEqual([onA.status, onB.status], [200, 200]);
      const stored = await adminQuery<{ doc: { description: string; tags: string[] } }>(
        `SELECT doc FROM "${schema}".api_keys WHERE client_id = 'contended'`,
      );
      assert.equal(stored[0].doc.description, `from A, round ${round}`);
      assert.deepEqual(stored[0].doc.tags, [`from-b-${round}`]);
    }
  });

  it('a key pair rotated on A signs on both', async () => {
    await a.admin('POST', '/api/apikeys', { clientId: 'signer', clientSecret: 'signer-secret' });
    await within(BOUND_MS, async () => (await b.token('signer', 'signer-secret')).status === 200);
    const before = kidOf((await b.token('signer', 'signer-secret')).body.access_token);
    const rotated = await a.admin('POST', '/api/keypairs/otoroshi-jwt-signing/rotate', {});
    assert.equal(rotated.status, 200);
    const kid = rotated.body.activeKid as string;
    assert.notEqual(kid, before);
    assert.equal(kidOf((await a.token('signer', 'signer-secret')).body.access_token), kid);
    timings.rotatedOnASignsOnB = await within(
      BOUND_MS,
      async () => kidOf((await b.token('signer', 'signer-secret')).body.access_token) === kid,
    );
    // And a token signed by B's new key is verified by A (the old key still verifies too).
    const token = (await b.token('signer', 'signer-secret')).body.access_token as string;
    assert.equal((await a.introspect(token, 'signer', 'signer-secret')).body.active, true);
  });
});
