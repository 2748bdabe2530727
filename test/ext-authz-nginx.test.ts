import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startEchoBackend, type EchoBackend, type EchoResponse } from '../services/echo-backend/server';
import { JWKS_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { startNginx, type TestNginx } from './support/nginx';
import { freePort } from './support/ports';
import { send, type Answer } from './support/proxy-request';

const FOO = 'foo.oto.tools';
const OAUTH = 'oauth.oto.tools';

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const echoed = (answer: Answer) => JSON.parse(answer.body) as EchoResponse;

/** A denial as Otoroshi writes it, rebuilt by nginx from ext-authz's answer. */
function assertDenied(answer: Answer, status: number, message: string, log: () => string): void {
  assert.equal(answer.status, status, `expected ${status} ${message}, got ${answer.status} ${answer.body}\n${log()}`);
  assert.equal(answer.body, JSON.stringify({ 'Otoroshi-Error': message }));
  assert.equal(answer.headers['content-type'], 'application/json');
}

/** The Otoroshi client-credentials tutorial, end to end through a real nginx with auth_request. */
describe('the tutorial through nginx auth_request and ext-authz', () => {
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let echo: EchoBackend | undefined;
  let nginx: TestNginx | undefined;
  let base: string;
  const log = () => nginx?.errorLog() ?? '';

  before(async () => {
    // The OAuth endpoints answer on oauth.oto.tools only: passing through nginx proves it keeps Host.
    authority = await startTestAuthority({ domain: OAUTH });
    extAuthz = await startTestExtAuthz(authority);
    echo = await startEchoBackend(0, '127.0.0.1');
    nginx = await startNginx({ extAuthzUrl: extAuthz.url, echoUrl: echo.url, authorityUrl: authority.url });
    base = nginx.url;
  });

  after(async () => {
    // Every step runs even if one fails, nginx first (it is a separate process).
    for (const step of [() => nginx?.stop(), () => extAuthz?.close(), () => echo?.close(), () => authority?.stop()]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
  });

  it('serves the JWKS on oauth.oto.tools, without auth_request', async () => {
    const answer = await send(base, JWKS_PATH, { host: OAUTH });
    assert.equal(answer.status, 200, answer.body);
    const jwks = JSON.parse(answer.body) as { keys: { kid: string }[] };
    assert.ok(jwks.keys.some((key) => key.kid === 'otoroshi-jwt-signing'));
    // Host reached the authority: on another host the same path is a 404 there.
    assert.equal((await fetch(`${authority!.url}${JWKS_PATH}`)).status, 404);
    // The OAuth endpoints are not open on the protected host.
    assertDenied(await send(base, JWKS_PATH, { host: FOO }), 401, 'No ApiKey provided', log);
  });

  it('answers 401 {"Otoroshi-Error":"No ApiKey provided"} with a Bearer challenge without a token', async () => {
    for (const host of [FOO, 'unknown.example']) {
      const answer = await send(base, '/', { host });
      assertDenied(answer, 401, 'No ApiKey provided', log);
      assert.equal(answer.headers['www-authenticate'], 'Bearer realm="foo"');
      assert.equal(answer.counts['www-authenticate'], 1, "one challenge, not nginx's copy plus ours");
    }
  });

  it('answers 401 Bad ApiKey for a bad token', async () => {
    for (const token of ['not-a-jwt', 'eyJhbGciOiJSUzI1NiJ9.e30.c2ln']) {
      const answer = await send(base, '/', { headers: bearer(token) });
      assertDenied(answer, 401, 'Bad ApiKey', log);
      assert.equal(answer.headers['www-authenticate'], 'Bearer realm="foo", error="invalid_token"');
      assert.equal(answer.counts['www-authenticate'], 1);
    }
  });

  let token: string;
  it('creates my-id / my-secret and gets a token through nginx with a JSON body', async () => {
    const created = await authority!.admin('POST', '/api/apikeys', {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      clientName: 'My app',
      authorizedEntities: ['route_foo'],
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const answer = await send(base, TOKEN_PATH, {
      host: OAUTH,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: 'my-id', client_secret: 'my-secret' }),
    });
    assert.equal(answer.status, 200, answer.body);
    assert.equal(answer.headers['cache-control'], 'no-store');
    const body = JSON.parse(answer.body) as { access_token: string; token_type: string; expires_in: number };
    assert.equal(body.token_type, 'Bearer');
    assert.equal(body.expires_in, 3600);
    token = body.access_token;
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('my-id') !== undefined);
  });

  it('lets the token through: the backend sees the Authorization header and x-client-id', async () => {
    const answer = await send(base, '/', { headers: bearer(token) });
    assert.equal(answer.status, 200, answer.body);
    const seen = echoed(answer);
    assert.equal(seen.path, '/');
    assert.equal(seen.headers.authorization, `Bearer ${token}`, 'the credential is forwarded');
    assert.equal(seen.headers['x-client-id'], 'my-id');
    assert.equal(seen.headers['x-client-name'], 'My app');
    assert.equal(seen.headers['x-client-scopes'], undefined, 'a key without scopes: no scopes header');
    assert.equal(seen.headers.host, FOO);
  });

  it('overwrites identity headers the client sent', async () => {
    const answer = await send(base, '/', {
      headers: {
        ...bearer(token),
        'X-Client-Id': 'admin',
        'x-client-name': 'root',
        'X-Client-Scopes': 'admin',
        X_Client_Id: 'admin',
        'X-Authz-Error': 'x',
      },
    });
    assert.equal(answer.status, 200, answer.body);
    const seen = echoed(answer);
    assert.equal(seen.headers['x-client-id'], 'my-id', "replaced, not joined with the client's value");
    assert.equal(seen.headers['x-client-name'], 'My app');
    assert.equal(seen.headers['x-client-scopes'], undefined, "the client's scopes are removed");
    assert.equal(seen.headers.x_client_id, undefined, 'underscore variants are dropped');

    // A key with scopes: the header carries the token's scopes, not the client's.
    assert.equal(
      (
        await authority!.admin('POST', '/api/apikeys', {
          clientId: 'scoped-id',
          clientSecret: 'scoped-secret',
          scope: 'read write',
          authorizedEntities: ['route_foo'],
        })
      ).status,
      201,
    );
    const scopedToken = await tokenFor('scoped-id', 'scoped-secret');
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('scoped-id') !== undefined);
    const scoped = echoed(
      await send(base, '/', { headers: { ...bearer(scopedToken), 'X-Client-Scopes': 'admin', 'X-Client-Id': 'my-id' } }),
    );
    assert.equal(scoped.headers['x-client-scopes'], 'read write');
    assert.equal(scoped.headers['x-client-id'], 'scoped-id');
  });

  async function tokenFor(clientId: string, clientSecret: string): Promise<string> {
    const answer = await send(base, TOKEN_PATH, {
      host: OAUTH,
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret }).toString(),
    });
    assert.equal(answer.status, 200, answer.body);
    return (JSON.parse(answer.body) as { access_token: string }).access_token;
  }

  let otherToken: string;
  it('answers 403 JSON for a key not authorized on route_foo', async () => {
    assert.equal(
      (
        await authority!.admin('POST', '/api/apikeys', {
          clientId: 'other-id',
          clientSecret: 'other-secret',
          authorizedEntities: ['route_bar'],
        })
      ).status,
      201,
    );
    otherToken = await tokenFor('other-id', 'other-secret');
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('other-id') !== undefined);
    const answer = await send(base, '/', { headers: bearer(otherToken) });
    assertDenied(answer, 403, 'ApiKey not authorized on this route', log);
    assert.equal(answer.headers['www-authenticate'], undefined);
  });

  it('passes query strings, escapes and bodies through untouched', async () => {
    // `/a%ff` is a valid escape of a byte that is not UTF-8: nginx passes it, and because the
    // client's URI is not appended to the auth subrequest's path, ext-authz never has to parse it.
    const paths = [
      '/a%20b?x=1&y=2',
      '/a%ff',
      '/caf%C3%A9/./x',
      '/x/../etc/passwd?q=%00&r=%zz',
      '/a%2Fb/?',
      '/;x',
      '//double',
      `/?${'q'.repeat(2000)}`,
    ];
    for (const rawPath of paths) {
      const answer = await send(base, rawPath, { headers: bearer(token) });
      assert.equal(answer.status, 200, `${rawPath}: ${answer.status} ${answer.body}\n${log()}`);
      assert.equal(echoed(answer).path, rawPath, 'the backend gets the URI as the client sent it');
      assert.equal(echoed(answer).headers['x-client-id'], 'my-id');
      assertDenied(await send(base, rawPath), 401, 'No ApiKey provided', log);
    }
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const sent = await send(base, '/submit?x=1', {
        method,
        headers: { ...bearer(token), 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
        body: '{"a":1}',
      });
      assert.equal(sent.status, 200, `${method}: ${sent.body}\n${log()}`);
      assert.equal(echoed(sent).method, method);
      assertDenied(
        await send(base, '/submit', { method, headers: { 'content-type': 'application/json' }, body: '{"a":1}' }),
        401,
        'No ApiKey provided',
        log,
      );
    }
    const head = await send(base, '/', { method: 'HEAD', headers: bearer(token) });
    assert.equal(head.status, 200);
  });

  it("rejects paths above the root and keeps the policy out of the client's reach", async () => {
    // nginx itself refuses (400, before auth or proxying) a path that climbs above the root,
    // plain or escaped, and a malformed escape.
    for (const rawPath of ['/../etc/passwd', '/%2e%2e/authz/open', '/x/..%2F..%2Fauthz/open', '/a%zz']) {
      const answer = await send(base, rawPath, { headers: bearer(token) });
      assert.equal(answer.status, 400, `${rawPath}: ${answer.status} ${answer.body}`);
    }
    // other-id may not call foo: whatever the path names, foo's policy decides (never `open`).
    for (const rawPath of ['/authz/open', '/authz/open/x', '/_authz/../authz/open', '/authz/foo/../open', '/_authz/x', '/_authzx']) {
      assertDenied(await send(base, rawPath, { headers: bearer(otherToken) }), 403, 'ApiKey not authorized on this route', log);
    }
    // The auth location is internal: a client cannot call it, escaped or not.
    for (const rawPath of ['/_authz', '/%5Fauthz', '/x/../_authz']) {
      assert.equal((await send(base, rawPath, { headers: bearer(otherToken) })).status, 404, rawPath);
    }
    // ext-authz only ever saw the policy nginx's configuration names.
    const metrics = await (await fetch(`${extAuthz!.url}/metrics`)).text();
    const policies = new Set([...metrics.matchAll(/ext_authz_decisions_total\{[^}]*policy="([^"]*)"/g)].map((match) => match[1]));
    assert.deepEqual([...policies], ['foo']);
  });

  // Product bug (ext-authz HTTP mode), not nginx: Envoy's http_service (envoy/envoy-http.yaml,
  // path_prefix /authz/foo) sends the client's path after the policy, and Fastify's router answers
  // 400 FST_ERR_BAD_URL, with Fastify's body, for a path that is not UTF-8 once decoded, before
  // the controller runs: a valid token on `/a%ff` is denied with a non-Otoroshi 400 (and an nginx
  // configured with `/authz/foo$request_uri` would answer 500). The policy is the first segment
  // only; the rest of the path must not matter to the decision.
  it('HTTP mode: decides by policy and headers whatever follows /authz/<policy> (Envoy path_prefix)', async () => {
    for (const rawPath of ['/authz/foo/a%ff', '/authz/foo/a%c0%af?x=1', '/authz/foo/a%zz']) {
      const allowed = await send(extAuthz!.url, rawPath, { headers: bearer(token) });
      assert.equal(allowed.status, 200, `${rawPath}: ${allowed.status} ${allowed.body}`);
      assert.equal(allowed.headers['x-client-id'], 'my-id');
      const denied = await send(extAuthz!.url, rawPath);
      assert.equal(denied.status, 401, `${rawPath}: ${denied.status} ${denied.body}`);
      assert.equal(denied.body, JSON.stringify({ 'Otoroshi-Error': 'No ApiKey provided' }));
    }
  });

  // Product bug (ext-authz HTTP mode): the admin API accepts any clientName, and the HTTP mode
  // copies it raw into the x-client-name response header; Node refuses a header value outside
  // Latin-1 or with control characters (ERR_INVALID_CHAR), so the valid request gets Fastify's 500,
  // which nginx can only turn into a 503 (Envoy's http_service would deny with the 500). The key's
  // name must not decide whether its valid token passes, nor inject headers.
  it('allows a key whose clientName is not a plain header value (Unicode), and refuses CR/LF in names', async () => {
    const clientId = 'unicode-id';
    const clientName = 'Café ☕ 東京';
    const created = await authority!.admin('POST', '/api/apikeys', {
      clientId,
      clientSecret: `${clientId}-secret`,
      clientName,
      authorizedEntities: ['route_foo'],
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const keyToken = await tokenFor(clientId, `${clientId}-secret`);
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey(clientId) !== undefined);
    const answer = await send(base, '/', { headers: bearer(keyToken) });
    assert.equal(answer.status, 200, `${JSON.stringify(clientName)}: ${answer.status} ${answer.body}`);
    const seen = echoed(answer);
    assert.equal(seen.headers['x-client-id'], clientId);
    assert.equal(decodeURIComponent(String(seen.headers['x-client-name'])), clientName, 'percent-encoded UTF-8');
    const injected = await authority!.admin('POST', '/api/apikeys', {
      clientId: 'crlf-id',
      clientSecret: 'crlf-id-secret',
      clientName: 'line\r\nX-Evil: 1',
    });
    assert.equal(injected.status, 400, 'no header injection through a name');
  });

  it('denies a disabled key within one second, and allows it again once re-enabled', async (t) => {
    const pollUntil = async (wanted: number) => {
      const started = Date.now();
      for (;;) {
        const answer = await send(base, '/', { headers: bearer(token) });
        if (answer.status === wanted) return { answer, elapsed: Date.now() - started };
        if (Date.now() - started > 3000) assert.fail(`still ${answer.status} ${answer.body} after 3 s`);
        await new Promise((done) => setTimeout(done, 50));
      }
    };
    assert.equal((await send(base, '/', { headers: bearer(token) })).status, 200);
    const started = Date.now();
    assert.equal((await authority!.admin('PATCH', '/api/apikeys/my-id', { enabled: false })).status, 200);
    const disabled = await pollUntil(401);
    const delay = Date.now() - started;
    assertDenied(disabled.answer, 401, 'ApiKey disabled', log);
    assert.ok(delay < 1000, `denied after ${delay} ms`);
    t.diagnostic(`denied ${delay} ms after the PATCH`);

    const reenabled = Date.now();
    assert.equal((await authority!.admin('PATCH', '/api/apikeys/my-id', { enabled: true })).status, 200);
    const allowed = await pollUntil(200);
    assert.equal(echoed(allowed.answer).headers['x-client-id'], 'my-id');
    assert.ok(Date.now() - reenabled < 1000, `allowed again after ${Date.now() - reenabled} ms`);
  });

  describe("when foo's policy requires a scope", () => {
    let strict: TestExtAuthz | undefined;
    let nginx3: TestNginx | undefined;
    after(async () => {
      for (const step of [() => nginx3?.stop(), () => strict?.close()]) {
        await Promise.resolve()
          .then(step)
          .catch(() => undefined);
      }
    });

    it("answers 403 JSON with ext-authz's insufficient_scope challenge", async () => {
      strict = await startTestExtAuthz(authority!, { policies: { foo: { extractors: ['bearer'], requiredScopes: ['write'] } } });
      nginx3 = await startNginx({ extAuthzUrl: strict.url, echoUrl: echo!.url, authorityUrl: authority!.url });
      const log3 = () => nginx3?.errorLog() ?? '';
      const readOnly = await send(base, TOKEN_PATH, {
        host: OAUTH,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ grant_type: 'client_credentials', client_id: 'scoped-id', client_secret: 'scoped-secret', scope: 'read' }),
      });
      assert.equal(readOnly.status, 200, readOnly.body);
      const denied = await send(nginx3.url, '/', { headers: bearer((JSON.parse(readOnly.body) as { access_token: string }).access_token) });
      assertDenied(denied, 403, 'ApiKey lacks a required scope', log3);
      assert.equal(denied.headers['www-authenticate'], 'Bearer realm="foo", error="insufficient_scope", scope="write"');
      assert.equal(denied.counts['www-authenticate'], 1);
      const allowed = await send(nginx3.url, '/', { headers: bearer(await tokenFor('scoped-id', 'scoped-secret')) });
      assert.equal(allowed.status, 200, allowed.body);
      assert.equal(echoed(allowed).headers['x-client-scopes'], 'read write');
    });
  });

  describe('when ext-authz cannot decide', () => {
    let starting: TestExtAuthz | undefined;
    let nginx2: TestNginx | undefined;
    after(async () => {
      for (const step of [() => nginx2?.stop(), () => starting?.close()]) {
        await Promise.resolve()
          .then(step)
          .catch(() => undefined);
      }
    });

    it("answers 503 JSON, never nginx's HTML 500, while ext-authz is starting and when it is down", async () => {
      // An ext-authz whose authority never answers: it has no state and says 503.
      starting = await startTestExtAuthz({ grpcAddress: `127.0.0.1:${await freePort()}` }, {}, false);
      nginx2 = await startNginx({ extAuthzUrl: starting.url, echoUrl: echo!.url, authorityUrl: authority!.url });
      const log2 = () => nginx2?.errorLog() ?? '';

      const whileStarting = await send(nginx2.url, '/', { headers: bearer(token) });
      assertDenied(whileStarting, 503, 'Authorization service is starting', log2);
      assert.equal(whileStarting.headers['retry-after'], '1');
      assertDenied(await send(nginx2.url, '/', {}), 503, 'Authorization service is starting', log2);

      await starting.close();
      const down = await send(nginx2.url, '/?x=1', { headers: bearer(token) });
      assertDenied(down, 503, 'Authorization service unavailable', log2);
    });
  });
});
