import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { basic, INTROSPECT_PATH, startTestAuthority, type TestAuthority, TOKEN_PATH } from './support/authority';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { httpRequest } from './support/http';

/*
 * DPoP-bound tokens (RFC 9449) from a real authority over HTTP, with proofs made by jose; a real
 * ext-authz refuses them as bearer tokens (test/envoy-dpop.test.ts takes them with proofs, through Envoy).
 */

const SECRET = 'dpop-client-secret';
const json = async (response: Response): Promise<Record<string, any>> => (await response.json()) as Record<string, any>;

describe('DPoP at the token endpoint', () => {
  let authority: TestAuthority;
  let extAuthz: TestExtAuthz;
  let key: Awaited<ReturnType<typeof generateKeyPair>>;
  let jkt: string;
  let jwk: Awaited<ReturnType<typeof exportJWK>>;

  before(async () => {
    authority = await startTestAuthority();
    assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: 'dpop-client', clientSecret: SECRET })).status, 201);
    extAuthz = await startTestExtAuthz(authority);
    key = await generateKeyPair('ES256');
    jwk = await exportJWK(key.publicKey);
    jkt = await calculateJwkThumbprint(jwk);
  });
  after(async () => {
    await extAuthz?.close();
    await authority?.stop();
  });

  const proof = (claims: Record<string, unknown> = {}) =>
    new SignJWT({ htm: 'POST', htu: `${authority.url}${TOKEN_PATH}`, jti: crypto.randomUUID(), ...claims })
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
      .setIssuedAt()
      .sign(key.privateKey);
  const token = (headers: Record<string, string> = {}) =>
    authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials' }, { authorization: basic('dpop-client', SECRET), ...headers });

  it('issues token_type DPoP bound to the proof key (cnf.jkt); introspection shows the binding; the metadata lists the algorithms', async () => {
    const answer = await token({ dpop: await proof() });
    assert.equal(answer.status, 200);
    const body = await json(answer);
    assert.equal(body.token_type, 'DPoP');
    assert.deepEqual(decodeJwt(body.access_token).cnf, { jkt });
    const introspected = await json(
      await authority.postForm(INTROSPECT_PATH, { token: body.access_token }, { authorization: basic('dpop-client', SECRET) }),
    );
    assert.equal(introspected.active, true);
    assert.equal(introspected.token_type, 'DPoP');
    assert.deepEqual(introspected.cnf, { jkt });
    const metadata = await json(await fetch(`${authority.url}/.well-known/oauth-authorization-server`));
    assert.deepEqual(metadata.dpop_signing_alg_values_supported, ['ES256', 'RS256', 'PS256', 'EdDSA']);
    // Without a proof, as before: a bearer token, no cnf.
    const bearer = await json(await token());
    assert.equal(bearer.token_type, 'Bearer');
    assert.equal(decodeJwt(bearer.access_token).cnf, undefined);
  });

  it("takes htu as the issuer publishes the endpoint too (a proxy in front), and refuses a replay, another endpoint's htu, or a bad proof with 400 invalid_dpop_proof and no token", async () => {
    const issuerUrl = `${authority.config.issuer.replace(/\/$/, '')}${TOKEN_PATH}`;
    assert.equal((await token({ dpop: await proof({ htu: issuerUrl }) })).status, 200);
    const once = await proof();
    assert.equal((await token({ dpop: once })).status, 200);
    for (const [name, dpop, message] of [
      ['replayed', once, /already used/],
      ['introspection htu', await proof({ htu: `${authority.url}${INTROSPECT_PATH}` }), /htu must be/],
      ['GET', await proof({ htm: 'GET' }), /htm must be POST/],
      ['garbage', 'not-a-proof', /not a compact JWS/],
    ] as const) {
      const answer = await token({ dpop });
      assert.equal(answer.status, 400, name);
      assert.equal(answer.headers.get('cache-control'), 'no-store');
      const body = await json(answer);
      assert.equal(body.error, 'invalid_dpop_proof', name);
      assert.match(body.error_description, message, name);
      assert.equal(body.access_token, undefined);
    }
    // Wrong client credentials are still invalid_client first (counted by the failure limits).
    const wrong = await authority.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials' },
      { authorization: basic('dpop-client', 'wrong'), dpop: await proof() },
    );
    assert.equal(wrong.status, 401);
    assert.equal((await json(wrong)).error, 'invalid_client');
  });

  it('ext-authz refuses a DPoP-bound token presented as a bearer token, and still allows the bearer token of the same client', async () => {
    const bound = (await json(await token({ dpop: await proof() }))).access_token;
    const bearer = (await json(await token())).access_token;
    const check = (accessToken: string) =>
      httpRequest(`${extAuthz.url}/authz/open/`, { headers: { authorization: `Bearer ${accessToken}` } });
    const denied = await check(bound);
    assert.equal(denied.status, 401);
    assert.deepEqual(JSON.parse(denied.body), { 'Otoroshi-Error': 'Token bound to a DPoP key: not accepted here' });
    assert.equal((await check(bound)).status, 401, 'and again (nothing cached as allowed)');
    assert.equal((await check(bearer)).status, 200);
  });

  it('tokenBinding dpop (per API key): no token without a proof (400 invalid_dpop_proof); ext-authz refuses its bearer tokens issued before the switch', async () => {
    assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: 'dpop-only', clientSecret: SECRET })).status, 201);
    const issue = (headers: Record<string, string> = {}) =>
      authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials' }, { authorization: basic('dpop-only', SECRET), ...headers });
    const earlier = (await json(await issue())).access_token as string;
    const check = () => httpRequest(`${extAuthz.url}/authz/open/`, { headers: { authorization: `Bearer ${earlier}` } });
    assert.equal((await check()).status, 200, 'a bearer key (the default)');
    const switched = await authority.admin('PATCH', '/api/apikeys/dpop-only', { tokenBinding: 'dpop' });
    assert.equal(switched.status, 200, JSON.stringify(switched.body));
    assert.equal(switched.body.tokenBinding, 'dpop');
    const refused = await issue();
    assert.equal(refused.status, 400);
    assert.deepEqual(await json(refused), {
      error: 'invalid_dpop_proof',
      error_description: "this client's tokens must be DPoP-bound (tokenBinding dpop): send a DPoP proof",
    });
    const bound = await issue({ dpop: await proof() });
    assert.equal(bound.status, 200);
    assert.equal((await json(bound)).token_type, 'DPoP');
    // ext-authz learns the binding from the data plane: the token issued before is refused from then on.
    await extAuthz.waitFor(() => extAuthz.replica.apiKey('dpop-only')?.tokenBinding === 'dpop');
    const denied = await check();
    assert.equal(denied.status, 401);
    assert.deepEqual(JSON.parse(denied.body), { 'Otoroshi-Error': 'ApiKey requires DPoP-bound tokens' });
    assert.match(String(denied.headers['www-authenticate']), /^DPoP realm="open", .*error="invalid_token"/);
    // Back to bearer (null removes the setting): tokens without proofs again.
    assert.equal((await authority.admin('PATCH', '/api/apikeys/dpop-only', { tokenBinding: null })).status, 200);
    assert.equal((await json(await issue())).token_type, 'Bearer');
    await extAuthz.waitFor(() => extAuthz.replica.apiKey('dpop-only')?.tokenBinding === undefined);
    assert.equal((await check()).status, 200);
  });
});
