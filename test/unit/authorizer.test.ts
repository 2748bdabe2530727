import assert from 'node:assert/strict';
import { createHmac, sign } from 'node:crypto';
import { describe, it } from 'node:test';
import { Authorizer, type AuthzRequest } from '../../libs/authz/authorizer';
import type { Decision } from '../../libs/authz/decision';
import { AuthorityReplica } from '../../libs/authz/replica';
import { hashSecret } from '../../libs/core/crypto/secret-hash';
import { MemoryQuotaCounters, QuotaEnforcer } from '../../libs/quotas/quotas';
import {
  AUDIENCE,
  accessClaims,
  apiKey,
  authzConfig,
  replicaWith,
  signAccessToken,
  TestClock,
  testKeyPair,
  update,
} from './support/fixtures';

/* ext-authz's decision pipeline (libs/authz/authorizer.ts) on an in-memory replica and a hand-moved clock. */

const pair = testKeyPair('kp-1');
const rsa = testKeyPair('kp-rsa', 'RS256');
const stranger = testKeyPair('kp-1'); // same kid, another key: not ours
const LONG_SECRET = 's'.repeat(40); // 32 characters or more: the sha256 scheme, no scrypt

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
/** A token written by hand, signed by `signer` whatever the header claims. */
function handMade(header: Record<string, unknown>, claims: Record<string, unknown>, signer = pair): string {
  const input = `${b64(header)}.${b64(claims)}`;
  const digest = signer.algorithm === 'EdDSA' ? null : 'sha256';
  return `${input}.${sign(digest, Buffer.from(input), signer.privateKey).toString('base64url')}`;
}

async function setup(policies?: Record<string, unknown>, settings?: Record<string, unknown>) {
  const clock = new TestClock();
  const replica = replicaWith(
    [pair, rsa],
    [
      apiKey('app', { scopes: ['read', 'write'], authorizedEntities: ['route_foo'], secrets: [{ hash: await hashSecret(LONG_SECRET) }] }),
      apiKey('off', { enabled: false, secrets: [{ hash: await hashSecret(LONG_SECRET) }] }),
      apiKey('old', { validUntil: clock.ms - 1 }),
      apiKey('id-only', { allowClientIdOnly: true }),
      apiKey('plain'),
    ],
    clock.now,
  );
  const authorizer = new Authorizer(authzConfig(policies, settings), replica, clock.now);
  const check = (headers: AuthzRequest['headers'], policy = 'api'): Promise<Decision> => authorizer.check({ policy, headers });
  const bearer = (token: string, policy?: string) => check({ authorization: `Bearer ${token}` }, policy);
  return { clock, replica, authorizer, check, bearer };
}

const reason = (decision: Decision) => (decision.allowed ? 'allowed' : decision.reason);

describe('Authorizer: bearer tokens', () => {
  it('allows a good token and hands the upstream its identity', async () => {
    const { clock, bearer } = await setup();
    const decision = await bearer(await signAccessToken(pair, accessClaims('app', clock.seconds, { scope: 'read' })));
    assert.equal(decision.allowed, true);
    assert.deepEqual(decision.allowed && decision.headersToSet, {
      'x-client-id': 'app',
      'x-client-name': 'app app',
      'x-client-scopes': 'read',
    });
  });

  it('refuses on exp and nbf, to the second, by the injected clock', async () => {
    const { clock, bearer } = await setup();
    const token = await signAccessToken(pair, accessClaims('app', clock.seconds, { nbf: clock.seconds + 10, exp: clock.seconds + 60 }));
    assert.equal(reason(await bearer(token)), 'not_yet_valid');
    clock.advance(10_000);
    assert.equal(reason(await bearer(token)), 'allowed', 'at nbf');
    clock.advance(49_999);
    assert.equal(reason(await bearer(token)), 'allowed', 'just before exp');
    clock.advance(1);
    assert.equal(reason(await bearer(token)), 'expired', 'at exp (cached by now: the cache never outlives exp)');
    const alreadyExpired = await signAccessToken(pair, accessClaims('app', clock.seconds - 700));
    assert.equal(reason(await bearer(alreadyExpired)), 'expired');
  });

  it('refuses an unknown kid, a key that is not ours under our kid, and a tampered payload', async () => {
    const { clock, bearer } = await setup();
    const claims = accessClaims('app', clock.seconds);
    assert.equal(reason(await bearer(await signAccessToken(pair, claims, { kid: 'nope' }))), 'unknown_key');
    assert.equal(reason(await bearer(await signAccessToken(stranger, claims))), 'bad_signature');
    const [header, , signature] = (await signAccessToken(pair, claims)).split('.');
    assert.equal(reason(await bearer(`${header}.${b64({ ...claims, client_id: 'off' })}.${signature}`)), 'bad_signature');
  });

  it('takes the algorithm from our key, never from the token (another alg, alg none, HS256 with the public key)', async () => {
    const { clock, bearer } = await setup();
    const claims = accessClaims('app', clock.seconds);
    assert.equal(reason(await bearer(handMade({ typ: 'at+jwt', alg: 'RS256', kid: pair.kid }, claims))), 'bad_signature');
    assert.equal(reason(await bearer(handMade({ typ: 'at+jwt', alg: 'EdDSA', kid: rsa.kid }, claims))), 'bad_signature');
    assert.equal(reason(await bearer(`${b64({ typ: 'at+jwt', alg: 'none', kid: pair.kid })}.${b64(claims)}.`)), 'malformed_credential');
    const hsInput = `${b64({ typ: 'at+jwt', alg: 'HS256', kid: rsa.kid })}.${b64(claims)}`;
    const hmacKey = rsa.publicKey.export({ type: 'spki', format: 'pem' });
    const hs256 = `${hsInput}.${createHmac('sha256', hmacKey).update(hsInput).digest('base64url')}`;
    assert.equal(reason(await bearer(hs256)), 'bad_signature');
    assert.equal(reason(await bearer(handMade({ typ: 'at+jwt', alg: 'RS256', kid: rsa.kid }, claims, rsa))), 'allowed', 'the control');
  });

  it('refuses what is not one of our access tokens: typ, issuer, audience, claim types, crit', async () => {
    const { clock, bearer } = await setup();
    const claims = accessClaims('app', clock.seconds);
    assert.equal(reason(await bearer(await signAccessToken(pair, claims, { typ: 'JWT' }))), 'not_access_token');
    assert.equal(reason(await bearer(await signAccessToken(pair, { ...claims, exp: String(claims.exp) }))), 'not_access_token');
    assert.equal(reason(await bearer(await signAccessToken(pair, { ...claims, iss: 'http://evil' }))), 'wrong_issuer');
    assert.equal(reason(await bearer(await signAccessToken(pair, { ...claims, aud: 'someone-else' }))), 'wrong_audience');
    assert.equal(reason(await bearer(await signAccessToken(pair, { ...claims, aud: ['x', AUDIENCE] }))), 'allowed');
    // DPoP-bound (RFC 9449 cnf): never as a bearer token, since no proof is checked here.
    assert.equal(reason(await bearer(await signAccessToken(pair, { ...claims, cnf: { jkt: 'thumbprint' } }))), 'sender_constrained');
    assert.equal(reason(await bearer(await signAccessToken(pair, claims, { crit: ['exp'] }))), 'malformed_credential');
    assert.equal(reason(await bearer('not.a.jwt!')), 'malformed_credential');
  });

  it("checks the key's state on every call, also for a cached token: disabled, expired, deleted, key pair removed, revoked", async () => {
    const { clock, replica, bearer } = await setup();
    const token = await signAccessToken(pair, accessClaims('app', clock.seconds));
    assert.equal(reason(await bearer(token)), 'allowed');
    const step = (n: number, fields: Partial<Parameters<typeof update>[0]>) =>
      assert.equal(replica.apply(update({ version: `s:${n + 1}`, baseVersion: `s:${n}`, ...fields })), 'applied');
    step(1, { apiKeys: [apiKey('app', { enabled: false })] });
    assert.equal(reason(await bearer(token)), 'disabled_api_key');
    step(2, { apiKeys: [apiKey('app', { validUntil: clock.ms })] });
    assert.equal(reason(await bearer(token)), 'expired_api_key');
    step(3, { removedApiKeys: ['app'] });
    assert.equal(reason(await bearer(token)), 'unknown_api_key');
    step(4, {
      apiKeys: [apiKey('app')],
      revokedTokens: [{ jti: accessClaims('app', clock.seconds).jti as string, expiresAt: clock.ms + 600_000 }],
    });
    assert.equal(reason(await bearer(token)), 'revoked');
    const other = await signAccessToken(pair, accessClaims('app', clock.seconds, { jti: 'other' }));
    assert.equal(reason(await bearer(other)), 'allowed');
    step(5, { removedKeyPairs: ['kp-1'] });
    assert.equal(reason(await bearer(other)), 'unknown_key', 'cached, but its key is gone');
  });

  it("shares a bearer token's allow (frozen) per key, policy and scopes, and makes a new one when the key changes", async () => {
    const { clock, replica, bearer } = await setup({ api: {}, strip: { stripCredential: true } });
    const read = await signAccessToken(pair, accessClaims('app', clock.seconds, { scope: 'read' }));
    const readToo = await signAccessToken(pair, accessClaims('app', clock.seconds, { scope: 'read', jti: 'read-too' }));
    const write = await signAccessToken(pair, accessClaims('app', clock.seconds, { scope: 'write', jti: 'write' }));
    const first = await bearer(read);
    assert.ok(first.allowed && Object.isFrozen(first) && Object.isFrozen(first.headersToSet) && Object.isFrozen(first.headersToRemove));
    assert.equal(await bearer(read), first, 'the same token again');
    assert.equal(await bearer(readToo), first, 'another token of the same key and scopes');
    const other = await bearer(write);
    assert.ok(other.allowed && other !== first);
    assert.equal(other.headersToSet['x-client-scopes'], 'write');
    const stripped = await bearer(read, 'strip');
    assert.ok(stripped.allowed && stripped !== first);
    assert.deepEqual(stripped.headersToRemove, ['authorization']);
    assert.deepEqual(first.allowed && first.headersToRemove, []);
    assert.equal(
      replica.apply(
        update({
          version: 's:2',
          baseVersion: 's:1',
          apiKeys: [apiKey('app', { clientName: 'renamed', authorizedEntities: ['route_foo'] })],
        }),
      ),
      'applied',
    );
    const renamed = await bearer(read);
    assert.ok(renamed.allowed && renamed !== first);
    assert.equal(renamed.headersToSet['x-client-name'], 'renamed');
  });

  it('bounds the verified-token cache by heap bytes as well as by count, and a cached token still names only itself', async () => {
    const tokens = await Promise.all(
      Array.from({ length: 10 }, (_, index) => signAccessToken(rsa, accessClaims('app', new TestClock().seconds, { jti: `jti-${index}` }))),
    );
    const byBytes = await setup(undefined, { cacheMaxBytes: 800 });
    for (const token of tokens) assert.equal(reason(await byBytes.bearer(token)), 'allowed');
    const bounded = byBytes.authorizer.tokenCache();
    assert.ok(bounded.bytes <= 800 && bounded.tokens >= 1 && bounded.tokens < 10, `within 800 bytes: ${JSON.stringify(bounded)}`);
    const byCount = await setup(undefined, { cacheSize: 4 });
    for (const token of tokens) assert.equal(reason(await byCount.bearer(token)), 'allowed');
    assert.equal(byCount.authorizer.tokenCache().tokens, 4);
    const unbounded = await setup();
    for (const token of tokens) assert.equal(reason(await unbounded.bearer(token)), 'allowed');
    assert.equal(unbounded.authorizer.tokenCache().tokens, 10);
    // Keyed by a digest of the whole token: a cached token's signature on other claims is not a hit.
    const [header, payload, signature] = tokens[0].split('.');
    const forged = `${header}.${payload.slice(0, -2)}${payload.slice(-2) === 'fQ' ? 'fX' : 'fQ'}.${signature}`;
    assert.notEqual(reason(await unbounded.bearer(forged)), 'allowed');
    assert.equal(reason(await unbounded.bearer(`${tokens[0]}x`)), 'bad_signature');
    assert.equal(unbounded.authorizer.tokenCache().tokens, 10);
  });

  it('closes a key pair at its verifyUntil', async () => {
    const clock = new TestClock();
    const retiring = testKeyPair('kp-r', 'EdDSA', clock.ms + 5000);
    const replica = replicaWith([retiring], [apiKey('app')], clock.now);
    const authorizer = new Authorizer(authzConfig(), replica, clock.now);
    const token = await signAccessToken(retiring, accessClaims('app', clock.seconds));
    const check = () => authorizer.check({ policy: 'api', headers: { authorization: `Bearer ${token}` } });
    assert.equal(reason(await check()), 'allowed');
    clock.advance(5000);
    assert.equal(reason(await check()), 'unknown_key');
  });
});

describe('Authorizer: routes, scopes and other credentials', () => {
  it('answers 503 before the first snapshot, 403 for an unknown policy (also __proto__), 401 without credential', async () => {
    const { check } = await setup();
    assert.equal(reason(await check({}, 'nope')), 'unknown_policy');
    assert.equal(reason(await check({}, '__proto__')), 'unknown_policy');
    assert.equal(reason(await check({}, 'constructor')), 'unknown_policy');
    const none = await check({});
    assert.equal(reason(none), 'no_credential');
    assert.equal(!none.allowed && none.wwwAuthenticate, 'Bearer realm="api"');
    const cold = new Authorizer(authzConfig(), new AuthorityReplica());
    assert.equal(reason(await cold.check({ policy: 'api', headers: {} })), 'not_ready');
  });

  it('enforces authorizedEntities and requiredScopes (token scope for bearer, key scope otherwise)', async () => {
    const { clock, bearer, check } = await setup({
      foo: { authorizedEntities: ['route_foo'], requiredScopes: ['write'], extractors: ['bearer', 'clientId'] },
      bar: { authorizedEntities: ['route_bar'] },
    });
    const readOnly = await signAccessToken(pair, accessClaims('app', clock.seconds, { scope: 'read' }));
    const readWrite = await signAccessToken(pair, accessClaims('app', clock.seconds, { scope: 'read write' }));
    assert.equal(reason(await bearer(readOnly, 'foo')), 'missing_scope');
    assert.equal(reason(await bearer(readWrite, 'foo')), 'allowed');
    assert.equal(reason(await bearer(readWrite, 'bar')), 'not_authorized');
    // The id-only key has the default scopes (read) and no entities.
    assert.equal(reason(await check({ 'otoroshi-client-id': 'id-only' }, 'foo')), 'not_authorized');
  });

  it('compares secrets against the replicated hashes: Basic, custom headers, rotation windows', async () => {
    const { clock, replica, check } = await setup();
    const basic = (id: string, secret: string) => ({ authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` });
    assert.equal(reason(await check(basic('app', LONG_SECRET))), 'allowed');
    assert.equal(reason(await check(basic('app', `${LONG_SECRET}x`))), 'bad_secret');
    assert.equal(reason(await check(basic('ghost', LONG_SECRET))), 'bad_secret', 'an unknown id is the same answer');
    assert.equal(reason(await check(basic('off', LONG_SECRET))), 'disabled_api_key', 'the state only after the secret matched');
    assert.equal(reason(await check({ 'otoroshi-client-id': 'app', 'otoroshi-client-secret': LONG_SECRET })), 'allowed');
    assert.equal(reason(await check({ authorization: 'Basic !!!' })), 'malformed_credential');
    assert.equal(reason(await check({ authorization: `Basic ${Buffer.from('no-colon').toString('base64')}` })), 'malformed_credential');
    assert.equal(reason(await check({ authorization: 'Bearer' })), 'malformed_credential');
    // A previous secret counts until its validUntil.
    const next = 'n'.repeat(40);
    replica.apply(
      update({
        version: 's:2',
        baseVersion: 's:1',
        apiKeys: [
          apiKey('app', {
            secrets: [{ hash: await hashSecret(next) }, { hash: await hashSecret(LONG_SECRET), validUntil: clock.ms + 1000 }],
          }),
        ],
      }),
    );
    assert.equal(reason(await check(basic('app', LONG_SECRET))), 'allowed');
    assert.equal(reason(await check(basic('app', next))), 'allowed');
    clock.advance(1000);
    assert.equal(reason(await check(basic('app', LONG_SECRET))), 'bad_secret');
  });

  it('does not let a sender-constrained key (tokenBinding dpop or mtls) in by its secret or id alone', async () => {
    const { replica, check } = await setup();
    const basic = (id: string, secret: string) => ({ authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` });
    const hash = await hashSecret(LONG_SECRET);
    replica.apply(
      update({
        version: 's:2',
        baseVersion: 's:1',
        apiKeys: [
          apiKey('dpop-key', { secrets: [{ hash }], tokenBinding: 'dpop' }),
          apiKey('mtls-key', { secrets: [{ hash }], tokenBinding: 'mtls' }),
          apiKey('dpop-id', { allowClientIdOnly: true, tokenBinding: 'dpop' }),
          apiKey('future', { secrets: [{ hash }], tokenBinding: 'attested' }),
          apiKey('off-bound', { enabled: false, secrets: [{ hash }], tokenBinding: 'dpop' }),
        ],
      }),
    );
    assert.equal(reason(await check(basic('dpop-key', LONG_SECRET))), 'dpop_required');
    assert.equal(reason(await check({ 'otoroshi-client-id': 'dpop-key', 'otoroshi-client-secret': LONG_SECRET })), 'dpop_required');
    assert.equal(reason(await check(basic('mtls-key', LONG_SECRET))), 'mtls_required');
    assert.equal(reason(await check({ 'otoroshi-client-id': 'dpop-id' })), 'dpop_required');
    assert.equal(reason(await check(basic('future', LONG_SECRET))), 'dpop_required', 'a binding this ext-authz does not know refuses too');
    // The binding is said only to whoever knows the secret; the key's state comes first.
    assert.equal(reason(await check(basic('dpop-key', `${LONG_SECRET}x`))), 'bad_secret');
    assert.equal(reason(await check(basic('off-bound', LONG_SECRET))), 'disabled_api_key');
    const refused = await check(basic('dpop-key', LONG_SECRET));
    assert.equal(!refused.allowed && refused.status, 401);
  });

  it('lets an id alone through only for keys with allowClientIdOnly', async () => {
    const { check } = await setup();
    assert.equal(reason(await check({ 'otoroshi-client-id': 'id-only' })), 'allowed');
    assert.equal(reason(await check({ 'otoroshi-client-id': 'plain' })), 'unknown_api_key');
  });

  it('counts quotas last, only for calls that would pass, and says when they run out', async () => {
    const clock = new TestClock();
    const quotas = { throttlingQuota: 100, dailyQuota: 2, monthlyQuota: 100 };
    const replica = replicaWith(
      [pair],
      [apiKey('id-only', { allowClientIdOnly: true, quotas, authorizedEntities: ['route_foo'] })],
      clock.now,
    );
    const enforcer = new QuotaEnforcer(
      new MemoryQuotaCounters(),
      { leaseMax: 1, leaseTtlMs: 1000, refusalCacheMs: 1000, waitMs: 100 },
      clock.now,
    );
    const authorizer = new Authorizer(
      authzConfig({ api: { extractors: ['clientId'] }, bar: { extractors: ['clientId'], authorizedEntities: ['route_bar'] } }),
      replica,
      clock.now,
      { quotas: enforcer },
    );
    const call = (policy = 'api') => authorizer.check({ policy, headers: { 'otoroshi-client-id': 'id-only' } });
    assert.equal(reason(await call('bar')), 'not_authorized');
    const first = await call();
    assert.deepEqual(first.allowed && first.responseHeaders, {
      'Otoroshi-Daily-Calls-Remaining': '1',
      'Otoroshi-Monthly-Calls-Remaining': '99',
    });
    assert.equal(reason(await call()), 'allowed');
    const refused = await call();
    assert.equal(reason(refused), 'quota_exceeded');
    assert.equal(!refused.allowed && refused.status, 429);
    assert.ok(!refused.allowed && refused.retryAfter !== undefined && refused.retryAfter > 0);
  });

  it("decides a bearer token on a key with quotas in memory in the caller's tick, its identity headers shared", async () => {
    const clock = new TestClock();
    const quotas = { throttlingQuota: 100, dailyQuota: 3, monthlyQuota: 100 };
    const replica = replicaWith([pair], [apiKey('app', { quotas, authorizedEntities: ['route_foo'] })], clock.now);
    const enforcer = new QuotaEnforcer(
      new MemoryQuotaCounters(),
      { leaseMax: 1, leaseTtlMs: 1000, refusalCacheMs: 1000, waitMs: 100 },
      clock.now,
    );
    const authorizer = new Authorizer(authzConfig({ api: {} }), replica, clock.now, { quotas: enforcer });
    const token = await signAccessToken(pair, accessClaims('app', clock.seconds, { scope: 'read' }));
    const decide = () => authorizer.decide({ policy: 'api', headers: { authorization: `Bearer ${token}` } });
    const first = decide();
    const second = decide();
    assert.ok(!(first instanceof Promise) && !(second instanceof Promise), 'no promise');
    assert.ok(first.allowed && second.allowed && first !== second);
    assert.deepEqual(first.responseHeaders, { 'Otoroshi-Daily-Calls-Remaining': '2', 'Otoroshi-Monthly-Calls-Remaining': '99' });
    assert.deepEqual(second.responseHeaders, { 'Otoroshi-Daily-Calls-Remaining': '1', 'Otoroshi-Monthly-Calls-Remaining': '98' });
    assert.equal(first.headersToSet, second.headersToSet, 'identity headers shared');
    assert.ok(Object.isFrozen(first.headersToSet) && !Object.isFrozen(first));
    assert.equal(reason(decide() as Decision), 'allowed');
    assert.equal(reason(decide() as Decision), 'quota_exceeded', 'refused in the same tick too');
  });
});
