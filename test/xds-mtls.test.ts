import assert from 'node:assert/strict';
import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ADMIN_TOKEN, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { createTestPki, type TestCertificate, type TestPki, xfccHeader } from './support/certificates';
import { runEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { type Answer, FOO, send, sendTls } from './support/proxy-request';
import { type Backend, namedBackend, within, xdsBootstrap } from './support/xds';

/*
 * mTLS (RFC 8705) on the default stack: the HTTPS listener the authority pushes over xDS
 * (xds.tls.clientCertificate: optional) asks clients for a certificate, Envoy forwards it to the
 * token endpoint (x-forwarded-client-cert, its own) and to ext-authz (include_peer_certificate),
 * through a real Envoy 1.40. First with a client CA (xds.tls.clientCaFile: the test's CA and a
 * pinned self-signed certificate), then without one: Envoy takes any certificate and says so to
 * the authority, whose tls_client_auth refuses it while certificate-bound tokens and
 * self_signed_tls_client_auth still work.
 */

const OAUTH = 'oauth.oto.tools';
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const x5t = (certificate: TestCertificate) =>
  createHash('sha256').update(new X509Certificate(certificate.certificate).raw).digest('base64url');
const envoyHash = (certificate: TestCertificate) =>
  createHash('sha256').update(new X509Certificate(certificate.certificate).raw).digest('hex');
const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) as Record<string, unknown>;

describe('mTLS (RFC 8705) on the HTTPS listener pushed over xDS (xds.tls.clientCertificate), with a real Envoy', () => {
  const pki: TestPki = createTestPki();
  let client: TestCertificate;
  let other: TestCertificate;
  let self: TestCertificate;
  let stranger: TestCertificate;
  let bundle = '';
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let backend: Backend | undefined;
  let envoy: TestEnvoy | undefined;
  const ports = { grpc: 0, http: 0, listener: 0, https: 0, admin: 0, xds: 0 };
  let dataDir = '';
  const log = () => envoy?.log().slice(-3000) ?? '';

  const settings = (tls: Record<string, unknown>) => ({
    domain: OAUTH,
    trustProxy: 1,
    http: { host: '127.0.0.1', port: ports.http },
    grpc: { host: '127.0.0.1', port: ports.grpc },
    xds: {
      enabled: true,
      port: ports.xds,
      listener: { address: '127.0.0.1', port: ports.listener },
      tls: { port: ports.https, ...server(), clientCertificate: 'optional', ...tls },
    },
  });
  let serverCertificate: TestCertificate;
  const server = () => ({ certificateFile: serverCertificate.certificateFile, privateKeyFile: serverCertificate.privateKeyFile });

  before(async () => {
    for (const key of Object.keys(ports) as (keyof typeof ports)[]) ports[key] = await freePort();
    serverCertificate = pki.issue('server', { subject: `/CN=${OAUTH}`, subjectAltName: `DNS:${OAUTH},DNS:${FOO}`, server: true });
    client = pki.issue('client', { subject: '/O=Example/CN=client-1', subjectAltName: 'DNS:client.example.com' });
    other = pki.issue('other', { subject: '/O=Example/CN=client-2', subjectAltName: 'DNS:other.example.com' });
    self = pki.selfSigned('self', '/CN=self-signed client');
    // Self-signed and not pinned: refused with a client CA, taken (unverified) without one.
    stranger = pki.selfSigned('stranger', '/CN=client.example.com');
    bundle = path.join(pki.dir, 'client-cas.pem');
    writeFileSync(bundle, pki.ca.certificate + self.certificate);
    backend = await namedBackend('A');
    dataDir = mkdtempSync(path.join(tmpdir(), 'xds-mtls-data-'));
    authority = await startTestAuthority(settings({ clientCaFile: bundle }), dataDir);
    const selfJwk = createPublicKey(self.privateKey).export({ format: 'jwk' });
    for (const body of [
      { clientId: 'pki-app', tls_client_auth_san_dns: 'client.example.com', tokenBinding: 'mtls', authorizedEntities: ['route_foo'] },
      { clientId: 'self-app', jwks: { keys: [selfJwk] }, authorizedEntities: ['route_foo'] },
      { clientId: 'secret-app', clientSecret: 'secret-app-secret', authorizedEntities: ['route_foo'] },
    ]) {
      const created = await authority.admin('POST', '/api/apikeys', body);
      assert.equal(created.status, 201, JSON.stringify(created.body));
    }
    const route = await authority.admin('POST', '/api/routes', {
      id: 'foo',
      frontend: { domains: [FOO], pathPrefix: '/' },
      backend: { targets: [{ hostname: '127.0.0.1', port: backend.port }] },
    });
    assert.equal(route.status, 201, JSON.stringify(route.body));
    extAuthz = await startTestExtAuthz(authority, { policies: {} });
    envoy = await runEnvoy(
      xdsBootstrap({
        admin: ports.admin,
        xds: ports.xds,
        authorityHttp: ports.http,
        authorityGrpc: ports.grpc,
        extAuthzGrpc: Number(extAuthz.grpcAddress.split(':').pop()),
      }),
      { listener: ports.listener, admin: ports.admin },
    );
    await extAuthz.waitFor(() => ['pki-app', 'self-app', 'secret-app'].every((id) => extAuthz!.replica.apiKey(id) !== undefined));
  });

  after(async () => {
    for (const step of [() => envoy?.stop(), () => extAuthz?.close(), () => backend?.close(), () => authority?.stop()]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
    pki.cleanup();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const tokenOver = (form: string, certificate?: TestCertificate, headers: Record<string, string> = {}) =>
    sendTls(ports.https, TOKEN_PATH, {
      host: OAUTH,
      ca: pki.ca.certificate,
      client: certificate,
      method: 'POST',
      headers: { ...FORM, ...headers },
      body: form,
    });
  const issued = async (form: string, certificate?: TestCertificate, headers?: Record<string, string>) => {
    const answer = await tokenOver(form, certificate, headers);
    assert.equal(answer.status, 200, `${answer.body}\n${log()}`);
    return (JSON.parse(answer.body) as { access_token: string }).access_token;
  };
  const foo = (token: string | undefined, certificate?: TestCertificate, headers: Record<string, string> = {}) =>
    sendTls(ports.https, '/x', {
      host: FOO,
      ca: pki.ca.certificate,
      client: certificate,
      headers: { ...(token && { authorization: `Bearer ${token}` }), ...headers },
    });
  const seenBy = (answer: Answer) => (JSON.parse(answer.body) as { headers: Record<string, string> }).headers;
  const assertUnbound = (answer: Answer, context: string) => {
    assert.equal(answer.status, 401, `${context}: ${answer.body}`);
    assert.match(String(answer.headers['www-authenticate']), /^Bearer realm="[^"]+", error="invalid_token"$/, context);
    assert.match(answer.body, /Token bound to a client certificate this connection did not present/, context);
  };
  const refusedClient = async (form: string, certificate: TestCertificate | undefined, context: string) => {
    const answer = await tokenOver(form, certificate);
    assert.equal(answer.status, 401, `${context}: ${answer.body}`);
    assert.equal((JSON.parse(answer.body) as { error: string }).error, 'invalid_client', context);
  };

  it('with a client CA: tls_client_auth at the token endpoint through Envoy, a cnf.x5t#S256 token usable only with its certificate', async () => {
    // The listener comes over xDS: the token endpoint answers over TLS once Envoy has it.
    const form = 'grant_type=client_credentials&client_id=pki-app';
    await within(10_000, async () => (await tokenOver(form, client)).status === 200, `token over mTLS\n${log()}`);
    const token = await issued(form, client);
    assert.deepEqual(claimsOf(token).cnf, { 'x5t#S256': x5t(client) });
    await within(5000, async () => (await foo(token, client)).status === 200, 'the route over HTTPS');
    const allowed = await foo(token, client);
    assert.equal(seenBy(allowed)['x-client-id'], 'pki-app');
    // The backend gets Envoy's XFCC of the connection's certificate (Hash: SHA-256 of its DER, hex).
    assert.match(seenBy(allowed)['x-forwarded-client-cert'], new RegExp(`Hash=${envoyHash(client)};`));
    assertUnbound(await foo(token), 'without a certificate');
    assertUnbound(await foo(token, other), 'with another certificate of the same CA');
    assertUnbound(await send(envoy!.url, '/x', { host: FOO, headers: { authorization: `Bearer ${token}` } }), 'over plain HTTP');
    // The same certificate forged into XFCC over plain HTTP: Envoy drops it, ext-authz sees no certificate.
    assertUnbound(
      await send(envoy!.url, '/x', {
        host: FOO,
        headers: { authorization: `Bearer ${token}`, 'x-forwarded-client-cert': xfccHeader(client.certificate) },
      }),
      'plain HTTP with a forged XFCC',
    );
    // self_signed_tls_client_auth: the certificate is pinned in the CA bundle, its key in the API key's JWKS.
    const selfToken = await issued('grant_type=client_credentials&client_id=self-app', self);
    assert.deepEqual(claimsOf(selfToken).cnf, { 'x5t#S256': x5t(self) });
    assert.equal((await foo(selfToken, self)).status, 200);
    assertUnbound(await foo(selfToken, client), 'self-signed token with the CA-issued certificate');
    await refusedClient(form, other, 'pki-app with a certificate lacking its SAN');
    await refusedClient(form, undefined, 'pki-app without a certificate');
    // A certificate neither issued by the CA nor pinned: no handshake.
    await assert.rejects(tokenOver(form, stranger), (error: NodeJS.ErrnoException) =>
      /ECONNRESET|alert|certificate|socket hang up/i.test(`${error.code} ${error.message}`),
    );
  });

  it("XFCC is Envoy's own: a forged one is stripped over plain HTTP and over TLS without a certificate; bearer clients without a certificate work (optional)", async () => {
    const secret = 'grant_type=client_credentials&client_id=secret-app&client_secret=secret-app-secret';
    const forged = { 'x-forwarded-client-cert': xfccHeader(client.certificate) };
    // Over TLS without a certificate: a bearer token, usable without one; the backend sees no XFCC.
    const bearer = await issued(secret, undefined, forged);
    assert.equal(claimsOf(bearer).cnf, undefined, 'the forged XFCC bound nothing');
    const served = await foo(bearer, undefined, forged);
    assert.equal(served.status, 200, served.body);
    assert.equal(seenBy(served)['x-forwarded-client-cert'], undefined, 'stripped over TLS without a certificate');
    // Over plain HTTP: the same.
    const plain = await send(envoy!.url, TOKEN_PATH, { host: OAUTH, method: 'POST', headers: { ...FORM, ...forged }, body: secret });
    assert.equal(plain.status, 200, plain.body);
    assert.equal(claimsOf((JSON.parse(plain.body) as { access_token: string }).access_token).cnf, undefined);
    const plainServed = await send(envoy!.url, '/x', { host: FOO, headers: { authorization: `Bearer ${bearer}`, ...forged } });
    assert.equal(plainServed.status, 200, plainServed.body);
    assert.equal(seenBy(plainServed)['x-forwarded-client-cert'], undefined, 'stripped over plain HTTP');
    // A forged XFCC is no client credential either.
    const claimed = await tokenOver('grant_type=client_credentials&client_id=pki-app', undefined, forged);
    assert.equal(claimed.status, 401, claimed.body);
    // With a certificate: Envoy's XFCC replaces the client's, and the token is bound to the real one.
    const bound = await issued(secret, other, forged);
    assert.deepEqual(claimsOf(bound).cnf, { 'x5t#S256': x5t(other) });
    const withOther = await foo(bound, other, forged);
    assert.equal(withOther.status, 200, withOther.body);
    // One element, Envoy's (no By: the server certificate has no URI SAN), the forged one gone.
    const xfcc = seenBy(withOther)['x-forwarded-client-cert'];
    assert.match(xfcc, new RegExp(`^Hash=${envoyHash(other)};`));
    assert.equal(xfcc.split('Hash=').length, 2, xfcc);
    assert.doesNotMatch(xfcc, /Subject="CN=client"/);
    assertUnbound(await foo(bound, client), 'bound to other, presented client');
    // A bearer token stays bearer over a connection with a certificate too.
    assert.equal((await foo(bearer, client)).status, 200);
  });

  it('without a client CA: any certificate is taken (ACCEPT_UNTRUSTED) and binds tokens; tls_client_auth refuses it as unverified', async () => {
    // The authority again on the same ports and data, pushing the listener without clientCaFile.
    await authority!.stop();
    authority = undefined;
    authority = await startTestAuthority(settings({}), dataDir);
    // Once Envoy has the new listener, a certificate nobody pinned gets through the handshake.
    const secret = 'grant_type=client_credentials&client_id=secret-app&client_secret=secret-app-secret';
    await within(15_000, async () => (await tokenOver(secret, stranger)).status === 200, `the listener without a client CA\n${log()}`);
    const bound = await issued(secret, stranger);
    assert.deepEqual(claimsOf(bound).cnf, { 'x5t#S256': x5t(stranger) });
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('secret-app') !== undefined);
    assert.equal((await foo(bound, stranger)).status, 200);
    assertUnbound(await foo(bound), 'unverified-bound token without its certificate');
    assertUnbound(await foo(bound, client), 'unverified-bound token with another certificate');
    // tls_client_auth: the stranger's certificate names client.example.com, as the CA-issued one
    // does; neither is believed now, since Envoy verified neither.
    await refusedClient('grant_type=client_credentials&client_id=pki-app', stranger, 'a self-made certificate with the SAN');
    await refusedClient('grant_type=client_credentials&client_id=pki-app', client, 'the CA-issued one, unverified here');
    const metrics = await fetch(`${authority.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }).then((r) => r.text());
    assert.match(metrics, /token_authority_client_auth_failures_total\{endpoint="token",reason="certificate_unverified"\} 2/);
    // self_signed_tls_client_auth needs no chain: the key in the JWKS is what counts.
    const selfToken = await issued('grant_type=client_credentials&client_id=self-app', self);
    assert.deepEqual(claimsOf(selfToken).cnf, { 'x5t#S256': x5t(self) });
    assert.equal((await foo(selfToken, self)).status, 200);
    await refusedClient('grant_type=client_credentials&client_id=self-app', stranger, 'self-app with a key not in its JWKS');
    // Bearer clients without a certificate, as before.
    const bearer = await issued(secret);
    assert.equal(claimsOf(bearer).cnf, undefined);
    assert.equal((await foo(bearer)).status, 200);
  });
});
