import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { before, describe, it } from 'node:test';
import { SignJWT, UnsecuredJWT } from 'jose';
import { assertionSubject, jwksIssues, jwksUriProblem, type AssertionContext } from '../../libs/core/client-assertion';
import { authenticateClient, ClientAuthError, extractClientCredentials } from '../../libs/core/client-auth';
import { hashSecret } from '../../libs/core/crypto/secret-hash';
import type { ApiKeyRecord } from '../../libs/core/model';
import { normalizeParams } from '../../libs/core/params';
import type { ApiKeyRepository } from '../../libs/core/store/repositories';
import { apiKeyRecord } from '../support/records';

/* The authority's client authentication (libs/core/client-auth.ts): where credentials are read from, and how they are judged. */

const basic = (raw: string) => `Basic ${Buffer.from(raw, 'utf8').toString('base64')}`;

/** How a call to `fn` fails: the OAuth2 code and the reason kept for metrics, or 'ok'. */
async function failure(fn: () => unknown): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (error) {
    if (error instanceof ClientAuthError) return `${error.code}/${error.reason}`;
    if (error instanceof Error && 'code' in error) return String((error as { code: unknown }).code);
    throw error;
  }
}

describe('extractClientCredentials', () => {
  it('reads HTTP Basic, form-decoded (RFC 6749 §2.3.1), with any case of the scheme', () => {
    assert.deepEqual(extractClientCredentials(basic('my-id:my-secret'), {}), {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      method: 'client_secret_basic',
    });
    assert.deepEqual(extractClientCredentials(basic('my%3Aid:a+b%2Bc'), {}), {
      clientId: 'my:id',
      clientSecret: 'a b+c',
      method: 'client_secret_basic',
    });
    assert.equal(extractClientCredentials(`bAsIc ${Buffer.from('a:b').toString('base64')}`, {})?.clientId, 'a');
    assert.deepEqual(extractClientCredentials(basic('id:'), {}), { clientId: 'id', clientSecret: '', method: 'client_secret_basic' });
    assert.deepEqual(
      extractClientCredentials(basic('id:se:cret'), {}),
      { clientId: 'id', clientSecret: 'se:cret', method: 'client_secret_basic' },
      'the first colon splits',
    );
  });

  it('refuses broken Basic with invalid_request: no colon, not base64, bad percent-encoding', async () => {
    for (const header of [basic('no-colon'), 'Basic !!!!', 'Basic ', basic('id:%E0%A4%A')]) {
      assert.equal(await failure(() => extractClientCredentials(header, {})), 'invalid_request/malformed', header);
    }
  });

  it('reads the body (client_secret_post) only without Basic; another scheme is not Basic', () => {
    const params = normalizeParams({ client_id: 'my-id', client_secret: 'my-secret' });
    assert.deepEqual(extractClientCredentials(undefined, params), {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      method: 'client_secret_post',
    });
    assert.deepEqual(extractClientCredentials('Bearer x', params), {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      method: 'client_secret_post',
    });
    assert.deepEqual(extractClientCredentials(undefined, { client_id: 'only-id' }), {
      clientId: 'only-id',
      clientSecret: '',
      method: 'client_secret_post',
    });
    assert.equal(extractClientCredentials(undefined, {}), undefined);
    assert.equal(extractClientCredentials(undefined, { scope: 'read' }), undefined);
  });

  it('refuses two methods at once, but tolerates a client_id equal to the Basic id', async () => {
    assert.equal(await failure(() => extractClientCredentials(basic('a:b'), { client_secret: 'b' })), 'invalid_request/multiple_methods');
    assert.equal(await failure(() => extractClientCredentials(basic('a:b'), { client_id: 'other' })), 'invalid_request/multiple_methods');
    assert.equal(extractClientCredentials(basic('a:b'), { client_id: 'a' })?.method, 'client_secret_basic');
  });
});

describe('authenticateClient', () => {
  const NOW = Date.UTC(2026, 5, 1);
  const LONG = 'L'.repeat(43);
  /** Only `get` is used; the store itself is tested in the end-to-end tier. */
  function repository(records: ApiKeyRecord[]): ApiKeyRepository {
    const byId = new Map(records.map((record) => [record.clientId, record]));
    return { get: async (clientId: string) => byId.get(clientId) } as unknown as ApiKeyRepository;
  }

  it('accepts the right secret on either scheme and answers one invalid_client for everything else', async () => {
    const keys = repository([
      apiKeyRecord('fast', { secretHash: await hashSecret(LONG) }),
      apiKeyRecord('short', { secretHash: await hashSecret('tiny-secret') }),
      apiKeyRecord('off', { secretHash: await hashSecret(LONG), enabled: false }),
      apiKeyRecord('old', { secretHash: await hashSecret(LONG), validUntil: NOW }),
    ]);
    const post = (clientId: string, clientSecret: string) => ({ clientId, clientSecret, method: 'client_secret_post' as const });
    assert.equal((await authenticateClient(keys, post('fast', LONG), NOW)).clientId, 'fast');
    assert.equal((await authenticateClient(keys, post('short', 'tiny-secret'), NOW)).clientId, 'short');
    assert.equal(await failure(() => authenticateClient(keys, post('fast', `${LONG}x`), NOW)), 'invalid_client/invalid_secret');
    assert.equal(await failure(() => authenticateClient(keys, post('fast', LONG.slice(1)), NOW)), 'invalid_client/invalid_secret');
    assert.equal(await failure(() => authenticateClient(keys, post('short', 'tiny-secreT'), NOW)), 'invalid_client/invalid_secret');
    assert.equal(await failure(() => authenticateClient(keys, post('ghost', LONG), NOW)), 'invalid_client/unknown_client');
    assert.equal(await failure(() => authenticateClient(keys, post('', ''), NOW)), 'invalid_client/unknown_client');
    assert.equal(await failure(() => authenticateClient(keys, post('off', LONG), NOW)), 'invalid_client/disabled');
    assert.equal(await failure(() => authenticateClient(keys, post('old', LONG), NOW)), 'invalid_client/expired');
    assert.equal((await authenticateClient(keys, post('old', LONG), NOW - 1)).clientId, 'old', 'usable until validUntil');
    assert.equal(
      await failure(() => authenticateClient(keys, post('off', 'wrong'), NOW)),
      'invalid_client/invalid_secret',
      'the state only after the secret',
    );
    assert.equal(await failure(() => authenticateClient(keys, undefined, NOW)), 'invalid_client/no_credentials');
  });

  it('challenges with WWW-Authenticate: Basic only after Basic', async () => {
    const keys = repository([]);
    const viaBasic = await authenticateClient(keys, { clientId: 'x', clientSecret: LONG, method: 'client_secret_basic' }, NOW).catch(
      (e) => e,
    );
    const viaPost = await authenticateClient(keys, { clientId: 'x', clientSecret: LONG, method: 'client_secret_post' }, NOW).catch(
      (e) => e,
    );
    assert.match(viaBasic.wwwAuthenticate, /^Basic realm=/);
    assert.equal(viaBasic.status, 401);
    assert.equal(viaPost.wwwAuthenticate, undefined);
  });

  it('accepts the previous secret during its grace period only', async () => {
    const next = 'N'.repeat(43);
    const keys = repository([
      apiKeyRecord('rotating', {
        secretHash: await hashSecret(next),
        previousSecretHash: await hashSecret(LONG),
        previousSecretValidUntil: NOW + 1000,
      }),
    ]);
    const post = (clientSecret: string) => ({ clientId: 'rotating', clientSecret, method: 'client_secret_post' as const });
    assert.equal((await authenticateClient(keys, post(LONG), NOW)).clientId, 'rotating');
    assert.equal((await authenticateClient(keys, post(next), NOW + 1000)).clientId, 'rotating');
    assert.equal(await failure(() => authenticateClient(keys, post(LONG), NOW + 1000)), 'invalid_client/invalid_secret');
  });
});

describe('private_key_jwt (RFC 7523)', () => {
  const NOW = Date.UTC(2026, 5, 1);
  const SECONDS = NOW / 1000;
  const TOKEN_ENDPOINT = 'http://oauth.oto.tools:8080/.well-known/otoroshi/oauth/token';
  const ISSUER = 'http://oauth.oto.tools:8080';
  const TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
  type Keys = { alg: string; privateKey: KeyObject; jwk: Record<string, unknown> };
  /** Node's KeyObjects (sync and quick; jose signs with them): P-256, Ed25519, RSA 2048. */
  function keys(alg: string, kid: string): Keys {
    const pair =
      alg === 'ES256'
        ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
        : alg === 'EdDSA'
          ? generateKeyPairSync('ed25519')
          : generateKeyPairSync('rsa', { modulusLength: 2048 });
    return { alg, privateKey: pair.privateKey, jwk: { ...pair.publicKey.export({ format: 'jwk' }), kid, use: 'sig' } };
  }
  let es: Keys;
  let ed: Keys;
  let rs: Keys;
  let other: Keys;
  before(() => {
    [es, ed, rs, other] = [keys('ES256', 'es'), keys('EdDSA', 'ed'), keys('RS256', 'rs'), keys('ES256', 'es')];
  });

  const claims = (fields: Record<string, unknown> = {}) => ({
    iss: 'pk',
    sub: 'pk',
    aud: TOKEN_ENDPOINT,
    exp: SECONDS + 60,
    iat: SECONDS,
    jti: randomUUID(),
    ...fields,
  });
  /** An assertion signed by `key` (header alg and kid from it unless `header` says otherwise); a claim set to undefined is left out. */
  function sign(key: Keys, fields: Record<string, unknown> = {}, header: Record<string, unknown> = {}) {
    const body = Object.fromEntries(Object.entries(claims(fields)).filter(([, value]) => value !== undefined));
    return new SignJWT(body).setProtectedHeader({ alg: key.alg, kid: key.jwk.kid as string, ...header }).sign(key.privateKey);
  }
  function context(remote?: AssertionContext['remoteJwks']) {
    const seen = new Map<string, number>();
    return {
      audiences: [TOKEN_ENDPOINT, ISSUER],
      remoteJwks: remote,
      replays: {
        async useOnce(id: string, expiresAt: number, now: number) {
          if ((seen.get(id) ?? 0) > now) return false;
          seen.set(id, expiresAt);
          return true;
        },
      },
    } satisfies AssertionContext;
  }
  function repository(records: ApiKeyRecord[]): ApiKeyRepository {
    const byId = new Map(records.map((record) => [record.clientId, record]));
    return { get: async (clientId: string) => byId.get(clientId) } as unknown as ApiKeyRepository;
  }
  const pk = (fields: Partial<ApiKeyRecord> = {}) =>
    apiKeyRecord('pk', { secretHash: '', jwks: { keys: [es.jwk, ed.jwk, rs.jwk] }, ...fields });
  /** authenticateClient as the token endpoint calls it, from form parameters. */
  async function authenticate(
    assertion: string,
    apiKey = pk(),
    ctx: AssertionContext = context(),
    now = NOW,
    params: Record<string, string> = {},
  ) {
    const credentials = extractClientCredentials(undefined, { client_assertion_type: TYPE, client_assertion: assertion, ...params });
    return authenticateClient(repository([apiKey, pk({ clientId: 'other-client' })]), credentials, now, ctx);
  }

  it('accepts an assertion signed by any of the key set, addressed to the token endpoint or the issuer', async () => {
    for (const key of [es, ed, rs]) assert.equal((await authenticate(await sign(key))).clientId, 'pk', key.alg);
    assert.equal((await authenticate(await sign(rs, {}, { alg: 'PS256' }))).clientId, 'pk', 'an RSA key without alg signs PS256 too');
    assert.equal((await authenticate(await sign(ed, {}, { alg: 'Ed25519' }))).clientId, 'pk', "EdDSA's RFC 9864 name");
    assert.equal((await authenticate(await sign(es, { aud: ISSUER }))).clientId, 'pk');
    assert.equal((await authenticate(await sign(es, { aud: ['https://elsewhere', ISSUER] }))).clientId, 'pk');
    assert.equal((await authenticate(await sign(es), pk(), context(), NOW, { client_id: 'pk' })).clientId, 'pk');
    const single = pk({ jwks: { keys: [{ ...es.jwk, kid: undefined }] } });
    assert.equal((await authenticate(await sign(es, {}, { kid: undefined }), single)).clientId, 'pk', 'no kid: the one key that fits');
  });

  it('refuses every wrong variant with invalid_client, saying why in the reason', async () => {
    const hs256 = await new SignJWT(claims())
      .setProtectedHeader({ alg: 'HS256', kid: 'es' })
      .sign(new TextEncoder().encode(JSON.stringify(es.jwk)));
    const cases: [string, string | Promise<string>, string][] = [
      ['bad signature (another key, same kid)', sign(other), 'invalid_assertion'],
      ['unknown kid', sign(es, {}, { kid: 'nope' }), 'invalid_assertion'],
      ['wrong aud', sign(es, { aud: 'https://other.example/token' }), 'invalid_assertion'],
      ['no aud', sign(es, { aud: undefined }), 'invalid_assertion'],
      ['expired', sign(es, { exp: SECONDS - 31 }), 'invalid_assertion'],
      ['no exp', sign(es, { exp: undefined }), 'invalid_assertion'],
      ['lives too long', sign(es, { exp: SECONDS + 331 }), 'invalid_assertion'],
      ['not yet valid', sign(es, { nbf: SECONDS + 60 }), 'invalid_assertion'],
      ['no jti', sign(es, { jti: undefined }), 'invalid_assertion'],
      ['empty jti', sign(es, { jti: '' }), 'invalid_assertion'],
      ['iss ≠ sub', sign(es, { iss: 'other-client' }), 'invalid_assertion'],
      ['alg none', new UnsecuredJWT(claims()).encode(), 'invalid_assertion'],
      ['HS256 keyed with the public key', hs256, 'invalid_assertion'],
      ['a kid whose key is of another type than the alg', sign(other, {}, { kid: 'ed' }), 'invalid_assertion'],
      ['not a JWT', 'a.b.c', 'unknown_client'],
      ['sub names no key', sign(es, { iss: 'ghost', sub: 'ghost' }), 'unknown_client'],
    ];
    for (const [name, assertion, reason] of cases) {
      assert.equal(await failure(async () => authenticate(await assertion)), `invalid_client/${reason}`, name);
    }
    assert.equal(
      await failure(async () => authenticate(await sign(es), apiKeyRecord('pk'))),
      'invalid_client/no_jwks',
      'a key without keys',
    );
    assert.equal(await failure(async () => authenticate(await sign(es), pk({ enabled: false }))), 'invalid_client/disabled');
    assert.equal(
      await failure(async () => authenticate(await sign(es), pk(), context(), NOW, { client_id: 'other-client' })),
      'invalid_client/invalid_assertion',
      'client_id names another client than iss/sub',
    );
    assert.equal(
      await failure(async () => authenticate(await sign(es, { sub: 'other-client' }), pk(), context(), NOW, { client_id: 'pk' })),
      'invalid_client/invalid_assertion',
      'sub names another client than iss and client_id',
    );
    // Within the clock tolerance still.
    assert.equal((await authenticate(await sign(es, { exp: SECONDS - 29 }))).clientId, 'pk');
    assert.equal((await authenticate(await sign(es, { exp: SECONDS + 329 }))).clientId, 'pk');
  });

  it('accepts a jti once until the assertion expires, then again; refusals do not use it up', async () => {
    const ctx = context();
    const jti = 'once';
    const first = await sign(es, { jti });
    assert.equal(await failure(async () => authenticate(first, pk({ enabled: false }), ctx)), 'invalid_client/disabled');
    assert.equal(await failure(async () => authenticate(await sign(es, { jti, aud: 'x' }), pk(), ctx)), 'invalid_client/invalid_assertion');
    assert.equal((await authenticate(first, pk(), ctx)).clientId, 'pk');
    assert.equal(await failure(async () => authenticate(first, pk(), ctx)), 'invalid_client/replayed_assertion');
    assert.equal(await failure(async () => authenticate(first, pk(), ctx, NOW + 50_000)), 'invalid_client/replayed_assertion', 'until exp');
    assert.equal(await failure(async () => authenticate(await sign(ed, { jti }), pk(), ctx)), 'invalid_client/replayed_assertion');
    // Another client may use the same jti: they are unique per issuer.
    const theirs = await sign(es, { jti, iss: 'other-client', sub: 'other-client' });
    assert.equal((await authenticate(theirs, pk(), ctx)).clientId, 'other-client');
    // Past exp + tolerance the old record is over: a new assertion with that jti is accepted.
    const later = NOW + 91_000;
    assert.equal((await authenticate(await sign(es, { jti, exp: later / 1000 + 60 }), pk(), ctx, later)).clientId, 'pk');
  });

  it('takes the keys of a jwks_uri from the context, and asks again once for a kid it lacks', async () => {
    const asked: [string, boolean][] = [];
    let served = { keys: [es.jwk] };
    let cached = served;
    // As RemoteJwks: the copy it holds, a new one only when asked to refresh.
    const ctx = context(async (uri, refresh) => {
      asked.push([uri, refresh]);
      if (refresh) cached = served;
      return cached;
    });
    const remote = pk({ jwks: undefined, jwks_uri: 'https://client.example/jwks' });
    assert.equal((await authenticate(await sign(es), remote, ctx)).clientId, 'pk');
    served = { keys: [es.jwk, ed.jwk] };
    assert.equal((await authenticate(await sign(ed), remote, ctx)).clientId, 'pk', 'a rotated-in key is found by refreshing');
    assert.equal(await failure(async () => authenticate(await sign(rs), remote, ctx)), 'invalid_client/invalid_assertion');
    assert.deepEqual(
      asked.map(([, refresh]) => refresh),
      [false, false, true, false, true],
    );
    assert.equal(asked[0][0], 'https://client.example/jwks');
    const down = context(async () => {
      throw new Error('connection refused');
    });
    assert.equal(await failure(async () => authenticate(await sign(es), remote, down)), 'invalid_client/jwks_unavailable');
  });

  it('reads the assertion parameters: one method only, the standard type, client_id or the assertion sub', async () => {
    const assertion = await sign(es);
    assert.deepEqual(extractClientCredentials(undefined, { client_assertion_type: TYPE, client_assertion: assertion }), {
      clientId: 'pk',
      assertion,
      method: 'private_key_jwt',
    });
    assert.equal(
      extractClientCredentials(undefined, { client_assertion_type: TYPE, client_assertion: assertion, client_id: 'given' })?.clientId,
      'given',
    );
    const refusals: [string | undefined, Record<string, string>, string][] = [
      [basic('pk:x'), { client_assertion_type: TYPE, client_assertion: assertion }, 'invalid_request/multiple_methods'],
      [undefined, { client_assertion_type: TYPE, client_assertion: assertion, client_secret: 'x' }, 'invalid_request/multiple_methods'],
      [undefined, { client_assertion: assertion }, 'invalid_request/malformed'],
      [
        undefined,
        { client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:saml2-bearer', client_assertion: assertion },
        'invalid_request/malformed',
      ],
      [undefined, { client_assertion_type: TYPE }, 'invalid_request/malformed'],
      [undefined, { client_assertion_type: TYPE, client_assertion: '' }, 'invalid_request/malformed'],
    ];
    for (const [authorization, params, expected] of refusals) {
      assert.equal(await failure(() => extractClientCredentials(authorization, params)), expected, JSON.stringify(params));
    }
    assert.equal(assertionSubject('not.a.jwt!'), '');
    assert.equal(assertionSubject(`x.${Buffer.from('{"iss":"only-iss"}').toString('base64url')}.y`), 'only-iss');
  });

  it('validates a key set as the admin API does, naming the member at fault', async () => {
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ format: 'jwk' });
    const first = (input: unknown) => jwksIssues(input)[0]?.path;
    assert.deepEqual(jwksIssues({ keys: [es.jwk, ed.jwk, rs.jwk] }), []);
    assert.equal(first({ keys: [es.jwk, rs.privateKey.export({ format: 'jwk' })] }), 'jwks.keys.1.d');
    assert.equal(first({ keys: [{ kty: 'oct', k: 'c2VjcmV0' }] }), 'jwks.keys.0.kty');
    assert.equal(first({ keys: [small] }), 'jwks.keys.0.n');
    assert.equal(first({ keys: [p384] }), 'jwks.keys.0.crv');
    assert.equal(first({ keys: [{ ...es.jwk, alg: 'RS256' }] }), 'jwks.keys.0.alg');
    assert.equal(first({ keys: [{ ...es.jwk, use: 'enc' }] }), 'jwks.keys.0.use');
    assert.equal(first({ keys: [es.jwk, { ...ed.jwk, kid: 'es' }] }), 'jwks.keys.1.kid');
    assert.equal(first({ keys: [{ ...es.jwk, x: 'AAAA' }] }), 'jwks.keys.0');
    assert.equal(first({ keys: [] }), 'jwks.keys');
    assert.equal(first({ keys: [es.jwk], extra: 1 }), 'jwks.extra');
    assert.equal(first([es.jwk]), 'jwks');
  });

  it('accepts a jwks_uri over https, or http to loopback only', () => {
    for (const uri of ['https://client.example/jwks', 'http://127.0.0.1:9000/jwks', 'http://localhost/jwks', 'http://[::1]:80/k']) {
      assert.equal(jwksUriProblem(uri), undefined, uri);
    }
    for (const uri of [
      'http://client.example/jwks',
      'ftp://127.0.0.1/x',
      'https://u:p@client.example/',
      'https://a/#f',
      'jwks',
      'http://10.0.0.1/',
    ]) {
      assert.notEqual(jwksUriProblem(uri), undefined, uri);
    }
  });
});
