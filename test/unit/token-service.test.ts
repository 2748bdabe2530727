import assert from 'node:assert/strict';
import { createPrivateKey, sign } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { authorityConfigSchema } from '../../libs/core/config';
import type { KeyMaterial } from '../../libs/core/crypto/key-pairs';
import { hashSecret } from '../../libs/core/crypto/secret-hash';
import { KeyRing } from '../../libs/core/key-ring';
import { SqliteStore } from '../../libs/core/store/sqlite-store';
import { TokenService } from '../../libs/core/token-service';
import { apiKeyRecord } from '../support/records';
import { storeKeyPair, TestClock } from './support/fixtures';

/*
 * The authority's token issuing and validation (libs/core/token-service.ts), on an in-memory
 * SQLite store in this process and an injected clock: what introspection and revocation rely on.
 */

const SECRET = 'S'.repeat(43);
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

describe('TokenService: issuing and validating access tokens', () => {
  const clock = new TestClock();
  let material: KeyMaterial;
  let store: SqliteStore;
  let keyRing: KeyRing;
  let service: TokenService;
  before(async () => {
    store = new SqliteStore(':memory:');
    material = await storeKeyPair(store, clock.ms);
    const hash = await hashSecret(SECRET);
    await store.apiKeys.createMany([
      apiKeyRecord('app', { secretHash: hash, scope: ['read', 'write'] }),
      apiKeyRecord('other', { secretHash: hash }),
    ]);
    keyRing = new KeyRing(store.keyPairs, clock.now);
    await keyRing.reload();
    const config = authorityConfigSchema.parse({ defaultKeyPair: 'kp', expiration: 60_000, allowedAudiences: ['billing'] });
    service = new TokenService(config, store, keyRing, clock);
  });
  after(() => store.close());

  const issue = async (params: Record<string, string> = {}, clientId = 'app') =>
    (await service.issueToken({ params: { grant_type: 'client_credentials', client_id: clientId, client_secret: SECRET, ...params } }))
      .access_token;
  const reason = async (token: string) => {
    const validation = await service.validateAccessToken(token);
    return validation.valid ? 'valid' : validation.reason;
  };
  /** A token in our format signed by our key, with any header and claims. */
  const handMade = (header: Record<string, unknown>, claims: Record<string, unknown>) => {
    const input = `${b64(header)}.${b64(claims)}`;
    return `${input}.${sign(null, Buffer.from(input), createPrivateKey(material.privateKeyPem)).toString('base64url')}`;
  };
  const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) as Record<string, unknown>;

  it('issues RFC 9068 claims: iss from config, aud, scope asked or all, exp after `expiration`', async () => {
    const token = await issue({ scope: 'read' });
    const claims = claimsOf(token);
    assert.equal(claims.iss, 'http://oauth.oto.tools:8080');
    assert.deepEqual([claims.sub, claims.client_id, claims.aud, claims.scope], ['app', 'app', 'otoroshi', 'read']);
    assert.equal(claims.exp, clock.seconds + 60);
    assert.equal(claims.nbf, clock.seconds);
    assert.equal(claimsOf(await issue()).scope, 'read write');
    assert.equal(claimsOf(await issue({ audience: 'billing' })).aud, 'billing');
    await assert.rejects(issue({ audience: 'elsewhere' }), { code: 'invalid_target' });
    await assert.rejects(issue({ scope: 'admin' }), { code: 'invalid_scope' });
    await assert.rejects(issue({ grant_type: 'password' }), { code: 'unsupported_grant_type' });
    await assert.rejects(issue({ client_secret: 'wrong' }), { code: 'invalid_client' });
  });

  it('validates until exp, by the clock, and not before nbf', async () => {
    const token = await issue();
    const unseen = await issue();
    assert.equal(await reason(token), 'valid');
    clock.advance(59_999);
    assert.equal(await reason(token), 'valid');
    clock.advance(1);
    assert.equal(await reason(token), 'expired', 'cached: never past exp');
    assert.equal(await reason(unseen), 'expired', 'not cached: the same');
    const claims = { ...claimsOf(await issue()), nbf: clock.seconds + 30 };
    const early = handMade({ typ: 'at+jwt', alg: 'EdDSA', kid: 'kp-1' }, claims);
    assert.equal(await reason(early), 'not_yet_valid');
    clock.advance(30_000);
    assert.equal(await reason(early), 'valid');
  });

  it('refuses a wrong kid, a wrong alg, another typ, another issuer, and claims of the wrong type', async () => {
    const claims = claimsOf(await issue());
    assert.equal(await reason(handMade({ typ: 'at+jwt', alg: 'EdDSA', kid: 'kp-1' }, claims)), 'valid', 'the control');
    assert.equal(await reason(handMade({ typ: 'at+jwt', alg: 'EdDSA', kid: 'kp-9' }, claims)), 'unknown_key');
    assert.equal(await reason(handMade({ typ: 'at+jwt', alg: 'ES256', kid: 'kp-1' }, claims)), 'algorithm_mismatch');
    assert.equal(await reason(handMade({ typ: 'JWT', alg: 'EdDSA', kid: 'kp-1' }, claims)), 'not_access_token');
    assert.equal(await reason(handMade({ typ: 'at+jwt', alg: 'EdDSA', kid: 'kp-1' }, { ...claims, iss: 'http://evil' })), 'wrong_issuer');
    assert.equal(await reason(handMade({ typ: 'at+jwt', alg: 'EdDSA', kid: 'kp-1' }, { ...claims, sub: 7 })), 'not_access_token');
    assert.equal(await reason(handMade({ typ: 'at+jwt', alg: 'EdDSA', kid: 'kp-1', crit: ['x'] }, claims)), 'malformed');
    const [header, payload] = (await issue()).split('.');
    assert.equal(await reason(`${header}.${payload}.${'A'.repeat(86)}`), 'bad_signature');
  });

  it('refuses a revoked token and one whose key was disabled, expired or deleted, also once cached', async () => {
    const token = await issue({}, 'other');
    assert.equal(await reason(token), 'valid');
    await store.apiKeys.modify('other', (current) => ({ ...current, enabled: false }));
    assert.equal(await reason(token), 'client_unusable');
    await store.apiKeys.modify('other', (current) => ({ ...current, enabled: true, validUntil: clock.ms }));
    assert.equal(await reason(token), 'client_unusable');
    await store.apiKeys.modify('other', (current) => ({ ...current, validUntil: null }));
    assert.equal(await reason(token), 'valid');
    await store.revocations.revoke(claimsOf(token).jti as string, clock.ms + 60_000);
    assert.equal(await reason(token), 'revoked');
    const fresh = await issue({}, 'other');
    await store.apiKeys.delete('other');
    assert.equal(await reason(fresh), 'client_unusable');
  });

  it('stops validating a cached token once its key pair is gone from the key ring', async () => {
    const token = await issue();
    assert.equal(await reason(token), 'valid');
    await store.keyPairs.delete('kp');
    await keyRing.reload();
    assert.equal(await reason(token), 'unknown_key');
  });
});
