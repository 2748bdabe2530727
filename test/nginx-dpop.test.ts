import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type EchoBackend, startEchoBackend } from '../services/echo-backend/server';
import { basic, startTestAuthority, type TestAuthority, TOKEN_PATH } from './support/authority';
import { accessTokenHash, type DpopProver, dpopProver } from './support/dpop';
import { startTestExtAuthz, TEST_POLICIES, type TestExtAuthz } from './support/ext-authz';
import { startNginx, type TestNginx } from './support/nginx';
import { FOO, send } from './support/proxy-request';

/*
 * DPoP-bound tokens (RFC 9449 §7) through a real nginx with auth_request (nginx/nginx.conf.template):
 * the auth subrequest is a GET of /authz/foo, so ext-authz must check each proof against the
 * client's own method, URI and Host, which the template forwards; the nonce ext-authz hands out
 * must reach the client on a denial and on an allow. Proofs made by jose.
 */

const SECRET = 'dpop-nginx-secret';

describe('DPoP through a real nginx auth_request', () => {
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let echo: EchoBackend | undefined;
  let nginx: TestNginx | undefined;
  let prover: DpopProver;
  let origin: string;
  const log = () => nginx?.errorLog().slice(-2000) ?? '';

  before(async () => {
    authority = await startTestAuthority();
    const created = await authority.admin('POST', '/api/apikeys', {
      clientId: 'dpop-nginx',
      clientSecret: SECRET,
      authorizedEntities: ['route_foo'],
      tokenBinding: 'dpop',
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    extAuthz = await startTestExtAuthz(authority, {
      dpop: { requireNonce: true, nonceLifetime: 300 },
      // nginx's route asks for policy foo: here it takes Basic too, which the key's binding must refuse.
      policies: { ...TEST_POLICIES, foo: { extractors: ['bearer', 'basic'], authorizedEntities: ['route_foo'] } },
    });
    echo = await startEchoBackend(0, '127.0.0.1');
    nginx = await startNginx({ extAuthzUrl: extAuthz.url, echoUrl: echo.url, authorityUrl: authority.url });
    // The Host a client sends to nginx's port, as the proof's htu names it.
    origin = `http://${FOO}:${new URL(nginx.url).port}`;
    prover = await dpopProver();
    await extAuthz.waitFor(() => extAuthz!.replica.apiKey('dpop-nginx') !== undefined);
  });

  after(async () => {
    for (const step of [() => nginx?.stop(), () => extAuthz?.close(), () => echo?.close(), () => authority?.stop()]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
  });

  const proof = (claims: Record<string, unknown>) => prover.proof(claims);
  const ath = accessTokenHash;
  let token: string;
  let nonce: string;
  const call = async (method: string, uri: string, claims: Record<string, unknown> = {}) =>
    send(nginx!.url, uri, {
      host: `${FOO}:${new URL(nginx!.url).port}`,
      method,
      headers: {
        authorization: `DPoP ${token}`,
        dpop: await proof({ htm: method, htu: `${origin}${uri.split('?')[0]}`, ath: ath(token), nonce, ...claims }),
      },
    });

  it('passes the nonce challenge on to the client: 401 use_dpop_nonce with DPoP-Nonce', async () => {
    const issued = await authority!.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials' },
      { authorization: basic('dpop-nginx', SECRET), dpop: await proof({ htm: 'POST', htu: `${authority!.url}${TOKEN_PATH}` }) },
    );
    const body = (await issued.json()) as { access_token: string; token_type: string };
    assert.equal(body.token_type, 'DPoP');
    token = body.access_token;
    const asked = await send(nginx!.url, '/api/items', {
      host: `${FOO}:${new URL(nginx!.url).port}`,
      headers: { authorization: `DPoP ${token}`, dpop: await proof({ htm: 'GET', htu: `${origin}/api/items`, ath: ath(token) }) },
    });
    assert.equal(asked.status, 401, `${asked.body}\n${log()}`);
    assert.equal(asked.body, JSON.stringify({ 'Otoroshi-Error': 'DPoP proof needs a nonce: use the one in DPoP-Nonce' }));
    assert.match(String(asked.headers['www-authenticate']), /^DPoP realm="foo", algs="[^"]+", error="use_dpop_nonce"/);
    assert.equal(asked.counts['www-authenticate'], 1);
    nonce = String(asked.headers['dpop-nonce']);
    assert.match(nonce, /^[A-Za-z0-9_-]{27}$/, `no DPoP-Nonce on the client's response: ${JSON.stringify(asked.headers)}`);
  });

  it("checks each proof against the client's own method and URI, not the subrequest's GET /authz/foo", async () => {
    const get = await call('GET', '/api/items/42?page=2');
    assert.equal(get.status, 200, `${get.body}\n${log()}`);
    assert.equal(JSON.parse(get.body).path, '/api/items/42?page=2');
    const post = await call('POST', '/api/items');
    assert.equal(post.status, 200, `${post.body}\n${log()}`);
    // A proof for another path, another method, or the root the subrequest itself asks for: refused.
    for (const [method, uri, claims] of [
      ['GET', '/api/items/42', { htu: `${origin}/api/other` }],
      ['DELETE', '/api/items/42', { htm: 'GET' }],
      ['GET', '/api/items', { htu: `${origin}/` }],
      ['GET', '/api/items', { htu: `http://${FOO}/api/items` }],
    ] as const) {
      const refused = await call(method, uri, claims);
      assert.equal(refused.status, 401, `${method} ${uri} ${JSON.stringify(claims)}: ${refused.body}`);
      assert.equal(refused.body, JSON.stringify({ 'Otoroshi-Error': 'Invalid DPoP proof' }));
      assert.match(String(refused.headers['www-authenticate']), /error="invalid_dpop_proof"/);
    }
  });

  it("refuses the key's secret alone (tokenBinding dpop) and a client's spoofed X-Original-* headers", async () => {
    const secret = await send(nginx!.url, '/api/items', { headers: { authorization: basic('dpop-nginx', SECRET) } });
    assert.equal(secret.status, 401, secret.body);
    assert.equal(secret.body, JSON.stringify({ 'Otoroshi-Error': 'ApiKey requires DPoP-bound tokens' }));
    // nginx replaces the client's X-Original-URI/-Method: a proof made for the spoofed request does not pass.
    const spoofed = await send(nginx!.url, '/api/items', {
      host: `${FOO}:${new URL(nginx!.url).port}`,
      method: 'DELETE',
      headers: {
        authorization: `DPoP ${token}`,
        'x-original-uri': '/api/public',
        'x-original-method': 'GET',
        dpop: await proof({ htm: 'GET', htu: `${origin}/api/public`, ath: ath(token), nonce }),
      },
    });
    assert.equal(spoofed.status, 401, spoofed.body);
  });
});
