import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import * as oauth from 'openid-client';
import { basic, INTROSPECT_PATH, JWKS_PATH, REVOKE_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { httpRequest } from './support/http';
import { freePort } from './support/ports';

/** The Otoroshi client-credentials tutorial, step by step, over real HTTP. */
describe('the Otoroshi tutorial against the token authority', () => {
  let authority: TestAuthority;
  let issuer: string;

  before(async () => {
    const port = await freePort();
    issuer = `http://127.0.0.1:${port}`;
    authority = await startTestAuthority({ issuer, http: { host: '127.0.0.1', port } });
  });
  after(() => authority.stop());

  it('exposes the default key pair in the JWKS, public members only', async () => {
    const response = await fetch(`${authority.url}${JWKS_PATH}`);
    assert.equal(response.status, 200);
    const jwks = (await response.json()) as { keys: Record<string, string>[] };
    const key = jwks.keys.find((jwk) => jwk.kid === 'otoroshi-jwt-signing');
    assert.ok(key, 'default key pair generated on first start');
    assert.equal(key.kty, 'RSA');
    assert.equal(key.alg, 'RS256');
    assert.equal(key.use, 'sig');
    for (const privateMember of ['d', 'p', 'q', 'dp', 'dq', 'qi']) assert.equal(key[privateMember], undefined);
  });

  it('creates my-id / my-secret through the admin API', async () => {
    const created = await authority.admin('POST', '/api/apikeys', {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      clientName: 'My app',
      scope: 'read write',
    });
    assert.equal(created.status, 201);
    assert.equal(created.body.clientId, 'my-id');
    assert.equal(created.body.clientSecret, 'my-secret', 'secret shown once, on creation');
    const fetched = await authority.admin('GET', '/api/apikeys/my-id');
    assert.equal(fetched.status, 200);
    assert.equal(fetched.body.clientSecret, undefined, 'the secret is never shown again');
    assert.equal(JSON.stringify(fetched.body).includes('secretHash'), false);
  });

  let token: string;
  it('issues a token for a JSON body, as in the tutorial', async () => {
    const response = await authority.postJson(TOKEN_PATH, {
      grant_type: 'client_credentials',
      client_id: 'my-id',
      client_secret: 'my-secret',
    });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('cache-control'), 'no-store');
    const body = (await response.json()) as Record<string, unknown>;
    assert.equal(body.token_type, 'Bearer');
    assert.equal(body.expires_in, 3600);
    assert.equal(body.scope, 'read write');
    token = body.access_token as string;
    const header = decodeProtectedHeader(token);
    assert.deepEqual(header, { typ: 'at+jwt', alg: 'RS256', kid: 'otoroshi-jwt-signing' });
  });

  it('issues a token for a form body and for HTTP Basic', async () => {
    const form = await authority.postForm(TOKEN_PATH, {
      grant_type: 'client_credentials',
      client_id: 'my-id',
      client_secret: 'my-secret',
      scope: 'read',
    });
    assert.equal(form.status, 200);
    assert.equal(((await form.json()) as { scope: string }).scope, 'read');
    const viaBasic = await authority.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials' },
      { authorization: basic('my-id', 'my-secret') },
    );
    assert.equal(viaBasic.status, 200);
  });

  it('introspects the token with the claims of RFC 9068 and Otoroshi extras', async () => {
    const response = await authority.postForm(INTROSPECT_PATH, { token }, { authorization: basic('my-id', 'my-secret') });
    assert.equal(response.status, 200);
    const body = (await response.json()) as Record<string, unknown>;
    assert.equal(body.active, true);
    assert.equal(body.client_id, 'my-id');
    assert.equal(body.sub, 'my-id');
    assert.equal(body.cid, 'my-id');
    assert.equal(body.iss, issuer);
    assert.equal(body.aud, 'otoroshi');
    assert.equal(body.clientName, 'My app');
    assert.equal(body.access_type, 'apikey');
    assert.equal(typeof body.jti, 'string');
    assert.equal((body.exp as number) - (body.iat as number), 3600);
  });

  it('revokes the token; introspection then says inactive', async () => {
    const revoked = await authority.postForm(
      REVOKE_PATH,
      { token, token_type_hint: 'access_token' },
      { authorization: basic('my-id', 'my-secret') },
    );
    assert.equal(revoked.status, 200);
    const response = await authority.postForm(INTROSPECT_PATH, { token }, { authorization: basic('my-id', 'my-secret') });
    assert.deepEqual(await response.json(), { active: false });
  });

  it('answers GET /health for load balancers and compose', async () => {
    const response = await fetch(`${authority.url}/health`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { status: 'ok', store: 'ok', defaultKeyPair: 'active', keyPairs: 1 });
  });

  it('serves RFC 8414 metadata built from the configured issuer, not the Host header', async () => {
    const response = await httpRequest(`${authority.url}/.well-known/oauth-authorization-server`, { headers: { host: 'evil.example' } });
    const metadata = JSON.parse(response.body) as Record<string, unknown>;
    assert.equal(metadata.issuer, issuer);
    assert.equal(metadata.token_endpoint, `${issuer}${TOKEN_PATH}`);
    assert.deepEqual(metadata.grant_types_supported, ['client_credentials']);
  });

  describe('driven by clients nobody here wrote', () => {
    let config: oauth.Configuration;
    before(async () => {
      config = await oauth.discovery(new URL(issuer), 'my-id', undefined, oauth.ClientSecretBasic('my-secret'), {
        algorithm: 'oauth2',
        execute: [oauth.allowInsecureRequests],
      });
    });

    it('openid-client: client credentials grant, introspection and revocation', async () => {
      const tokens = await oauth.clientCredentialsGrant(config, { scope: 'write' });
      assert.equal(tokens.token_type.toLowerCase(), 'bearer');
      assert.equal(tokens.scope, 'write');
      const introspection = await oauth.tokenIntrospection(config, tokens.access_token);
      assert.equal(introspection.active, true);
      assert.equal(introspection.client_id, 'my-id');
      await oauth.tokenRevocation(config, tokens.access_token);
      assert.equal((await oauth.tokenIntrospection(config, tokens.access_token)).active, false);
    });

    it('openid-client surfaces invalid_scope as an OAuth error', async () => {
      await assert.rejects(
        oauth.clientCredentialsGrant(config, { scope: 'admin' }),
        (error: { error?: string }) => error.error === 'invalid_scope',
      );
    });

    it('jose.createRemoteJWKSet verifies issued tokens, before and after a key rotation', async () => {
      const jwks = createRemoteJWKSet(new URL(`${issuer}${JWKS_PATH}`), { cooldownDuration: 0 });
      const verify = (jwt: string) => jwtVerify(jwt, jwks, { issuer, audience: 'otoroshi', typ: 'at+jwt' });
      const before = (await oauth.clientCredentialsGrant(config)).access_token;
      assert.equal((await verify(before)).payload.client_id, 'my-id');

      const rotated = await authority.admin('POST', '/api/keypairs/otoroshi-jwt-signing/rotate', {});
      assert.equal(rotated.status, 200);
      const after = (await oauth.clientCredentialsGrant(config)).access_token;
      const newKid = decodeProtectedHeader(after).kid;
      assert.notEqual(newKid, 'otoroshi-jwt-signing');
      assert.equal(newKid, rotated.body.activeKid);
      assert.equal((await verify(after)).payload.sub, 'my-id', 'the new key is fetched from the JWKS');
      assert.equal((await verify(before)).payload.sub, 'my-id', 'the retired key still verifies its live tokens');
      const introspection = await oauth.tokenIntrospection(config, before);
      assert.equal(introspection.active, true, 'tokens of a retired key stay active until they expire');
    });
  });
});
