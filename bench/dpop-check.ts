import { createHash } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { Authorizer } from '../libs/authz/authorizer';
import { accessClaims, apiKey, authzConfig, replicaWith, signAccessToken, testKeyPair } from '../test/unit/support/fixtures';

/**
 * What a DPoP proof adds to one Check: Authorizer.decide (the core decision both transports
 * call, in process, no network) for a warm bearer token against the same token DPoP-bound with
 * a fresh ES256 proof per call (made beforehand by jose: each proof is used once). Bounded: at
 * most PROOFS calls per row and BENCH_SECONDS s.
 *
 *   npm run build && node dist/bench/dpop-check.js
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
  const proofs: string[] = [];
  for (let i = 0; i < PROOFS; i++)
    proofs.push(
      await new SignJWT({ htm: 'GET', htu: URL_, jti: crypto.randomUUID(), ath })
        .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
        .setIssuedAt()
        .sign(key.privateKey),
    );
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
  console.log(`DPoP adds ${(d - b).toFixed(1)} µs per Check (${(d / b).toFixed(1)}x bearer), node ${process.version}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
