import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, sign as rsaSign } from 'node:crypto';
import { credentials, makeGenericClientConstructor, status as GrpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { after, before, describe, it } from 'node:test';
import { loadAuthorizationService } from '../services/ext-authz/envoy-check';
import { httpRequest } from './support/http';
import { describeGrpcResult, grpcWire } from './support/raw-grpc';
import { REVOKE_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { accessTokenClaims, signWithAuthorityKey } from './support/tokens';

/*
 * Envoy's gRPC Check, spoken as Envoy speaks it: CheckRequests shaped like the ones
 * envoy.filters.http.ext_authz sends (pseudo-headers, peers, per-route context_extensions, and
 * once header_map as with encode_raw_headers), through a client built from Envoy's own protos.
 * Every answer is checked whole: the RPC status, the HTTP status, headers and Otoroshi's body.
 */

// ---------------------------------------------------------------------------------------------
// The client, from Envoy's protos (the same loadSync output the server uses).

const AuthorizationClient = makeGenericClientConstructor(loadAuthorizationService() as any, 'Authorization');
const HealthClient = makeGenericClientConstructor(healthService as any, 'Health');

/** gRPC codes Envoy reads from CheckResponse.status. */
const RPC = { OK: 0, PERMISSION_DENIED: 7, UNAVAILABLE: 14, UNAUTHENTICATED: 16 } as const;
/** envoy.type.v3.StatusCode: the loader decodes enums as their names (envoy/type/v3/http_status.proto). */
const HTTP_STATUS_BY_NAME: Record<string, number> = { Unauthorized: 401, Forbidden: 403, ServiceUnavailable: 503 };
const RPC_BY_HTTP: Record<number, number> = { 401: RPC.UNAUTHENTICATED, 403: RPC.PERMISSION_DENIED, 503: RPC.UNAVAILABLE };
const OVERWRITE = 'OVERWRITE_IF_EXISTS_OR_ADD';

interface CheckClient {
  check(request: object, deadlineMs?: number): Promise<any>;
  close(): void;
}

function checkClient(address: string): CheckClient {
  const client = new AuthorizationClient(address, credentials.createInsecure()) as Client & Record<string, Function>;
  return {
    check: (request, deadlineMs = 5_000) =>
      new Promise((resolve, reject) =>
        client.Check(request, { deadline: Date.now() + deadlineMs }, (error: ServiceError | null, response: unknown) =>
          error ? reject(error) : resolve(response),
        ),
      ),
    close: () => client.close(),
  };
}

async function healthStatus(address: string, service = ''): Promise<string> {
  const client = new HealthClient(address, credentials.createInsecure()) as Client & Record<string, Function>;
  try {
    return await new Promise((resolve, reject) =>
      client.Check({ service }, { deadline: Date.now() + 3_000 }, (error: ServiceError | null, response: { status: string }) =>
        error ? reject(error) : resolve(response.status),
      ),
    );
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Envoy-shaped CheckRequests.

let requestCounter = 0;

interface EnvoyRequestOptions {
  /** Client headers (lower-case names), besides the ones Envoy always has. */
  headers?: Record<string, string>;
  /** Value of context_extensions.route; null for no context_extensions at all. */
  route?: string | null;
  /** Send the headers as header_map (Envoy's encode_raw_headers) instead of the headers map. */
  rawHeaders?: boolean;
}

/** A CheckRequest as Envoy's ext_authz filter builds it for `GET http://foo.oto.tools:8080/api/items?page=2`. */
function envoyCheckRequest({ headers = {}, route = 'foo', rawHeaders = false }: EnvoyRequestOptions = {}): object {
  requestCounter += 1;
  const id = `${1000 + requestCounter}`;
  const requestId = `6f1d2c3b-0000-4000-8000-${String(requestCounter).padStart(12, '0')}`;
  const allHeaders: Record<string, string> = {
    ':authority': 'foo.oto.tools:8080',
    ':path': '/api/items?page=2',
    ':method': 'GET',
    ':scheme': 'http',
    'user-agent': 'curl/8.5.0',
    accept: '*/*',
    'x-forwarded-proto': 'http',
    'x-request-id': requestId,
    ...headers,
  };
  const http: Record<string, unknown> = {
    id,
    method: 'GET',
    path: '/api/items?page=2',
    host: 'foo.oto.tools:8080',
    scheme: 'http',
    protocol: 'HTTP/1.1',
  };
  if (rawHeaders)
    http.header_map = { headers: Object.entries(allHeaders).map(([key, value]) => ({ key, raw_value: Buffer.from(value, 'utf8') })) };
  else http.headers = allHeaders;
  const attributes: Record<string, unknown> = {
    source: { address: { socket_address: { address: '127.0.0.1', port_value: 51234 + (requestCounter % 1000) } } },
    destination: { address: { socket_address: { address: '127.0.0.1', port_value: 8080 } } },
    request: { time: { seconds: Math.floor(Date.now() / 1000), nanos: 0 }, http },
  };
  if (route !== null) attributes.context_extensions = { route };
  return { attributes };
}

// ---------------------------------------------------------------------------------------------
// Whole-response assertions.

type HeaderOption = { header: { key: string; value: string }; append_action: string };

/** Header options as a plain map, after checking each has the explicit overwrite action and appears once. */
function headerMap(options: HeaderOption[] | undefined): Record<string, string> {
  const map: Record<string, string> = {};
  for (const option of options ?? []) {
    assert.equal(option.append_action, OVERWRITE, `append_action of ${option.header?.key}`);
    assert.ok(!(option.header.key in map), `header ${option.header.key} set once`);
    map[option.header.key] = option.header.value;
  }
  return map;
}

interface DenialExpectation {
  status: 401 | 403 | 503;
  message: string;
  /** Regex the www-authenticate header must match; null: must be absent; undefined: present on 401 only. */
  wwwAuthenticate?: RegExp | null;
}

function assertDenied(response: any, expected: DenialExpectation, context = ''): { wwwAuthenticate?: string } {
  assert.equal(response.http_response, 'denied_response', 'oneof http_response is denied_response');
  assert.equal(response.ok_response, undefined);
  assert.ok(response.status, 'status always set');
  assert.equal(response.status.code ?? 0, RPC_BY_HTTP[expected.status], 'rpc status code');
  const denied = response.denied_response;
  assert.ok(denied?.status, 'denied_response.status set');
  assert.equal(HTTP_STATUS_BY_NAME[denied.status.code], expected.status, `HTTP status (${denied.status.code})`);
  const headers = headerMap(denied.headers);
  assert.equal(headers['content-type'], 'application/json');
  const www = headers['www-authenticate'];
  const allowed = new Set(['content-type', 'www-authenticate']);
  for (const key of Object.keys(headers)) assert.ok(allowed.has(key), `unexpected denial header ${key}`);
  if (expected.wwwAuthenticate === null) assert.equal(www, undefined, `no www-authenticate ${context}`);
  else if (expected.wwwAuthenticate) assert.match(www ?? '', expected.wwwAuthenticate, `www-authenticate ${context}`);
  else if (expected.status === 401) assert.match(www ?? '', /^Bearer\b/, `www-authenticate on 401 ${context}`);
  assert.equal(typeof denied.body, 'string');
  assert.deepEqual(JSON.parse(denied.body), { 'Otoroshi-Error': expected.message });
  assert.equal(denied.body, JSON.stringify({ 'Otoroshi-Error': expected.message }), 'the exact body');
  return { wwwAuthenticate: www };
}

interface AllowExpectation {
  clientId: string;
  clientName: string;
  /** Space-separated scopes; undefined when the credential has none. */
  scopes?: string;
  /** Exactly these headers removed (order-insensitive). */
  remove: string[];
}

function assertAllowed(response: any, expected: AllowExpectation): void {
  assert.equal(
    response.http_response,
    'ok_response',
    `oneof http_response is ok_response (got ${JSON.stringify(response.denied_response?.body)})`,
  );
  assert.equal(response.denied_response, undefined);
  assert.ok(response.status, 'status always set');
  assert.equal(response.status.code ?? 0, RPC.OK);
  const ok = response.ok_response;
  const expectedHeaders: Record<string, string> = { 'x-client-id': expected.clientId, 'x-client-name': expected.clientName };
  if (expected.scopes !== undefined) expectedHeaders['x-client-scopes'] = expected.scopes;
  assert.deepEqual(headerMap(ok.headers), expectedHeaders);
  assert.deepEqual([...(ok.headers_to_remove ?? [])].sort(), [...expected.remove].sort());
}

// ---------------------------------------------------------------------------------------------
// Tokens and API keys.

interface Key {
  clientId: string;
  clientSecret: string;
  clientName: string;
}

async function createKey(authority: TestAuthority, fields: Record<string, unknown>): Promise<Key> {
  const created = await authority.admin('POST', '/api/apikeys', fields);
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return { clientId: created.body.clientId, clientSecret: fields.clientSecret as string, clientName: created.body.clientName };
}

async function issueToken(authority: TestAuthority, key: Key, scope?: string): Promise<string> {
  const response = await authority.postForm(TOKEN_PATH, {
    grant_type: 'client_credentials',
    client_id: key.clientId,
    client_secret: key.clientSecret,
    ...(scope === undefined ? {} : { scope }),
  });
  const body = (await response.json()) as { access_token?: string };
  assert.equal(response.status, 200, JSON.stringify(body));
  return body.access_token!;
}

function decodeJwt(token: string): { header: Record<string, any>; claims: Record<string, any> } {
  const [header, claims] = token
    .split('.')
    .slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { header, claims };
}

const encodePart = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** RFC 7617 Basic, as a browser or curl sends it (no form-encoding of id and secret). */
const rawBasic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`, 'utf8').toString('base64')}`;

/** Deny reasons recorded by ext-authz's decision counter during `action` (the metric label is the reason). */
async function reasonsDuring(extAuthz: TestExtAuthz, action: () => Promise<unknown>): Promise<string[]> {
  const snapshot = async () => {
    const metric = extAuthz.metrics.registry.getSingleMetric('ext_authz_decisions_total');
    const values = metric ? (await metric.get()).values : [];
    return new Map(values.filter((value) => value.labels.mode === 'grpc').map((value) => [JSON.stringify(value.labels), value.value]));
  };
  const before = await snapshot();
  await action();
  const afterwards = await snapshot();
  const grown = [...afterwards]
    .filter(([labels, count]) => count > (before.get(labels) ?? 0))
    .map(([labels]) => String(JSON.parse(labels).reason));
  return [...new Set(grown)].sort();
}

// ---------------------------------------------------------------------------------------------

describe('ext-authz Check over gRPC, Envoy-shaped requests, every decision', () => {
  let authority: TestAuthority;
  let extAuthz: TestExtAuthz;
  let client: CheckClient;
  /** Authorized on route_foo, scopes read write. */
  let app: Key;
  /** No authorizedEntities, no scopes. */
  let plain: Key;
  /** Authorized on route_foo, no scopes at all. */
  let noScopes: Key;
  /** Secret with a ':' in it (RFC 7617 allows it in the password). */
  let _basicKey: Key;
  /** allowClientIdOnly: true. */
  let _idOnly: Key;
  let appToken: string;

  const check = (options: EnvoyRequestOptions) => client.check(envoyCheckRequest(options));
  const bearer = (token: string, route = 'foo', extra: Record<string, string> = {}) =>
    check({ route, headers: { authorization: `Bearer ${token}`, ...extra } });

  before(async () => {
    authority = await startTestAuthority({ allowedAudiences: ['billing'] });
    app = await createKey(authority, {
      clientId: 'app',
      clientName: 'The App',
      clientSecret: 'app-secret-1',
      authorizedEntities: ['route_foo'],
      scope: 'read write',
    });
    plain = await createKey(authority, { clientId: 'plain', clientSecret: 'plain-secret-1' });
    noScopes = await createKey(authority, {
      clientId: 'noscopes',
      clientName: 'No Scopes',
      clientSecret: 'noscopes-secret',
      authorizedEntities: ['route_foo'],
    });
    _basicKey = await createKey(authority, { clientId: 'basic-user', clientName: 'Basic User', clientSecret: 'pa:ss%2Fw+rd' });
    _idOnly = await createKey(authority, {
      clientId: 'id-only',
      clientName: 'Id Only',
      clientSecret: 'id-only-secret',
      allowClientIdOnly: true,
    });
    extAuthz = await startTestExtAuthz(authority);
    await extAuthz.waitFor(() => extAuthz.replica.apiKey('id-only') !== undefined);
    client = checkClient(extAuthz.grpcAddress);
    appToken = await issueToken(authority, app);
  });
  after(async () => {
    client?.close();
    await extAuthz?.close();
    await authority?.stop();
  });

  describe('policy names that are object property names', () => {
    for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      it(`"${name}" is an unknown policy (403) over gRPC and HTTP, and mints no metric label`, async () => {
        assertDenied(await bearer(appToken, name), { status: 403, message: 'No authorization policy for this route' });
        const answer = await httpRequest(`${extAuthz.url}/authz/${name}/x`, { headers: { authorization: `Bearer ${appToken}` } });
        assert.equal(answer.status, 403);
        assert.deepEqual(JSON.parse(answer.body), { 'Otoroshi-Error': 'No authorization policy for this route' });
        const metrics = (await httpRequest(`${extAuthz.url}/metrics`)).body;
        assert.equal(metrics.includes(`policy="${name}"`), false);
        assert.match(metrics, /policy="\(unknown\)"/);
      });
    }
  });

  describe('audience (RFC 9068 §4)', () => {
    it('a token for another audience is refused where the route expects the default one, and accepted where its policy names it', async () => {
      const response = await authority.postForm(TOKEN_PATH, {
        grant_type: 'client_credentials',
        client_id: 'plain',
        client_secret: 'plain-secret-1',
        audience: 'billing',
      });
      const billingToken = ((await response.json()) as { access_token: string }).access_token;
      assert.equal(decodeJwt(billingToken).claims.aud, 'billing');
      assertDenied(await bearer(billingToken, 'open'), { status: 401, message: 'Bad ApiKey' });
      assert.deepEqual(await reasonsDuring(extAuthz, () => bearer(billingToken, 'open')), ['wrong_audience']);
      assertAllowed(await bearer(billingToken, 'billing'), { clientId: 'plain', clientName: 'plain', remove: ['x-client-scopes'] });
      const defaultToken = await issueToken(authority, plain);
      assertDenied(await bearer(defaultToken, 'billing'), { status: 401, message: 'Bad ApiKey' });
    });
  });

  describe('no or malformed credential', () => {
    it('no credential: 401 No ApiKey provided with a Bearer challenge', async () => {
      const reasons = await reasonsDuring(extAuthz, async () =>
        assertDenied(await check({}), { status: 401, message: 'No ApiKey provided', wwwAuthenticate: /^Bearer realm="foo"$/ }),
      );
      assert.deepEqual(reasons, ['no_credential']);
    });

    const malformed: [string, string][] = [
      ['"Bearer" alone', 'Bearer'],
      ['"Bearer " with trailing spaces only', 'Bearer   '],
      ['"Bearer a b"', 'Bearer a b'],
      ['Bearer and non-JWT junk', 'Bearer not-a-jwt'],
      ['Bearer and three dotted junk parts', 'Bearer abc.def.ghi'],
      ['Bearer and 10 kB of junk', `Bearer ${'x'.repeat(10 * 1024)}`],
      ['Bearer and 10 kB JWT-looking junk', `Bearer ${'a'.repeat(5000)}.${'b'.repeat(5000)}.${'c'.repeat(300)}`],
      ['Bearer and unicode', 'Bearer ünïcødé-🔑.jwt.☃'],
    ];
    for (const [name, authorization] of malformed) {
      it(`malformed Authorization (${name}): 401 Bad ApiKey`, async () => {
        assertDenied(await check({ headers: { authorization } }), {
          status: 401,
          message: 'Bad ApiKey',
          wwwAuthenticate: /^Bearer realm="foo"/,
        });
      });
    }

    it('an Authorization with another scheme on a bearer-only route is no credential', async () => {
      assertDenied(await check({ headers: { authorization: rawBasic('app', 'app-secret-1') } }), {
        status: 401,
        message: 'No ApiKey provided',
      });
    });
  });

  describe('forged and invalid tokens', () => {
    it('control: a token built by the test helper with the authority key passes (the forgeries below differ in one point)', async () => {
      assertAllowed(await bearer(await signWithAuthorityKey(authority, accessTokenClaims(authority, 'app'))), {
        clientId: 'app',
        clientName: 'The App',
        remove: ['x-client-scopes'],
      });
    });

    it('bad signature: signed by another RSA key under our kid', async () => {
      const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const input = `${encodePart({ alg: 'RS256', typ: 'at+jwt', kid: 'otoroshi-jwt-signing' })}.${encodePart(accessTokenClaims(authority, 'app'))}`;
      const forged = `${input}.${rsaSign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
      const reasons = await reasonsDuring(extAuthz, async () =>
        assertDenied(await bearer(forged), {
          status: 401,
          message: 'Bad ApiKey',
          wwwAuthenticate: /^Bearer realm="foo", error="invalid_token"$/,
        }),
      );
      assert.deepEqual(reasons, ['bad_signature']);
    });

    it("a real token with its signature swapped for another real token's", async () => {
      const other = await issueToken(authority, app);
      assert.notEqual(decodeJwt(other).claims.jti, decodeJwt(appToken).claims.jti);
      const [header, claims] = appToken.split('.');
      const forged = `${header}.${claims}.${other.split('.')[2]}`;
      assertDenied(await bearer(forged), { status: 401, message: 'Bad ApiKey' });
    });

    it('alg none', async () => {
      const forged = `${encodePart({ alg: 'none', typ: 'at+jwt', kid: 'otoroshi-jwt-signing' })}.${encodePart(accessTokenClaims(authority, 'app'))}.`;
      assertDenied(await bearer(forged), { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /^Bearer realm="foo"/ });
    });

    it('HS256 keyed with our public key', async () => {
      const keyPair = await authority.authority.store.keyPairs.get('otoroshi-jwt-signing');
      const publicPem = keyPair!.versions[0].publicKeyPem;
      const input = `${encodePart({ alg: 'HS256', typ: 'at+jwt', kid: 'otoroshi-jwt-signing' })}.${encodePart(accessTokenClaims(authority, 'app'))}`;
      const forged = `${input}.${createHmac('sha256', publicPem).update(input).digest('base64url')}`;
      const reasons = await reasonsDuring(extAuthz, async () =>
        assertDenied(await bearer(forged), { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /error="invalid_token"/ }),
      );
      assert.deepEqual(reasons, ['bad_signature']);
    });

    it('unknown kid', async () => {
      const forged = await signWithAuthorityKey(authority, accessTokenClaims(authority, 'app'), { kid: 'no-such-kid' });
      const reasons = await reasonsDuring(extAuthz, async () =>
        assertDenied(await bearer(forged), { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /error="invalid_token"/ }),
      );
      assert.deepEqual(reasons, ['unknown_key']);
    });

    it('wrong issuer', async () => {
      const forged = await signWithAuthorityKey(authority, { ...accessTokenClaims(authority, 'app'), iss: 'https://evil.example' });
      const reasons = await reasonsDuring(extAuthz, async () =>
        assertDenied(await bearer(forged), { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /error="invalid_token"/ }),
      );
      assert.deepEqual(reasons, ['wrong_issuer']);
    });

    it('typ JWT instead of at+jwt (RFC 9068 §4)', async () => {
      const forged = await signWithAuthorityKey(authority, accessTokenClaims(authority, 'app'), { typ: 'JWT' });
      const reasons = await reasonsDuring(extAuthz, async () =>
        assertDenied(await bearer(forged), { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /error="invalid_token"/ }),
      );
      assert.deepEqual(reasons, ['not_access_token']);
    });

    it('expired: 401 Token expired', async () => {
      const now = Math.floor(Date.now() / 1000);
      const expired = await signWithAuthorityKey(authority, {
        ...accessTokenClaims(authority, 'app'),
        iat: now - 7200,
        nbf: now - 7200,
        exp: now - 60,
      });
      assertDenied(await bearer(expired), {
        status: 401,
        message: 'Token expired',
        wwwAuthenticate: /^Bearer realm="foo", error="invalid_token"$/,
      });
    });

    it('nbf in the future: 401 Token not yet valid', async () => {
      const now = Math.floor(Date.now() / 1000);
      const early = await signWithAuthorityKey(authority, { ...accessTokenClaims(authority, 'app'), nbf: now + 600, exp: now + 1200 });
      assertDenied(await bearer(early), { status: 401, message: 'Token not yet valid', wwwAuthenticate: /error="invalid_token"/ });
    });

    it('a well-signed token for a client id the authority does not know', async () => {
      const ghost = await signWithAuthorityKey(authority, accessTokenClaims(authority, 'ghost'));
      assertDenied(await bearer(ghost), { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /error="invalid_token"/ });
    });
  });

  describe('routes, scopes and identity headers', () => {
    it('valid token on foo: OK with x-client-id, x-client-name, x-client-scopes', async () => {
      assert.equal(decodeJwt(appToken).claims.scope, 'read write');
      assertAllowed(await bearer(appToken), { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] });
    });

    it('lower-case "bearer" scheme is accepted (RFC 7235 §2.1: schemes are case-insensitive)', async () => {
      assertAllowed(await check({ headers: { authorization: `bearer ${appToken}` } }), {
        clientId: 'app',
        clientName: 'The App',
        scopes: 'read write',
        remove: [],
      });
    });

    it('header_map (encode_raw_headers, values as bytes) instead of headers', async () => {
      assertAllowed(await client.check(envoyCheckRequest({ rawHeaders: true, headers: { authorization: `Bearer ${appToken}` } })), {
        clientId: 'app',
        clientName: 'The App',
        scopes: 'read write',
        remove: [],
      });
      assertDenied(await client.check(envoyCheckRequest({ rawHeaders: true })), { status: 401, message: 'No ApiKey provided' });
      assertDenied(await client.check(envoyCheckRequest({ rawHeaders: true, headers: { authorization: `Bearer ${appToken}x` } })), {
        status: 401,
        message: 'Bad ApiKey',
      });
    });

    it("key not in the policy's authorizedEntities: 403 ApiKey not authorized on this route", async () => {
      const token = await issueToken(authority, plain);
      assertDenied(await bearer(token), { status: 403, message: 'ApiKey not authorized on this route', wwwAuthenticate: null });
      // The same token is fine on a route without authorizedEntities: the 403 is the route's doing.
      assertAllowed(await bearer(token, 'open'), { clientId: 'plain', clientName: 'plain', remove: ['x-client-scopes'] });
    });

    it('missing scope on policy scoped: 403 with insufficient_scope', async () => {
      const readOnly = await issueToken(authority, app, 'read');
      const { wwwAuthenticate } = assertDenied(await bearer(readOnly, 'scoped'), {
        status: 403,
        message: 'ApiKey lacks a required scope',
        wwwAuthenticate: /^Bearer realm="scoped", error="insufficient_scope"/,
      });
      assert.match(wwwAuthenticate!, /scope="read write"/);
      assertAllowed(await bearer(appToken, 'scoped'), { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] });
    });

    it('unknown policy name: 403', async () => {
      assertDenied(await bearer(appToken, 'no-such-policy'), {
        status: 403,
        message: 'No authorization policy for this route',
        wwwAuthenticate: null,
      });
    });

    it('missing context_extensions: 403', async () => {
      assertDenied(await check({ route: null, headers: { authorization: `Bearer ${appToken}` } }), {
        status: 403,
        message: 'No authorization policy for this route',
        wwwAuthenticate: null,
      });
    });

    it('policy strip: the Authorization header is removed before the upstream', async () => {
      assertAllowed(await bearer(appToken, 'strip'), {
        clientId: 'app',
        clientName: 'The App',
        scopes: 'read write',
        remove: ['authorization'],
      });
    });

    it('header spoofing: identity headers sent by the client are overwritten or removed', async () => {
      const token = await issueToken(authority, noScopes);
      assert.equal(decodeJwt(token).claims.scope, undefined, 'the token has no scope claim');
      const response = await bearer(token, 'foo', { 'x-client-id': 'admin', 'x-client-name': 'evil', 'x-client-scopes': 'admin' });
      assertAllowed(response, { clientId: 'noscopes', clientName: 'No Scopes', remove: ['x-client-scopes'] });
      // and with strip, both the credential and the spoofed scopes go
      assertAllowed(await bearer(token, 'strip', { 'x-client-scopes': 'admin' }), {
        clientId: 'noscopes',
        clientName: 'No Scopes',
        remove: ['x-client-scopes', 'authorization'],
      });
    });
  });

  describe('extractors', () => {
    it('basic: right id and secret (a ":" in the secret) → OK with the key\'s scopes (none)', async () => {
      assertAllowed(await check({ route: 'basic', headers: { authorization: rawBasic('basic-user', 'pa:ss%2Fw+rd') } }), {
        clientId: 'basic-user',
        clientName: 'Basic User',
        remove: ['x-client-scopes'],
      });
    });

    it('basic: a wrong secret and an unknown id give identical 401 answers with a Basic challenge', async () => {
      const wrong = await check({ route: 'basic', headers: { authorization: rawBasic('basic-user', 'wrong-secret') } });
      const unknown = await check({ route: 'basic', headers: { authorization: rawBasic('nobody-here', 'pa:ss%2Fw+rd') } });
      assertDenied(wrong, { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /^Basic realm="basic"$/ });
      assertDenied(unknown, { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /^Basic realm="basic"$/ });
      assert.deepEqual(unknown, wrong);
    });

    it('basic: no credential → 401 No ApiKey provided, Basic challenge', async () => {
      assertDenied(await check({ route: 'basic' }), {
        status: 401,
        message: 'No ApiKey provided',
        wwwAuthenticate: /^Basic realm="basic"$/,
      });
    });

    it('basic: a bearer token sent to the basic policy → 401 No ApiKey provided', async () => {
      assertDenied(await bearer(appToken, 'basic'), {
        status: 401,
        message: 'No ApiKey provided',
        wwwAuthenticate: /^Basic realm="basic"$/,
      });
    });

    it('basic: malformed Basic credentials → 401 Bad ApiKey', async () => {
      for (const authorization of [
        'Basic',
        'Basic %%%',
        `Basic ${Buffer.from('no-colon').toString('base64')}`,
        `Basic ${Buffer.from(':secret-only').toString('base64')}`,
      ]) {
        assertDenied(
          await check({ route: 'basic', headers: { authorization } }),
          { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /^(Basic|Bearer) realm="basic"/ },
          `Authorization: ${authorization}`,
        );
      }
    });

    it('basic: a malformed Basic credential is challenged with Basic (the only scheme the route accepts), not Bearer', async () => {
      for (const authorization of ['Basic', 'Basic %%%', `Basic ${Buffer.from('no-colon').toString('base64')}`]) {
        assertDenied(
          await check({ route: 'basic', headers: { authorization } }),
          { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /^Basic realm="basic"/ },
          `Authorization: ${authorization}`,
        );
      }
    });

    it('headers: otoroshi-client-id + otoroshi-client-secret', async () => {
      assertAllowed(await check({ route: 'headers', headers: { 'otoroshi-client-id': 'app', 'otoroshi-client-secret': 'app-secret-1' } }), {
        clientId: 'app',
        clientName: 'The App',
        scopes: 'read write',
        remove: [],
      });
      const wrong = await check({ route: 'headers', headers: { 'otoroshi-client-id': 'app', 'otoroshi-client-secret': 'app-secret-2' } });
      const unknown = await check({
        route: 'headers',
        headers: { 'otoroshi-client-id': 'nobody', 'otoroshi-client-secret': 'app-secret-1' },
      });
      assertDenied(wrong, { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /^Bearer realm="headers"/ });
      assert.deepEqual(unknown, wrong);
      assertDenied(await check({ route: 'headers', headers: { 'otoroshi-client-id': 'app' } }), {
        status: 401,
        message: 'No ApiKey provided',
        wwwAuthenticate: /realm="headers"/,
      });
    });

    it('clientid: the client id alone is refused unless the key allows it', async () => {
      assertDenied(await check({ route: 'clientid', headers: { 'otoroshi-client-id': 'app' } }), {
        status: 401,
        message: 'Bad ApiKey',
        wwwAuthenticate: /^Bearer realm="clientid"/,
      });
      assertDenied(await check({ route: 'clientid', headers: { 'otoroshi-client-id': 'nobody' } }), {
        status: 401,
        message: 'Bad ApiKey',
        wwwAuthenticate: /^Bearer realm="clientid"/,
      });
      assertAllowed(await check({ route: 'clientid', headers: { 'otoroshi-client-id': 'id-only' } }), {
        clientId: 'id-only',
        clientName: 'Id Only',
        remove: ['x-client-scopes'],
      });
      assertDenied(await check({ route: 'clientid' }), { status: 401, message: 'No ApiKey provided', wwwAuthenticate: /realm="clientid"/ });
    });

    it('headers and clientid: the no-credential 401 challenges with the same scheme as their other 401s (Bearer), not Basic which they refuse', async () => {
      const scheme = (response: any) => headerMap(response.denied_response.headers)['www-authenticate']?.split(' ')[0];
      for (const route of ['headers', 'clientid']) {
        const bad = await check({ route, headers: { 'otoroshi-client-id': 'nobody', 'otoroshi-client-secret': 'nobody-secret' } });
        const none = await check({ route });
        assertDenied(bad, { status: 401, message: 'Bad ApiKey', wwwAuthenticate: new RegExp(`^Bearer realm="${route}"`) });
        assertDenied(
          none,
          { status: 401, message: 'No ApiKey provided', wwwAuthenticate: new RegExp(`^Bearer realm="${route}"`) },
          `route ${route}`,
        );
        assert.equal(scheme(none), scheme(bad));
      }
    });

    it('all: each extractor works on the same route', async () => {
      assertAllowed(await bearer(appToken, 'all'), { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] });
      assertAllowed(await check({ route: 'all', headers: { authorization: rawBasic('basic-user', 'pa:ss%2Fw+rd') } }), {
        clientId: 'basic-user',
        clientName: 'Basic User',
        remove: ['x-client-scopes'],
      });
      assertAllowed(await check({ route: 'all', headers: { 'otoroshi-client-id': 'app', 'otoroshi-client-secret': 'app-secret-1' } }), {
        clientId: 'app',
        clientName: 'The App',
        scopes: 'read write',
        remove: [],
      });
      assertAllowed(await check({ route: 'all', headers: { 'otoroshi-client-id': 'id-only' } }), {
        clientId: 'id-only',
        clientName: 'Id Only',
        remove: ['x-client-scopes'],
      });
      assertDenied(await check({ route: 'all', headers: { 'otoroshi-client-id': 'app' } }), { status: 401, message: 'Bad ApiKey' });
      assertDenied(await check({ route: 'all' }), { status: 401, message: 'No ApiKey provided', wwwAuthenticate: /^Bearer realm="all"$/ });
    });
  });

  describe('state pushed by the authority is enforced within a second', () => {
    it('revoked through the REST revoke endpoint → Token revoked', async () => {
      const token = await issueToken(authority, app);
      assertAllowed(await bearer(token), { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] });
      const { jti } = decodeJwt(token).claims;
      const revoked = await authority.postForm(REVOKE_PATH, { token }, { authorization: rawBasic('app', 'app-secret-1') });
      assert.equal(revoked.status, 200);
      const waited = await extAuthz.waitFor(() => extAuthz.replica.isRevoked(jti));
      assert.ok(waited < 1000, `replica caught up in ${waited} ms`);
      assertDenied(await bearer(token), { status: 401, message: 'Token revoked', wwwAuthenticate: /error="invalid_token"/ });
      // Another token of the same key is untouched.
      assertAllowed(await bearer(appToken), { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] });
    });

    it('API key disabled through the admin API → ApiKey disabled', async () => {
      const key = await createKey(authority, {
        clientId: 'to-disable',
        clientSecret: 'to-disable-secret',
        authorizedEntities: ['route_foo'],
      });
      const token = await issueToken(authority, key);
      await extAuthz.waitFor(() => extAuthz.replica.apiKey('to-disable') !== undefined);
      assertAllowed(await bearer(token), { clientId: 'to-disable', clientName: 'to-disable', remove: ['x-client-scopes'] });
      assert.equal((await authority.admin('PATCH', '/api/apikeys/to-disable', { enabled: false })).status, 200);
      const waited = await extAuthz.waitFor(() => extAuthz.replica.apiKey('to-disable')?.enabled === false);
      assert.ok(waited < 1000, `replica caught up in ${waited} ms`);
      assertDenied(await bearer(token), { status: 401, message: 'ApiKey disabled' });
      assertDenied(
        await check({ route: 'headers', headers: { 'otoroshi-client-id': 'to-disable', 'otoroshi-client-secret': 'to-disable-secret' } }),
        { status: 401, message: 'ApiKey disabled', wwwAuthenticate: /^Bearer realm="headers"/ },
      );
    });

    it('API key deleted → 401', async () => {
      const key = await createKey(authority, {
        clientId: 'to-delete',
        clientSecret: 'to-delete-secret',
        authorizedEntities: ['route_foo'],
      });
      const token = await issueToken(authority, key);
      await extAuthz.waitFor(() => extAuthz.replica.apiKey('to-delete') !== undefined);
      assertAllowed(await bearer(token), { clientId: 'to-delete', clientName: 'to-delete', remove: ['x-client-scopes'] });
      assert.equal((await authority.admin('DELETE', '/api/apikeys/to-delete')).status, 204);
      const waited = await extAuthz.waitFor(() => extAuthz.replica.apiKey('to-delete') === undefined);
      assert.ok(waited < 1000, `replica caught up in ${waited} ms`);
      const reasons = await reasonsDuring(extAuthz, async () => assertDenied(await bearer(token), { status: 401, message: 'Bad ApiKey' }));
      assert.deepEqual(reasons, ['unknown_api_key']);
    });

    it('API key validUntil in the past → 401 ApiKey expired', async () => {
      const key = await createKey(authority, {
        clientId: 'to-expire',
        clientSecret: 'to-expire-secret',
        authorizedEntities: ['route_foo'],
        validUntil: Date.now() + 3_600_000,
      });
      const token = await issueToken(authority, key);
      await extAuthz.waitFor(() => extAuthz.replica.apiKey('to-expire') !== undefined);
      assertAllowed(await bearer(token), { clientId: 'to-expire', clientName: 'to-expire', remove: ['x-client-scopes'] });
      assert.equal((await authority.admin('PATCH', '/api/apikeys/to-expire', { validUntil: Date.now() - 1000 })).status, 200);
      const waited = await extAuthz.waitFor(() => (extAuthz.replica.apiKey('to-expire')?.validUntil ?? Infinity) < Date.now());
      assert.ok(waited < 1000, `replica caught up in ${waited} ms`);
      assertDenied(await bearer(token), { status: 401, message: 'ApiKey expired' });
    });
  });

  it('200 concurrent Checks, valid and invalid mixed, all answered correctly', async () => {
    const readOnly = await issueToken(authority, app, 'read');
    const plainToken = await issueToken(authority, plain);
    const now = Math.floor(Date.now() / 1000);
    const expired = await signWithAuthorityKey(authority, {
      ...accessTokenClaims(authority, 'app'),
      iat: now - 7200,
      nbf: now - 7200,
      exp: now - 60,
    });
    // Fresh signed tokens (not in the verification cache) as well as the cached appToken.
    const fresh = await Promise.all(Array.from({ length: 10 }, () => signWithAuthorityKey(authority, accessTokenClaims(authority, 'app'))));
    type Kind = { run: () => Promise<any>; verify: (response: any) => void };
    const kinds: Kind[] = [
      {
        run: () => bearer(appToken),
        verify: (r) => assertAllowed(r, { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] }),
      },
      {
        run: () => bearer(fresh[Math.floor(Math.random() * fresh.length)]),
        verify: (r) => assertAllowed(r, { clientId: 'app', clientName: 'The App', remove: ['x-client-scopes'] }),
      },
      { run: () => bearer(`${appToken.slice(0, -4)}AAAA`), verify: (r) => assertDenied(r, { status: 401, message: 'Bad ApiKey' }) },
      { run: () => bearer(expired), verify: (r) => assertDenied(r, { status: 401, message: 'Token expired' }) },
      {
        run: () => bearer(plainToken),
        verify: (r) => assertDenied(r, { status: 403, message: 'ApiKey not authorized on this route', wwwAuthenticate: null }),
      },
      {
        run: () => bearer(readOnly, 'scoped'),
        verify: (r) => assertDenied(r, { status: 403, message: 'ApiKey lacks a required scope', wwwAuthenticate: /insufficient_scope/ }),
      },
      { run: () => check({}), verify: (r) => assertDenied(r, { status: 401, message: 'No ApiKey provided' }) },
      {
        run: () => check({ route: 'headers', headers: { 'otoroshi-client-id': 'app', 'otoroshi-client-secret': 'app-secret-1' } }),
        verify: (r) => assertAllowed(r, { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] }),
      },
    ];
    const plan = Array.from({ length: 200 }, (_, index) => kinds[index % kinds.length]);
    const responses = await Promise.all(plan.map((kind) => kind.run()));
    responses.forEach((response, index) => plan[index].verify(response));
  });

  it('bytes that are not a CheckRequest: INVALID_ARGUMENT; over 1 MB: RESOURCE_EXHAUSTED; another method: UNIMPLEMENTED; then Checks go on', async () => {
    const call = (path: string, message: Buffer) => grpcWire({ address: extAuthz.grpcAddress, path, message, timeoutMs: 10_000 });
    const CHECK = '/envoy.service.auth.v3.Authorization/Check';
    // Truncated, a length past the end, attributes as a varint, wire type 7.
    for (const bytes of ['0a80', '0a0501', '0801', '0f']) {
      const result = await call(CHECK, Buffer.from(bytes, 'hex'));
      assert.equal(result.status, GrpcStatus.INVALID_ARGUMENT, `${bytes}: ${describeGrpcResult(result)}`);
    }
    const huge = await call(CHECK, Buffer.concat([Buffer.from([0x0a, 0x81, 0x80, 0x40]), Buffer.alloc(1024 * 1024 + 1)]));
    assert.equal(huge.status, GrpcStatus.RESOURCE_EXHAUSTED, describeGrpcResult(huge));
    const other = await call('/envoy.service.auth.v3.Authorization/Nope', Buffer.alloc(0));
    assert.equal(other.status, GrpcStatus.UNIMPLEMENTED, describeGrpcResult(other));
    assertAllowed(await bearer(appToken), { clientId: 'app', clientName: 'The App', scopes: 'read write', remove: [] });
  });

  it('grpc health: SERVING once the replica has a state', async () => {
    assert.equal(await healthStatus(extAuthz.grpcAddress), 'SERVING');
    assert.equal(await healthStatus(extAuthz.grpcAddress, 'envoy.service.auth.v3.Authorization'), 'SERVING');
  });
});

describe('signing keys: rotation and deletion reach Check', () => {
  let authority: TestAuthority;
  let extAuthz: TestExtAuthz;
  let client: CheckClient;
  let app: Key;

  before(async () => {
    authority = await startTestAuthority();
    app = await createKey(authority, {
      clientId: 'app',
      clientName: 'The App',
      clientSecret: 'app-secret-1',
      authorizedEntities: ['route_foo'],
    });
    extAuthz = await startTestExtAuthz(authority);
    await extAuthz.waitFor(() => extAuthz.replica.apiKey('app') !== undefined);
    client = checkClient(extAuthz.grpcAddress);
  });
  after(async () => {
    client?.close();
    await extAuthz?.close();
    await authority?.stop();
  });

  const bearer = (token: string) => client.check(envoyCheckRequest({ route: 'foo', headers: { authorization: `Bearer ${token}` } }));
  const allowedAsApp = (response: any) => assertAllowed(response, { clientId: 'app', clientName: 'The App', remove: ['x-client-scopes'] });

  it('a retired signing key still verifies its tokens (checked before and not)', async () => {
    const cached = await issueToken(authority, app);
    const unchecked = await issueToken(authority, app);
    const oldKid = decodeJwt(cached).header.kid;
    allowedAsApp(await bearer(cached));
    const rotated = await authority.admin('POST', '/api/keypairs/otoroshi-jwt-signing/rotate');
    assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
    const newKid: string = rotated.body.activeKid;
    assert.notEqual(newKid, oldKid);
    const waited = await extAuthz.waitFor(() => extAuthz.replica.verificationKey(newKid) !== undefined);
    assert.ok(waited < 1000, `replica caught up in ${waited} ms`);
    assert.ok(extAuthz.replica.verificationKey(oldKid), 'the retired key is still in the replica');
    allowedAsApp(await bearer(cached));
    allowedAsApp(await bearer(unchecked));
    const fresh = await issueToken(authority, app);
    assert.equal(decodeJwt(fresh).header.kid, newKid, 'new tokens use the new key');
    allowedAsApp(await bearer(fresh));
  });

  it('a deleted key pair denies its tokens within a second', async () => {
    assert.equal((await authority.admin('POST', '/api/keypairs', { id: 'side-keys', algorithm: 'ES256' })).status, 201);
    const side = await createKey(authority, {
      clientId: 'side',
      clientName: 'Side',
      clientSecret: 'side-secret-1',
      authorizedEntities: ['route_foo'],
      metadata: { 'jwt-sign-keypair': 'side-keys' },
    });
    const token = await issueToken(authority, side);
    const uncheckedToken = await issueToken(authority, side);
    assert.equal(decodeJwt(token).header.kid, 'side-keys');
    assert.equal(decodeJwt(token).header.alg, 'ES256');
    await extAuthz.waitFor(
      () => extAuthz.replica.apiKey('side') !== undefined && extAuthz.replica.verificationKey('side-keys') !== undefined,
    );
    assertAllowed(await bearer(token), { clientId: 'side', clientName: 'Side', remove: ['x-client-scopes'] });

    // In the right order: the API key stops naming the key pair, then the key pair goes.
    assert.equal((await authority.admin('DELETE', '/api/keypairs/side-keys')).status, 409, 'refused while an API key names it');
    assert.equal((await authority.admin('PATCH', '/api/apikeys/side', { metadata: {} })).status, 200);
    assert.equal((await authority.admin('DELETE', '/api/keypairs/side-keys')).status, 204);
    const waited = await extAuthz.waitFor(() => extAuthz.replica.verificationKey('side-keys') === undefined);
    assert.ok(waited < 1000, `replica caught up in ${waited} ms`);

    // The API key itself is still fine: the denials are the key pair's doing.
    assert.ok(extAuthz.replica.apiKey('side')?.enabled);
    const cachedReasons = await reasonsDuring(extAuthz, async () =>
      assertDenied(await bearer(token), { status: 401, message: 'Bad ApiKey', wwwAuthenticate: /error="invalid_token"/ }),
    );
    assert.deepEqual(cachedReasons, ['unknown_key'], 'a token in the verification cache');
    assertDenied(await bearer(uncheckedToken), { status: 401, message: 'Bad ApiKey' });
    const replacement = await issueToken(authority, side);
    assertAllowed(await bearer(replacement), { clientId: 'side', clientName: 'Side', remove: ['x-client-scopes'] });

    // Then the API key can go too.
    assert.equal((await authority.admin('DELETE', '/api/apikeys/side')).status, 204);
    await extAuthz.waitFor(() => extAuthz.replica.apiKey('side') === undefined);
    assertDenied(await bearer(replacement), { status: 401, message: 'Bad ApiKey' });
  });
});

describe('ext-authz before its first state', () => {
  it('with no authority listening: Check answers 503 UNAVAILABLE at once, health NOT_SERVING', async () => {
    const starting = await startTestExtAuthz({ grpcAddress: '127.0.0.1:1' }, {}, false);
    const client = checkClient(starting.grpcAddress);
    try {
      assert.equal(starting.replica.ready, false);
      for (const headers of [{ authorization: 'Bearer a.b.c' }, {}] as Record<string, string>[]) {
        const started = Date.now();
        const response = await client.check(envoyCheckRequest({ headers }), 2_000);
        assert.ok(Date.now() - started < 1000, 'answered without waiting for the authority');
        assertDenied(response, { status: 503, message: 'Authorization service is starting', wwwAuthenticate: null });
      }
      assert.equal(await healthStatus(starting.grpcAddress), 'NOT_SERVING');
      assert.equal(await healthStatus(starting.grpcAddress, 'envoy.service.auth.v3.Authorization'), 'NOT_SERVING');
    } finally {
      client.close();
      await starting.close();
    }
  });
});
