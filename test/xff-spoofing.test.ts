import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { scryptLimits } from '../libs/core/crypto/secret-hash';
import { startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { startEnvoy, type TestEnvoy } from './support/envoy';
import { closeLoopbackAgents, postFrom } from './support/loopback-client';
import { freePort } from './support/ports';
import { redisTestPrefix, SHARED_REDIS } from './support/quota-fixtures';
import { Redis } from 'ioredis';

/*
 * Issue 22: through a real Envoy (envoy.yaml: use_remote_address, xff_num_trusted_hops 0) and the
 * authority trusting exactly that one hop (TRUST_PROXY=1, as `npm start` and compose), a client's
 * own X-Forwarded-For does not move it to another failure bucket. Clients send from 127.0.0.x.
 */
const OAUTH = 'oauth.oto.tools';
const tokenForm = (clientId: string, clientSecret: string) => ({
  grant_type: 'client_credentials',
  client_id: clientId,
  client_secret: clientSecret,
});
let spoofCounter = 0;
const madeUp = () => {
  spoofCounter += 1;
  return `10.${(spoofCounter >> 16) & 255}.${(spoofCounter >> 8) & 255}.${spoofCounter & 255}`;
};

describe('X-Forwarded-For written by the client does not evade the failure limits (through Envoy, TRUST_PROXY=1)', () => {
  let authority: TestAuthority | undefined;
  let envoy: TestEnvoy | undefined;
  const pacing = scryptLimits.dutyCycle;

  before(async () => {
    // Scrypt pacing off (bench/abuse.ts and abuse-limits.test.ts measure it): it only slows these sequences.
    scryptLimits.dutyCycle = 1;
    authority = await startTestAuthority({
      domain: OAUTH,
      trustProxy: '1',
      authFailures: { perClientAddress: 10, perAddress: 20, windowSeconds: 60 },
    });
    for (const clientId of ['spoofed', 'honest', 'many-a', 'budget'])
      assert.equal((await authority.admin('POST', '/api/apikeys', { clientId, clientSecret: `${clientId}-pw` })).status, 201);
    const endpoint = (hostPort: string) => ({ address: '127.0.0.1', port: Number(hostPort.split(':').pop()) });
    // Only the token authority is used; the other clusters point at closed ports.
    const nowhere = { address: '127.0.0.1', port: await freePort() };
    envoy = await startEnvoy('envoy.yaml', {
      token_authority: endpoint(new URL(authority.url).host),
      token_authority_grpc: endpoint(authority.grpcAddress),
      echo: nowhere,
      ext_authz: nowhere,
    });
  });

  after(async () => {
    scryptLimits.dutyCycle = pacing;
    closeLoopbackAgents();
    for (const step of [() => envoy?.stop(), () => authority?.stop()])
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
  });

  const viaEnvoy = (from: string, form: Record<string, string>, headers: Record<string, string> = {}) =>
    postFrom(from, envoy!.url, TOKEN_PATH, form, { host: OAUTH, ...headers });

  it('answers 429 after the same number of failures with rotating made-up X-Forwarded-For as from one plain address', async () => {
    const run = async (from: string, clientId: string, spoof: boolean) => {
      const statuses: number[] = [];
      for (let i = 0; i < 25; i++) {
        const reply = await viaEnvoy(from, tokenForm(clientId, `wrong-${i}`), spoof ? { 'x-forwarded-for': madeUp() } : {});
        statuses.push(reply.status);
      }
      return statuses;
    };
    const plain = await run('127.0.0.2', 'honest', false);
    const spoofed = await run('127.0.0.3', 'spoofed', true);
    assert.deepEqual(plain, [...Array(10).fill(401), ...Array(15).fill(429)]);
    assert.deepEqual(spoofed, plain);
    // The right secret from the blocked address is refused whatever it claims to be...
    for (const headers of [{}, { 'x-forwarded-for': madeUp() }, { 'x-forwarded-for': `${madeUp()}, ${madeUp()}` }] as Record<
      string,
      string
    >[]) {
      const reply = await viaEnvoy('127.0.0.3', tokenForm('spoofed', 'spoofed-pw'), headers);
      assert.equal(reply.status, 429, JSON.stringify(headers));
      assert.ok(Number(reply.headers['retry-after']) >= 1);
    }
    // ...and passes from another real address.
    assert.equal((await viaEnvoy('127.0.0.4', tokenForm('spoofed', 'spoofed-pw'))).status, 200);
  });

  it('keeps the per-address limit on the real peer across made-up X-Forwarded-For and rotating ids', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 22; i++) {
      const reply = await viaEnvoy('127.0.0.5', tokenForm(`nobody-${i}`, 'wrong'), { 'x-forwarded-for': madeUp() });
      statuses.push(reply.status);
    }
    assert.deepEqual(statuses, [...Array(20).fill(401), 429, 429]);
    // Even a client with the right secret is refused from that address, and passes from another.
    assert.equal((await viaEnvoy('127.0.0.5', tokenForm('many-a', 'many-a-pw'), { 'x-forwarded-for': madeUp() })).status, 429);
    assert.equal((await viaEnvoy('127.0.0.6', tokenForm('many-a', 'many-a-pw'))).status, 200);
  });

  it('holds the per-client budget across real addresses (127.0.0.10 ...): then one shared attempt per 10 s, the known address unaffected', async () => {
    // The client's own address authenticates first, so it is known (exempt) for a day.
    assert.equal((await viaEnvoy('127.0.0.9', tokenForm('budget', 'budget-pw'))).status, 200);
    // 30 failures from ten real addresses, three each, every one with a made-up X-Forwarded-For: all 401.
    for (let i = 0; i < 30; i++) {
      const reply = await viaEnvoy(`127.0.0.${10 + (i % 10)}`, tokenForm('budget', `wrong-${i}`), { 'x-forwarded-for': madeUp() });
      assert.equal(reply.status, 401, `failure ${i + 1}: ${reply.body}`);
    }
    // Past the budget: the first attempt from a fresh address takes the shared slot; the next ones wait.
    assert.equal((await viaEnvoy('127.0.0.20', tokenForm('budget', 'wrong-31'))).status, 401);
    for (const from of ['127.0.0.21', '127.0.0.22', '127.0.0.10']) {
      const reply = await viaEnvoy(from, tokenForm('budget', 'budget-pw'), { 'x-forwarded-for': madeUp() });
      assert.equal(reply.status, 429, `${from}: ${reply.body}`);
      const retryAfter = Number(reply.headers['retry-after']);
      assert.ok(retryAfter >= 1 && retryAfter <= 10, `Retry-After ${reply.headers['retry-after']}`);
      assert.deepEqual(JSON.parse(reply.body), {
        error: 'temporarily_unavailable',
        error_description: 'too many failed client authentications; retry later',
      });
    }
    // The client from its known address is not slowed down by the stranger's failures.
    for (let i = 0; i < 3; i++) assert.equal((await viaEnvoy('127.0.0.9', tokenForm('budget', 'budget-pw'))).status, 200);
  });
});

describe('the per-client budget is shared on Redis by authority replicas (own key prefix, cleaned up)', () => {
  const redisKeys = redisTestPrefix();
  const replicas: TestAuthority[] = [];
  const pacing = scryptLimits.dutyCycle;

  before(async () => {
    scryptLimits.dutyCycle = 1;
    for (let i = 0; i < 2; i++) {
      const replica = await startTestAuthority({
        redis: { url: SHARED_REDIS, keyPrefix: redisKeys.prefix },
        authFailures: { perClientAddress: 10, perAddress: 100, perClient: 30, slowIntervalSeconds: 10 },
      });
      assert.equal((await replica.admin('POST', '/api/apikeys', { clientId: 'shared', clientSecret: 'shared-pw' })).status, 201);
      replicas.push(replica);
    }
  });

  after(async () => {
    scryptLimits.dutyCycle = pacing;
    closeLoopbackAgents();
    for (const replica of replicas) await replica.stop().catch(() => undefined);
    await redisKeys.cleanup();
  });

  it('counts failures on either replica toward one budget, and one replica sees the address known on the other', async () => {
    // Known on replica 0 only.
    assert.equal((await postFrom('127.0.0.40', replicas[0].url, TOKEN_PATH, tokenForm('shared', 'shared-pw'))).status, 200);
    for (let i = 0; i < 30; i++) {
      const reply = await postFrom(`127.0.0.${41 + (i % 15)}`, replicas[i % 2].url, TOKEN_PATH, tokenForm('shared', `wrong-${i}`));
      assert.equal(reply.status, 401, `failure ${i + 1} on replica ${i % 2}`);
    }
    assert.equal((await postFrom('127.0.0.60', replicas[0].url, TOKEN_PATH, tokenForm('shared', 'wrong-x'))).status, 401, 'the slot');
    assert.equal((await postFrom('127.0.0.61', replicas[1].url, TOKEN_PATH, tokenForm('shared', 'shared-pw'))).status, 429);
    assert.equal((await postFrom('127.0.0.40', replicas[1].url, TOKEN_PATH, tokenForm('shared', 'shared-pw'))).status, 200);
    // The counters are under the test's prefix on Redis.
    const redis = new Redis(SHARED_REDIS, { maxRetriesPerRequest: 1 });
    try {
      const [, keys] = await redis.scan('0', 'MATCH', `${redisKeys.prefix}authfail:*`, 'COUNT', 1000);
      assert.ok(
        keys.some((key) => key.startsWith(`${redisKeys.prefix}authfail:client`)),
        keys.join(' '),
      );
      assert.ok(
        keys.some((key) => key.startsWith(`${redisKeys.prefix}authfail:known`)),
        keys.join(' '),
      );
    } finally {
      redis.disconnect();
    }
  });
});
