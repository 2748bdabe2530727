import {
  credentials,
  type ClientReadableStream,
  loadPackageDefinition,
  Metadata,
  type ServiceError,
  status as GrpcStatus,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { scryptLimits, scryptLoad, SecretHashBusy, verifySecret } from '../libs/core/crypto/secret-hash';
import { decodeErrorInfo } from '../libs/grpc/rich-status';
import { AUTHORITY_WATCH_PROTO, LOADER_OPTIONS } from '../services/token-authority/grpc-options';
import { ADMIN_TOKEN, INTROSPECT_PATH, REVOKE_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { tokenAuthorityClient } from './support/grpc';
import { closeLoopbackAgents, percentile, postFrom, requestFrom } from './support/loopback-client';

const GOOD_SECRET = 'good-secret-0123456789-0123456789-0123456789';
const tokenForm = (clientId: string, clientSecret: string) => ({
  grant_type: 'client_credentials',
  client_id: clientId,
  client_secret: clientSecret,
});

describe('failed client authentications on the token authority are limited per (id, address) and per address', () => {
  let authority: TestAuthority | undefined;

  before(async () => {
    authority = await startTestAuthority({ authFailures: { perClientAddress: 10, perAddress: 100, windowSeconds: 60 } });
    for (const [clientId, clientSecret] of [
      ['victim', 'victim-pw'],
      ['good', GOOD_SECRET],
      ['grpc-victim', 'grpc-victim-pw'],
    ])
      assert.equal((await authority.admin('POST', '/api/apikeys', { clientId, clientSecret })).status, 201);
  });

  after(async () => {
    closeLoopbackAgents();
    await authority?.stop();
  });

  it('cuts 1,000 wrong secrets for one id from one address off after the threshold, while another client keeps its latency', async (t) => {
    const base = authority!.url;
    const good = () => postFrom('127.0.0.1', base, TOKEN_PATH, tokenForm('good', GOOD_SECRET));
    // Baseline of the well-behaved client, alone.
    const baseline: number[] = [];
    for (let i = 0; i < 60; i++) {
      const reply = await good();
      assert.equal(reply.status, 200, reply.body);
      baseline.push(reply.ms);
    }

    const statuses = new Map<number, number>();
    let sent = 0;
    let flooding = true;
    const concurrency = 4;
    const attacker = Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (sent < 1000) {
          sent += 1;
          const reply = await postFrom('127.0.0.2', base, TOKEN_PATH, tokenForm('victim', `wrong-${sent}`));
          statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1);
          if (reply.status === 429) {
            const retryAfter = Number(reply.headers['retry-after']);
            assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${reply.headers['retry-after']}`);
            assert.deepEqual(JSON.parse(reply.body), {
              error: 'temporarily_unavailable',
              error_description: 'too many failed client authentications; retry later',
            });
          }
        }
      }),
    ).finally(() => {
      flooding = false;
    });
    const during: number[] = [];
    while (flooding || during.length < 30) {
      const reply = await good();
      assert.equal(reply.status, 200, reply.body);
      during.push(reply.ms);
    }
    await attacker;

    const refused = statuses.get(429) ?? 0;
    const failed = statuses.get(401) ?? 0;
    t.diagnostic(
      `attacker: ${failed} × 401, ${refused} × 429, ${statuses.get(503) ?? 0} × 503 (scrypt queue full); good client p99 ${percentile(baseline, 99).toFixed(1)} ms alone, ${percentile(during, 99).toFixed(1)} ms during the flood (${during.length} tokens)`,
    );
    // 503: the bounded scrypt queue was full (see below); it checks nothing and counts for nothing.
    const busy = statuses.get(503) ?? 0;
    assert.equal(failed + refused + busy, 1000, JSON.stringify([...statuses]));
    // The threshold is 10; up to `concurrency` more were already past the check when the 10th failed.
    assert.ok(failed >= 10 && failed <= 10 + concurrency, `${failed} wrong secrets were checked`);
    assert.ok(refused > 900, `${refused} refused with 429`);
    // Tolerance for a shared machine: at most twice the baseline p99, or 20 ms over it.
    assert.ok(
      percentile(during, 99) <= Math.max(2 * percentile(baseline, 99), percentile(baseline, 99) + 20),
      `good client p99 ${percentile(during, 99)} ms during the flood vs ${percentile(baseline, 99)} ms`,
    );
    // The victim's owner, from its own address, is not locked out by the attacker's failures.
    assert.equal((await postFrom('127.0.0.5', base, TOKEN_PATH, tokenForm('victim', 'victim-pw'))).status, 200);
    // The attacker's address is refused on introspection and revocation too, even with a right secret.
    for (const path of [INTROSPECT_PATH, REVOKE_PATH]) {
      const reply = await postFrom('127.0.0.2', base, path, { token: 'x', client_id: 'victim', client_secret: 'victim-pw' });
      assert.equal(reply.status, 429, `${path}: ${reply.body}`);
    }
  });

  it('answers the same for an existing and an unknown client id', async (t) => {
    // Scrypt pacing off here: it is measured above, and only slows this sequence down.
    const saved = scryptLimits.dutyCycle;
    scryptLimits.dutyCycle = 1;
    t.after(() => {
      scryptLimits.dutyCycle = saved;
    });
    const run = async (address: string, clientId: string) => {
      const replies = [];
      for (let i = 0; i < 12; i++) {
        const reply = await postFrom(address, authority!.url, TOKEN_PATH, tokenForm(clientId, `nope-${i}`));
        replies.push({
          status: reply.status,
          body: reply.body,
          retryAfter: reply.headers['retry-after'] === undefined ? undefined : Number(reply.headers['retry-after']) > 55,
          wwwAuthenticate: reply.headers['www-authenticate'],
          headers: Object.keys(reply.headers)
            .filter((name) => name !== 'date' && name !== 'connection' && name !== 'keep-alive')
            .sort(),
        });
      }
      return replies;
    };
    const existing = await run('127.0.0.3', 'victim');
    const unknown = await run('127.0.0.4', 'nobody-by-that-name');
    assert.deepEqual(existing, unknown);
    assert.deepEqual(
      existing.map((reply) => reply.status),
      [...Array(10).fill(401), 429, 429],
    );
  });

  it('answers RESOURCE_EXHAUSTED over gRPC past the threshold, with retry-after', async () => {
    const client = tokenAuthorityClient(authority!.grpcAddress);
    try {
      const codes: number[] = [];
      let last: Awaited<ReturnType<typeof client.call>> | undefined;
      for (let i = 0; i < 12; i++) {
        last = await client.call('IssueToken', {
          grant_type: 'client_credentials',
          client: { client_id: 'grpc-victim', client_secret: `nope-${i}` },
        });
        codes.push(last.ok ? 0 : last.error.code);
      }
      assert.deepEqual(codes, [...Array(10).fill(16), 8, 8], 'UNAUTHENTICATED ×10, then RESOURCE_EXHAUSTED');
      assert.ok(last && !last.ok);
      const retryAfter = Number(last.error.metadata.get('retry-after')[0]);
      assert.ok(retryAfter >= 1 && retryAfter <= 60);
      assert.equal(decodeErrorInfo(last.error.metadata)?.reason, 'temporarily_unavailable');
    } finally {
      client.close();
    }
  });
});

describe('ext-authz limits failed Basic / secret-header authentications per (id, address) and per address', () => {
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;

  before(async () => {
    authority = await startTestAuthority();
    await authority.admin('POST', '/api/apikeys', { clientId: 'basic-user', clientSecret: 'basic-pw-1' });
    extAuthz = await startTestExtAuthz(authority, { authFailures: { perClientAddress: 10, perAddress: 100 } });
    await extAuthz.waitFor(() => extAuthz!.replica.apiKey('basic-user') !== undefined);
  });
  after(async () => {
    await extAuthz?.close();
    await authority?.stop();
  });

  const basicCheck = (policy: string, headers: Record<string, string>, address: string) =>
    fetch(`${extAuthz!.url}/authz/${policy}`, { headers: { 'x-real-ip': address, ...headers } });
  const basic = (id: string, secret: string) => ({ authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` });

  it('answers 429 with Retry-After past the threshold, the same for a known and an unknown id; others pass', async () => {
    for (const [id, address] of [
      ['basic-user', '10.0.0.1'],
      ['nobody', '10.0.0.2'],
    ]) {
      const statuses: number[] = [];
      let last: Response | undefined;
      for (let i = 0; i < 12; i++) {
        last = await basicCheck('basic', basic(id, `wrong-${i}`), address);
        statuses.push(last.status);
        if (i < 11) await last.arrayBuffer();
      }
      assert.deepEqual(statuses, [...Array(10).fill(401), 429, 429], id);
      assert.deepEqual(await last!.json(), { 'Otoroshi-Error': 'Too many failed authentications' });
      assert.ok(Number(last!.headers.get('retry-after')) >= 1);
    }
    // The right secret from the blocked address is refused too (no guessing past the limit)...
    assert.equal((await basicCheck('basic', basic('basic-user', 'basic-pw-1'), '10.0.0.1')).status, 429);
    // ...and passes from anywhere else; the custom-header extractor counts the same way.
    assert.equal((await basicCheck('basic', basic('basic-user', 'basic-pw-1'), '10.0.0.3')).status, 200);
    for (let i = 0; i < 10; i++) {
      const answer = await basicCheck('headers', { 'otoroshi-client-id': 'basic-user', 'otoroshi-client-secret': `x${i}` }, '10.0.0.4');
      assert.equal(answer.status, 401);
    }
    const blocked = await basicCheck('headers', { 'otoroshi-client-id': 'basic-user', 'otoroshi-client-secret': 'basic-pw-1' }, '10.0.0.4');
    assert.equal(blocked.status, 429);
  });

  it('believes X-Real-IP / X-Forwarded-For only from a trusted proxy (TRUST_PROXY): from any other peer they change nothing', async () => {
    for (const trustProxy of ['10.0.0.0/8', false]) {
      const untrusting = await startTestExtAuthz(authority!, { trustProxy, authFailures: { perClientAddress: 5, perAddress: 100 } });
      try {
        await untrusting.waitFor(() => untrusting.replica.apiKey('basic-user') !== undefined);
        const statuses: number[] = [];
        for (let i = 0; i < 7; i++) {
          // Each from "another address", in both headers: all are 127.0.0.1's, which no setting trusts here.
          const answer = await fetch(`${untrusting.url}/authz/basic`, {
            headers: { ...basic('basic-user', `wrong-${i}`), 'x-real-ip': `10.1.0.${i}`, 'x-forwarded-for': `10.2.0.${i}` },
          });
          statuses.push(answer.status);
          await answer.arrayBuffer();
        }
        assert.deepEqual(statuses, [401, 401, 401, 401, 401, 429, 429], `TRUST_PROXY ${trustProxy}`);
      } finally {
        await untrusting.close();
      }
    }
  });
});

describe('wrong tokens on AuthorityWatch (DeltaWatch, QuotaCounters) are limited too: no unlimited oracle for the admin token', () => {
  it('RESOURCE_EXHAUSTED with retry-after past the budget, the right token too; no token is no guess; the admin API counts apart', async () => {
    const authority = await startTestAuthority({ authFailures: { perClientAddress: 3, perAddress: 1000, windowSeconds: 60 } });
    const definition = loadPackageDefinition(loadSync(AUTHORITY_WATCH_PROTO, LOADER_OPTIONS)) as any;
    const client = new definition.token_authority.v1.AuthorityWatch(authority.grpcAddress, credentials.createInsecure());
    const withToken = (token?: string) => {
      const metadata = new Metadata();
      if (token !== undefined) metadata.set('authorization', `Bearer ${token}`);
      return metadata;
    };
    // The first message (a snapshot) or the error that ends the call.
    const outcome = (call: ClientReadableStream<unknown>) =>
      new Promise<ServiceError | 'streaming'>((resolve) => {
        call.once('data', () => {
          resolve('streaming');
          call.cancel();
        });
        call.on('error', (error: ServiceError) => resolve(error));
      });
    const watch = async (token?: string) => {
      const result = await outcome(client.DeltaWatch({ node_id: 'abuse' }, withToken(token)));
      return result === 'streaming' ? result : GrpcStatus[result.code];
    };
    try {
      assert.equal(await watch(ADMIN_TOKEN), 'streaming');
      for (let i = 0; i < 5; i++) assert.equal(await watch(), 'UNAUTHENTICATED', 'no token: no guess');
      const wrong: string[] = [];
      for (let i = 0; i < 5; i++) wrong.push(await watch(`wrong-token-${i}`));
      assert.deepEqual(wrong, ['UNAUTHENTICATED', 'UNAUTHENTICATED', 'UNAUTHENTICATED', 'RESOURCE_EXHAUSTED', 'RESOURCE_EXHAUSTED']);
      const refused = await outcome(client.DeltaWatch({ node_id: 'abuse' }, withToken(ADMIN_TOKEN)));
      assert.notEqual(refused, 'streaming', 'the right token is refused too past the budget');
      const error = refused as ServiceError;
      assert.equal(error.code, GrpcStatus.RESOURCE_EXHAUSTED);
      const retryAfter = Number(error.metadata.get('retry-after')[0]);
      assert.ok(retryAfter >= 1 && retryAfter <= 60, `retry-after ${retryAfter}`);
      assert.equal(decodeErrorInfo(error.metadata)?.reason, 'temporarily_unavailable');
      // QuotaCounters shares the budget; the admin API (same address) has its own.
      const quotaCall = client.QuotaCounters(withToken('wrong-token-again'));
      const quotaError = await new Promise<ServiceError>((resolve) => quotaCall.on('error', resolve));
      assert.equal(quotaError.code, GrpcStatus.RESOURCE_EXHAUSTED);
      assert.equal((await authority.admin('GET', '/api/apikeys')).status, 200);
    } finally {
      client.close();
      await authority.stop();
    }
  });
});

describe('the slow secret hash has bounded concurrency', () => {
  it('runs at most `concurrency` scrypt at once, queues a few, and refuses the rest at once with SecretHashBusy', async () => {
    const saved = { ...scryptLimits };
    Object.assign(scryptLimits, { concurrency: 1, queue: 2, dutyCycle: 1 });
    try {
      let peak = 0;
      const sampler = setInterval(() => (peak = Math.max(peak, scryptLoad().running)), 1);
      const outcomes = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          verifySecret(`short-${i}`, []).then(
            (ok) => (ok ? 'ok' : 'no'),
            (error) => (error instanceof SecretHashBusy ? 'busy' : 'error'),
          ),
        ),
      );
      clearInterval(sampler);
      assert.equal(outcomes.filter((outcome) => outcome === 'busy').length, 7, outcomes.join());
      assert.equal(outcomes.filter((outcome) => outcome === 'no').length, 3);
      assert.ok(peak <= 1, `peak ${peak}`);
      assert.deepEqual(scryptLoad(), { running: 0, waiting: 0 });
    } finally {
      Object.assign(scryptLimits, saved);
    }
  });

  it('answers 503 temporarily_unavailable with Retry-After: 1 (not a 500) when a flood fills the queue', async () => {
    const authority = await startTestAuthority();
    try {
      const replies = await Promise.all(
        Array.from({ length: 60 }, (_, i) =>
          postFrom(`127.0.1.${(i % 50) + 1}`, authority.url, TOKEN_PATH, tokenForm(`flood-${i}`, `short-${i}`)),
        ),
      );
      const statuses = replies.map((reply) => reply.status);
      assert.ok(
        statuses.every((status) => status === 401 || status === 503),
        statuses.join(),
      );
      const busy = replies.filter((reply) => reply.status === 503);
      assert.ok(busy.length > 0, 'the queue filled up');
      assert.equal(busy[0].headers['retry-after'], '1');
      assert.deepEqual(JSON.parse(busy[0].body), {
        error: 'temporarily_unavailable',
        error_description: 'the server is busy; retry later',
      });
    } finally {
      await authority.stop();
      closeLoopbackAgents();
    }
  });
});

describe('wrong admin tokens are limited per address, then for the token across addresses (known addresses exempt)', () => {
  it('429 with Retry-After past the budget, before the token is checked; no token is no guess; the admin keeps working from where it worked', async () => {
    // Apart from the OAuth clients' counts: the OAuth budgets stay out of the way here.
    const authority = await startTestAuthority({
      authFailures: { perClientAddress: 5, perAddress: 1000, windowSeconds: 60, perClient: 8, slowIntervalSeconds: 60 },
    });
    const admin = (from: string, token?: string) =>
      requestFrom(from, authority.url, {
        method: 'GET',
        path: '/api/apikeys',
        headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
      });
    const statuses = async (from: string, token: string | undefined, count: number) => {
      const seen: number[] = [];
      for (let index = 0; index < count; index++) seen.push((await admin(from, token)).status);
      return seen.join(',');
    };
    try {
      assert.equal((await admin('127.0.0.3', ADMIN_TOKEN)).status, 200, 'the admin, from its usual address');
      // Five wrong tokens from one address, then refused, the right token too (no oracle).
      assert.equal(await statuses('127.0.0.2', 'wrong-admin-token', 7), '401,401,401,401,401,429,429');
      const refused = await admin('127.0.0.2', ADMIN_TOKEN);
      assert.equal(refused.status, 429);
      const retryAfter = Number(refused.headers['retry-after']);
      assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${refused.headers['retry-after']}`);
      assert.deepEqual(JSON.parse(refused.body), {
        error: 'temporarily_unavailable',
        error_description: 'too many wrong admin tokens; retry later',
      });
      assert.equal((await admin('127.0.0.3', ADMIN_TOKEN)).status, 200, 'another address is not affected');
      // Requests without a token are not guesses.
      assert.equal(await statuses('127.0.0.4', undefined, 10), '401,401,401,401,401,401,401,401,401,401');
      // The OAuth clients' budget is another one: five failed client logins from 127.0.0.4 leave its admin budget alone.
      for (let index = 0; index < 5; index++)
        assert.equal((await postFrom('127.0.0.4', authority.url, TOKEN_PATH, tokenForm('nobody', `wrong-${index}`))).status, 401);
      // Three more wrong tokens from a second address: eight in all, the token's budget is spent.
      assert.equal(await statuses('127.0.0.4', 'wrong-admin-token', 3), '401,401,401');
      // Past it, addresses never seen with the right token share one attempt per slowIntervalSeconds...
      // (a wrong token takes the slot here; a right one would make its address known).
      assert.equal((await admin('127.0.0.5', 'wrong-admin-token')).status, 401);
      assert.equal((await admin('127.0.0.5', ADMIN_TOKEN)).status, 429);
      assert.equal((await admin('127.0.0.6', ADMIN_TOKEN)).status, 429);
      // ...while the addresses that presented it lately are exempt.
      assert.equal(await statuses('127.0.0.3', ADMIN_TOKEN, 3), '200,200,200');
      const unauthorized = await admin('127.0.0.3', 'wrong-admin-token');
      assert.equal(unauthorized.status, 401);
      assert.equal(unauthorized.headers['www-authenticate'], 'Bearer realm="admin"');
    } finally {
      closeLoopbackAgents();
      await authority.stop();
    }
  });
});
