import assert from 'node:assert/strict';
import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { type EchoBackend, startEchoBackend } from '../services/echo-backend/server';
import { startTestAuthority, type TestAuthority, TOKEN_PATH } from './support/authority';
import { createTestPki, type TestCertificate, type TestPki, xfccHeader } from './support/certificates';
import { startEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { type Answer, send, sendTls } from './support/proxy-request';

/*
 * mTLS client authentication and certificate-bound tokens (RFC 8705) through a real Envoy 1.40
 * in both ext_authz modes: a TLS listener that asks for client certificates (a CA made by
 * openssl for the test, and a self-signed client certificate pinned in the same bundle), Envoy's
 * x-forwarded-client-cert to the authority, and the peer certificate to ext-authz (gRPC:
 * include_peer_certificate; HTTP: the same header).
 */

const SHIPPED_POLICIES = (parse(readFileSync(path.resolve(__dirname, '../../config/ext-authz.yaml'), 'utf8')) as { policies: object })
  .policies;
const OAUTH = 'oauth.oto.tools';
const FOO_HOST = 'foo.oto.tools';
const INTROSPECT_PATH = `${TOKEN_PATH}/introspect`;

const x5t = (certificate: TestCertificate) =>
  createHash('sha256').update(new X509Certificate(certificate.certificate).raw).digest('base64url');
const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) as Record<string, unknown>;
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

for (const mode of [
  { name: 'gRPC ext_authz (envoy/envoy.yaml)', config: 'envoy.yaml', cluster: 'ext_authz', grpc: true },
  { name: 'HTTP ext_authz (envoy/envoy-http.yaml)', config: 'envoy-http.yaml', cluster: 'ext_authz_http', grpc: false },
]) {
  describe(`mTLS (RFC 8705) through a real Envoy, ${mode.name}`, () => {
    let pki: TestPki;
    let client: TestCertificate;
    let other: TestCertificate;
    let self: TestCertificate;
    let authority: TestAuthority | undefined;
    let extAuthz: TestExtAuthz | undefined;
    let echo: EchoBackend | undefined;
    let envoy: (TestEnvoy & { httpsPort?: number }) | undefined;
    const log = () => envoy?.log().slice(-2000) ?? '';

    before(async () => {
      pki = createTestPki();
      const server = pki.issue('server', { subject: `/CN=${OAUTH}`, subjectAltName: `DNS:${OAUTH},DNS:${FOO_HOST}`, server: true });
      client = pki.issue('client', { subject: '/O=Example/CN=client-1', subjectAltName: 'DNS:client.example.com' });
      other = pki.issue('other', { subject: '/O=Example/CN=client-2', subjectAltName: 'DNS:other.example.com' });
      self = pki.selfSigned('self', '/CN=self-signed client');
      // What Envoy verifies client certificates against: the CA, and the self-signed certificate pinned.
      const bundle = path.join(pki.dir, 'client-cas.pem');
      writeFileSync(bundle, pki.ca.certificate + self.certificate);

      authority = await startTestAuthority({ domain: OAUTH, trustProxy: 1 });
      const selfJwk = createPublicKey(self.privateKey).export({ format: 'jwk' });
      for (const body of [
        { clientId: 'pki-app', tls_client_auth_san_dns: 'client.example.com', tokenBinding: 'mtls', authorizedEntities: ['route_foo'] },
        { clientId: 'dn-app', tls_client_auth_subject_dn: 'CN=client-1,O=Example', authorizedEntities: ['route_foo'] },
        { clientId: 'self-app', jwks: { keys: [selfJwk] }, authorizedEntities: ['route_foo'] },
        { clientId: 'secret-app', clientSecret: 'secret-app-secret', authorizedEntities: ['route_foo'] },
        { clientId: 'strict-app', clientSecret: 'strict-app-secret', tokenBinding: 'mtls', authorizedEntities: ['route_foo'] },
      ]) {
        const created = await authority.admin('POST', '/api/apikeys', body);
        assert.equal(created.status, 201, JSON.stringify(created.body));
        assert.equal((created.body as { clientSecret?: string }).clientSecret, body.clientSecret, 'no secret made for a certificate key');
      }
      extAuthz = await startTestExtAuthz(authority, {
        grpc: { host: '127.0.0.1', port: await freePort() },
        http: { host: '127.0.0.1', port: await freePort() },
        policies: SHIPPED_POLICIES,
      });
      echo = await startEchoBackend(0, '127.0.0.1');
      const endpoint = (hostPort: string) => ({ address: '127.0.0.1', port: Number(hostPort.split(':').pop()) });
      envoy = await startEnvoy(
        mode.config,
        {
          token_authority: endpoint(new URL(authority.url).host),
          echo: endpoint(new URL(echo.url).host),
          token_authority_grpc: endpoint(authority.grpcAddress),
          [mode.cluster]: endpoint(mode.grpc ? extAuthz.grpcAddress : new URL(extAuthz.url).host),
        },
        { ...server, clientCertificates: { caFile: bundle, required: false } },
      );
      await extAuthz.waitFor(() => ['pki-app', 'self-app', 'secret-app'].every((id) => extAuthz!.replica.apiKey(id) !== undefined));
    });

    after(async () => {
      for (const step of [() => envoy?.stop(), () => extAuthz?.close(), () => echo?.close(), () => authority?.stop()]) {
        await Promise.resolve()
          .then(step)
          .catch(() => undefined);
      }
      pki?.cleanup();
    });

    const tokenOver = (form: string, certificate?: TestCertificate) =>
      sendTls(envoy!.httpsPort!, TOKEN_PATH, {
        host: OAUTH,
        ca: pki.ca.certificate,
        client: certificate,
        method: 'POST',
        headers: FORM,
        body: form,
      });
    const foo = (token: string, certificate?: TestCertificate) =>
      sendTls(envoy!.httpsPort!, '/api/items', {
        host: FOO_HOST,
        ca: pki.ca.certificate,
        client: certificate,
        headers: { authorization: `Bearer ${token}` },
      });
    const issued = async (form: string, certificate?: TestCertificate) => {
      const answer = await tokenOver(form, certificate);
      assert.equal(answer.status, 200, `${answer.body}\n${log()}`);
      return JSON.parse(answer.body) as { access_token: string; token_type: string };
    };
    const assertInvalidToken = (answer: Answer, context: string) => {
      assert.equal(answer.status, 401, `${context}: ${answer.body}`);
      assert.match(String(answer.headers['www-authenticate']), /^Bearer realm="foo", error="invalid_token"$/, context);
    };

    it('tls_client_auth: a token for the certificate Envoy verified, bound to it; usable only over a connection with that certificate', async () => {
      const token = await issued('grant_type=client_credentials&client_id=pki-app', client);
      assert.equal(token.token_type, 'Bearer');
      assert.deepEqual(claimsOf(token.access_token).cnf, { 'x5t#S256': x5t(client) });
      const through = await foo(token.access_token, client);
      assert.equal(through.status, 200, `${through.body}\n${log()}`);
      assert.equal((JSON.parse(through.body) as { headers: Record<string, string> }).headers['x-client-id'], 'pki-app');
      assertInvalidToken(await foo(token.access_token, other), 'another certificate');
      assertInvalidToken(await foo(token.access_token), 'TLS without a certificate');
      assertInvalidToken(
        await send(envoy!.url, '/api/items', { host: FOO_HOST, headers: { authorization: `Bearer ${token.access_token}` } }),
        'plain HTTP',
      );
      // A client writing its own x-forwarded-client-cert gets nothing from it: Envoy replaces it (SANITIZE_SET).
      assertInvalidToken(
        await send(envoy!.url, '/api/items', {
          host: FOO_HOST,
          headers: { authorization: `Bearer ${token.access_token}`, 'x-forwarded-client-cert': xfccHeader(client.certificate) },
        }),
        'plain HTTP with a forged x-forwarded-client-cert',
      );
      // Introspection, authenticated by the same certificate, shows the binding.
      const introspected = await sendTls(envoy!.httpsPort!, INTROSPECT_PATH, {
        host: OAUTH,
        ca: pki.ca.certificate,
        client,
        method: 'POST',
        headers: FORM,
        body: `client_id=pki-app&token=${token.access_token}`,
      });
      assert.equal(introspected.status, 200, introspected.body);
      const body = JSON.parse(introspected.body) as Record<string, unknown>;
      assert.equal(body.active, true);
      assert.deepEqual(body.cnf, { 'x5t#S256': x5t(client) });
    });

    it('tls_client_auth by subject DN, self_signed_tls_client_auth by the pinned key; a certificate of another client is invalid_client', async () => {
      assert.deepEqual(claimsOf((await issued('grant_type=client_credentials&client_id=dn-app', client)).access_token).cnf, {
        'x5t#S256': x5t(client),
      });
      const selfToken = await issued('grant_type=client_credentials&client_id=self-app', self);
      assert.deepEqual(claimsOf(selfToken.access_token).cnf, { 'x5t#S256': x5t(self) });
      assert.equal((await foo(selfToken.access_token, self)).status, 200);
      assertInvalidToken(await foo(selfToken.access_token, client), 'self-signed token with the CA-issued certificate');
      for (const [clientId, certificate] of [
        ['pki-app', other],
        ['pki-app', self],
        ['dn-app', other],
        ['self-app', client],
        ['secret-app', client],
      ] as const) {
        const refused = await tokenOver(`grant_type=client_credentials&client_id=${clientId}`, certificate);
        assert.equal(refused.status, 401, `${clientId}: ${refused.body}`);
        assert.equal((JSON.parse(refused.body) as { error: string }).error, 'invalid_client');
      }
      // No certificate: the client id alone is no credential.
      assert.equal((await tokenOver('grant_type=client_credentials&client_id=pki-app')).status, 401);
    });

    it("binds a secret client's token when it connects with a certificate; tokenBinding 'mtls' refuses one without", async () => {
      const form = 'grant_type=client_credentials&client_id=secret-app&client_secret=secret-app-secret';
      const bound = await issued(form, other);
      assert.deepEqual(claimsOf(bound.access_token).cnf, { 'x5t#S256': x5t(other) });
      assert.equal((await foo(bound.access_token, other)).status, 200);
      assertInvalidToken(await foo(bound.access_token), 'bound secret token without its certificate');
      const bearer = await issued(form);
      assert.equal(claimsOf(bearer.access_token).cnf, undefined);
      assert.equal((await foo(bearer.access_token)).status, 200, 'a bearer token stays bearer');
      assert.equal((await foo(bearer.access_token, client)).status, 200, 'also over a connection with a certificate');
      // The same over plain HTTP with a forged header: Envoy drops it, the token is not bound, and the
      // authority would not have believed it from a client anyway.
      const forged = await send(envoy!.url, TOKEN_PATH, {
        host: OAUTH,
        method: 'POST',
        headers: { ...FORM, 'x-forwarded-client-cert': xfccHeader(client.certificate) },
        body: form,
      });
      assert.equal(forged.status, 200, forged.body);
      assert.equal(claimsOf((JSON.parse(forged.body) as { access_token: string }).access_token).cnf, undefined);
      const strict = 'grant_type=client_credentials&client_id=strict-app&client_secret=strict-app-secret';
      const unbound = await tokenOver(strict);
      assert.equal(unbound.status, 400, unbound.body);
      assert.equal((JSON.parse(unbound.body) as { error: string }).error, 'invalid_request');
      assert.deepEqual(claimsOf((await issued(strict, client)).access_token).cnf, { 'x5t#S256': x5t(client) });
      if (mode.grpc) {
        // The metadata document tells clients what is supported.
        const metadata = JSON.parse((await send(envoy!.url, '/.well-known/oauth-authorization-server', { host: OAUTH })).body) as Record<
          string,
          unknown
        >;
        assert.equal(metadata.tls_client_certificate_bound_access_tokens, true);
        assert.deepEqual(metadata.token_endpoint_auth_methods_supported, [
          'client_secret_basic',
          'client_secret_post',
          'private_key_jwt',
          'tls_client_auth',
          'self_signed_tls_client_auth',
        ]);
      }
    });

    if (mode.grpc)
      it('admin API: one tls_client_auth attribute of the right form, tokenBinding bearer or mtls, null removes', async () => {
        const refused = async (body: Record<string, unknown>, field: string) => {
          const answer = await authority!.admin('POST', '/api/apikeys', body);
          assert.equal(answer.status, 400, JSON.stringify(answer.body));
          const details = (answer.body as { details?: { path: string }[] }).details ?? [];
          assert.ok(
            details.some((detail) => detail.path === field),
            `${field} named in ${JSON.stringify(answer.body)}`,
          );
        };
        await refused({ tls_client_auth_san_dns: 'a.example', tls_client_auth_san_uri: 'spiffe://x/y' }, 'tls_client_auth_san_uri');
        await refused({ tls_client_auth_san_ip: '10.0.0.300' }, 'tls_client_auth_san_ip');
        await refused({ tls_client_auth_san_uri: 'not a uri' }, 'tls_client_auth_san_uri');
        await refused({ tls_client_auth_subject_dn: 'no equals sign' }, 'tls_client_auth_subject_dn');
        await refused({ tokenBinding: 'tls' }, 'tokenBinding');
        const switched = await authority!.admin('PATCH', '/api/apikeys/pki-app', {
          tls_client_auth_san_dns: null,
          tls_client_auth_san_email: 'ops@example.com',
          tokenBinding: null,
        });
        assert.equal(switched.status, 200, JSON.stringify(switched.body));
        const view = switched.body as Record<string, unknown>;
        assert.equal(view.tls_client_auth_san_dns, undefined);
        assert.equal(view.tls_client_auth_san_email, 'ops@example.com');
        assert.equal(view.tokenBinding, undefined);
        const back = await authority!.admin('PATCH', '/api/apikeys/pki-app', {
          tls_client_auth_san_email: null,
          tls_client_auth_san_dns: 'client.example.com',
          tokenBinding: 'mtls',
        });
        assert.equal(back.status, 200, JSON.stringify(back.body));
      });
  });
}
