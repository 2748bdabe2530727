import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { basic, startTestAuthority, type TestAuthority, TOKEN_PATH } from './support/authority';
import type { ChildService } from './support/child-service';
import { startExtAuthzProcess, TEST_POLICIES } from './support/ext-authz';
import { httpRequest } from './support/http';
import { redisTestPrefix, SHARED_REDIS } from './support/quota-fixtures';

/*
 * DPoP across replicas (issue 20): two token authorities on one store and two ext-authz
 * processes on one real Redis (a key prefix of their own, removed after), all requiring nonces.
 * A nonce one replica hands out is taken by the other (an HMAC'd time slot, keyed alike on every
 * replica from the data plane token: no shared state), and a proof taken by one replica is
 * refused by the other (token endpoint: the store; ext-authz: Redis SET NX PX).
 */
const DATA_PLANE_TOKEN = 'dpop-replicas-data-plane-token';
const SECRET = 'dpop-replicas-secret';
const NONCES = { requireNonce: true, nonceLifetime: 300 };

describe('DPoP nonces and proof replay across replicas', () => {
  let a: TestAuthority;
  let b: TestAuthority;
  const extAuthz: ChildService[] = [];
  const bases: string[] = [];
  let dir: string;
  const redisKeys = redisTestPrefix();
  let key: Awaited<ReturnType<typeof generateKeyPair>>;
  let jwk: Awaited<ReturnType<typeof exportJWK>>;

  before(async () => {
    a = await startTestAuthority({ dpop: NONCES, dataPlaneToken: DATA_PLANE_TOKEN });
    b = await startTestAuthority({ dpop: NONCES, dataPlaneToken: DATA_PLANE_TOKEN }, a.dataDir);
    assert.equal((await a.admin('POST', '/api/apikeys', { clientId: 'bound', clientSecret: SECRET })).status, 201);
    key = await generateKeyPair('ES256');
    jwk = await exportJWK(key.publicKey);
    dir = mkdtempSync(join(tmpdir(), 'dpop-replicas-'));
    for (let i = 0; i < 2; i++) {
      const { replica, base } = await startExtAuthzProcess(`ext-authz-${i}`, dir, {
        authority: { url: (i === 0 ? a : b).grpcAddress, token: DATA_PLANE_TOKEN, initialBackoff: 50, maxBackoff: 500 },
        policies: { open: TEST_POLICIES.open },
        quotas: { redisUrl: SHARED_REDIS, keyPrefix: redisKeys.prefix },
        dpop: NONCES,
        log: { level: 'warn' },
      });
      extAuthz.push(replica);
      bases.push(base);
    }
  });

  after(async () => {
    for (const replica of extAuthz) await replica.stop().catch(() => undefined);
    await b?.stop();
    await a?.stop();
    await redisKeys.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const tokenProof = (authority: TestAuthority, nonce?: string, htu = `${authority.url}${TOKEN_PATH}`) =>
    new SignJWT({ htm: 'POST', htu, jti: crypto.randomUUID(), ...(nonce ? { nonce } : {}) })
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
      .setIssuedAt()
      .sign(key.privateKey);
  const token = (authority: TestAuthority, dpop: string) =>
    authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials' }, { authorization: basic('bound', SECRET), dpop });

  it('token endpoint: a nonce from one authority is taken by the other; a proof used at one is refused at the other (shared store)', async () => {
    const asked = await token(a, await tokenProof(a));
    assert.equal(asked.status, 400);
    assert.equal(((await asked.json()) as { error: string }).error, 'use_dpop_nonce');
    const nonce = asked.headers.get('dpop-nonce');
    assert.match(nonce ?? '', /^[A-Za-z0-9_-]{27}$/);
    // b answers with the same nonce: nothing is shared but the data plane token.
    assert.equal((await token(b, await tokenProof(b))).headers.get('dpop-nonce'), nonce);
    // Replicas behind one URL: the proof names the token endpoint as the issuer publishes it.
    const once = await tokenProof(a, nonce!, `${a.config.issuer}${TOKEN_PATH}`);
    const issued = await token(b, once);
    assert.equal(issued.status, 200, 'the nonce of a is taken by b');
    assert.equal(((await issued.json()) as { token_type: string }).token_type, 'DPoP');
    for (const [name, replica] of [
      ['a', a],
      ['b', b],
    ] as const) {
      const replayed = await token(replica, once);
      assert.equal(replayed.status, 400, name);
      const body = (await replayed.json()) as { error: string; error_description: string };
      assert.equal(body.error, 'invalid_dpop_proof', name);
      assert.match(body.error_description, /already used/, name);
    }
  });

  it('ext-authz: a nonce from one process is taken by the other; a proof used at one is refused at the other (Redis)', async () => {
    const nonce = (await token(a, await tokenProof(a))).headers.get('dpop-nonce')!;
    const accessToken = ((await (await token(a, await tokenProof(a, nonce))).json()) as { access_token: string }).access_token;
    assert.deepEqual(decodeJwt(accessToken).cnf, { jkt: await calculateJwkThumbprint(jwk) });
    const ath = createHash('sha256').update(accessToken).digest('base64url');
    // The HTTP mode's URL: Host (the same for both, as behind one balancer) and the path after /authz/open.
    const host = 'api.example:8080';
    const proof = (resourceNonce?: string) =>
      new SignJWT({
        htm: 'GET',
        htu: `http://${host}/items`,
        jti: crypto.randomUUID(),
        ath,
        ...(resourceNonce ? { nonce: resourceNonce } : {}),
      })
        .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
        .setIssuedAt()
        .sign(key.privateKey);
    const check = (base: string, dpop: string) =>
      httpRequest(`${base}/authz/open/items`, { headers: { host, authorization: `DPoP ${accessToken}`, dpop } });

    const asked = await check(bases[0], await proof());
    assert.equal(asked.status, 401);
    assert.equal(
      asked.headers['www-authenticate'],
      'DPoP realm="open", algs="ES256 RS256 PS256 EdDSA", error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"',
    );
    const resourceNonce = asked.headers['dpop-nonce'] as string;
    assert.match(resourceNonce ?? '', /^[A-Za-z0-9_-]{27}$/);
    assert.notEqual(resourceNonce, nonce, "ext-authz's nonces are not the token endpoint's");

    const once = await proof(resourceNonce!);
    const allowed = await check(bases[1], once);
    assert.equal(allowed.status, 200, 'the nonce of process 0 is taken by process 1');
    assert.equal(allowed.headers['x-client-id'], 'bound');
    const replayed = await check(bases[0], once);
    assert.equal(replayed.status, 401, 'the proof process 1 took is refused by process 0');
    assert.match(replayed.headers['www-authenticate'] ?? '', /error="invalid_dpop_proof"/);
    assert.equal((await check(bases[1], once)).status, 401, 'and by process 1 itself');
    assert.equal((await check(bases[0], await proof(resourceNonce!))).status, 200, 'a fresh proof passes');

    // The used jtis are on Redis under the prefix, for about a minute.
    const redis = new Redis(SHARED_REDIS, { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await redis.connect();
      const keys = await redis.keys(`${redisKeys.prefix}dpop-jti:*`);
      assert.equal(keys.length, 2);
      const ttl = await redis.pttl(keys[0]);
      assert.ok(ttl > 50_000 && ttl <= 65_000, String(ttl));
    } finally {
      redis.disconnect();
    }
  });
});
