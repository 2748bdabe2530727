import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { credentials, loadPackageDefinition, Metadata } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { AUTHORITY_WATCH_PROTO, LOADER_OPTIONS } from '../services/token-authority/grpc-options';
import { ADMIN_TOKEN, startTestAuthority, type TestAuthority } from './support/authority';
import type { ChildService } from './support/child-service';
import { startExtAuthzProcess, startTestExtAuthz, TEST_POLICIES } from './support/ext-authz';
import { keyWithQuotas, redisTestPrefix, SHARED_REDIS } from './support/quota-fixtures';

/*
 * Issue 18 item 1: without Redis each ext-authz counts quotas in its own memory, and the
 * authority reads (and resets) them by asking every connected replica over
 * AuthorityWatch.QuotaCounters. A real authority and two real ext-authz processes.
 */

async function check(base: string, token: string): Promise<number> {
  const response = await fetch(`${base}/authz/foo`, { headers: { authorization: `Bearer ${token}` } });
  await response.arrayBuffer();
  return response.status;
}

/** Polls `probe` every 20 ms until it holds, for at most `timeoutMs`. */
async function eventually(probe: () => Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const started = Date.now();
  while (!(await probe())) {
    assert.ok(Date.now() - started < timeoutMs, `${what} within ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 20));
  }
  return Date.now() - started;
}

describe('quota consumption read from ext-authz replicas that count in memory (no Redis)', () => {
  let authority: TestAuthority | undefined;
  const replicas: ChildService[] = [];
  const bases: string[] = [];
  let dir: string;
  let token = '';
  const QUOTAS = { throttlingQuota: 1000, dailyQuota: 20, monthlyQuota: 500 };
  const quotas = async () => authority!.admin('GET', '/api/apikeys/counted/quotas');

  before(async () => {
    authority = await startTestAuthority();
    token = await keyWithQuotas(authority, 'counted', QUOTAS);
    dir = mkdtempSync(join(tmpdir(), 'quotas-replicas-'));
    const tokenFile = join(dir, 'data-plane-token');
    writeFileSync(tokenFile, ADMIN_TOKEN);
    const tokenSource = (i: number) => (i === 0 ? { token: ADMIN_TOKEN } : { tokenFile });
    for (let i = 0; i < 2; i++) {
      const { replica, base } = await startExtAuthzProcess(`ext-authz-${i}`, dir, {
        // The second replica reads its token from a file, as in docker-compose (AUTHORITY_TOKEN_FILE):
        // both of its streams (DeltaWatch and QuotaCounters) must present it.
        authority: { url: authority.grpcAddress, ...tokenSource(i), initialBackoff: 50, maxBackoff: 500 },
        policies: { foo: TEST_POLICIES.foo },
        log: { level: 'warn' },
      });
      replicas.push(replica);
      bases.push(base);
    }
    for (const base of bases) await eventually(async () => (await check(base, token)) === 200, 10_000, `${base} knows the key`);
    // Both replicas hold their counters stream.
    await eventually(async () => (await quotas()).body.replicas === 2, 10_000, 'both replicas answer');
  });

  after(async () => {
    for (const replica of replicas) {
      if (replica.pid) {
        try {
          process.kill(replica.pid, 'SIGCONT');
        } catch {}
      }
      await replica.stop().catch(() => undefined);
    }
    await authority?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers 200 with the sum over the replicas, says enforcement is per replica, and creates no entry for a key never called', async () => {
    // The two probes of `before` counted one call each.
    await authority!.admin('DELETE', '/api/apikeys/counted/quotas');
    for (const [index, calls] of [3, 4].entries()) {
      for (let i = 0; i < calls; i++) assert.equal(await check(bases[index], token), 200);
    }
    const answer = await quotas();
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    // The per-second bucket drains at 1000/s: by the time of the query it holds at most the 7 calls.
    const { currentCallsPerSec, remainingCallsPerSec, ...rest } = answer.body;
    assert.ok(currentCallsPerSec >= 0 && currentCallsPerSec <= 7, String(currentCallsPerSec));
    assert.equal(remainingCallsPerSec, 1000 - currentCallsPerSec);
    assert.deepEqual(rest, {
      authorizedCallsPerSec: 1000,
      authorizedCallsPerDay: 20,
      currentCallsPerDay: 7,
      remainingCallsPerDay: 13,
      authorizedCallsPerMonth: 500,
      currentCallsPerMonth: 7,
      remainingCallsPerMonth: 493,
      sharedEnforcement: false,
      replicas: 2,
      replicasUnanswered: 0,
    });
    // A key nobody called: zeros, from both replicas.
    await authority!.admin('POST', '/api/apikeys', { clientId: 'idle', clientSecret: 'idle-secret-0123456789-0123456789' });
    const idle = await authority!.admin('GET', '/api/apikeys/idle/quotas');
    assert.equal(idle.status, 200);
    assert.deepEqual([idle.body.currentCallsPerDay, idle.body.replicas], [0, 2]);
    assert.equal((await authority!.admin('GET', '/api/apikeys/nobody/quotas')).status, 404);
  });

  it('DELETE resets the counters in every replica; each replica enforces the day quota on its own again', async () => {
    const reset = await authority!.admin('DELETE', '/api/apikeys/counted/quotas');
    assert.equal(reset.status, 200, JSON.stringify(reset.body));
    assert.deepEqual([reset.body.currentCallsPerDay, reset.body.replicas, reset.body.replicasUnanswered], [0, 2, 0]);
    assert.equal((await quotas()).body.currentCallsPerDay, 0);
    // Not shared: each replica admits the 20 calls of the day by itself.
    for (const base of bases) {
      for (let i = 0; i < 20; i++) assert.equal(await check(base, token), 200);
      assert.equal(await check(base, token), 429);
    }
    const spent = await quotas();
    assert.deepEqual([spent.body.currentCallsPerDay, spent.body.remainingCallsPerDay], [40, 0]);
    await authority!.admin('DELETE', '/api/apikeys/counted/quotas');
    assert.equal(await check(bases[0], token), 200, 'a reset lets the key through again');
  });

  it('reports a SIGSTOPped replica unanswered within about 2 s, refuses an unconfirmed reset with 503, and counts it again after SIGCONT', async (t) => {
    const stopped = replicas[1];
    assert.ok(stopped.pid);
    process.kill(stopped.pid, 'SIGSTOP');
    try {
      const started = Date.now();
      const answer = await quotas();
      const waited = Date.now() - started;
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.deepEqual([answer.body.replicas, answer.body.replicasUnanswered], [1, 1]);
      assert.ok(waited >= 1800 && waited < 3500, `answered after ${waited} ms`);
      t.diagnostic(`one of two replicas SIGSTOPped: GET quotas answered after ${waited} ms (1 answered, 1 unanswered)`);
      const reset = await fetch(`${authority!.url}/api/apikeys/counted/quotas`, {
        method: 'DELETE',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      const body = (await reset.json()) as { error: string; error_description: string };
      assert.equal(reset.status, 503, JSON.stringify(body));
      assert.equal(reset.headers.get('retry-after'), '1');
      assert.equal(body.error, 'temporarily_unavailable');
      assert.match(body.error_description, /did not confirm the reset/);
    } finally {
      process.kill(stopped.pid, 'SIGCONT');
    }
    const resumed = await eventually(async () => (await quotas()).body.replicasUnanswered === 0, 5000, 'the replica answers again');
    assert.equal((await quotas()).body.replicas, 2);
    t.diagnostic(`after SIGCONT both replicas answered again within ${resumed} ms`);
  });

  it('a replica that goes away is no longer asked: the answer does not wait for it', async () => {
    await replicas[1].stop();
    const started = Date.now();
    const answer = await quotas();
    assert.ok(Date.now() - started < 1000, `${Date.now() - started} ms`);
    assert.deepEqual([answer.body.replicas, answer.body.replicasUnanswered], [1, 0]);
    await replicas[1].start();
    await eventually(async () => (await quotas()).body.replicas === 2, 10_000, 'the restarted replica reconnects');
  });

  it('a hostile replica (stray, wrong-key, duplicate answers; int64 extremes) gets bounded figures summed and nothing else', async () => {
    const definition = loadPackageDefinition(loadSync(AUTHORITY_WATCH_PROTO, LOADER_OPTIONS)) as any;
    const client = new definition.token_authority.v1.AuthorityWatch(authority!.grpcAddress, credentials.createInsecure());
    const metadata = new Metadata();
    metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
    const before = (await quotas()).body;
    const call = client.QuotaCounters(metadata);
    call.on('error', () => {});
    try {
      const first = new Promise<{ message: string }>((resolve) => call.once('data', resolve));
      call.write({ hello: { node_id: 'hostile' } });
      assert.equal((await first).message, 'hello_ack');
      call.on('data', (message: { message: string; query: { request_id: number; client_id: string } }) => {
        if (message.message !== 'query') return;
        const { request_id, client_id } = message.query;
        for (let i = 1; i <= 1000; i++) call.write({ counts: { request_id: request_id + i, client_id, calls_today: 1_000_000 } });
        call.write({ counts: { request_id, client_id: 'someone-else', calls_today: 1_000_000 } });
        call.write({
          counts: {
            request_id,
            client_id,
            calls_per_second: '9223372036854775807',
            calls_today: '-5',
            calls_this_month: '9223372036854775807',
          },
        });
        call.write({ counts: { request_id, client_id, calls_today: 1_000_000 } });
      });
      const answer = await quotas();
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.deepEqual([answer.body.replicas, answer.body.replicasUnanswered], [3, 0]);
      assert.equal(
        answer.body.currentCallsPerDay,
        before.currentCallsPerDay,
        'negative counts as 0; the wrong-key and the second answer are ignored',
      );
      assert.ok(answer.body.currentCallsPerSec <= before.currentCallsPerSec + 1000, 'capped at the rate');
      assert.equal(
        answer.body.currentCallsPerMonth,
        before.currentCallsPerMonth + answer.body.authorizedCallsPerMonth,
        'int64 max counts as the monthly quota (what one replica can admit)',
      );
      assert.equal(answer.body.remainingCallsPerMonth, 0);
      for (const [field, value] of Object.entries(answer.body))
        if (typeof value === 'number') assert.ok(Number.isSafeInteger(value) && value >= 0, `${field} = ${value}`);
    } finally {
      call.end();
      client.close();
    }
    await eventually(async () => (await quotas()).body.replicas === 2, 5000, 'the hostile replica is gone once its stream ends');
  });
});

describe('an authority whose quota counters are on Redis', () => {
  it('refuses QuotaCounters with FAILED_PRECONDITION, and an ext-authz counting in memory stops asking (no reconnect storm)', async () => {
    const redisKeys = redisTestPrefix();
    const authority = await startTestAuthority({ redis: { url: SHARED_REDIS, keyPrefix: redisKeys.prefix } });
    // A misconfigured pair: the authority on Redis, this ext-authz in memory.
    const extAuthz = await startTestExtAuthz(authority);
    try {
      await extAuthz.waitFor(() => extAuthz.quotaCounters?.refusedWith !== undefined);
      assert.equal(extAuthz.quotaCounters?.refusedWith, 'FAILED_PRECONDITION');
      await new Promise((done) => setTimeout(done, 1000));
      assert.equal(extAuthz.quotaCounters?.opened, 1, 'opened once, never again');
      assert.equal(extAuthz.quotaCounters?.connected, false);
      const answer = await authority.admin('GET', '/api/apikeys/nobody/quotas');
      assert.equal(answer.status, 404);
    } finally {
      await extAuthz.close();
      await authority.stop();
      await redisKeys.cleanup();
    }
  });
});
