import { createHash } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { Redis } from 'ioredis';
import { Authorizer } from '../libs/authz/authorizer';
import { RedisDpopReplays } from '../libs/authz/dpop-redis';
import { DpopVerifier } from '../libs/core/dpop';
import { DpopNonces } from '../libs/core/dpop-nonce';
import { accessClaims, apiKey, authzConfig, replicaWith, signAccessToken, testKeyPair } from '../test/unit/support/fixtures';

/**
 * What a DPoP proof adds to one Check: Authorizer.decide (the core decision both transports
 * call, in process, no network) for a warm bearer token against the same token DPoP-bound with
 * a fresh ES256 proof per call (made beforehand by jose: each proof is used once), then the same
 * with nonces required (the proofs carry the current one: an HMAC check more), and, with
 * BENCH_REDIS_URL, with the jtis shared on Redis (one SET NX PX round trip per Check, awaited one
 * at a time). Bounded: at most PROOFS calls per row and BENCH_SECONDS s.
 *
 *   npm run build && node dist/bench/dpop-check.js
 *   BENCH_REDIS_URL=redis://127.0.0.1:6379 node dist/bench/dpop-check.js
 */

const PROOFS = Number(process.env.BENCH_PROOFS ?? 5000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const URL_ = 'http://foo.oto.tools/api/items';

async function main(): Promise<void> {
  const pair = testKeyPair('kp-1');
  const replica = replicaWith([pair], [apiKey('app')], Date.now);
  const authorizer = new Authorizer(authzConfig(), replica, Date.now);
  const key = await generateKeyPair('ES256');
  const jwk = await exportJWK(key.publicKey);
  const now = Math.floor(Date.now() / 1000);
  const bearer = await signAccessToken(pair, accessClaims('app', now));
  const bound = await signAccessToken(pair, accessClaims('app', now, { cnf: { jkt: await calculateJwkThumbprint(jwk) } }));
  const ath = createHash('sha256').update(bound).digest('base64url');
  const nonces = new DpopNonces(Buffer.alloc(32, 1), 300, 'resource');
  const makeProofs = async (nonce?: string) => {
    const made: string[] = [];
    for (let i = 0; i < PROOFS; i++)
      made.push(
        await new SignJWT({ htm: 'GET', htu: URL_, jti: crypto.randomUUID(), ath, ...(nonce ? { nonce } : {}) })
          .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
          .setIssuedAt()
          .sign(key.privateKey),
      );
    return made;
  };
  const proofs = await makeProofs();
  const noncedProofs = await makeProofs(nonces.issue(Date.now()));
  const row = (name: string, call: (i: number) => unknown) => {
    call(0); // warm: verifies the token once, so both rows hit the verified-token cache
    const deadline = process.hrtime.bigint() + BigInt(SECONDS) * 1_000_000_000n;
    const started = process.hrtime.bigint();
    let count = 1;
    for (; count < PROOFS && process.hrtime.bigint() < deadline; count++) {
      const decision = call(count) as { allowed?: boolean };
      if (!decision.allowed) throw new Error(`${name}: call ${count} denied: ${JSON.stringify(decision)}`);
    }
    const us = Number(process.hrtime.bigint() - started) / 1000 / (count - 1);
    console.log(`${name.padEnd(40)} ${String(count - 1).padStart(6)} calls  ${us.toFixed(1).padStart(7)} µs/Check`);
    return us;
  };
  const request = { policy: 'api', method: 'GET', url: `${URL_}?page=2` };
  const b = row('Bearer (warm cache)', () => authorizer.decide({ ...request, headers: { authorization: `Bearer ${bearer}` } }));
  const d = row('DPoP, ES256 proof (token warm)', (i) =>
    authorizer.decide({ ...request, headers: { authorization: `DPoP ${bound}`, dpop: proofs[i] } }),
  );
  const withNonces = new Authorizer(authzConfig(), replica, Date.now, { dpop: new DpopVerifier({ nonces }) });
  const n = row('DPoP, ES256 proof, nonce required', (i) =>
    withNonces.decide({ ...request, headers: { authorization: `DPoP ${bound}`, dpop: noncedProofs[i] } }),
  );
  console.log(
    `DPoP adds ${(d - b).toFixed(1)} µs per Check (${(d / b).toFixed(1)}x bearer); a nonce ${(n - d).toFixed(1)} µs more; node ${process.version}`,
  );
  const redisUrl = process.env.BENCH_REDIS_URL;
  if (redisUrl) {
    const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
    const prefix = `bench-dpop-${process.pid}:`;
    try {
      const shared = new Authorizer(authzConfig(), replica, Date.now, {
        dpop: new DpopVerifier({ replays: new RedisDpopReplays(redis, prefix, 1000) }),
      });
      const redisProofs = await makeProofs();
      const started = process.hrtime.bigint();
      const deadline = started + BigInt(SECONDS) * 1_000_000_000n;
      let count = 0;
      for (; count < PROOFS && process.hrtime.bigint() < deadline; count++) {
        const decision = await shared.decide({ ...request, headers: { authorization: `DPoP ${bound}`, dpop: redisProofs[count] } });
        if (!decision.allowed) throw new Error(`redis row: call ${count} denied: ${JSON.stringify(decision)}`);
      }
      const us = Number(process.hrtime.bigint() - started) / 1000 / count;
      console.log(
        `${'DPoP, jtis on Redis (sequential)'.padEnd(40)} ${String(count).padStart(6)} calls  ${us.toFixed(1).padStart(7)} µs/Check`,
      );
    } finally {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
    }
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
