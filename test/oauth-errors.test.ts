import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { SignJWT, UnsecuredJWT } from 'jose';
import { httpRequest } from './support/http';
import { accessTokenClaims, signWithAuthorityKey } from './support/tokens';
import { basic, INTROSPECT_PATH, REVOKE_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';

const GOOD = { grant_type: 'client_credentials', client_id: 'app', client_secret: 'app-secret' };

async function oauthError(response: Response, status: number, error: string): Promise<Record<string, string>> {
  assert.equal(response.status, status, `status for ${error}`);
  assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(response.headers.get('cache-control'), 'no-store');
  const body = (await response.json()) as Record<string, string>;
  assert.equal(body.error, error);
  assert.equal(typeof body.error_description, 'string');
  return body;
}

describe('RFC 6749 §5.2 errors and hostile input on the token endpoints', () => {
  let authority: TestAuthority;
  let issuedToken: string;

  before(async () => {
    authority = await startTestAuthority({ allowedAudiences: ['billing'] });
    assert.equal(
      (await authority.admin('POST', '/api/apikeys', { clientId: 'app', clientSecret: 'app-secret', scope: 'read write' })).status,
      201,
    );
    assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: 'other', clientSecret: 'other-secret' })).status, 201);
    issuedToken = ((await (await authority.postForm(TOKEN_PATH, GOOD)).json()) as { access_token: string }).access_token;
  });
  after(() => authority.stop());

  it("a path the router cannot decode gets the OAuth2 error shape, not the framework's", async () => {
    for (const path of ['/api/apikeys/%FF', '/api/apikeys/%C3%28/quotas', '/.well-known/otoroshi/oauth/%E0%A4%A']) {
      const answer = await fetch(`${authority.url}${path}`, { headers: { authorization: 'Bearer test-admin-token-0123456789' } });
      assert.equal(answer.status, 400, path);
      assert.deepEqual(await answer.json(), {
        error: 'invalid_request',
        error_description: 'the URL path is not valid percent-encoded UTF-8',
      });
    }
  });

  describe('token endpoint errors', () => {
    const cases: { name: string; form: Record<string, string>; headers?: Record<string, string>; status: number; error: string }[] = [
      { name: 'missing grant_type', form: { client_id: 'app', client_secret: 'app-secret' }, status: 400, error: 'invalid_request' },
      { name: 'password grant', form: { ...GOOD, grant_type: 'password' }, status: 400, error: 'unsupported_grant_type' },
      {
        name: 'authorization_code grant',
        form: { ...GOOD, grant_type: 'authorization_code' },
        status: 400,
        error: 'unsupported_grant_type',
      },
      { name: 'no client authentication', form: { grant_type: 'client_credentials' }, status: 401, error: 'invalid_client' },
      {
        name: 'client_id without secret',
        form: { grant_type: 'client_credentials', client_id: 'app' },
        status: 401,
        error: 'invalid_client',
      },
      { name: 'wrong secret in the body', form: { ...GOOD, client_secret: 'nope-nope' }, status: 401, error: 'invalid_client' },
      { name: 'unknown client id', form: { ...GOOD, client_id: 'ghost' }, status: 401, error: 'invalid_client' },
      {
        name: 'Basic and body secret together',
        form: GOOD,
        headers: { authorization: basic('app', 'app-secret') },
        status: 400,
        error: 'invalid_request',
      },
      {
        name: 'Basic with a different body client_id',
        form: { grant_type: 'client_credentials', client_id: 'other' },
        headers: { authorization: basic('app', 'app-secret') },
        status: 400,
        error: 'invalid_request',
      },
      {
        name: 'malformed Basic header',
        form: { grant_type: 'client_credentials' },
        headers: { authorization: 'Basic ***' },
        status: 400,
        error: 'invalid_request',
      },
      {
        name: 'Basic without a colon',
        form: { grant_type: 'client_credentials' },
        headers: { authorization: `Basic ${Buffer.from('app').toString('base64')}` },
        status: 400,
        error: 'invalid_request',
      },
      { name: 'scope not granted', form: { ...GOOD, scope: 'read admin' }, status: 400, error: 'invalid_scope' },
      { name: 'malformed scope', form: { ...GOOD, scope: 'read "quoted"' }, status: 400, error: 'invalid_scope' },
      { name: 'empty scope', form: { ...GOOD, scope: ' ' }, status: 400, error: 'invalid_scope' },
      { name: 'audience not allowed', form: { ...GOOD, audience: 'payroll' }, status: 400, error: 'invalid_target' },
      {
        name: 'audience and resource disagree',
        form: { ...GOOD, audience: 'billing', resource: 'otoroshi' },
        status: 400,
        error: 'invalid_request',
      },
      { name: 'control characters in client_id', form: { ...GOOD, client_id: 'app\u0000' }, status: 400, error: 'invalid_request' },
      { name: 'unicode client_id', form: { ...GOOD, client_id: 'ａｐｐ-ïd-😀' }, status: 401, error: 'invalid_client' },
      { name: 'a 10 kB client_id', form: { ...GOOD, client_id: 'x'.repeat(10_000) }, status: 400, error: 'invalid_request' },
    ];
    for (const testCase of cases) {
      it(`${testCase.name} → ${testCase.status} ${testCase.error}`, async () => {
        await oauthError(await authority.postForm(TOKEN_PATH, testCase.form, testCase.headers), testCase.status, testCase.error);
      });
    }

    it('wrong secret by Basic answers 401 with WWW-Authenticate: Basic', async () => {
      const response = await authority.postForm(
        TOKEN_PATH,
        { grant_type: 'client_credentials' },
        { authorization: basic('app', 'wrong-secret') },
      );
      await oauthError(response, 401, 'invalid_client');
      assert.match(response.headers.get('www-authenticate') ?? '', /^Basic realm=/);
    });

    it('a repeated parameter is refused (RFC 6749 §3.2)', async () => {
      const response = await fetch(`${authority.url}${TOKEN_PATH}`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'grant_type=client_credentials&client_id=app&client_secret=app-secret&scope=read&scope=write',
      });
      await oauthError(response, 400, 'invalid_request');
    });

    it('allowed audience and RFC 8707 resource are honoured', async () => {
      const response = await authority.postForm(TOKEN_PATH, { ...GOOD, resource: 'billing' });
      assert.equal(response.status, 200);
      const { access_token } = (await response.json()) as { access_token: string };
      assert.equal(JSON.parse(Buffer.from(access_token.split('.')[1], 'base64url').toString()).aud, 'billing');
    });

    it('a disabled or expired API key cannot get a token', async () => {
      await authority.admin('POST', '/api/apikeys', { clientId: 'off', clientSecret: 'off-secret', enabled: false });
      await authority.admin('POST', '/api/apikeys', { clientId: 'old', clientSecret: 'old-secret', validUntil: '2020-01-01T00:00:00Z' });
      await oauthError(
        await authority.postForm(TOKEN_PATH, { ...GOOD, client_id: 'off', client_secret: 'off-secret' }),
        401,
        'invalid_client',
      );
      await oauthError(
        await authority.postForm(TOKEN_PATH, { ...GOOD, client_id: 'old', client_secret: 'old-secret' }),
        401,
        'invalid_client',
      );
    });
  });

  describe('no client id enumeration', () => {
    async function answer(clientId: string, secret: string) {
      const response = await authority.postForm(
        TOKEN_PATH,
        { grant_type: 'client_credentials' },
        { authorization: basic(clientId, secret) },
      );
      const headers = Object.fromEntries(
        [...response.headers].filter(([name]) => !['date', 'content-length', 'keep-alive', 'connection'].includes(name)),
      );
      return { status: response.status, headers, body: await response.text() };
    }

    it('an unknown id and a wrong secret get the same answer', async () => {
      const unknown = await answer('ghost', 'app-secreT');
      const wrong = await answer('app', 'app-secreT');
      assert.deepEqual(unknown, wrong);
    });

    // That both take the same work is checked without a clock: test/unit/secret-hash.test.ts counts it.
  });

  describe('bodies that are not OAuth2 requests', () => {
    const raw = (contentType: string | undefined, body: string) =>
      fetch(`${authority.url}${TOKEN_PATH}`, { method: 'POST', headers: contentType ? { 'content-type': contentType } : {}, body });

    it('malformed JSON → 400 invalid_request', async () => {
      await oauthError(await raw('application/json', '{"grant_type": "client_credentials",'), 400, 'invalid_request');
    });
    it('JSON that is not an object → 400', async () => {
      await oauthError(await raw('application/json', '["client_credentials"]'), 400, 'invalid_request');
      await oauthError(await raw('application/json', '"client_credentials"'), 400, 'invalid_request');
      await oauthError(await raw('application/json', 'null'), 400, 'invalid_request');
    });
    it('JSON with a non-string value → 400', async () => {
      await oauthError(await raw('application/json', JSON.stringify({ ...GOOD, client_secret: 42 })), 400, 'invalid_request');
      await oauthError(await raw('application/json', JSON.stringify({ ...GOOD, scope: ['read'] })), 400, 'invalid_request');
    });
    it('JSON __proto__ pollution attempt → 400', async () => {
      await oauthError(
        await raw('application/json', '{"__proto__": {"admin": true}, "grant_type": "client_credentials"}'),
        400,
        'invalid_request',
      );
    });
    it('wrong content type → 400 invalid_request', async () => {
      await oauthError(await raw('text/plain', 'grant_type=client_credentials'), 400, 'invalid_request');
      await oauthError(await raw('application/xml', '<grant_type/>'), 400, 'invalid_request');
      await oauthError(await raw('multipart/form-data; boundary=x', '--x--'), 400, 'invalid_request');
    });
    it('empty body → 400 invalid_request', async () => {
      await oauthError(await raw(undefined, ''), 400, 'invalid_request');
      await oauthError(await raw('application/x-www-form-urlencoded', ''), 400, 'invalid_request');
      await oauthError(await raw('application/json', ''), 400, 'invalid_request');
    });
    it('a 10 MB body → 413 with a JSON error, and the server keeps serving', async () => {
      const status = await httpRequest(`${authority.url}${TOKEN_PATH}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': 10 * 1024 * 1024 },
        body: Buffer.alloc(10 * 1024 * 1024, 0x20),
      });
      assert.equal(status.status, 413);
      assert.equal(JSON.parse(status.body).error, 'invalid_request');
      assert.equal((await authority.postForm(TOKEN_PATH, GOOD)).status, 200);
    });
    it('unknown paths under the Otoroshi prefix → 404 JSON', async () => {
      const response = await fetch(`${authority.url}/.well-known/otoroshi/oauth/authorize`);
      await oauthError(response, 404, 'not_found');
    });
  });

  describe('introspection says active:false for anything that is not a live token of ours', () => {
    const introspect = async (token: string) => {
      const response = await authority.postForm(INTROSPECT_PATH, { token }, { authorization: basic('app', 'app-secret') });
      assert.equal(response.status, 200);
      return (await response.json()) as { active: boolean };
    };
    const claims = () => accessTokenClaims(authority, 'app');
    const signWithOurKey = (payload: Record<string, unknown>, header: Record<string, unknown> = {}) =>
      signWithAuthorityKey(authority, payload, header);

    it('a live token is active (control)', async () => {
      assert.equal((await introspect(issuedToken)).active, true);
      assert.equal((await introspect(await signWithOurKey(claims()))).active, true);
    });
    it('not a JWT at all', async () => {
      for (const token of ['hello', 'a.b.c', '...', 'e30.e30.', `${'A'.repeat(5000)}`, 'eyJhbGciOiJub25lIn0.😀.x']) {
        assert.deepEqual(await introspect(token), { active: false });
      }
    });
    it('signed by another key under our kid', async () => {
      const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const forged = await new SignJWT(claims())
        .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: 'otoroshi-jwt-signing' })
        .sign(privateKey);
      assert.deepEqual(await introspect(forged), { active: false });
    });
    it('alg: none', async () => {
      const unsecured = new UnsecuredJWT(claims()).encode();
      const [, payload] = unsecured.split('.');
      const withKid = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt', kid: 'otoroshi-jwt-signing' })).toString('base64url')}.${payload}.`;
      assert.deepEqual(await introspect(unsecured), { active: false });
      assert.deepEqual(await introspect(withKid), { active: false });
    });
    it('HS256 keyed with our public key (algorithm confusion)', async () => {
      const keyPair = await authority.authority.store.keyPairs.get('otoroshi-jwt-signing');
      const secret = new TextEncoder().encode(keyPair!.versions[0].publicKeyPem);
      const confused = await new SignJWT(claims())
        .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: 'otoroshi-jwt-signing' })
        .sign(secret);
      assert.deepEqual(await introspect(confused), { active: false });
    });
    it('expired, not yet valid, wrong issuer, wrong typ, critical header', async () => {
      const now = Math.floor(Date.now() / 1000);
      assert.deepEqual(await introspect(await signWithOurKey({ ...claims(), iat: now - 7200, nbf: now - 7200, exp: now - 3600 })), {
        active: false,
      });
      assert.deepEqual(await introspect(await signWithOurKey({ ...claims(), nbf: now + 3600, exp: now + 7200 })), { active: false });
      assert.deepEqual(await introspect(await signWithOurKey({ ...claims(), iss: 'https://evil.example' })), { active: false });
      assert.deepEqual(await introspect(await signWithOurKey(claims(), { typ: 'JWT' })), { active: false });
      assert.deepEqual(await introspect(await signWithOurKey(claims(), { crit: ['x-ext'], 'x-ext': true })), { active: false });
    });
    it('a token of a disabled, then deleted, API key', async () => {
      await authority.admin('POST', '/api/apikeys', { clientId: 'temp', clientSecret: 'temp-secret' });
      const token = (
        (await (await authority.postForm(TOKEN_PATH, { ...GOOD, client_id: 'temp', client_secret: 'temp-secret' })).json()) as {
          access_token: string;
        }
      ).access_token;
      assert.equal((await introspect(token)).active, true);
      await authority.admin('PATCH', '/api/apikeys/temp', { enabled: false });
      assert.deepEqual(await introspect(token), { active: false });
      await authority.admin('PATCH', '/api/apikeys/temp', { enabled: true });
      assert.equal((await introspect(token)).active, true);
      assert.equal((await authority.admin('DELETE', '/api/apikeys/temp')).status, 204);
      assert.deepEqual(await introspect(token), { active: false });
    });
    it('missing token parameter → 400 invalid_request; no caller authentication → 401', async () => {
      await oauthError(
        await authority.postForm(INTROSPECT_PATH, {}, { authorization: basic('app', 'app-secret') }),
        400,
        'invalid_request',
      );
      await oauthError(await authority.postForm(INTROSPECT_PATH, { token: issuedToken }), 401, 'invalid_client');
    });
  });

  describe('revocation (RFC 7009)', () => {
    it("needs client authentication, answers 200 for junk, refuses other clients' tokens", async () => {
      await oauthError(await authority.postForm(REVOKE_PATH, { token: issuedToken }), 401, 'invalid_client');
      assert.equal(
        (await authority.postForm(REVOKE_PATH, { token: 'not-a-token' }, { authorization: basic('app', 'app-secret') })).status,
        200,
      );
      await oauthError(
        await authority.postForm(REVOKE_PATH, { token: issuedToken }, { authorization: basic('other', 'other-secret') }),
        400,
        'invalid_request',
      );
      const stillActive = await authority.postForm(INTROSPECT_PATH, { token: issuedToken }, { authorization: basic('app', 'app-secret') });
      assert.equal(((await stillActive.json()) as { active: boolean }).active, true);
    });
  });
});
