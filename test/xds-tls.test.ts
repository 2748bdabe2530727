import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:http2';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LISTENER } from '../libs/xds/envoy-types';
import { ADMIN_TOKEN, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { createTestPki, type TestCertificate, type TestPki } from './support/certificates';
import { runEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { FOO, send, sendTls } from './support/proxy-request';
import { type Backend, namedBackend, within, xdsBootstrap } from './support/xds';

/*
 * An HTTPS listener in the pushed config (xds.tls): the authority names the certificate and key
 * files, Envoy reads them. A CA made for this test signs the server's certificate; clients trust
 * that CA only. The authority runs with `secure: true` (Otoroshi's default) behind it.
 */

const OAUTH = 'oauth.oto.tools';

describe('an HTTPS listener pushed over xDS (xds.tls), with a real Envoy and a CA of the test', () => {
  const pki: TestPki = createTestPki();
  let certificates: TestCertificate;
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let backend: Backend | undefined;
  let envoy: TestEnvoy | undefined;
  const ports = { grpc: 0, http: 0, listener: 0, https: 0, admin: 0, xds: 0 };
  let dataDir = '';
  const log = () => envoy?.log().slice(-3000) ?? '';

  const settings = (tls: { certificateFile: string; privateKeyFile: string }) => ({
    domain: OAUTH,
    secure: true,
    trustProxy: 1,
    http: { host: '127.0.0.1', port: ports.http },
    grpc: { host: '127.0.0.1', port: ports.grpc },
    xds: {
      enabled: true,
      port: ports.xds,
      listener: { address: '127.0.0.1', port: ports.listener },
      tls: { port: ports.https, ...tls },
    },
  });

  before(async () => {
    for (const key of Object.keys(ports) as (keyof typeof ports)[]) ports[key] = await freePort();
    certificates = pki.issue('tls', { subject: `/CN=${FOO}`, subjectAltName: `DNS:${FOO},DNS:${OAUTH}`, server: true });
    backend = await namedBackend('A');
    dataDir = mkdtempSync(path.join(tmpdir(), 'xds-tls-data-'));
    authority = await startTestAuthority(settings(certificates), dataDir);
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
    assert.equal(
      (await authority.admin('POST', '/api/apikeys', { clientId: 'tls-id', clientSecret: 'tls-secret', authorizedEntities: ['route_foo'] }))
        .status,
      201,
    );
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

  const tls = (pathname: string, options: { host?: string; method?: string; headers?: Record<string, string>; body?: string } = {}) =>
    sendTls(ports.https, pathname, { host: FOO, ca: pki.ca.certificate, ...options });
  let bearer = '';

  it('issues a token over HTTPS (the authority host, secure: true) and serves a route created through the API over HTTPS within 1 s', async () => {
    // The listener comes over xDS: the token endpoint answers over TLS once Envoy has it.
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const body = 'grant_type=client_credentials&client_id=tls-id&client_secret=tls-secret';
    await within(
      10_000,
      async () => (await tls(TOKEN_PATH, { host: OAUTH, method: 'POST', headers: form, body })).status === 200,
      'token over HTTPS',
    );
    const issued = await tls(TOKEN_PATH, { host: OAUTH, method: 'POST', headers: form, body });
    bearer = `Bearer ${(JSON.parse(issued.body) as { access_token: string }).access_token}`;
    // Plain HTTP to the same endpoint is refused by the authority (secure: true), whatever the client claims.
    const plain = await send(envoy!.url, TOKEN_PATH, {
      host: OAUTH,
      method: 'POST',
      headers: { ...form, 'x-forwarded-proto': 'https' },
      body,
    });
    assert.equal(plain.status, 400, plain.body);
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('tls-id') !== undefined);
    const created = await authority!.admin('POST', '/api/routes', {
      id: 'foo',
      frontend: { domains: [FOO], pathPrefix: '/' },
      backend: { targets: [{ hostname: '127.0.0.1', port: backend!.port }] },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const served = await within(
      1000,
      async () => (await tls('/x', { headers: { authorization: bearer } })).status === 200,
      'the route over HTTPS',
    );
    const answer = await tls('/x', { headers: { authorization: bearer } });
    const seen = JSON.parse(answer.body) as { backend: string; headers: Record<string, string> };
    assert.equal(seen.backend, 'A');
    assert.equal(seen.headers['x-forwarded-proto'], 'https', 'Envoy says the client came over TLS');
    assert.equal(seen.headers['x-client-id'], 'tls-id');
    assert.equal((await tls('/x')).status, 401, 'ext_authz runs on the HTTPS listener too');
    // The same route over plain HTTP, as before.
    assert.equal((await send(envoy!.url, '/x', { host: FOO, headers: { authorization: bearer } })).status, 200);
    console.log(`# route created through the API: served over HTTPS in ${served} ms`);
  });

  it("offers HTTP/2 by ALPN, and a client that does not trust the test's CA is refused the handshake", async () => {
    const session = connect(`https://127.0.0.1:${ports.https}`, { ca: pki.ca.certificate, servername: FOO });
    try {
      const status = await new Promise<number>((resolve, reject) => {
        session.once('error', reject);
        const stream = session.request({ ':path': '/x', ':authority': FOO, authorization: bearer });
        stream.once('response', (headers) => resolve(Number(headers[':status'])));
        stream.once('error', reject);
        stream.resume();
        stream.end();
      });
      assert.equal(status, 200);
      assert.equal(session.alpnProtocol, 'h2');
    } finally {
      session.close();
    }
    await assert.rejects(sendTls(ports.https, '/x', { host: FOO, ca: Buffer.from('') }), (error: NodeJS.ErrnoException) =>
      /certificate|self.signed|UNABLE/i.test(`${error.code} ${error.message}`),
    );
  });

  it('a certificate path Envoy cannot read is a NACK of the listener, and the last accepted HTTPS listener keeps serving', async () => {
    // The authority again on the same ports and data, naming files that do not exist.
    await authority!.stop();
    authority = undefined;
    authority = await startTestAuthority(
      settings({ certificateFile: path.join(pki.dir, 'missing.crt'), privateKeyFile: path.join(pki.dir, 'missing.key') }),
      dataDir,
    );
    await within(15_000, async () => authority!.xds!.recentNacks().some((nack) => nack.typeUrl === LISTENER), 'a NACK of the listener');
    const nack = authority.xds!.recentNacks().find((each) => each.typeUrl === LISTENER)!;
    assert.match(nack.message, /missing\.(crt|key)/, `Envoy names the file\n${nack.message}`);
    const metrics = await fetch(`${authority.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }).then((r) => r.text());
    assert.match(metrics, /token_authority_xds_nack_total\{type="Listener"\} 1/);
    assert.equal((await tls('/x', { headers: { authorization: bearer } })).status, 200, `the old listener serves\n${log()}`);
  });
});
