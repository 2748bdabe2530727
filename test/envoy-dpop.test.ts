import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { type EchoBackend, startEchoBackend } from '../services/echo-backend/server';
import { DpopNonces, nonceKey } from '../libs/core/dpop-nonce';
import { ADMIN_TOKEN, basic, startTestAuthority, type TestAuthority, TOKEN_PATH } from './support/authority';
import { startEnvoy, type TestEnvoy } from './support/envoy';
import { accessTokenHash, type DpopProver, dpopProver } from './support/dpop';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { FOO, send } from './support/proxy-request';

/*
 * DPoP-bound tokens (RFC 9449 §7) through a real Envoy 1.40 in both ext_authz modes: a token
 * issued with a jose-made proof, then requests to foo.oto.tools with proofs of the request's
 * method and URL, checked by a real ext-authz.
 */

const SHIPPED_POLICIES = (parse(readFileSync(path.resolve(__dirname, '../../config/ext-authz.yaml'), 'utf8')) as { policies: object })
  .policies;
const SECRET = 'dpop-envoy-secret';

for (const mode of [
  { name: 'gRPC ext_authz (envoy/envoy.yaml)', config: 'envoy.yaml', cluster: 'ext_authz', grpc: true },
  { name: 'HTTP ext_authz (envoy/envoy-http.yaml)', config: 'envoy-http.yaml', cluster: 'ext_authz_http', grpc: false },
]) {
  describe(`DPoP through a real Envoy, ${mode.name}`, () => {
    let authority: TestAuthority | undefined;
    let extAuthz: TestExtAuthz | undefined;
    let echo: EchoBackend | undefined;
    let envoy: TestEnvoy | undefined;
    let prover: DpopProver;
    const log = () => envoy?.log().slice(-2000) ?? '';

    before(async () => {
      authority = await startTestAuthority();
      const created = await authority.admin('POST', '/api/apikeys', {
        clientId: 'dpop-app',
        clientSecret: SECRET,
        authorizedEntities: ['route_foo'],
      });
      assert.equal(created.status, 201);
      extAuthz = await startTestExtAuthz(authority, {
        grpc: { host: '127.0.0.1', port: await freePort() },
        http: { host: '127.0.0.1', port: await freePort() },
        policies: SHIPPED_POLICIES,
        // Nonces required (RFC 9449 §9): every proof below carries the one ext-authz handed out.
        dpop: { requireNonce: true, nonceLifetime: 300 },
      });
      echo = await startEchoBackend(0, '127.0.0.1');
      const endpoint = (hostPort: string) => ({ address: '127.0.0.1', port: Number(hostPort.split(':').pop()) });
      envoy = await startEnvoy(mode.config, {
        token_authority: endpoint(new URL(authority.url).host),
        echo: endpoint(new URL(echo.url).host),
        token_authority_grpc: endpoint(authority.grpcAddress),
        [mode.cluster]: endpoint(mode.grpc ? extAuthz.grpcAddress : new URL(extAuthz.url).host),
      });
      prover = await dpopProver();
      await extAuthz.waitFor(() => extAuthz!.replica.apiKey('dpop-app') !== undefined);
    });

    after(async () => {
      for (const step of [() => envoy?.stop(), () => extAuthz?.close(), () => echo?.close(), () => authority?.stop()]) {
        await Promise.resolve()
          .then(step)
          .catch(() => undefined);
      }
    });

    let resourceNonce: string | undefined;
    const proof = (claims: Record<string, unknown>) =>
      prover.proof({ ...(claims.htm === 'POST' && !claims.ath ? {} : { nonce: resourceNonce }), ...claims });
    const boundToken = async () => {
      const answer = await authority!.postForm(
        TOKEN_PATH,
        { grant_type: 'client_credentials' },
        { authorization: basic('dpop-app', SECRET), dpop: await proof({ htm: 'POST', htu: `${authority!.url}${TOKEN_PATH}` }) },
      );
      const body = (await answer.json()) as { access_token: string; token_type: string };
      assert.equal(body.token_type, 'DPoP');
      return body.access_token;
    };
    const ath = accessTokenHash;

    it('asks for a nonce: 401 use_dpop_nonce with DPoP-Nonce; the previous nonce passes with the current one on the response', async () => {
      const token = await boundToken();
      const asked = await send(envoy!.url, '/api/items', {
        host: FOO,
        headers: { authorization: `DPoP ${token}`, dpop: await proof({ htm: 'GET', htu: `http://${FOO}/api/items`, ath: ath(token) }) },
      });
      assert.equal(asked.status, 401, `${asked.body}\n${log()}`);
      assert.equal(asked.body, JSON.stringify({ 'Otoroshi-Error': 'DPoP proof needs a nonce: use the one in DPoP-Nonce' }));
      assert.match(
        String(asked.headers['www-authenticate']),
        /^DPoP realm="foo", algs="[^"]+", error="use_dpop_nonce", error_description="[^"]+"$/,
      );
      resourceNonce = String(asked.headers['dpop-nonce']);
      assert.match(resourceNonce, /^[A-Za-z0-9_-]{27}$/);
      // The previous slot's nonce, as every ext-authz holding this data plane token makes it.
      const nonces = new DpopNonces(nonceKey(undefined, ADMIN_TOKEN, 'resource').key, 300, 'resource');
      if (Date.now() % 300_000 > 295_000) await new Promise((done) => setTimeout(done, 300_000 - (Date.now() % 300_000) + 10));
      const stale = await send(envoy!.url, '/api/items', {
        host: FOO,
        headers: {
          authorization: `DPoP ${token}`,
          dpop: await proof({ htm: 'GET', htu: `http://${FOO}/api/items`, ath: ath(token), nonce: nonces.issue(Date.now() - 300_000) }),
        },
      });
      assert.equal(stale.status, 200, stale.body);
      assert.equal(stale.headers['dpop-nonce'], nonces.issue(Date.now()));
      resourceNonce = nonces.issue(Date.now());
    });

    it('lets a bound token with a proof of this method and URL through (query ignored), once per proof', async () => {
      const token = await boundToken();
      const dpop = await proof({ htm: 'GET', htu: `http://${FOO}/api/items`, ath: ath(token) });
      const call = () => send(envoy!.url, '/api/items?page=2', { host: FOO, headers: { authorization: `DPoP ${token}`, dpop } });
      const answer = await call();
      assert.equal(answer.status, 200, `${answer.body}\n${log()}`);
      assert.equal((JSON.parse(answer.body) as { headers: Record<string, string> }).headers['x-client-id'], 'dpop-app');
      const replayed = await call();
      assert.equal(replayed.status, 401, replayed.body);
      assert.equal(replayed.body, JSON.stringify({ 'Otoroshi-Error': 'Invalid DPoP proof' }));
      assert.match(String(replayed.headers['www-authenticate']), /^DPoP realm="foo", algs="[^"]+", error="invalid_dpop_proof"$/);
    });

    it('refuses a proof of another method, path or host, one without ath, and the bound token as Bearer', async () => {
      const token = await boundToken();
      for (const [name, claims] of [
        ['POST', { htm: 'POST', htu: `http://${FOO}/api/items`, ath: ath(token) }],
        ['other path', { htm: 'GET', htu: `http://${FOO}/admin`, ath: ath(token) }],
        ['other host', { htm: 'GET', htu: 'http://bar.oto.tools/api/items', ath: ath(token) }],
        ['https', { htm: 'GET', htu: `https://${FOO}/api/items`, ath: ath(token) }],
        ['no ath', { htm: 'GET', htu: `http://${FOO}/api/items` }],
      ] as const) {
        const answer = await send(envoy!.url, '/api/items', {
          host: FOO,
          headers: { authorization: `DPoP ${token}`, dpop: await proof(claims) },
        });
        assert.equal(answer.status, 401, `${name}: ${answer.body}`);
        assert.match(String(answer.headers['www-authenticate']), /error="invalid_dpop_proof"/, name);
      }
      const asBearer = await send(envoy!.url, '/api/items', {
        host: FOO,
        headers: { authorization: `Bearer ${token}`, dpop: await proof({ htm: 'GET', htu: `http://${FOO}/api/items`, ath: ath(token) }) },
      });
      assert.equal(asBearer.status, 401);
      assert.equal(asBearer.body, JSON.stringify({ 'Otoroshi-Error': 'Token bound to a DPoP key: not accepted here' }));
    });
  });
}
