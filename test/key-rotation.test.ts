import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { httpRequest } from './support/http';
import { adminQuery, dropSchema, POSTGRES_URL, randomSchema } from './support/postgres';
import { AuthorityReplica, within } from './support/replicas';

/*
 * Scheduled key rotation across two real authority processes on one PostgreSQL schema, with a
 * schedule in seconds (rotate every 5 s, published 3 s ahead, tokens of 3 s, leeway 1 s): both
 * replicas' timers fire for the same slot and exactly one new key is written; a client that
 * fetched the JWKS once, after the publication and before the switch (as Envoy's jwt_authn
 * caches it), verifies every token issued after the switch; ext-authz (fed by B over the watch
 * stream) holds the new key before it signs; the replaced key leaves the JWKS once its last
 * token has expired. The unit tier covers the same rules on an injected clock
 * (test/unit/key-rotation.test.ts).
 */

const ROTATE_EVERY = 5;
const PUBLISH_AHEAD = 3;
const LEEWAY = 1;
const EXPIRATION_MS = 3000;
const KEY_PAIR = 'rotating';

const kidOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[0], 'base64url').toString()).kid as string;

describe('scheduled key rotation: two replicas on PostgreSQL, a JWKS cache, ext-authz', () => {
  const schema = randomSchema('rotation');
  let a: AuthorityReplica;
  let b: AuthorityReplica;
  let extAuthz: TestExtAuthz;
  const figures: Record<string, number> = {};

  before(async () => {
    const env = { EXPIRATION: String(EXPIRATION_MS) };
    a = await AuthorityReplica.create('rotation-a', POSTGRES_URL, schema, env);
    b = await AuthorityReplica.create('rotation-b', POSTGRES_URL, schema, env);
    await Promise.all([a.start(), b.start()]);
    extAuthz = await startTestExtAuthz(b);
  });

  after(async () => {
    console.log(`key rotation figures (ms): ${JSON.stringify(figures)}`);
    await extAuthz?.close();
    await Promise.all([a?.remove(), b?.remove()]);
    await dropSchema(schema);
  });

  const storedVersions = async () => {
    const [row] = await adminQuery<{ doc: { versions: { kid: string; activatesAt?: number }[] } }>(
      `SELECT doc FROM "${schema}".key_pairs WHERE id = $1`,
      [KEY_PAIR],
    );
    return row.doc.versions;
  };
  const scheduledRotations = async () =>
    (
      await adminQuery<{ n: string }>(
        `SELECT count(*) AS n FROM "${schema}".audit_log WHERE action = 'keypair.rotate-scheduled' AND entity_id = $1`,
        [KEY_PAIR],
      )
    )[0].n;
  const jwks = async (replica: AuthorityReplica) =>
    (await (await fetch(`${replica.url}/.well-known/otoroshi/oauth/jwks.json`)).json()) as JSONWebKeySet;
  /** This key pair's kids in a JWKS (the default key pair is there too). */
  const rotatingKids = (set: JSONWebKeySet) => set.keys.map((key) => key.kid).filter((kid) => kid?.startsWith(KEY_PAIR));

  it('publishes the next key ahead, once for both replicas, reaches ext-authz before it signs, and every later token verifies against the JWKS fetched before the switch', async () => {
    const created = await a.admin('POST', '/api/keypairs', {
      id: KEY_PAIR,
      algorithm: 'ES256',
      rotation: { rotateEvery: ROTATE_EVERY, publishAhead: PUBLISH_AHEAD, leeway: LEEWAY },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const first = created.body.activeKid as string;
    const { publishAt, switchAt } = created.body.nextRotation as { publishAt: number; switchAt: number };
    assert.equal(switchAt - publishAt, PUBLISH_AHEAD * 1000);
    assert.equal(
      (
        await a.admin('POST', '/api/apikeys', {
          clientId: 'rotating-app',
          clientSecret: 'rotating-secret',
          metadata: { 'jwt-sign-keypair': KEY_PAIR },
        })
      ).status,
      201,
    );
    // B shows the same schedule (it arms its own timer for the same instant as A).
    await within(2000, async () => (await b.admin('GET', `/api/keypairs/${KEY_PAIR}`)).body?.nextRotation?.switchAt === switchAt);

    // Both replicas' timers fire at publishAt: one new version, one audit entry.
    await within(publishAt - Date.now() + PUBLISH_AHEAD * 1000, async () => (await storedVersions()).length === 2);
    figures.publishedAfterDue = Date.now() - publishAt;
    const versions = await storedVersions();
    const second = versions[1].kid;
    assert.equal(versions[1].activatesAt, switchAt, 'the new key signs from the scheduled switch');
    assert.equal(await scheduledRotations(), '1', 'exactly one rotation for the slot');
    assert.ok(Date.now() < switchAt, 'published before the switch');

    // ext-authz (through B and the watch stream) holds the new key before it signs.
    await extAuthz.waitFor(() => extAuthz.replica.verificationKey(second) !== undefined, switchAt - Date.now());
    figures.extAuthzHadKeyMsBeforeSwitch = switchAt - Date.now();

    // Whichever replica wrote it, the other learns of it by NOTIFY within milliseconds.
    for (const replica of [a, b]) await within(1000, async () => rotatingKids(await jwks(replica)).includes(second));
    // The cache: the JWKS as A and B publish it now, fetched once and never again.
    const fetched = await jwks(a);
    assert.deepEqual(rotatingKids(fetched), [first, second]);
    assert.deepEqual(rotatingKids(await jwks(b)), [first, second]);
    const cached = createLocalJWKSet(fetched);
    assert.equal(kidOf((await b.token('rotating-app', 'rotating-secret')).body.access_token), first, 'the old key signs until the switch');
    figures.jwksFetchedMsBeforeSwitch = switchAt - Date.now();

    // Tokens from both replicas across the switch, every 100 ms for 1.5 s after it (bounded).
    await new Promise((done) => setTimeout(done, Math.max(0, switchAt - Date.now())));
    const afterSwitch: string[] = [];
    for (let i = 0; i < 15 && Date.now() < switchAt + 1500; i += 1) {
      for (const replica of [a, b]) {
        const issued = await replica.token('rotating-app', 'rotating-secret');
        assert.equal(issued.status, 200);
        afterSwitch.push(issued.body.access_token);
      }
      await new Promise((done) => setTimeout(done, 100));
    }
    assert.ok(afterSwitch.length >= 4);
    for (const token of afterSwitch) {
      assert.equal(kidOf(token), second, 'signed by the new key');
      await jwtVerify(token, cached, { typ: 'at+jwt' });
      const check = await httpRequest(`${extAuthz.url}/authz/open/`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(check.status, 200, 'ext-authz allows it');
    }
    figures.tokensAfterSwitchVerified = afterSwitch.length;
    const view = (await b.admin('GET', `/api/keypairs/${KEY_PAIR}`)).body;
    assert.equal(view.activeKid, second);
    assert.deepEqual(
      view.versions.map((version: { status: string }) => version.status),
      ['retired', 'active'],
    );
  });

  it('keeps the replaced key in the JWKS until its last token has expired, then drops it; the next slot rotates once more', async () => {
    const view = (await a.admin('GET', `/api/keypairs/${KEY_PAIR}`)).body;
    const [old] = view.versions as { kid: string; verifyUntil: number; retiredAt: number }[];
    assert.equal(old.verifyUntil, old.retiredAt + EXPIRATION_MS + LEEWAY * 1000);
    assert.ok(Date.now() < old.verifyUntil);
    assert.ok(
      (await jwks(a)).keys.some((key) => key.kid === old.kid),
      'still published while its tokens may live',
    );
    await within(old.verifyUntil - Date.now() + 2000, async () => !(await jwks(b)).keys.some((key) => key.kid === old.kid));
    figures.oldKeyLeftJwksAfterVerifyUntil = Date.now() - old.verifyUntil;
    assert.ok(Date.now() >= old.verifyUntil - 50, 'not before its window ended');
    // By now the next slot has been published as well: one more entry, never two.
    await within(ROTATE_EVERY * 1000, async () => (await scheduledRotations()) === '2');
    await new Promise((done) => setTimeout(done, 300));
    assert.equal(await scheduledRotations(), '2');
    const kids = (await storedVersions()).map((version) => version.kid);
    assert.equal(new Set(kids).size, kids.length);
  });
});
