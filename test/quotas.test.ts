import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { DataPlaneApiKey, DataPlaneUpdate } from '../libs/core/data-plane';
import { deserializeUpdate, serializeUpdate } from '../libs/grpc/watch-codec';
import { gcraReserve, MemoryQuotaCounters, msUntilNextDay, QuotaEnforcer, utcDay, utcMonth } from '../libs/quotas/quotas';
import { startTestAuthority, type TestAuthority } from './support/authority';
import { startEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { startNginx, type TestNginx } from './support/nginx';
import { send, type Answer } from './support/proxy-request';
import { keyWithQuotas, startCountingBackend } from './support/quota-fixtures';

const QUOTA_BODY = JSON.stringify({ 'Otoroshi-Error': 'You performed too much requests' });
const LIMITS = { throttlingQuota: 1000, dailyQuota: 3, monthlyQuota: 100 };

describe('quotas on the data plane (token_authority.v1.ApiKeyState.quotas)', () => {
  const key = (quotas?: DataPlaneApiKey['quotas']): DataPlaneApiKey => ({
    clientId: 'q',
    clientName: 'q',
    enabled: true,
    authorizedEntities: [],
    scopes: [],
    metadata: {},
    tags: [],
    secrets: [],
    allowClientIdOnly: false,
    quotas,
  });
  const update = (apiKey: DataPlaneApiKey): DataPlaneUpdate => ({
    version: 's:1',
    baseVersion: '',
    reset: true,
    more: false,
    keyPairs: [],
    removedKeyPairs: [],
    apiKeys: [apiKey],
    removedApiKeys: [],
    revokedTokens: [],
    generatedAt: 0,
  });

  it('carries the three quotas, 0 included (a key that may make no call), and none from an authority that sends none', () => {
    const quotas = { throttlingQuota: 0, dailyQuota: 3, monthlyQuota: 10_000_000_000 };
    assert.deepEqual(deserializeUpdate(serializeUpdate(update(key(quotas)))).apiKeys[0].quotas, quotas);
    // An older authority: no quotas message, so ext-authz enforces none.
    assert.equal(deserializeUpdate(serializeUpdate(update(key()))).apiKeys[0].quotas, undefined);
  });
});

describe('quota counters (memory) and the per-second GCRA', () => {
  it('lets a burst of throttlingQuota calls through at once, then one call per 1/rate seconds', () => {
    let tat = 0;
    const now = 1_000_000;
    let granted = 0;
    for (let i = 0; i < 20; i++) {
      const result = gcraReserve(tat, 10, 1, now);
      granted += result.granted;
      tat = result.tat;
    }
    assert.equal(granted, 10, 'a burst of 10 at rate 10/s');
    const refused = gcraReserve(tat, 10, 1, now);
    assert.equal(refused.granted, 0);
    assert.equal(refused.retryAfterMs, 100);
    assert.equal(gcraReserve(tat, 10, 1, now + 100).granted, 1, 'one more after 100 ms');
    // Over 10 s of steady asking, never more than rate × time + burst.
    let admitted = 0;
    tat = 0;
    for (let t = 0; t < 10_000; t += 5) {
      const result = gcraReserve(tat, 10, 1, now + t);
      admitted += result.granted;
      tat = result.tat;
    }
    assert.ok(admitted <= 10 * 10 + 10, `admitted ${admitted}`);
    assert.ok(admitted >= 10 * 10, `admitted ${admitted}`);
  });

  it('counts per UTC day and month, and starts again on a new UTC day (injected clock)', async () => {
    const counters = new MemoryQuotaCounters();
    let now = Date.UTC(2026, 10, 28, 23, 59, 59, 500);
    const enforcer = new QuotaEnforcer(counters, { leaseMax: 1, leaseTtlMs: 1000, refusalCacheMs: 0, waitMs: 100 }, () => now);
    try {
      const outcomes = [];
      for (let i = 0; i < 4; i++) outcomes.push(await enforcer.consume('k', LIMITS));
      assert.deepEqual(
        outcomes.slice(0, 3).map((o) => (o.outcome === 'allowed' ? [o.dailyRemaining, o.monthlyRemaining] : o.outcome)),
        [
          [2, 99],
          [1, 98],
          [0, 97],
        ],
      );
      const refused = outcomes[3];
      assert.equal(refused.outcome, 'exceeded');
      assert.equal(refused.outcome === 'exceeded' && refused.period, 'day');
      assert.equal(refused.outcome === 'exceeded' && refused.retryAfterSeconds, 1, 'half a second to midnight, rounded up');
      now += 1000; // 2026-11-29T00:00:00.500Z
      assert.equal(utcDay(now), '20261129');
      const next = await enforcer.consume('k', LIMITS);
      assert.deepEqual(next, { outcome: 'allowed', dailyRemaining: 2, monthlyRemaining: 96 });
      // A new month resets the month too.
      now = Date.UTC(2026, 11, 1, 0, 0, 1);
      assert.equal(utcMonth(now), '202612');
      assert.deepEqual(await enforcer.consume('k', LIMITS), { outcome: 'allowed', dailyRemaining: 2, monthlyRemaining: 99 });
      const consumption = await counters.consumption('k', LIMITS, now);
      assert.equal(consumption.currentCallsPerDay, 1);
      assert.equal(consumption.remainingCallsPerMonth, 99);
    } finally {
      await enforcer.close();
    }
  });

  it('refuses a key whose quota is 0', async () => {
    const enforcer = new QuotaEnforcer(new MemoryQuotaCounters(), { leaseMax: 1, leaseTtlMs: 1000, refusalCacheMs: 0, waitMs: 100 });
    try {
      assert.equal((await enforcer.consume('z', { throttlingQuota: 0, dailyQuota: 10, monthlyQuota: 10 })).outcome, 'exceeded');
      assert.equal((await enforcer.consume('z', { throttlingQuota: 10, dailyQuota: 0, monthlyQuota: 10 })).outcome, 'exceeded');
    } finally {
      await enforcer.close();
    }
  });
});

/**
 * dailyQuota: 3 through a real proxy: the remaining-calls headers count down, the 4th call gets
 * Otoroshi's 429 with Retry-After and never reaches the backend, and a new UTC day (the quota
 * clock moved past midnight) lets the key through again.
 */
async function dailyQuotaScenario(
  call: (token: string) => Promise<Answer>,
  authority: TestAuthority,
  backend: { calls(): number },
  clientId: string,
  nextDay: () => void,
  log: () => string,
  extAuthz: TestExtAuthz,
): Promise<void> {
  const token = await keyWithQuotas(authority, clientId, LIMITS);
  await extAuthz.waitFor(() => extAuthz.replica.apiKey(clientId) !== undefined);
  const before = backend.calls();
  for (const remaining of [2, 1, 0]) {
    const answer = await call(token);
    assert.equal(answer.status, 200, `${answer.status} ${answer.body}\n${log().slice(-2000)}`);
    assert.equal(answer.headers['otoroshi-daily-calls-remaining'], String(remaining));
    assert.equal(answer.headers['otoroshi-monthly-calls-remaining'], String(97 + remaining));
    assert.equal(answer.counts['otoroshi-daily-calls-remaining'], 1);
  }
  assert.equal(backend.calls() - before, 3);
  const refused = await call(token);
  assert.equal(refused.status, 429, `${refused.status} ${refused.body}\n${log().slice(-2000)}`);
  assert.equal(refused.body, QUOTA_BODY);
  assert.match(String(refused.headers['content-type']), /^application\/json/);
  const retryAfter = Number(refused.headers['retry-after']);
  assert.ok(retryAfter >= 1 && retryAfter <= 86_400, `Retry-After ${refused.headers['retry-after']}`);
  assert.equal(refused.headers['otoroshi-daily-calls-remaining'], undefined);
  assert.equal(backend.calls() - before, 3, 'the refused call did not reach the backend');
  nextDay();
  const again = await call(token);
  assert.equal(again.status, 200, again.body);
  assert.equal(again.headers['otoroshi-daily-calls-remaining'], '2');
}

describe('dailyQuota: 3 through nginx auth_request and through Envoy (both ext_authz modes)', () => {
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let backend: Awaited<ReturnType<typeof startCountingBackend>> | undefined;
  let nginx: TestNginx | undefined;
  const envoys: TestEnvoy[] = [];
  let offset = 0;
  // Each scenario starts at "now" and moves the quota clock to the next UTC day.
  const nextDay = () => {
    offset += msUntilNextDay(Date.now() + offset) + 1000;
  };

  before(async () => {
    authority = await startTestAuthority();
    extAuthz = await startTestExtAuthz(authority, {}, true, { quotaClock: () => Date.now() + offset });
    backend = await startCountingBackend();
    nginx = await startNginx({ extAuthzUrl: extAuthz.url, echoUrl: backend.url, authorityUrl: authority.url });
  });

  after(async () => {
    for (const step of [
      ...envoys.map((envoy) => () => envoy.stop()),
      () => nginx?.stop(),
      () => extAuthz?.close(),
      () => backend?.close(),
      () => authority?.stop(),
    ]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
  });

  it('nginx: counts down, 429 on the 4th call without reaching the backend, resets on a new UTC day', async () => {
    await dailyQuotaScenario(
      (token) => send(nginx!.url, '/', { headers: { authorization: `Bearer ${token}` } }),
      authority!,
      backend!,
      'quota-nginx',
      nextDay,
      () => nginx!.errorLog(),
      extAuthz!,
    );
  });

  for (const mode of [
    { config: 'envoy.yaml', cluster: 'ext_authz', address: (e: TestExtAuthz) => e.grpcAddress },
    { config: 'envoy-http.yaml', cluster: 'ext_authz_http', address: (e: TestExtAuthz) => new URL(e.url).host },
  ]) {
    it(`Envoy (${mode.config}): counts down, 429 on the 4th call without reaching the backend, resets on a new UTC day`, async () => {
      const endpoint = (hostPort: string) => ({ address: '127.0.0.1', port: Number(hostPort.split(':').pop()) });
      const envoy = await startEnvoy(mode.config, {
        token_authority: endpoint(new URL(authority!.url).host),
        echo: endpoint(new URL(backend!.url).host),
        token_authority_grpc: endpoint(authority!.grpcAddress),
        [mode.cluster]: endpoint(mode.address(extAuthz!)),
      });
      envoys.push(envoy);
      await dailyQuotaScenario(
        (token) => send(envoy.url, '/', { headers: { authorization: `Bearer ${token}` } }),
        authority!,
        backend!,
        `quota-${mode.cluster}`,
        nextDay,
        () => envoy.log(),
        extAuthz!,
      );
    });
  }
});

describe('admin API: quotas without Redis and without ext-authz, and RFC 6902 JSON Patch', () => {
  let authority: TestAuthority | undefined;

  before(async () => {
    authority = await startTestAuthority();
    await authority.admin('POST', '/api/apikeys', { clientId: 'patched', clientSecret: 'patched-secret-1', dailyQuota: 5 });
  });
  after(() => authority?.stop());

  it('answers the quotas without Redis (no ext-authz connected: zeros, 0 replicas), 404 for an unknown key', async () => {
    for (const method of ['GET', 'DELETE']) {
      const answer = await authority!.admin(method, '/api/apikeys/patched/quotas');
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(answer.body.authorizedCallsPerDay, 5);
      assert.equal(answer.body.currentCallsPerDay, 0);
      assert.equal(answer.body.sharedEnforcement, false);
      assert.deepEqual([answer.body.replicas, answer.body.replicasUnanswered], [0, 0]);
    }
    assert.equal((await authority!.admin('GET', '/api/apikeys/nobody/quotas')).status, 404);
  });

  it("applies Otoroshi's quotas tutorial patch, as an array or as application/json-patch+json", async () => {
    const answer = await authority!.admin('PATCH', '/api/apikeys/patched', [{ op: 'replace', path: '/dailyQuota', value: 10 }]);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.dailyQuota, 10);
    assert.equal(answer.body.secretHash, undefined);
    const response = await fetch(`${authority!.url}/api/apikeys/patched`, {
      method: 'PATCH',
      headers: { authorization: 'Bearer test-admin-token-0123456789', 'content-type': 'application/json-patch+json' },
      body: JSON.stringify([
        { op: 'test', path: '/dailyQuota', value: 10 },
        { op: 'add', path: '/metadata/team', value: 'blue' },
        { op: 'replace', path: '/throttlingQuota', value: 7 },
      ]),
    });
    const body = (await response.json()) as { throttlingQuota: number; metadata: object };
    assert.equal(response.status, 200, JSON.stringify(body));
    assert.equal(body.throttlingQuota, 7);
    assert.deepEqual(body.metadata, { team: 'blue' });
    // The merge body still works beside it.
    assert.equal((await authority!.admin('PATCH', '/api/apikeys/patched', { monthlyQuota: 99 })).body.monthlyQuota, 99);
  });

  it('goes through the same write as PUT: If-Match (412 when stale), a new ETag, an audit entry', async () => {
    const url = `${authority!.url}/api/apikeys/patched`;
    const admin = { authorization: 'Bearer test-admin-token-0123456789', 'content-type': 'application/json-patch+json' };
    const etag = (await fetch(url, { headers: admin })).headers.get('etag');
    assert.ok(etag);
    const patch = JSON.stringify([{ op: 'replace', path: '/dailyQuota', value: 11 }]);
    const stale = await fetch(url, { method: 'PATCH', headers: { ...admin, 'if-match': '"stale"' }, body: patch });
    assert.equal(stale.status, 412);
    const fresh = await fetch(url, { method: 'PATCH', headers: { ...admin, 'if-match': etag }, body: patch });
    assert.equal(fresh.status, 200);
    assert.notEqual(fresh.headers.get('etag'), etag);
    // Read-only fields are checked as for PUT.
    const readOnly = await authority!.admin('PATCH', '/api/apikeys/patched', [{ op: 'replace', path: '/createdAt', value: 1 }]);
    assert.equal(readOnly.status, 400);
    const entries = (await authority!.admin('GET', '/api/audit?entity=apikey&entityId=patched')).body as {
      action: string;
      change: Record<string, unknown>;
    }[];
    const last = entries[entries.length - 1];
    assert.equal(last.action, 'apikey.update');
    assert.deepEqual(last.change.dailyQuota, { before: 10, after: 11 });
    assert.equal(
      (await authority!.admin('PATCH', '/api/apikeys/patched', [{ op: 'replace', path: '/dailyQuota', value: 10 }])).status,
      200,
    );
  });

  it('refuses bad patches with 400 (409 for a failed test) and validates the result as PUT does', async () => {
    const cases: [unknown, number, RegExp][] = [
      [[{ op: 'replace', path: '/dailyQuota', value: -1 }], 400, /invalid input/],
      [[{ op: 'replace', path: '/dailyQuota', value: 'ten' }], 400, /invalid input/],
      [[{ op: 'add', path: '/unknownField', value: 1 }], 400, /invalid input/],
      [[{ op: 'replace', path: '/clientId', value: 'other' }], 400, /clientId cannot be changed/],
      [[{ op: 'remove', path: '/dailyQuota' }], 400, /dailyQuota cannot be removed/],
      [[{ op: 'jump', path: '/dailyQuota' }], 400, /invalid JSON Patch/],
      [[{ op: 'replace', path: '/nested/missing', value: 1 }], 400, /invalid JSON Patch/],
      [[{ op: 'replace', value: 1 }], 400, /invalid JSON Patch/],
      [['not an operation'], 400, /invalid JSON Patch/],
      // fast-json-patch throws (rather than reports) prototype paths: still a 400, never a 500.
      [[{ op: 'add', path: '/__proto__/polluted', value: 1 }], 400, /invalid JSON Patch/],
      [[{ op: 'replace', path: '/constructor/prototype/x', value: 1 }], 400, /invalid JSON Patch/],
      [[{ op: 'test', path: '/dailyQuota', value: 12345 }], 409, /test operation 0 failed/],
    ];
    for (const [patch, status, message] of cases) {
      const answer = await authority!.admin('PATCH', '/api/apikeys/patched', patch);
      assert.equal(answer.status, status, `${JSON.stringify(patch)}: ${JSON.stringify(answer.body)}`);
      assert.match(answer.body.error_description, message, JSON.stringify(patch));
    }
    const jsonPatchType = await fetch(`${authority!.url}/api/apikeys/patched`, {
      method: 'PATCH',
      headers: { authorization: 'Bearer test-admin-token-0123456789', 'content-type': 'application/json-patch+json' },
      body: JSON.stringify({ dailyQuota: 1 }),
    });
    assert.equal(jsonPatchType.status, 400);
    assert.match(((await jsonPatchType.json()) as { error_description: string }).error_description, /array of operations/);
    assert.equal((await authority!.admin('PATCH', '/api/apikeys/nobody', [{ op: 'replace', path: '/dailyQuota', value: 1 }])).status, 404);
    // Nothing of the refused patches was written.
    const stored = await authority!.admin('GET', '/api/apikeys/patched');
    assert.equal(stored.body.dailyQuota, 10);
    assert.equal(stored.body.throttlingQuota, 7);
  });
});
