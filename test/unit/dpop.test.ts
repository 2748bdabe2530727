import assert from 'node:assert/strict';
import { generateKeyPairSync, type JsonWebKey, sign } from 'node:crypto';
import { describe, it } from 'node:test';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { DpopVerifier, jwkThumbprint } from '../../libs/core/dpop';
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
      assert.equal(verifier.verify(await proof(), check()), thumbprint, alg);
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
    verifier.verify(proof, check());
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
});
