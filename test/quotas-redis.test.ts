import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ADMIN_TOKEN, startTestAuthority, type TestAuthority } from './support/authority';
import type { ChildService } from './support/child-service';
import { startExtAuthzProcess, startTestExtAuthz, TEST_POLICIES, type TestExtAuthz } from './support/ext-authz';
import { keyWithQuotas, PrivateRedis, redisTestPrefix, SHARED_REDIS } from './support/quota-fixtures';

/** One Check through ext-authz's HTTP mode (what Envoy's http_service and nginx send). */
async function check(base: string, policy: string, token: string): Promise<Response> {
  const response = await fetch(`${base}/authz/${policy}`, { headers: { authorization: `Bearer ${token}` } });
  await response.arrayBuffer();
  return response;
}

/** Runs `total` calls, `concurrency` at a time, spread over the bases in turn; counts answers by status. */
async function load(bases: string[], policy: string, token: string, total: number, concurrency: number): Promise<Map<number, number>> {
  const statuses = new Map<number, number>();
  let next = 0;
  const deadline = Date.now() + 60_000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total && Date.now() < deadline) {
        const index = next++;
        const { status } = await check(bases[index % bases.length], policy, token);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      }
    }),
  );
  return statuses;
}

describe('three ext-authz processes sharing quotas on one Redis', () => {
  const redisKeys = redisTestPrefix();
  let authority: TestAuthority | undefined;
  const replicas: ChildService[] = [];
  const bases: string[] = [];
  let dir: string;
  const tokens: Record<string, string> = {};

  before(async () => {
    authority = await startTestAuthority({ redis: { url: SHARED_REDIS, keyPrefix: redisKeys.prefix } });
    tokens.small = await keyWithQuotas(authority, 'small', { throttlingQuota: 1_000_000, dailyQuota: 10, monthlyQuota: 1_000_000 });
    tokens.large = await keyWithQuotas(authority, 'large', { throttlingQuota: 1_000_000, dailyQuota: 3000, monthlyQuota: 1_000_000 });
    tokens.probe = await keyWithQuotas(authority, 'probe', {});
    dir = mkdtempSync(join(tmpdir(), 'quotas-redis-'));
    for (let i = 0; i < 3; i++) {
      const { replica, base } = await startExtAuthzProcess(`ext-authz-${i}`, dir, {
        authority: { url: authority.grpcAddress, token: ADMIN_TOKEN, initialBackoff: 50, maxBackoff: 500 },
        policies: { foo: TEST_POLICIES.foo },
        quotas: { redisUrl: SHARED_REDIS, keyPrefix: redisKeys.prefix },
        log: { level: 'warn' },
      });
      replicas.push(replica);
      bases.push(base);
    }
    // Keys replicate in order: once the last one created is known everywhere, all are.
    for (const base of bases) {
      const started = Date.now();
      while ((await check(base, 'foo', tokens.probe)).status !== 200) {
        assert.ok(Date.now() - started < 10_000, `${base} did not learn the keys`);
        await new Promise((done) => setTimeout(done, 20));
      }
    }
  });

  after(async () => {
    for (const replica of replicas) await replica.stop().catch(() => undefined);
    await authority?.stop().catch(() => undefined);
    if (dir) rmSync(dir, { recursive: true, force: true });
    await redisKeys.cleanup();
  });

  it('admits exactly a small quota (10 calls a day), 30 concurrent calls spread over the 3', async () => {
    const statuses = await load(bases, 'foo', tokens.small, 30, 30);
    assert.equal(statuses.get(200), 10, JSON.stringify([...statuses]));
    assert.equal(statuses.get(429), 20, JSON.stringify([...statuses]));
  });

  it('admits a large quota (3000) within 1 % under concurrent load, and the admin API sees the same count', async (t) => {
    const statuses = await load(bases, 'foo', tokens.large, 4500, 48);
    const admitted = statuses.get(200) ?? 0;
    let storeFailures = 0;
    for (const base of bases) {
      const metrics = await (await fetch(`${base}/metrics`)).text();
      for (const match of metrics.matchAll(/^ext_authz_quota_store_failures_total\{[^}]*\} (\d+)/gm)) storeFailures += Number(match[1]);
    }
    t.diagnostic(`quota store failures (timeouts) during the load: ${storeFailures}`);
    t.diagnostic(
      `dailyQuota 3000, 4500 calls over 3 replicas, 48 in flight: admitted ${admitted} (${((admitted / 3000 - 1) * 100).toFixed(2)} %)`,
    );
    assert.ok(admitted <= 3000 * 1.01, `over-admission: ${admitted}`);
    assert.ok(admitted >= 3000 * 0.99, `under-admission: ${admitted}`);
    assert.equal(admitted + (statuses.get(429) ?? 0), 4500, JSON.stringify([...statuses]));
    const quotas = await authority!.admin('GET', '/api/apikeys/large/quotas');
    assert.equal(quotas.status, 200, JSON.stringify(quotas.body));
    assert.equal(quotas.body.authorizedCallsPerDay, 3000);
    // Every replica spent its last lease before it refused a call, so Redis counted every call let
    // through but those let through uncounted (fail open) when Redis answered later than
    // commandTimeoutMs: those are the only over-admission there can be.
    assert.equal(quotas.body.currentCallsPerDay, admitted - storeFailures);
    assert.equal(quotas.body.currentCallsPerDay, 3000);
    assert.equal(quotas.body.remainingCallsPerDay, 0);
    assert.equal(quotas.body.currentCallsPerMonth, 3000);
    assert.deepEqual(Object.keys(quotas.body).sort(), [
      'authorizedCallsPerDay',
      'authorizedCallsPerMonth',
      'authorizedCallsPerSec',
      'currentCallsPerDay',
      'currentCallsPerMonth',
      'currentCallsPerSec',
      'remainingCallsPerDay',
      'remainingCallsPerMonth',
      'remainingCallsPerSec',
      'sharedEnforcement',
    ]);
    assert.equal(quotas.body.sharedEnforcement, true, 'one limit shared by the replicas');
  });

  it('DELETE /api/apikeys/:clientId/quotas resets the counters the replicas share', async () => {
    assert.equal((await check(bases[0], 'foo', tokens.small)).status, 429);
    const reset = await authority!.admin('DELETE', '/api/apikeys/small/quotas');
    assert.equal(reset.status, 200, JSON.stringify(reset.body));
    assert.equal(reset.body.currentCallsPerDay, 0);
    assert.equal(reset.body.remainingCallsPerDay, 10);
    // A refusal is remembered 250 ms by each replica before it asks Redis again.
    await new Promise((done) => setTimeout(done, 400));
    const answer = await check(bases[1], 'foo', tokens.small);
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.get('otoroshi-daily-calls-remaining'), '9');
    assert.equal((await authority!.admin('GET', '/api/apikeys/small/quotas')).body.currentCallsPerDay, 1);
  });
});

describe('Redis stopped and restarted under a running ext-authz', () => {
  const redis = new PrivateRedis();
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let token: string;

  before(async () => {
    await redis.start();
    authority = await startTestAuthority();
    extAuthz = await startTestExtAuthz(authority, {
      policies: { foo: TEST_POLICIES.foo, strict: { ...TEST_POLICIES.foo, quotaFailure: 'closed' } },
      quotas: { redisUrl: redis.url, commandTimeoutMs: 200 },
    });
    // dailyQuota 100: leases of one call (see leaseCap), so an outage shows on the next call.
    token = await keyWithQuotas(authority, 'outage', { throttlingQuota: 1000, dailyQuota: 100 });
    await extAuthz.waitFor(() => extAuthz!.replica.apiKey('outage') !== undefined);
  });

  after(async () => {
    await extAuthz?.close().catch(() => undefined);
    await authority?.stop().catch(() => undefined);
    await redis.stop();
  });

  it('fails open by default (no count, a metric and a log line), fails closed with 503 where asked, and recovers by itself', async () => {
    const open = await check(extAuthz!.url, 'foo', token);
    assert.equal(open.status, 200);
    assert.equal(open.headers.get('otoroshi-daily-calls-remaining'), '99');
    assert.equal((await check(extAuthz!.url, 'strict', token)).headers.get('otoroshi-daily-calls-remaining'), '98');

    await redis.stop();
    const during = await check(extAuthz!.url, 'foo', token);
    assert.equal(during.status, 200, 'fail open: the call goes through');
    assert.equal(during.headers.get('otoroshi-daily-calls-remaining'), null, 'and nothing was counted');
    const closed = await fetch(`${extAuthz!.url}/authz/strict`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(closed.status, 503);
    assert.deepEqual(await closed.json(), { 'Otoroshi-Error': 'Quota service unavailable' });
    assert.equal(closed.headers.get('retry-after'), '1');
    const metrics = await (await fetch(`${extAuthz!.url}/metrics`)).text();
    assert.match(metrics, /ext_authz_quota_store_failures_total\{policy="foo",outcome="open"\} [1-9]/);
    assert.match(metrics, /ext_authz_quota_store_failures_total\{policy="strict",outcome="closed"\} [1-9]/);
    assert.match(metrics, /ext_authz_quota_store_up 0/);

    await redis.start();
    const started = Date.now();
    let recovered: Response | undefined;
    while (Date.now() - started < 10_000) {
      const answer = await check(extAuthz!.url, 'strict', token);
      if (answer.status === 200) {
        recovered = answer;
        break;
      }
      await new Promise((done) => setTimeout(done, 50));
    }
    assert.ok(recovered, 'ext-authz did not reconnect to Redis within 10 s');
    // A fresh Redis (no persistence): counting starts again.
    assert.equal(recovered.headers.get('otoroshi-daily-calls-remaining'), '99');
    assert.match(await (await fetch(`${extAuthz!.url}/metrics`)).text(), /ext_authz_quota_store_up 1/);
  });
});
