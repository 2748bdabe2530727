import assert from 'node:assert/strict';
import { generateKeyPairSync, type JsonWebKey, sign } from 'node:crypto';
import { describe, it } from 'node:test';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { type DpopProof, DpopVerifier, jwkThumbprint } from '../../libs/core/dpop';
import { DpopNonces, nonceKey } from '../../libs/core/dpop-nonce';
import { TestClock } from './support/fixtures';

/*
 * DPoP proofs at the token endpoint (libs/core/dpop.ts, RFC 9449 §4.3), made by jose, an
 * independent implementation, and checked on an injected clock.
 */

const URL_ = 'https://oauth.example/.well-known/otoroshi/oauth/token';
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

async function client(alg: 'ES256' | 'RS256' | 'PS256' | 'EdDSA' = 'ES256') {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(publicKey);
  return {
    jwk,
    privateKey,
    thumbprint: await calculateJwkThumbprint(jwk),
    proof: (claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}, iat?: number) =>
      new SignJWT({ htm: 'POST', htu: URL_, jti: crypto.randomUUID(), ...claims })
        .setProtectedHeader({ alg, typ: 'dpop+jwt', jwk, ...header })
        .setIssuedAt(iat)
        .sign(privateKey),
  };
}

/** A proof assembled by hand (what jose refuses to make), signed by an Ed25519 key whose public half is `jwk` unless told otherwise. */
function handMade(header: Record<string, unknown>, claims: Record<string, unknown>): string {
  const { privateKey } = generateKeyPairSync('ed25519');
  const input = `${b64(header)}.${b64(claims)}`;
  return `${input}.${sign(null, Buffer.from(input), privateKey).toString('base64url')}`;
}

describe('DPoP proofs (RFC 9449)', () => {
  const clock = new TestClock(Date.now());
  const check = () => ({ method: 'POST', urls: [URL_], now: clock.now() });

  it('accepts proofs of each algorithm and answers the RFC 7638 thumbprint jose computes', async () => {
    const verifier = new DpopVerifier();
    for (const alg of ['ES256', 'RS256', 'PS256', 'EdDSA'] as const) {
      const { proof, thumbprint, jwk } = await client(alg);
      assert.equal((verifier.verify(await proof(), check()) as DpopProof).jkt, thumbprint, alg);
      assert.equal(jwkThumbprint(jwk as JsonWebKey), thumbprint);
    }
  });

  it('takes htu without query or fragment, scheme and host in any case, and any of the URLs given', async () => {
    const verifier = new DpopVerifier();
    const { proof } = await client();
    assert.ok(verifier.verify(await proof({ htu: 'HTTPS://OAUTH.example/.well-known/otoroshi/oauth/token?x=1#f' }), check()));
    const other = 'http://127.0.0.1:8090/.well-known/otoroshi/oauth/token';
    assert.ok(verifier.verify(await proof({ htu: other }), { ...check(), urls: [URL_, other] }));
  });

  it('refuses a replayed proof, but not the same jti from another key', async () => {
    const verifier = new DpopVerifier();
    const one = await client();
    const two = await client();
    const proof = await one.proof({ jti: 'the-same-jti' });
    assert.ok(verifier.verify(proof, check()));
    assert.throws(() => verifier.verify(proof, check()), { code: 'invalid_dpop_proof', description: /already used/ });
    assert.ok(verifier.verify(await two.proof({ jti: 'the-same-jti' }), check()));
  });

  it('refuses every wrong proof with invalid_dpop_proof, naming what is wrong', async () => {
    const verifier = new DpopVerifier();
    const { proof, jwk } = await client();
    const { jwk: privateJwk } = await (async () => {
      const pair = await generateKeyPair('ES256', { extractable: true });
      return { jwk: await exportJWK(pair.privateKey) };
    })();
    const now = Math.floor(clock.now() / 1000);
    const cases: [string, string | string[] | undefined, RegExp][] = [
      ['no header', undefined, /exactly one DPoP header/],
      ['two headers', [await proof(), await proof()], /exactly one DPoP header/],
      ['two headers joined', `${await proof()}, ${await proof()}`, /exactly one DPoP header/],
      ['not a JWS', 'abc.def', /not a compact JWS/],
      ['typ JWT', await proof({}, { typ: 'JWT' }), /typ dpop\+jwt/],
      ['wrong htm', await proof({ htm: 'GET' }), /htm must be POST/],
      ['wrong htu', await proof({ htu: 'https://elsewhere.example/token' }), /htu must be/],
      ['no htu', await proof({ htu: undefined }), /htu must be/],
      ['old iat', await proof({}, {}, now - 61), /iat must be within/],
      ['future iat', await proof({}, {}, now + 10), /iat must be within/],
      ['short jti', await proof({ jti: 'x' }), /jti of 8 to 256/],
      ['private key in jwk', await proof({}, { jwk: privateJwk }), /holds a private key/],
      [
        'alg none',
        `${b64({ alg: 'none', typ: 'dpop+jwt', jwk })}.${b64({ htm: 'POST', htu: URL_, jti: 'aaaaaaaaaa', iat: now })}.`,
        /not a compact JWS/,
      ],
      [
        'HS256',
        handMade({ alg: 'HS256', typ: 'dpop+jwt', jwk }, { htm: 'POST', htu: URL_, jti: 'aaaaaaaaaa', iat: now }),
        /alg must be one of/,
      ],
      ['no jwk', handMade({ alg: 'EdDSA', typ: 'dpop+jwt' }, { htm: 'POST', htu: URL_, jti: 'aaaaaaaaaa', iat: now }), /no jwk/],
      [
        'jwk of another type',
        handMade({ alg: 'EdDSA', typ: 'dpop+jwt', jwk }, { htm: 'POST', htu: URL_, jti: 'aaaaaaaaaa', iat: now }),
        /cannot sign EdDSA/,
      ],
      ['jwk not a key', handMade({ alg: 'EdDSA', typ: 'dpop+jwt', jwk: { kty: 'OKP', crv: 'Ed25519', x: 'AA' } }, {}), /not a public key/],
      [
        'signed by another key',
        handMade(
          { alg: 'EdDSA', typ: 'dpop+jwt', jwk: (await client('EdDSA')).jwk as JWK },
          { htm: 'POST', htu: URL_, jti: 'aaaaaaaaaa', iat: now },
        ),
        /does not verify/,
      ],
      ['crit', handMade({ alg: 'EdDSA', typ: 'dpop+jwt', jwk, crit: ['exp'], exp: 1 }, {}), /critical/],
    ];
    for (const [name, value, message] of cases) {
      assert.throws(
        () => verifier.verify(value, check()),
        (error: { code?: string; status?: number; description?: string }) => {
          assert.equal(error.code, 'invalid_dpop_proof', name);
          assert.equal(error.status, 400, name);
          assert.match(error.description ?? '', message, name);
          return true;
        },
      );
    }
  });

  it('nonces (RFC 9449 §8): any replica with the key takes them for one to two lifetimes, the previous one answered with a fresh one', () => {
    const { key } = nonceKey(undefined, 'the-data-plane-token-of-this-deployment', 'token-endpoint');
    // Derived alike on every replica from the same secret; another secret or purpose makes other nonces.
    assert.deepEqual(nonceKey(undefined, 'the-data-plane-token-of-this-deployment', 'token-endpoint').key, key);
    assert.notDeepEqual(nonceKey(undefined, 'the-data-plane-token-of-this-deployment', 'resource').key, key);
    assert.equal(nonceKey(undefined, undefined, 'x').shared, false);
    assert.throws(() => nonceKey('short', undefined, 'x'), /at least 32 bytes/);
    const a = new DpopNonces(key, 300, 'token-endpoint');
    const b = new DpopNonces(() => key, 300, 'token-endpoint');
    const start = 1_700_000_100_000;
    const nonce = a.issue(start);
    assert.match(nonce, /^[A-Za-z0-9_-]{27}$/);
    assert.equal(a.issue(start + 1000), nonce, 'the same nonce within a slot');
    assert.equal(b.check(nonce, start), 'current');
    assert.equal(b.check(nonce, start + 300_000), 'stale');
    assert.equal(b.check(nonce, start + 600_000), 'invalid');
    assert.equal(b.check(nonce, start - 300_000), 'current', 'a replica whose clock is a little behind');
    assert.equal(b.check(nonce, start - 600_000), 'invalid');
    assert.notEqual(a.issue(start + 300_000), nonce, 'rotated');
    const other = new DpopNonces(nonceKey(undefined, 'another-deployment-token', 'token-endpoint').key, 300, 'token-endpoint');
    assert.equal(other.check(nonce, start), 'invalid');
    const flipped = `${nonce.slice(0, 10)}${nonce[10] === 'A' ? 'B' : 'A'}${nonce.slice(11)}`;
    for (const bad of [flipped, '', 'x'.repeat(27), 42, undefined, `${nonce}A`]) assert.equal(a.check(bad, start), 'invalid', String(bad));
  });

  it('with nonces required, a proof without one (or an unknown or expired one) is use_dpop_nonce with DPoP-Nonce; the previous one passes with a fresh one', async () => {
    const nonces = new DpopNonces(Buffer.alloc(32, 7), 60, 'token-endpoint');
    const verifier = new DpopVerifier({ nonces });
    const { proof, thumbprint } = await client();
    const now = clock.now();
    const current = nonces.issue(now);
    const cases: [string, string, RegExp][] = [
      ['none', await proof(), /a nonce is required/],
      ['not ours', await proof({ nonce: 'x'.repeat(27) }), /not current/],
      ['expired', await proof({ nonce: nonces.issue(now - 120_000) }), /not current/],
    ];
    for (const [name, value, message] of cases) {
      assert.throws(
        () => verifier.verify(value, check()),
        (error: { code?: string; status?: number; description?: string; headers?: Record<string, string> }) => {
          assert.equal(error.code, 'use_dpop_nonce', name);
          assert.equal(error.status, 400, name);
          assert.match(error.description ?? '', message, name);
          assert.deepEqual(error.headers, { 'DPoP-Nonce': current }, name);
          return true;
        },
      );
    }
    assert.deepEqual(verifier.verify(await proof({ nonce: current }), check()), { jkt: thumbprint });
    assert.deepEqual(verifier.verify(await proof({ nonce: nonces.issue(now - 60_000) }), check()), { jkt: thumbprint, nonce: current });
    // A proof that is wrong otherwise is invalid_dpop_proof first, nonce or not.
    const wrong = await proof({ htm: 'GET' });
    assert.throws(() => verifier.verify(wrong, check()), { code: 'invalid_dpop_proof' });
  });

  it('a shared (asynchronous) replay memory: a proof taken by one verifier is refused by another', async () => {
    const shared = new Map<string, number>();
    const replays = {
      useOnce: async (id: string, ttlMs: number) => {
        if ((shared.get(id) ?? 0) > clock.now()) return false;
        shared.set(id, clock.now() + ttlMs);
        return true;
      },
    };
    const one = new DpopVerifier({ replays });
    const two = new DpopVerifier({ replays });
    const { proof, thumbprint } = await client();
    const once = await proof();
    assert.deepEqual(await one.verify(once, check()), { jkt: thumbprint });
    await assert.rejects(async () => two.verify(once, check()), { code: 'invalid_dpop_proof', description: /already used/ });
    assert.equal(shared.size, 1);
    // A forged proof never reaches the memory (it cannot burn a jti).
    assert.throws(() => two.verify('not-a-proof', check()), { code: 'invalid_dpop_proof' });
    assert.equal(shared.size, 1);
  });
});
