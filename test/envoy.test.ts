import { credentials, loadPackageDefinition, Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import { connect } from 'node:http2';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startEchoBackend, type EchoBackend, type EchoResponse } from '../services/echo-backend/server';
import { JWKS_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { ENVOY_DIR, startEnvoy, validateEnvoyConfig, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { FOO, send, type Answer } from './support/proxy-request';
import { LOADER_OPTIONS, TOKEN_AUTHORITY_PROTO } from '../services/token-authority/grpc-options';

const REFLECTION_PROTO = path.join(
  path.dirname(require.resolve('@grpc/reflection/package.json')),
  'build',
  'proto',
  'grpc',
  'reflection',
  'v1',
  'reflection.proto',
);

/** A grpc-js client call through Envoy's listener (h2c), with `:authority` oauth.oto.tools. */
function unary(client: any, method: string, request: object): Promise<{ error: ServiceError | null; response: any }> {
  return new Promise((resolve) =>
    client[method](request, new Metadata(), { deadline: Date.now() + 10_000 }, (error: ServiceError | null, response: unknown) =>
      resolve({ error, response }),
    ),
  );
}

const OAUTH = 'oauth.oto.tools';
/** The policies ext-authz ships with (config/ext-authz.yaml), which the Envoy configs name. */
const SHIPPED_POLICIES = (parse(readFileSync(path.resolve(__dirname, '../../config/ext-authz.yaml'), 'utf8')) as { policies: object })
  .policies;
const CONFIGS = readdirSync(ENVOY_DIR).filter((file) => file.endsWith('.yaml'));

describe("the repo's Envoy configs, checked by Envoy itself (envoy --mode validate)", () => {
  for (const file of CONFIGS) {
    it(`accepts ${file}`, () => {
      const result = validateEnvoyConfig(readFileSync(path.join(ENVOY_DIR, file), 'utf8'));
      assert.ok(result.ok, result.output);
      // What validation alone lets through: Envoy only warns about deprecated fields.
      assert.doesNotMatch(result.output, /deprecated/i);
      assert.doesNotMatch(result.output, /\]\[(warning|error|critical)\]/, 'no warnings at all');
    });
  }

  it('refuses a broken copy: an unknown field, and a filter that is not an ext_authz config', () => {
    const source = readFileSync(path.join(ENVOY_DIR, 'envoy.yaml'), 'utf8');
    for (const broken of [
      source.replace('failure_mode_allow: false', 'failure_mode_allowed: false'),
      source.replace('transport_api_version: V3', 'transport_api_version: V9'),
    ]) {
      assert.notEqual(broken, source);
      const result = validateEnvoyConfig(broken);
      assert.equal(result.ok, false, 'Envoy accepted a broken config');
    }
  });
});

const echoed = (answer: Answer) => JSON.parse(answer.body) as EchoResponse;

function assertDenied(answer: Answer, status: number, message: string, log: () => string): void {
  assert.equal(answer.status, status, `expected ${status} ${message}, got ${answer.status} ${answer.body}\n${log().slice(-3000)}`);
  assert.equal(answer.body, JSON.stringify({ 'Otoroshi-Error': message }));
  assert.match(String(answer.headers['content-type']), /^application\/json(;|$)/);
}

/** The Otoroshi tutorial through a real Envoy 1.40, in each ext_authz mode, with the repo's config rendered for 127.0.0.1. */
for (const mode of [
  {
    name: 'gRPC ext_authz (envoy/envoy.yaml)',
    config: 'envoy.yaml',
    cluster: 'ext_authz',
    port: (extAuthz: TestExtAuthz) => extAuthz.grpcAddress,
  },
  {
    name: 'HTTP ext_authz (envoy/envoy-http.yaml)',
    config: 'envoy-http.yaml',
    cluster: 'ext_authz_http',
    port: (extAuthz: TestExtAuthz) => new URL(extAuthz.url).host,
  },
]) {
  describe(`the tutorial through a real Envoy, ${mode.name}`, () => {
    let authority: TestAuthority | undefined;
    let extAuthz: TestExtAuthz | undefined;
    let echo: EchoBackend | undefined;
    let envoy: TestEnvoy | undefined;
    const log = () => envoy?.log() ?? '';
    const ports = { grpc: 0, http: 0 };

    before(async () => {
      authority = await startTestAuthority({ domain: OAUTH });
      [ports.grpc, ports.http] = [await freePort(), await freePort()];
      extAuthz = await startTestExtAuthz(authority, {
        grpc: { host: '127.0.0.1', port: ports.grpc },
        http: { host: '127.0.0.1', port: ports.http },
        policies: SHIPPED_POLICIES,
      });
      echo = await startEchoBackend(0, '127.0.0.1');
      const endpoint = (hostPort: string) => ({ address: '127.0.0.1', port: Number(hostPort.split(':').pop()) });
      envoy = await startEnvoy(mode.config, {
        token_authority: endpoint(new URL(authority.url).host),
        echo: endpoint(new URL(echo.url).host),
        token_authority_grpc: endpoint(authority.grpcAddress),
        [mode.cluster]: endpoint(mode.port(extAuthz)),
      });
    });

    after(async () => {
      for (const step of [() => envoy?.stop(), () => extAuthz?.close(), () => echo?.close(), () => authority?.stop()]) {
        await Promise.resolve()
          .then(step)
          .catch(() => undefined);
      }
    });

    const token = async (clientId: string, secret: string) => {
      const answer = await send(envoy!.url, TOKEN_PATH, {
        host: OAUTH,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ grant_type: 'client_credentials', client_id: clientId, client_secret: secret }),
      });
      assert.equal(answer.status, 200, answer.body);
      return (JSON.parse(answer.body) as { access_token: string }).access_token;
    };

    it('serves the JWKS and a token on oauth.oto.tools, with no ext_authz in front', async () => {
      const jwks = await send(envoy!.url, JWKS_PATH, { host: OAUTH });
      assert.equal(jwks.status, 200, jwks.body);
      assert.ok((JSON.parse(jwks.body) as { keys: unknown[] }).keys.length >= 1);
      const created = await authority!.admin('POST', '/api/apikeys', {
        clientId: 'my-id',
        clientSecret: 'my-secret',
        authorizedEntities: ['route_foo'],
      });
      assert.equal(created.status, 201);
      await token('my-id', 'my-secret');
    });

    it('denies foo.oto.tools without a token (401, Otoroshi body, WWW-Authenticate), with a bad token (401), and for a key not on the route (403)', async () => {
      const none = await send(envoy!.url, '/', { host: FOO });
      assertDenied(none, 401, 'No ApiKey provided', log);
      assert.match(String(none.headers['www-authenticate']), /^Bearer realm="foo"/);
      assertDenied(await send(envoy!.url, '/', { host: FOO, headers: { authorization: 'Bearer not.a.token' } }), 401, 'Bad ApiKey', log);
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
      const other = await token('other-id', 'other-secret');
      assertDenied(
        await send(envoy!.url, '/', { host: FOO, headers: { authorization: `Bearer ${other}` } }),
        403,
        'ApiKey not authorized on this route',
        log,
      );
    });

    it("lets a good token through to the backend, which sees x-client-id and none of the client's spoofed identity", async () => {
      await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('my-id') !== undefined);
      const good = await token('my-id', 'my-secret');
      const answer = await send(envoy!.url, '/api/items?page=2', {
        host: FOO,
        headers: { authorization: `Bearer ${good}`, 'x-client-id': 'admin', 'x-client-scopes': 'root' },
      });
      assert.equal(answer.status, 200, `${answer.body}\n${log().slice(-2000)}`);
      const seen = echoed(answer);
      assert.equal(seen.path, '/api/items?page=2');
      assert.equal(seen.headers['x-client-id'], 'my-id');
      assert.notEqual(seen.headers['x-client-scopes'], 'root');
    });

    it('refuses a key disabled through the admin API within one second', async () => {
      const good = await token('my-id', 'my-secret');
      assert.equal((await send(envoy!.url, '/', { host: FOO, headers: { authorization: `Bearer ${good}` } })).status, 200);
      const disabledAt = Date.now();
      assert.equal((await authority!.admin('PATCH', '/api/apikeys/my-id', { enabled: false })).status, 200);
      let answer: Answer;
      do answer = await send(envoy!.url, '/', { host: FOO, headers: { authorization: `Bearer ${good}` } });
      while (answer.status === 200 && Date.now() - disabledAt < 2000);
      const elapsed = Date.now() - disabledAt;
      assertDenied(answer, 401, 'ApiKey disabled', log);
      assert.ok(elapsed < 1000, `refused after ${elapsed} ms`);
      assert.equal((await authority!.admin('PATCH', '/api/apikeys/my-id', { enabled: true })).status, 200);
    });

    it('carries gRPC clients over h2c to the authority: IssueToken, IntrospectToken and reflection', async () => {
      const options = { 'grpc.default_authority': OAUTH };
      const address = new URL(envoy!.url).host;
      const api = loadPackageDefinition(loadSync(TOKEN_AUTHORITY_PROTO, LOADER_OPTIONS)) as any;
      const client = new api.token_authority.v1.TokenAuthority(address, credentials.createInsecure(), options);
      try {
        const issued = await unary(client, 'IssueToken', {
          grant_type: 'client_credentials',
          client: { client_id: 'my-id', client_secret: 'my-secret' },
        });
        assert.equal(issued.error, null, issued.error?.details);
        const introspected = await unary(client, 'IntrospectToken', {
          token: issued.response.access_token,
          client: { client_id: 'my-id', client_secret: 'my-secret' },
        });
        assert.equal(introspected.error, null, introspected.error?.details);
        assert.equal(introspected.response.active, true);
        assert.equal(introspected.response.client_id, 'my-id');
        const refused = await unary(client, 'IssueToken', {
          grant_type: 'client_credentials',
          client: { client_id: 'my-id', client_secret: 'wrong-secret' },
        });
        assert.equal(refused.error?.code, 16, 'UNAUTHENTICATED, with the status passed through Envoy');
      } finally {
        client.close();
      }
      const reflection = loadPackageDefinition(loadSync(REFLECTION_PROTO, { keepCase: true })) as any;
      const reflect = new reflection.grpc.reflection.v1.ServerReflection(address, credentials.createInsecure(), options);
      try {
        const services = await new Promise<string[]>((resolve, reject) => {
          const call = reflect.ServerReflectionInfo();
          call.on('data', (message: { list_services_response?: { service: { name: string }[] } }) => {
            resolve((message.list_services_response?.service ?? []).map((service) => service.name));
            call.end();
          });
          call.on('error', reject);
          call.write({ list_services: '' });
        });
        assert.ok(services.includes('token_authority.v1.TokenAuthority'), services.join(', '));
      } finally {
        reflect.close();
      }
    });

    if (mode.config === 'envoy.yaml') {
      it("applies each route's policy: bar takes Basic or Otoroshi headers and strips them; /public/ skips ext_authz", async () => {
        assert.equal(
          (
            await authority!.admin('POST', '/api/apikeys', {
              clientId: 'bar-id',
              clientSecret: 'bar-secret-1',
              authorizedEntities: ['route_bar'],
            })
          ).status,
          201,
        );
        await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('bar-id') !== undefined);
        const basic = await send(envoy!.url, '/b', {
          host: 'bar.oto.tools',
          headers: { authorization: `Basic ${Buffer.from('bar-id:bar-secret-1').toString('base64')}` },
        });
        assert.equal(basic.status, 200, basic.body);
        assert.equal(echoed(basic).headers['x-client-id'], 'bar-id');
        assert.equal(echoed(basic).headers.authorization, undefined, 'the credential was stripped');
        const custom = await send(envoy!.url, '/b', {
          host: 'bar.oto.tools',
          headers: { 'otoroshi-client-id': 'bar-id', 'otoroshi-client-secret': 'bar-secret-1' },
        });
        assert.equal(custom.status, 200, custom.body);
        assert.equal(echoed(custom).headers['otoroshi-client-secret'], undefined, 'the secret never reaches the backend');
        assert.equal(echoed(custom).headers['otoroshi-client-id'], undefined);
        const bearerThere = await send(envoy!.url, '/b', {
          host: 'bar.oto.tools',
          headers: { authorization: `Bearer ${await token('my-id', 'my-secret')}` },
        });
        assertDenied(bearerThere, 401, 'No ApiKey provided', log);
        assert.match(String(bearerThere.headers['www-authenticate']), /^Basic realm="bar"/);
        const wrongRoute = await send(envoy!.url, '/', {
          host: FOO,
          headers: { authorization: `Basic ${Buffer.from('bar-id:bar-secret-1').toString('base64')}` },
        });
        assertDenied(wrongRoute, 401, 'No ApiKey provided', log);
        const open = await send(envoy!.url, '/public/page', { host: FOO });
        assert.equal(open.status, 200, open.body);
        assert.equal(echoed(open).headers['x-client-id'], undefined);
      });
    }

    it('answers a request with a 60 KB header, and an HTTP/2 client, correctly', async () => {
      const good = await token('my-id', 'my-secret');
      const padding = 'p'.repeat(60 * 1024);
      const big = await send(envoy!.url, '/', { host: FOO, headers: { authorization: `Bearer ${good}`, 'x-padding': padding } });
      assert.equal(big.status, 200, big.body.slice(0, 300));
      assert.equal(echoed(big).headers['x-padding'], padding);
      assertDenied(await send(envoy!.url, '/', { host: FOO, headers: { 'x-padding': padding } }), 401, 'No ApiKey provided', log);

      const session = connect(envoy!.url);
      try {
        const h2 = (headers: Record<string, string>) =>
          new Promise<{ status: number; body: string }>((resolve, reject) => {
            const stream = session.request({ ':method': 'GET', ':path': '/h2?x=1', ':authority': FOO, ...headers });
            let body = '';
            let status = 0;
            stream.on('response', (response) => (status = Number(response[':status'])));
            stream.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
            stream.on('end', () => resolve({ status, body }));
            stream.on('error', reject);
          });
        const allowed = await h2({ authorization: `Bearer ${good}` });
        assert.equal(allowed.status, 200, allowed.body);
        assert.equal((JSON.parse(allowed.body) as EchoResponse).headers['x-client-id'], 'my-id');
        const denied = await h2({});
        assert.equal(denied.status, 401);
        assert.equal(denied.body, JSON.stringify({ 'Otoroshi-Error': 'No ApiKey provided' }));
      } finally {
        session.close();
      }
    });

    it('fails closed (403) while ext-authz is down, and recovers by itself when it is back', async () => {
      await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('my-id')?.enabled === true);
      const good = await token('my-id', 'my-secret');
      await extAuthz!.close();
      const down = await send(envoy!.url, '/', { host: FOO, headers: { authorization: `Bearer ${good}` } });
      assert.equal(down.status, 403, `${down.status} ${down.body}`);
      extAuthz = await startTestExtAuthz(authority!, {
        grpc: { host: '127.0.0.1', port: ports.grpc },
        http: { host: '127.0.0.1', port: ports.http },
        policies: SHIPPED_POLICIES,
      });
      const back = Date.now();
      let answer: Answer;
      do answer = await send(envoy!.url, '/', { host: FOO, headers: { authorization: `Bearer ${good}` } });
      while (answer.status !== 200 && Date.now() - back < 15_000 && (await new Promise((done) => setTimeout(done, 100)), true));
      assert.equal(answer.status, 200, `not recovered after ${Date.now() - back} ms: ${answer.body}`);
    });

    it('keeps serving on the replicated state while the authority is down', async () => {
      const good = await token('my-id', 'my-secret');
      await authority!.close();
      await extAuthz!.waitFor(() => extAuthz!.replica.status === 'degraded');
      assert.equal((await send(envoy!.url, '/', { host: FOO, headers: { authorization: `Bearer ${good}` } })).status, 200);
      assertDenied(await send(envoy!.url, '/', { host: FOO }), 401, 'No ApiKey provided', log);
    });
  });
}
