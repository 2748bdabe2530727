import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import path from 'node:path';
import { promisify } from 'node:util';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { SignJWT, UnsecuredJWT } from 'jose';
import * as oidc from 'openid-client';
import { basic, INTROSPECT_PATH, REVOKE_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { tokenAuthorityClient } from './support/grpc';
import { growth, scrapeMetrics, series } from './support/metrics';

/*
 * private_key_jwt client authentication (RFC 7523, OpenID Connect Core §9) over a real authority:
 * keys given to the admin API (jwks, or a jwks_uri served on loopback), a third-party client
 * (openid-client's PrivateKeyJwt) on the token, introspection and revocation endpoints, every wrong
 * assertion refused with invalid_client and counted by the failure limits, a jti accepted once by
 * two authorities on one store, and gRPC.
 */

const TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ROOT = path.resolve(__dirname, '..', '..');
const JWCRYPTO_SCRIPT = path.join(ROOT, 'test', 'support', 'jwcrypto_assertions.py');

/** A Python with jwcrypto: PYTHON, the checkout's .ci/venv (where .ci/run installs it), then python3. */
function findJwcryptoPython(): { python?: string; missing?: string } {
  const candidates = process.env.PYTHON ? [process.env.PYTHON] : [path.join(ROOT, '.ci', 'venv', 'bin', 'python'), 'python3'];
  for (const python of candidates) {
    const probe = spawnSync(python, ['-c', 'import jwcrypto'], { timeout: 10_000 });
    if (probe.status === 0) return { python };
  }
  return { missing: `no Python with jwcrypto (pip install jwcrypto==1.6.1, as .ci/run does); tried ${candidates.join(', ')}` };
}
const jwcryptoSetup = findJwcryptoPython();
const AUTHLIB_SCRIPT = path.join(ROOT, 'test', 'support', 'authlib_private_key_jwt.py');
/** A Python with Authlib (.ci/run installs authlib==1.9.6 into .ci/venv). */
function findAuthlibPython(): { python?: string; missing?: string } {
  const candidates = process.env.PYTHON ? [process.env.PYTHON] : [path.join(ROOT, '.ci', 'venv', 'bin', 'python'), 'python3'];
  for (const python of candidates) {
    const probe = spawnSync(python, ['-c', 'import authlib.integrations.requests_client, authlib.oauth2.rfc7523'], { timeout: 10_000 });
    if (probe.status === 0) return { python };
  }
  return { missing: `no Python with Authlib and requests (pip install authlib==1.9.6, as .ci/run does); tried ${candidates.join(', ')}` };
}
const authlibSetup = findAuthlibPython();
const AUTH_FAILURES = 'token_authority_client_auth_failures_total';

type Keys = { alg: string; privateKey: KeyObject; jwk: Record<string, unknown> };
function keys(alg: 'ES256' | 'EdDSA' | 'RS256', kid: string): Keys {
  const pair =
    alg === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : alg === 'EdDSA'
        ? generateKeyPairSync('ed25519')
        : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { alg, privateKey: pair.privateKey, jwk: { ...pair.publicKey.export({ format: 'jwk' }), kid, use: 'sig' } };
}

/** A JWKS server on loopback: what it answers can be changed, and it counts the requests. */
async function jwksServer(): Promise<{
  url: string;
  requests: () => number;
  answer: (fn: (res: import('node:http').ServerResponse) => void) => void;
  close(): Promise<void>;
}> {
  let handler: (res: import('node:http').ServerResponse) => void = (res) => res.end('{}');
  let count = 0;
  const server: Server = createServer((_req, res) => {
    count += 1;
    handler(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests: () => count,
    answer: (fn) => {
      handler = fn;
    },
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

describe('private_key_jwt client authentication', () => {
  let authority: TestAuthority;
  let issuer: string;
  let tokenEndpoint: string;
  const es = keys('ES256', 'es-1');
  const ed = keys('EdDSA', 'ed-1');
  const stranger = keys('ES256', 'es-1');

  const now = () => Math.floor(Date.now() / 1000);
  function assertion(key: Keys, clientId: string, fields: Record<string, unknown> = {}, header: Record<string, unknown> = {}) {
    const claims = Object.fromEntries(
      Object.entries({
        iss: clientId,
        sub: clientId,
        aud: tokenEndpoint,
        exp: now() + 60,
        iat: now(),
        jti: randomUUID(),
        ...fields,
      }).filter(([, value]) => value !== undefined),
    );
    return new SignJWT(claims).setProtectedHeader({ alg: key.alg, kid: key.jwk.kid as string, ...header }).sign(key.privateKey);
  }
  async function token(clientAssertion: string, extra: Record<string, string> = {}, headers: Record<string, string> = {}) {
    const response = await authority.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials', client_assertion_type: TYPE, client_assertion: clientAssertion, ...extra },
      headers,
    );
    return { status: response.status, body: (await response.json()) as any };
  }

  before(async () => {
    authority = await startTestAuthority();
    issuer = authority.config.issuer;
    tokenEndpoint = `${issuer}${TOKEN_PATH}`;
    const created = await authority.admin('POST', '/api/apikeys', {
      clientId: 'pk-client',
      clientName: 'signs its own assertions',
      scope: 'read write',
      jwks: { keys: [es.jwk, ed.jwk] },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.clientSecret, undefined, 'a key created with a jwks and no clientSecret gets no secret');
    assert.deepEqual(created.body.jwks, { keys: [es.jwk, ed.jwk] });
  });
  after(() => authority.stop());

  it('says so in the metadata document', async () => {
    const metadata: any = await (await fetch(`${authority.url}/.well-known/oauth-authorization-server`)).json();
    for (const endpoint of ['token', 'introspection', 'revocation']) {
      assert.ok(metadata[`${endpoint}_endpoint_auth_methods_supported`].includes('private_key_jwt'), endpoint);
      assert.deepEqual(
        metadata[`${endpoint}_endpoint_auth_signing_alg_values_supported`],
        ['RS256', 'PS256', 'ES256', 'EdDSA', 'Ed25519'],
        endpoint,
      );
    }
  });

  it('issues, introspects and revokes for openid-client with PrivateKeyJwt (aud = issuer), ES256 and Ed25519', async () => {
    const server: oidc.ServerMetadata = {
      issuer,
      token_endpoint: `${authority.url}${TOKEN_PATH}`,
      introspection_endpoint: `${authority.url}${INTROSPECT_PATH}`,
      revocation_endpoint: `${authority.url}${REVOKE_PATH}`,
    };
    for (const key of [es, ed]) {
      const algorithm = key.alg === 'ES256' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'Ed25519' };
      const cryptoKey = key.privateKey.toCryptoKey(algorithm, false, ['sign']);
      const config = new oidc.Configuration(server, 'pk-client', {}, oidc.PrivateKeyJwt({ key: cryptoKey, kid: key.jwk.kid as string }));
      oidc.allowInsecureRequests(config);
      const granted = await oidc.clientCredentialsGrant(config, { scope: 'read' });
      assert.equal(granted.token_type.toLowerCase(), 'bearer');
      assert.equal(granted.scope, 'read');
      const introspected = await oidc.tokenIntrospection(config, granted.access_token);
      assert.equal(introspected.active, true);
      assert.equal(introspected.client_id, 'pk-client');
      await oidc.tokenRevocation(config, granted.access_token);
      assert.equal((await oidc.tokenIntrospection(config, granted.access_token)).active, false, key.alg);
    }
  });

  it('accepts the token endpoint URL as aud, and client_id beside the assertion', async () => {
    const answer = await token(await assertion(es, 'pk-client'), { client_id: 'pk-client' });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.scope, 'read write');
  });

  it('refuses the secret-based methods for a key without a secret', async () => {
    for (const secret of ['', 'x'.repeat(43), 'short-one']) {
      const response = await authority.postForm(
        TOKEN_PATH,
        { grant_type: 'client_credentials' },
        { authorization: basic('pk-client', secret) },
      );
      assert.equal(response.status, 401);
      assert.equal(((await response.json()) as any).error, 'invalid_client');
    }
  });

  it('refuses every wrong assertion with invalid_client, each counted by the failure limits', async () => {
    const limited = await startTestAuthority({ authFailures: { perClientAddress: 13, perAddress: 1_000_000 } });
    try {
      const created = await limited.admin('POST', '/api/apikeys', { clientId: 'pk-limited', jwks: { keys: [es.jwk] } });
      assert.equal(created.status, 201);
      const before = await scrapeMetrics(limited.url);
      const id = 'pk-limited';
      const replayed = await assertion(es, id);
      const sign = (fields: Record<string, unknown> = {}, header: Record<string, unknown> = {}) => assertion(es, id, fields, header);
      const variants: [string, string][] = [
        ['bad signature', await assertion(stranger, id)],
        ['wrong aud', await sign({ aud: 'https://elsewhere.example/token' })],
        ['expired', await sign({ exp: now() - 120 })],
        ['lives too long', await sign({ exp: now() + 3600 })],
        ['no exp', await sign({ exp: undefined })],
        ['no jti', await sign({ jti: undefined })],
        ['alg none', new UnsecuredJWT({ iss: id, sub: id, aud: tokenEndpoint, exp: now() + 60, jti: randomUUID() }).encode()],
        [
          'HS256 keyed with the public key',
          await new SignJWT({ iss: id, sub: id, aud: tokenEndpoint, exp: now() + 60, jti: randomUUID() })
            .setProtectedHeader({ alg: 'HS256', kid: 'es-1' })
            .sign(new TextEncoder().encode(JSON.stringify(es.jwk))),
        ],
        ['iss ≠ sub', await sign({ iss: 'pk-client' })],
        ['unknown kid', await sign({}, { kid: 'es-2' })],
        [
          'not a JWT',
          `${Buffer.from('{"alg":"ES256"}').toString('base64url')}.${Buffer.from(`{"sub":"${id}"}`).toString('base64url')}.AAAA`,
        ],
      ];
      const first = await limited.postForm(TOKEN_PATH, {
        grant_type: 'client_credentials',
        client_assertion_type: TYPE,
        client_assertion: replayed,
      });
      assert.equal(first.status, 200, 'the assertion replayed below is valid once');
      variants.push(['replayed jti', replayed]);
      for (const [name, clientAssertion] of variants) {
        const response = await limited.postForm(TOKEN_PATH, {
          grant_type: 'client_credentials',
          client_assertion_type: TYPE,
          client_assertion: clientAssertion,
        });
        assert.equal(response.status, 401, name);
        const body = await response.json();
        assert.deepEqual(body, { error: 'invalid_client', error_description: 'client authentication failed' }, name);
        assert.equal(response.headers.get('www-authenticate'), null, name);
      }
      const after = await scrapeMetrics(limited.url);
      const grew = (reason: string) => growth(before, after, series(AUTH_FAILURES, { endpoint: 'token', reason }));
      assert.equal(grew('invalid_assertion'), 11);
      assert.equal(grew('replayed_assertion'), 1);
      // 12 failures counted; the 13th blocks this id from this address, even with a valid assertion.
      const refusal = await limited.postForm(TOKEN_PATH, {
        grant_type: 'client_credentials',
        client_assertion_type: TYPE,
        client_assertion: await sign({}, { kid: 'es-9' }),
      });
      assert.equal(refusal.status, 401);
      const blocked = await limited.postForm(TOKEN_PATH, {
        grant_type: 'client_credentials',
        client_assertion_type: TYPE,
        client_assertion: await sign(),
      });
      assert.equal(blocked.status, 429, 'every invalid_client counted');
      assert.ok(Number(blocked.headers.get('retry-after')) > 0);
    } finally {
      await limited.stop();
    }
  });

  it('refuses malformed requests with invalid_request: two methods, a foreign assertion type', async () => {
    const valid = await assertion(es, 'pk-client');
    const cases: [Record<string, string>, Record<string, string>][] = [
      [{ client_assertion_type: TYPE, client_assertion: valid, client_secret: 'x' }, {}],
      [{ client_assertion_type: TYPE, client_assertion: valid }, { authorization: basic('pk-client', 'x') }],
      [{ client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:saml2-bearer', client_assertion: valid }, {}],
      [{ client_assertion: valid }, {}],
    ];
    for (const [form, headers] of cases) {
      const response = await authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials', ...form }, headers);
      assert.equal(response.status, 400, JSON.stringify(form));
      assert.equal(((await response.json()) as any).error, 'invalid_request');
    }
  });

  it('accepts a jti once across two authorities on one store', async () => {
    const replica = await startTestAuthority({}, authority.dataDir);
    try {
      const once = await assertion(ed, 'pk-client');
      const form = { grant_type: 'client_credentials', client_assertion_type: TYPE, client_assertion: once };
      assert.equal((await authority.postForm(TOKEN_PATH, form)).status, 200);
      const again = await replica.postForm(TOKEN_PATH, form);
      assert.equal(again.status, 401);
      assert.equal(((await again.json()) as any).error, 'invalid_client');
      const fresh = await replica.postForm(TOKEN_PATH, { ...form, client_assertion: await assertion(ed, 'pk-client') });
      assert.equal(fresh.status, 200, 'a new jti is accepted by the other');
    } finally {
      await replica.stop();
    }
  });

  it('validates the keys given to the admin API, naming the field', async () => {
    const rsa = keys('RS256', 'rsa');
    const cases: [Record<string, unknown>, string][] = [
      [{ jwks: { keys: [{ ...es.jwk, d: 'AAAA' }] } }, 'jwks.keys.0.d'],
      [{ jwks: { keys: [{ kty: 'oct', k: 'c2VjcmV0' }] } }, 'jwks.keys.0.kty'],
      [{ jwks: { keys: [] } }, 'jwks.keys'],
      [{ jwks: [es.jwk] }, 'jwks'],
      [{ jwks: { keys: [{ ...rsa.jwk, alg: 'ES256' }] } }, 'jwks.keys.0.alg'],
      [{ jwks_uri: 'http://client.example/jwks' }, 'jwks_uri'],
      [{ jwks_uri: 'not a url' }, 'jwks_uri'],
      [{ jwks: { keys: [es.jwk] }, jwks_uri: 'https://client.example/jwks' }, 'jwks_uri'],
    ];
    for (const [fields, path] of cases) {
      const answer = await authority.admin('POST', '/api/apikeys', { clientId: `bad-${randomUUID()}`, ...fields });
      assert.equal(answer.status, 400, JSON.stringify(fields));
      assert.equal(answer.body.details?.[0]?.path, path, JSON.stringify(answer.body));
    }
    // Patch: add keys to a secret key (both methods then work), take them away again with null.
    const created = await authority.admin('POST', '/api/apikeys', { clientId: 'pk-both' });
    assert.ok(created.body.clientSecret);
    assert.equal(
      (await authority.admin('PATCH', '/api/apikeys/pk-both', [{ op: 'add', path: '/jwks', value: { keys: [es.jwk] } }])).status,
      200,
    );
    assert.equal((await token(await assertion(es, 'pk-both'))).status, 200);
    const bySecret = await authority.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials' },
      { authorization: basic('pk-both', created.body.clientSecret) },
    );
    assert.equal(bySecret.status, 200);
    const both = await authority.admin('PUT', '/api/apikeys/pk-both', { jwks_uri: 'https://client.example/jwks' });
    assert.equal(both.status, 400);
    assert.equal(both.body.details[0].path, 'jwks_uri');
    assert.equal((await authority.admin('PUT', '/api/apikeys/pk-both', { jwks: null })).status, 200);
    assert.equal((await authority.admin('GET', '/api/apikeys/pk-both')).body.jwks, undefined);
    assert.equal((await token(await assertion(es, 'pk-both'))).status, 401);
  });

  it('fetches a jwks_uri with bounded time and size, once per cooldown for unknown kids', async () => {
    const jwks = await jwksServer();
    try {
      const id = 'pk-remote';
      assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: id, jwks_uri: `${jwks.url}/jwks` })).status, 201);
      jwks.answer((res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [es.jwk] })));
      assert.equal((await token(await assertion(es, id))).status, 200);
      assert.equal((await token(await assertion(es, id))).status, 200);
      assert.equal(jwks.requests(), 1, 'cached');
      // A flood of assertions naming kids the set lacks: at most one refetch within the cooldown.
      for (let i = 0; i < 10; i++) assert.equal((await token(await assertion(es, id, {}, { kid: `nope-${i}` }))).status, 401);
      assert.ok(jwks.requests() <= 2, `${jwks.requests()} fetches`);

      // Answers that are refused: too large, not a JWKS, a redirect, no answer in time. Each on a new key (new URI, no cache).
      const refusedAnswers: [string, (res: import('node:http').ServerResponse) => void][] = [
        ['too large', (res) => res.writeHead(200).end(JSON.stringify({ keys: [es.jwk], pad: 'x'.repeat(70_000) }))],
        ['private key', (res) => res.writeHead(200).end(JSON.stringify({ keys: [{ ...es.jwk, d: 'AAAA' }] }))],
        ['not JSON', (res) => res.writeHead(200).end('<html>')],
        ['404', (res) => res.writeHead(404).end()],
        ['redirect', (res) => res.writeHead(302, { location: `${jwks.url}/elsewhere` }).end()],
        ['silent', () => {}],
      ];
      for (const [name, answer] of refusedAnswers) {
        jwks.answer(answer);
        const keyId = `pk-remote-${name.replace(/ /g, '-')}`;
        assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: keyId, jwks_uri: `${jwks.url}/${keyId}` })).status, 201);
        const started = performance.now();
        const answered = await token(await assertion(es, keyId));
        assert.equal(answered.status, 401, name);
        assert.equal(answered.body.error, 'invalid_client', name);
        assert.ok(performance.now() - started < 4_000, `${name}: answered within the fetch bound`);
      }
    } finally {
      await jwks.close();
    }
  });

  it('accepts assertions made by jwcrypto (Python): ES256, PS256, RS256, EdDSA', async (t) => {
    if (!jwcryptoSetup.python) {
      if (process.env.CI === 'true') assert.fail(jwcryptoSetup.missing);
      t.skip(jwcryptoSetup.missing);
      return;
    }
    const { stdout } = await promisify(execFile)(jwcryptoSetup.python, [JWCRYPTO_SCRIPT, 'pk-python', tokenEndpoint], { timeout: 30_000 });
    const made = JSON.parse(stdout) as { jwks: { keys: Record<string, unknown>[] }; assertions: Record<string, string> };
    const created = await authority.admin('POST', '/api/apikeys', { clientId: 'pk-python', jwks: made.jwks });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    for (const [alg, clientAssertion] of Object.entries(made.assertions)) {
      const answer = await token(clientAssertion);
      assert.equal(answer.status, 200, `${alg}: ${JSON.stringify(answer.body)}`);
    }
    assert.equal((await token(made.assertions.ES256)).status, 401, 'replayed');
  });

  it("Authlib (Python) with PrivateKeyJWT: token, introspection, revocation, each call by Authlib's own assertion, RS256 and ES256 (its default 1 h exp refused)", async (t) => {
    if (!authlibSetup.python) {
      if (process.env.CI === 'true') assert.fail(authlibSetup.missing);
      t.skip(authlibSetup.missing);
      return;
    }
    const clients: { client_id: string; alg: string; pem: string | Buffer }[] = [];
    for (const alg of ['RS256', 'ES256'] as const) {
      const made = keys(alg, `authlib-${alg}`);
      const clientId = `pk-authlib-${alg.toLowerCase()}`;
      const created = await authority.admin('POST', '/api/apikeys', { clientId, scope: 'read write', jwks: { keys: [made.jwk] } });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      clients.push({ client_id: clientId, alg, pem: made.privateKey.export({ type: 'pkcs8', format: 'pem' }) });
    }
    // Not spawnSync: the authority answering the script runs in this process.
    const stdout = await new Promise<string>((resolve, reject) => {
      const child = execFile(
        authlibSetup.python!,
        [
          AUTHLIB_SCRIPT,
          `${authority.url}${TOKEN_PATH}`,
          `${authority.url}${INTROSPECT_PATH}`,
          `${authority.url}${REVOKE_PATH}`,
          tokenEndpoint,
        ],
        { timeout: 30_000 },
        (error, out, err) => (error ? reject(new Error(`${error.message}\n${err}`)) : resolve(out)),
      );
      child.stdin!.end(JSON.stringify({ clients }));
    });
    const results = JSON.parse(stdout) as Record<string, unknown>;
    for (const { client_id } of clients)
      assert.deepEqual(
        results[client_id],
        // Authlib's own default lifetime (exp an hour ahead) is past the 5 minutes the authority takes.
        { token_type: 'Bearer', scope: 'read', active: true, active_after_revoke: false, default_lifetime: 'invalid_client' },
        client_id,
      );
  });

  it('authenticates by assertion over gRPC too, in the client field', async () => {
    const client = tokenAuthorityClient(authority.grpcAddress);
    try {
      const clientAssertion = await assertion(es, 'pk-client');
      const issued = await client.call('IssueToken', {
        grant_type: 'client_credentials',
        client: { client_assertion_type: TYPE, client_assertion: clientAssertion },
      });
      assert.equal(issued.ok, true, issued.ok ? '' : issued.error.message);
      const replayed = await client.call('IssueToken', {
        grant_type: 'client_credentials',
        client: { client_assertion_type: TYPE, client_assertion: clientAssertion },
      });
      assert.equal(replayed.ok, false);
      if (!replayed.ok) assert.equal(replayed.error.code, 16, 'UNAUTHENTICATED');
      const accessToken = issued.ok ? issued.response.access_token : '';
      const introspected = await client.call('IntrospectToken', {
        token: accessToken,
        client: { client_id: 'pk-client', client_assertion_type: TYPE, client_assertion: await assertion(ed, 'pk-client') },
      });
      assert.equal(introspected.ok && introspected.response.active, true);
      const revoked = await client.call('RevokeToken', {
        token: accessToken,
        client: { client_assertion_type: TYPE, client_assertion: await assertion(ed, 'pk-client', { aud: issuer }) },
      });
      assert.equal(revoked.ok, true);
      const after = await client.call('IntrospectToken', {
        token: accessToken,
        client: { client_assertion_type: TYPE, client_assertion: await assertion(es, 'pk-client') },
      });
      assert.equal(after.ok && after.response.active, false);
    } finally {
      client.close();
    }
  });
});
