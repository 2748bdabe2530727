import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { httpRequest } from './support/http';
import { ADMIN_TOKEN, basic, INTROSPECT_PATH, JWKS_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';

describe('admin API and key pairs', () => {
  let authority: TestAuthority;
  before(async () => {
    authority = await startTestAuthority();
  });
  after(() => authority.stop());

  const tokenFor = async (clientId: string, secret: string) => {
    const response = await authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials' }, { authorization: basic(clientId, secret) });
    return { status: response.status, body: (await response.json()) as Record<string, string> };
  };
  const jwks = async () => (await (await fetch(`${authority.url}${JWKS_PATH}`)).json()) as { keys: { kid: string; alg: string }[] };

  describe('authentication of the admin API', () => {
    for (const authorization of [
      undefined,
      'Bearer wrong-token-0123456789',
      `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}`,
      `Bearer ${ADMIN_TOKEN}x`,
    ]) {
      it(`refuses ${authorization ? `${authorization.split(' ')[0]} ${authorization.length > 30 ? 'wrong' : ''}` : 'no header'} with 401`, async () => {
        const response = await fetch(`${authority.url}/api/apikeys`, { headers: authorization ? { authorization } : {} });
        assert.equal(response.status, 401);
        assert.match(response.headers.get('www-authenticate') ?? '', /^Bearer/);
        assert.equal(((await response.json()) as { error: string }).error, 'invalid_token');
      });
    }
  });

  describe('API keys', () => {
    it('generates an id and a high-entropy secret when none is given', async () => {
      const created = await authority.admin('POST', '/api/apikeys', { clientName: 'generated' });
      assert.equal(created.status, 201);
      assert.match(created.body.clientId, /^[A-Za-z0-9_-]{16}$/);
      assert.ok(created.body.clientSecret.length >= 43);
      assert.equal((await tokenFor(created.body.clientId, created.body.clientSecret)).status, 200);
    });

    it('validates input and names the bad field', async () => {
      const cases = [
        { clientId: 'has space' },
        { clientId: 'colon:id' },
        { clientId: 'ünïcode' },
        { clientSecret: 'short' },
        { authorizedEntities: ['foo'] },
        { validUntil: 'tomorrow' },
        { scope: 'ok "bad"' },
        { unknownField: true },
        { metadata: { 'jwt-sign-keypair': 'does-not-exist' } },
      ];
      for (const body of cases) {
        const response = await authority.admin('POST', '/api/apikeys', body);
        assert.equal(response.status, 400, JSON.stringify(body));
        assert.equal(response.body.error, 'invalid_request');
      }
      const named = await authority.admin('POST', '/api/apikeys', { clientSecret: 'short' });
      assert.equal(named.body.details[0].path, 'clientSecret');
      const notJson = await fetch(`${authority.url}/api/apikeys`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: '{',
      });
      assert.equal(notJson.status, 400);
    });

    it('conflicts, lookups and deletes answer 409 / 404 / 204', async () => {
      assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: 'dup', clientSecret: 'dup-secret' })).status, 201);
      assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: 'dup', clientSecret: 'dup-secret' })).status, 409);
      assert.equal((await authority.admin('GET', '/api/apikeys/nobody')).status, 404);
      assert.equal((await authority.admin('PATCH', '/api/apikeys/nobody', { enabled: false })).status, 404);
      assert.equal((await authority.admin('DELETE', '/api/apikeys/dup')).status, 204);
      assert.equal((await authority.admin('DELETE', '/api/apikeys/dup')).status, 404);
      const list = await authority.admin('GET', '/api/apikeys');
      assert.ok(Array.isArray(list.body));
      assert.equal(JSON.stringify(list.body).includes('Hash'), false);
    });

    it('updates keep what is not given and cannot change the id', async () => {
      await authority.admin('POST', '/api/apikeys', { clientId: 'upd', clientSecret: 'upd-secret', tags: ['a'], scope: ['s1'] });
      const updated = await authority.admin('PATCH', '/api/apikeys/upd', { description: 'changed' });
      assert.equal(updated.body.description, 'changed');
      assert.deepEqual(updated.body.tags, ['a']);
      assert.deepEqual(updated.body.scope, ['s1']);
      assert.equal((await authority.admin('PUT', '/api/apikeys/upd', { clientId: 'other' })).status, 400);
      assert.equal((await tokenFor('upd', 'upd-secret')).status, 200);
    });

    it('rotates a secret with a grace period during which both secrets work', async () => {
      await authority.admin('POST', '/api/apikeys', { clientId: 'rot', clientSecret: 'old-secret-1' });
      const rotated = await authority.admin('POST', '/api/apikeys/rot/rotate-secret', { clientSecret: 'new-secret-1', gracePeriod: 1 });
      assert.equal(rotated.status, 200);
      assert.equal(rotated.body.clientSecret, 'new-secret-1');
      assert.equal((await tokenFor('rot', 'new-secret-1')).status, 200);
      assert.equal((await tokenFor('rot', 'old-secret-1')).status, 200, 'old secret within the grace period');
      await authority.admin('POST', '/api/apikeys/rot/rotate-secret', { clientSecret: 'newer-secret', gracePeriod: 0 });
      assert.equal((await tokenFor('rot', 'new-secret-1')).status, 401, 'no grace period: the previous secret is refused at once');
      assert.equal((await tokenFor('rot', 'newer-secret')).status, 200);
    });

    it('concurrent changes of one key never undo each other (slow secret hash, then disable)', async () => {
      await authority.admin('POST', '/api/apikeys', { clientId: 'race', clientSecret: 'race-secret-1' });
      const slow = authority.admin('PATCH', '/api/apikeys/race', { clientSecret: 'race-secret-2' });
      await new Promise((done) => setTimeout(done, 5));
      const disable = authority.admin('PATCH', '/api/apikeys/race', { enabled: false });
      assert.equal((await slow).status, 200);
      assert.equal((await disable).status, 200);
      assert.equal((await authority.admin('GET', '/api/apikeys/race')).body.enabled, false, 'the disable stands');
      const [first, second] = await Promise.all([
        authority.admin('POST', '/api/apikeys/race/rotate-secret', { clientSecret: 'race-secret-3', gracePeriod: 1 }),
        authority.admin('POST', '/api/apikeys/race/rotate-secret', { clientSecret: 'race-secret-4', gracePeriod: 1 }),
      ]);
      assert.deepEqual([first.status, second.status], [200, 200]);
      await authority.admin('PATCH', '/api/apikeys/race', { enabled: true });
      // Two rotations in a row: the last secret and the one before it work, as for any rotation.
      const worked = await Promise.all(['race-secret-3', 'race-secret-4'].map(async (secret) => (await tokenFor('race', secret)).status));
      assert.deepEqual(worked, [200, 200]);
    });

    it('refuses metadata scopes that are not scope tokens', async () => {
      const response = await authority.admin('POST', '/api/apikeys', {
        clientId: 'bad-meta',
        clientSecret: 'bad-meta-secret',
        metadata: { scope: 'read caf\u00e9 a\u0001b' },
      });
      assert.equal(response.status, 400);
      assert.equal(response.body.details[0].path, 'metadata');
    });

    it('a key scoped by metadata gets only those scopes', async () => {
      await authority.admin('POST', '/api/apikeys', { clientId: 'meta', clientSecret: 'meta-secret', metadata: { scope: 'a,b' } });
      const token = await tokenFor('meta', 'meta-secret');
      assert.equal(token.body.scope, 'a b');
    });
  });

  describe('key pairs', () => {
    for (const algorithm of ['RS256', 'PS256', 'ES256', 'EdDSA'] as const) {
      it(`${algorithm}: generated, selected by jwt-sign-keypair metadata, verifiable from the JWKS`, async () => {
        const id = `kp-${algorithm.toLowerCase()}`;
        const created = await authority.admin('POST', '/api/keypairs', { id, algorithm });
        assert.equal(created.status, 201);
        assert.equal(JSON.stringify(created.body).includes('PRIVATE'), false, 'no private key in answers');
        await authority.admin('POST', '/api/apikeys', {
          clientId: `client-${id}`,
          clientSecret: 'a-secret-123',
          metadata: { 'jwt-sign-keypair': id },
        });
        const { body } = await tokenFor(`client-${id}`, 'a-secret-123');
        assert.deepEqual(decodeProtectedHeader(body.access_token), { typ: 'at+jwt', alg: algorithm, kid: id });
        const keySet = createLocalJWKSet((await jwks()) as never);
        const { payload } = await jwtVerify(body.access_token, keySet, {
          issuer: authority.config.issuer,
          audience: 'otoroshi',
          algorithms: [algorithm],
        });
        assert.equal(payload.client_id, `client-${id}`);
        const introspection = await authority.postForm(
          INTROSPECT_PATH,
          { token: body.access_token },
          { authorization: basic(`client-${id}`, 'a-secret-123') },
        );
        assert.equal(((await introspection.json()) as { active: boolean }).active, true);
      });
    }

    it('imports a PEM key pair and refuses keys that do not fit', async () => {
      const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      const imported = await authority.admin('POST', '/api/keypairs', { id: 'imported', algorithm: 'ES256', privateKey: pem });
      assert.equal(imported.status, 201);
      assert.equal((await authority.admin('POST', '/api/keypairs', { id: 'wrong-alg', algorithm: 'RS256', privateKey: pem })).status, 400);
      const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      assert.equal((await authority.admin('POST', '/api/keypairs', { id: 'small', algorithm: 'RS256', privateKey: small })).status, 400);
      assert.equal(
        (await authority.admin('POST', '/api/keypairs', { id: 'junk', algorithm: 'RS256', privateKey: 'not a pem' })).status,
        400,
      );
      const otherPublic = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
      assert.equal(
        (await authority.admin('POST', '/api/keypairs', { id: 'mismatch', algorithm: 'ES256', privateKey: pem, publicKey: otherPublic }))
          .status,
        400,
      );
      assert.equal((await authority.admin('POST', '/api/keypairs', { id: 'hs', algorithm: 'HS256' })).status, 400, 'no HMAC keys');
    });

    it('a retired key pair signs nothing more but stays in the JWKS; deletion is refused while in use', async () => {
      await authority.admin('POST', '/api/keypairs', { id: 'short-lived', algorithm: 'ES256' });
      await authority.admin('POST', '/api/apikeys', {
        clientId: 'uses-short',
        clientSecret: 'short-secret',
        metadata: { 'jwt-sign-keypair': 'short-lived' },
      });
      const before = await tokenFor('uses-short', 'short-secret');
      assert.equal(before.status, 200);
      const retired = await authority.admin('POST', '/api/keypairs/short-lived/retire');
      assert.equal(retired.status, 200);
      assert.equal(retired.body.status, 'retired');
      assert.ok(retired.body.versions[0].verifyUntil > Date.now() + 3_500_000, 'verifies until its last token expires');
      const after = await tokenFor('uses-short', 'short-secret');
      assert.equal(after.status, 400);
      assert.match(after.body.error_description, /short-lived/);
      assert.ok((await jwks()).keys.some((key) => key.kid === 'short-lived'));
      const introspection = await authority.postForm(
        INTROSPECT_PATH,
        { token: before.body.access_token },
        { authorization: basic('uses-short', 'short-secret') },
      );
      assert.equal(((await introspection.json()) as { active: boolean }).active, true);
      assert.equal((await authority.admin('DELETE', '/api/keypairs/short-lived')).status, 409);
      assert.equal((await authority.admin('DELETE', '/api/keypairs/otoroshi-jwt-signing')).status, 409, 'the default key pair');
      await authority.admin('DELETE', '/api/apikeys/uses-short');
      assert.equal((await authority.admin('DELETE', '/api/keypairs/short-lived')).status, 204);
      assert.equal(
        (await jwks()).keys.some((key) => key.kid === 'short-lived'),
        false,
        'deleted keys leave the JWKS at once',
      );
    });
  });
});

describe('domain and secure settings', () => {
  it('answers only on the configured domain', async () => {
    const authority = await startTestAuthority({ domain: '*.oto.tools' });
    try {
      const onDomain = await httpRequest(`${authority.url}${JWKS_PATH}`, { headers: { host: 'oauth.oto.tools:8080' } });
      assert.equal(onDomain.status, 200);
      const offDomain = await httpRequest(`${authority.url}${JWKS_PATH}`, { headers: { host: 'evil.example' } });
      assert.equal(offDomain.status, 404);
      assert.equal(JSON.parse(offDomain.body).error, 'not_found');
      const deeper = await httpRequest(`${authority.url}${JWKS_PATH}`, { headers: { host: 'a.b.oto.tools' } });
      assert.equal(deeper.status, 404, '* matches one label');
    } finally {
      await authority.stop();
    }
  });

  it('with trustProxy, still matches the Host header, not a client-sent X-Forwarded-Host', async () => {
    const authority = await startTestAuthority({ domain: 'oauth.oto.tools', trustProxy: 1 });
    try {
      const spoofed = await httpRequest(`${authority.url}${JWKS_PATH}`, {
        headers: { host: 'evil.example', 'x-forwarded-host': 'oauth.oto.tools' },
      });
      assert.equal(spoofed.status, 404);
      assert.equal((await httpRequest(`${authority.url}${JWKS_PATH}`, { headers: { host: 'oauth.oto.tools' } })).status, 200);
    } finally {
      await authority.stop();
    }
  });

  it('secure: refuses plain HTTP, accepts X-Forwarded-Proto only from a trusted proxy', async () => {
    const strict = await startTestAuthority({ secure: true });
    const trusting = await startTestAuthority({ secure: true, trustProxy: 1 });
    try {
      const plain = await fetch(`${strict.url}${JWKS_PATH}`);
      assert.equal(plain.status, 400);
      assert.deepEqual(await plain.json(), { error: 'invalid_request', error_description: 'use a secure channel' });
      assert.equal(
        (await fetch(`${strict.url}${JWKS_PATH}`, { headers: { 'x-forwarded-proto': 'https' } })).status,
        400,
        'header not trusted',
      );
      assert.equal((await fetch(`${trusting.url}${JWKS_PATH}`, { headers: { 'x-forwarded-proto': 'https' } })).status, 200);
    } finally {
      await strict.stop();
      await trusting.stop();
    }
  });
});
