import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Authorizer } from '../../libs/authz/authorizer';
import type { AuthorityReplica } from '../../libs/authz/replica';
import { accessClaims, apiKey, authzConfig, replicaWith, signAccessToken, testKeyPair, update } from './support/fixtures';

/* The replica applies an update whole or not at all: Check never sees half a snapshot or half a delta. */
describe('AuthorityReplica', () => {
  const pair = testKeyPair('kp-1');
  const other = testKeyPair('kp-2');

  /** What a Check of `token` sees, and the replica's view of the key and key pair. */
  async function observe(replica: AuthorityReplica, token: string) {
    const decision = await new Authorizer(authzConfig(), replica).check({ policy: 'api', headers: { authorization: `Bearer ${token}` } });
    return {
      decision: decision.allowed ? 'allowed' : decision.message,
      enabled: replica.apiKey('app')?.enabled,
      key: replica.verificationKey(pair.kid) !== undefined,
      version: replica.version,
    };
  }

  it('applies a multi-part delta only when its last part arrives (key disabled in one part, its key pair removed in another)', async () => {
    const replica = replicaWith([pair, other], [apiKey('app'), apiKey('bystander')]);
    const token = await signAccessToken(pair, accessClaims('app', Math.floor(Date.now() / 1000)));
    const before = await observe(replica, token);
    assert.deepEqual(before, { decision: 'allowed', enabled: true, key: true, version: 's:1' });

    const parts = [
      update({ version: 's:3', baseVersion: 's:1', more: true, removedKeyPairs: ['kp-1'] }),
      update({ version: 's:3', baseVersion: 's:1', more: true, apiKeys: [apiKey('app', { enabled: false })] }),
      update({ version: 's:3', baseVersion: 's:1', more: false, removedApiKeys: ['bystander'] }),
    ];
    assert.equal(replica.apply(parts[0]), 'partial');
    assert.deepEqual(await observe(replica, token), before, 'after part 1 of 3');
    assert.equal(replica.apply(parts[1]), 'partial');
    assert.deepEqual(await observe(replica, token), before, 'after part 2 of 3');
    assert.ok(replica.apiKey('bystander'));
    assert.equal(replica.apply(parts[2]), 'applied');
    assert.deepEqual(await observe(replica, token), { decision: 'Bad ApiKey', enabled: false, key: false, version: 's:3' });
    assert.equal(replica.apiKey('bystander'), undefined);
    assert.equal(replica.verificationKey(other.kid) !== undefined, true, 'the other pair stays');
    assert.deepEqual(replica.applied, { snapshots: 1, deltas: 1 });
  });

  it('drops a half-received delta that is broken off, and a delta whose parts disagree on the version', async () => {
    const replica = replicaWith([pair], [apiKey('app')]);
    assert.equal(replica.apply(update({ version: 's:2', baseVersion: 's:1', more: true, removedKeyPairs: ['kp-1'] })), 'partial');
    replica.abandonPartial();
    assert.ok(replica.verificationKey(pair.kid), 'the abandoned part changed nothing');
    assert.equal(
      replica.apply(update({ version: 's:2', baseVersion: 's:1', more: true, apiKeys: [apiKey('app', { enabled: false })] })),
      'partial',
    );
    assert.equal(replica.apply(update({ version: 's:9', baseVersion: 's:1', removedKeyPairs: ['kp-1'] })), 'out_of_sync');
    assert.equal(replica.apiKey('app')?.enabled, true);
    assert.ok(replica.verificationKey(pair.kid));
    assert.equal(replica.version, 's:1');
    // And after all that, a delta that follows on applies.
    assert.equal(replica.apply(update({ version: 's:2', baseVersion: 's:1', apiKeys: [apiKey('app', { scopes: ['write'] })] })), 'applied');
    assert.deepEqual(replica.apiKey('app')?.scopes, ['write']);
  });

  it('changes nothing when a part cannot be applied (a JWK the crypto module refuses)', () => {
    const replica = replicaWith([pair], [apiKey('app')]);
    assert.equal(
      replica.apply(update({ version: 's:2', baseVersion: 's:1', more: true, apiKeys: [apiKey('app', { enabled: false })] })),
      'partial',
    );
    const broken = { keyPairId: 'kp-1', keys: [{ jwk: { ...pair.dataPlane.keys[0].jwk, x: '!!' } }] };
    assert.throws(() => replica.apply(update({ version: 's:2', baseVersion: 's:1', keyPairs: [broken] })));
    assert.equal(replica.apiKey('app')?.enabled, true);
    assert.ok(replica.verificationKey(pair.kid));
    assert.equal(replica.version, 's:1');
    assert.equal(replica.apply(update({ version: 's:2', baseVersion: 's:1', more: false })), 'applied', 'the next delta starts afresh');
    assert.equal(replica.apiKey('app')?.enabled, true, 'with nothing of the failed one');
  });

  it('lets later parts win for an entity named twice (a catch-up over several runs of the log)', () => {
    const replica = replicaWith([pair], [apiKey('app')]);
    replica.apply(update({ version: 's:5', baseVersion: 's:1', more: true, removedApiKeys: ['app'], removedKeyPairs: ['kp-1'] }));
    replica.apply(update({ version: 's:5', baseVersion: 's:1', more: true, apiKeys: [apiKey('app', { clientName: 'again' })] }));
    replica.apply(update({ version: 's:5', baseVersion: 's:1', keyPairs: [pair.dataPlane] }));
    assert.equal(replica.apiKey('app')?.clientName, 'again');
    assert.ok(replica.verificationKey(pair.kid));
  });

  it('keeps the last complete state while a snapshot arrives, and swaps it whole', () => {
    const replica = replicaWith([pair], [apiKey('app')]);
    assert.equal(
      replica.apply(update({ version: 't:1', reset: true, issuer: 'other', audience: 'x', keyPairs: [other.dataPlane], more: true })),
      'partial',
    );
    assert.ok(replica.apiKey('app'));
    assert.equal(replica.issuer, 'http://oauth.oto.tools:8080');
    assert.equal(replica.apply(update({ version: 't:1', apiKeys: [apiKey('new')] })), 'applied');
    assert.equal(replica.apiKey('app'), undefined);
    assert.ok(replica.apiKey('new'));
    assert.equal(replica.verificationKey(pair.kid), undefined);
    assert.ok(replica.verificationKey(other.kid));
    assert.equal(replica.issuer, 'other');
  });
});
