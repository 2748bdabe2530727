import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AuthFailureLimiter, DEFAULT_AUTH_FAILURE_SETTINGS, type AuthFailureSettings } from '../../libs/core/auth-failure-limiter';

/* The per-client failure budget (issue 22), in memory: the same rules run on Redis in test/xff-spoofing.test.ts. */
const limiter = (settings: Partial<AuthFailureSettings> = {}) => new AuthFailureLimiter({ ...DEFAULT_AUTH_FAILURE_SETTINGS, ...settings });
const address = (i: number) => `198.51.100.${i}`;

async function failFromManyAddresses(failures: AuthFailureLimiter, clientId: string, count: number, first = 1): Promise<void> {
  for (let i = first; i < first + count; i++) {
    assert.equal(await failures.admit(clientId, address(i)), undefined, `attempt ${i} admitted`);
    await failures.failed(clientId, address(i));
  }
}

describe('the per-client failure budget', () => {
  it('has the agreed defaults: 30 failures per 10 min, then one shared attempt per 10 s, known addresses for a day', () => {
    const { perClient, perClientWindowSeconds, slowIntervalSeconds, knownAddressSeconds } = DEFAULT_AUTH_FAILURE_SETTINGS;
    assert.deepEqual([perClient, perClientWindowSeconds, slowIntervalSeconds, knownAddressSeconds], [30, 600, 10, 86_400]);
  });

  it('lets 30 failures through from 30 addresses, then one attempt per 10 s shared by every unknown address', async () => {
    const failures = limiter();
    await failFromManyAddresses(failures, 'victim', 30);
    // The shared slot: the first new address takes it, the next ones wait for it.
    assert.equal(await failures.admit('victim', address(31)), undefined);
    for (const i of [32, 33, 31]) {
      const wait = await failures.admit('victim', address(i));
      assert.ok(wait !== undefined && wait >= 1 && wait <= 10, `address ${i}: wait ${wait}`);
    }
    // Other clients are untouched.
    assert.equal(await failures.admit('bystander', address(32)), undefined);
  });

  it('exempts an address that authenticated as the client: a stranger cannot lock it out', async () => {
    const failures = limiter();
    await failures.succeeded('victim', '203.0.113.7');
    await failFromManyAddresses(failures, 'victim', 30);
    assert.equal(await failures.admit('victim', address(31)), undefined, 'the shared slot');
    const taken = await failures.admit('victim', address(99));
    assert.ok(taken !== undefined, 'an unknown address waits');
    for (let i = 0; i < 5; i++) assert.equal(await failures.admit('victim', '203.0.113.7'), undefined, 'the known address does not');
  });

  it('does not reset the budget on a success, and still limits a known address by its own failures', async () => {
    const failures = limiter({ slowIntervalSeconds: 60 });
    await failures.succeeded('victim', '203.0.113.7');
    await failFromManyAddresses(failures, 'victim', 30);
    await failures.succeeded('victim', '203.0.113.7');
    assert.equal(await failures.admit('victim', address(50)), undefined, 'the slot');
    assert.ok((await failures.admit('victim', address(51))) !== undefined, 'still over budget after the success');
    // The known address keeps the per-(client, address) limit: 10 failures and it waits too.
    for (let i = 0; i < 10; i++) {
      assert.equal(await failures.admit('victim', '203.0.113.7'), undefined);
      await failures.failed('victim', '203.0.113.7');
    }
    assert.ok((await failures.admit('victim', '203.0.113.7')) !== undefined);
  });

  it('answers the same for an existing and an unknown client id', async () => {
    const run = async (clientId: string) => {
      const failures = limiter({ slowIntervalSeconds: 60 });
      const answers: (number | undefined)[] = [];
      for (let i = 1; i <= 34; i++) {
        const wait = await failures.admit(clientId, address(i));
        answers.push(wait === undefined ? 0 : 1);
        if (wait === undefined) await failures.failed(clientId, address(i));
      }
      return answers;
    };
    const existing = await run('victim');
    assert.deepEqual(existing, [...Array(31).fill(0), 1, 1, 1]);
    assert.deepEqual(await run('never-created'), existing);
  });

  it('frees the shared slot after slowIntervalSeconds, and forgets the budget after perClientWindowSeconds', async () => {
    const failures = limiter({ perClient: 3, perClientWindowSeconds: 2, slowIntervalSeconds: 1 });
    await failFromManyAddresses(failures, 'victim', 3);
    assert.equal(await failures.admit('victim', address(10)), undefined);
    assert.equal(await failures.admit('victim', address(11)), 1);
    await new Promise((done) => setTimeout(done, 1100));
    assert.equal(await failures.admit('victim', address(11)), undefined, 'the slot is free again');
    await new Promise((done) => setTimeout(done, 1000));
    for (const i of [12, 13, 14]) assert.equal(await failures.admit('victim', address(i)), undefined, 'window over: no slow-down');
  });

  it('forgets a known address after knownAddressSeconds', async () => {
    const failures = limiter({ perClient: 1, slowIntervalSeconds: 60, knownAddressSeconds: 1 });
    await failures.succeeded('victim', '203.0.113.7');
    await failFromManyAddresses(failures, 'victim', 1);
    assert.equal(await failures.admit('victim', address(20)), undefined, 'the slot');
    assert.equal(await failures.admit('victim', '203.0.113.7'), undefined, 'known');
    await new Promise((done) => setTimeout(done, 1100));
    assert.ok((await failures.admit('victim', '203.0.113.7')) !== undefined, 'no longer known');
  });
});
