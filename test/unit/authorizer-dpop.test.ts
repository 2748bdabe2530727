import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { Authorizer, type AuthorizerGuards, type AuthzRequest } from '../../libs/authz/authorizer';
import { DpopVerifier } from '../../libs/core/dpop';
import { DpopNonces } from '../../libs/core/dpop-nonce';
import type { Decision } from '../../libs/authz/decision';
import { deserializeUpdate, serializeUpdate } from '../../libs/grpc/watch-codec';
import {
  accessClaims,
  apiKey,
  AUDIENCE,
  authzConfig,
  ISSUER,
  replicaWith,
  signAccessToken,
  TestClock,
  testKeyPair,
} from './support/fixtures';

/*
 * DPoP-bound tokens at ext-authz (RFC 9449 §7): the Authorizer on an in-memory replica, proofs
 * made by jose (an independent implementation) on a hand-moved clock.
 */

const pair = testKeyPair('kp-1');
const URL_ = 'https://api.example/v1/things';

async function setup(guards: AuthorizerGuards = {}) {
  const clock = new TestClock();
  const replica = replicaWith([pair], [apiKey('app', { scopes: ['read'] })], clock.now);
  const authorizer = new Authorizer(authzConfig(), replica, clock.now, guards);
  const key = await generateKeyPair('ES256');
  const jwk = await exportJWK(key.publicKey);
  const jkt = await calculateJwkThumbprint(jwk);
  const other = await generateKeyPair('ES256');
  const token = await signAccessToken(pair, accessClaims('app', clock.seconds, { cnf: { jkt } }));
  const ath = (value: string) => createHash('sha256').update(value).digest('base64url');
  const proof = (claims: Record<string, unknown> = {}, signer = key.privateKey, headerJwk = jwk) =>
    new SignJWT({ htm: 'GET', htu: URL_, jti: crypto.randomUUID(), ath: ath(token), ...claims })
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: headerJwk })
      .setIssuedAt((claims.iat as number | undefined) ?? clock.seconds)
      .sign(signer);
  const check = (headers: AuthzRequest['headers'], request: Partial<AuthzRequest> = {}): Promise<Decision> =>
    authorizer.check({ policy: 'api', headers, method: 'GET', url: `${URL_}?page=2`, ...request });
  const dpop = async (value: string | undefined, request: Partial<AuthzRequest> = {}, accessToken = token) =>
    check({ authorization: `DPoP ${accessToken}`, dpop: value }, request);
  return { clock, token, jwk, other, proof, check, dpop, ath, authorizer };
}

const reason = (decision: Decision) => (decision.allowed ? 'allowed' : decision.reason);

describe('Authorizer: DPoP-bound tokens (RFC 9449 §7)', () => {
  it('allows a bound token with the DPoP scheme and a proof of its key for this method and URL (query ignored)', async () => {
    const { dpop, proof } = await setup();
    const decision = await dpop(await proof());
    assert.equal(decision.allowed, true);
    assert.equal(decision.allowed && decision.clientId, 'app');
    // Scheme names are case-insensitive; htu scheme and host too.
    assert.equal(reason(await dpop(await proof({ htu: 'HTTPS://API.example/v1/things' }))), 'allowed');
  });

  it('refuses every wrong proof with 401 and WWW-Authenticate: DPoP error="invalid_dpop_proof"', async () => {
    const { clock, dpop, proof, other, jwk } = await setup();
    const once = await proof();
    assert.equal(reason(await dpop(once)), 'allowed');
    const otherJwk = await exportJWK(other.publicKey);
    const cases: [string, string | undefined, Partial<AuthzRequest>?][] = [
      ['replayed', once],
      ['no proof', undefined],
      ['garbage', 'not-a-proof'],
      ['two proofs', `${await proof()},${await proof()}`],
      ['wrong htm', await proof({ htm: 'POST' })],
      ['wrong htu path', await proof({ htu: 'https://api.example/v1/other' })],
      ['wrong htu host', await proof({ htu: 'https://evil.example/v1/things' })],
      ['no ath', await proof({ ath: undefined })],
      ['ath of another token', await proof({ ath: 'x'.repeat(43) })],
      ['too old', await proof({ iat: clock.seconds - 120 })],
      ['another key (its own jwk, valid signature)', await proof({}, other.privateKey, otherJwk)],
      ['signed by another key than its jwk', await proof({}, other.privateKey, jwk)],
      ['no method or URL from the transport', await proof(), { method: undefined, url: undefined }],
    ];
    for (const [name, value, request] of cases) {
      const decision = await dpop(value, request);
      assert.equal(reason(decision), 'invalid_dpop_proof', name);
      assert.equal(decision.allowed || decision.status, 401, name);
      assert.match(
        (!decision.allowed && decision.wwwAuthenticate) || '',
        /^DPoP realm="api", algs="ES256 RS256 PS256 EdDSA", error="invalid_dpop_proof"$/,
        name,
      );
    }
  });

  it('keeps the binding both ways: a bound token as Bearer is refused, an unbound token as DPoP is invalid_token', async () => {
    const { clock, check, dpop, proof, token } = await setup();
    const asBearer = await check({ authorization: `Bearer ${token}`, dpop: await proof() });
    assert.equal(reason(asBearer), 'sender_constrained');
    const unbound = await signAccessToken(pair, accessClaims('app', clock.seconds));
    const decision = await dpop(await proof(), {}, unbound);
    assert.equal(reason(decision), 'not_dpop_bound');
    assert.match((!decision.allowed && decision.wwwAuthenticate) || '', /error="invalid_token"/);
    // A certificate-bound token (RFC 8705) needs its certificate first; a binding we do not know is never accepted.
    const x5t = await signAccessToken(pair, accessClaims('app', clock.seconds, { cnf: { 'x5t#S256': 'abc' } }));
    assert.equal(reason(await dpop(await proof(), {}, x5t)), 'wrong_certificate');
    const other = await signAccessToken(pair, accessClaims('app', clock.seconds, { cnf: { jwk: {} } }));
    assert.equal(reason(await dpop(await proof(), {}, other)), 'sender_constrained');
    // A bad token under the DPoP scheme is invalid_token, before any proof is looked at.
    assert.equal(reason(await dpop(await proof(), {}, 'not.a.jwt!')), 'malformed_credential');
  });

  it('checks the proof on every call, also once the token is cached as verified', async () => {
    const { dpop, proof } = await setup();
    assert.equal(reason(await dpop(await proof())), 'allowed');
    assert.equal(reason(await dpop(await proof({ htm: 'DELETE' }))), 'invalid_dpop_proof');
    assert.equal(reason(await dpop(undefined)), 'invalid_dpop_proof');
    assert.equal(reason(await dpop(await proof())), 'allowed');
  });

  it('with nonces required (RFC 9449 §9): 401 use_dpop_nonce with DPoP-Nonce, then the nonce passes; the previous one passes with the current one in the answer', async () => {
    const nonces = new DpopNonces(Buffer.alloc(32, 9), 120, 'resource');
    const { clock, dpop, proof } = await setup({ dpop: new DpopVerifier({ nonces }) });
    const asked = await dpop(await proof());
    assert.equal(reason(asked), 'use_dpop_nonce');
    assert.ok(!asked.allowed);
    assert.equal(asked.status, 401);
    assert.equal(
      asked.wwwAuthenticate,
      'DPoP realm="api", algs="ES256 RS256 PS256 EdDSA", error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"',
    );
    assert.equal(asked.dpopNonce, nonces.issue(clock.now()));
    const allowed = await dpop(await proof({ nonce: asked.dpopNonce }));
    assert.equal(reason(allowed), 'allowed');
    assert.deepEqual(allowed.allowed && allowed.responseHeaders, {});
    clock.advance(120_000);
    const stale = await dpop(await proof({ nonce: asked.dpopNonce }));
    assert.equal(reason(stale), 'allowed');
    assert.deepEqual(stale.allowed && stale.responseHeaders, { 'DPoP-Nonce': nonces.issue(clock.now()) });
    clock.advance(120_000);
    assert.equal(reason(await dpop(await proof({ nonce: asked.dpopNonce }))), 'use_dpop_nonce');
  });

  it('with a shared (asynchronous) jti memory, a proof used at one authorizer is refused at another', async () => {
    const seen = new Set<string>();
    const replays = { useOnce: async (id: string) => (seen.has(id) ? false : (seen.add(id), true)) };
    const one = await setup({ dpop: new DpopVerifier({ replays }) });
    const replica = replicaWith([pair], [apiKey('app', { scopes: ['read'] })], one.clock.now);
    const other = new Authorizer(authzConfig(), replica, one.clock.now, { dpop: new DpopVerifier({ replays }) });
    const once = await one.proof();
    const first = one.authorizer.decide({
      policy: 'api',
      headers: { authorization: `DPoP ${one.token}`, dpop: once },
      method: 'GET',
      url: URL_,
    });
    assert.ok(first instanceof Promise, 'asynchronous with a shared memory');
    assert.equal(reason(await first), 'allowed');
    const replayed = await other.check({
      policy: 'api',
      headers: { authorization: `DPoP ${one.token}`, dpop: once },
      method: 'GET',
      url: URL_,
    });
    assert.equal(reason(replayed), 'invalid_dpop_proof');
  });

  it("a key whose tokenBinding is dpop: its bearer tokens are refused with a DPoP challenge, its bound tokens with proofs pass; the binding survives the data plane's wire", async () => {
    const clock = new TestClock();
    // Through DeltaWatch's bytes, as ext-authz gets it from the authority.
    const update = deserializeUpdate(
      serializeUpdate({
        version: 's:1:a',
        baseVersion: '',
        reset: true,
        more: false,
        issuer: ISSUER,
        audience: AUDIENCE,
        keyPairs: [],
        removedKeyPairs: [],
        apiKeys: [apiKey('strict', { scopes: ['read'], tokenBinding: 'dpop' }), apiKey('plain', { scopes: ['read'] })],
        removedApiKeys: [],
        revokedTokens: [],
        generatedAt: clock.now(),
      }),
    );
    assert.deepEqual(
      update.apiKeys.map((key) => key.tokenBinding),
      ['dpop', undefined],
    );
    const replica = replicaWith([pair], update.apiKeys, clock.now);
    const authorizer = new Authorizer(authzConfig(), replica, clock.now);
    const bearer = await signAccessToken(pair, accessClaims('strict', clock.seconds));
    const refused = await authorizer.check({ policy: 'api', headers: { authorization: `Bearer ${bearer}` }, method: 'GET', url: URL_ });
    assert.equal(reason(refused), 'dpop_required');
    assert.equal(
      !refused.allowed && refused.wwwAuthenticate,
      'DPoP realm="api", algs="ES256 RS256 PS256 EdDSA", error="invalid_token", error_description="DPoP-bound token required"',
    );
    const plain = await signAccessToken(pair, accessClaims('plain', clock.seconds));
    assert.equal(reason(await authorizer.check({ policy: 'api', headers: { authorization: `Bearer ${plain}` } })), 'allowed');
    const key = await generateKeyPair('ES256');
    const jwk = await exportJWK(key.publicKey);
    const bound = await signAccessToken(pair, accessClaims('strict', clock.seconds, { cnf: { jkt: await calculateJwkThumbprint(jwk) } }));
    const proof = await new SignJWT({
      htm: 'GET',
      htu: URL_,
      jti: crypto.randomUUID(),
      ath: createHash('sha256').update(bound).digest('base64url'),
    })
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
      .setIssuedAt(clock.seconds)
      .sign(key.privateKey);
    const allowed = await authorizer.check({
      policy: 'api',
      headers: { authorization: `DPoP ${bound}`, dpop: proof },
      method: 'GET',
      url: URL_,
    });
    assert.equal(reason(allowed), 'allowed');
  });
});
