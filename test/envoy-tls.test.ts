import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startEchoBackend, type EchoBackend } from '../services/echo-backend/server';
import { startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { startEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { send, sendTls } from './support/proxy-request';

const OAUTH = 'oauth.oto.tools';

/**
 * TLS at the edge: an HTTPS listener rendered beside the plain one (libs/envoy/render-config.ts),
 * with a certificate made for this test by openssl, and the authority's `secure: true`
 * (Otoroshi's default) behind Envoy, which sets X-Forwarded-Proto itself.
 */
describe("HTTPS through a real Envoy, with the authority's secure setting", () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'envoy-tls-'));
  const certificateFile = path.join(dir, 'tls.crt');
  const privateKeyFile = path.join(dir, 'tls.key');
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let echo: EchoBackend | undefined;
  let envoy: (TestEnvoy & { httpsPort?: number }) | undefined;
  let ca: Buffer;

  before(async () => {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        `/CN=${OAUTH}`,
        '-addext',
        `subjectAltName=DNS:${OAUTH},DNS:foo.oto.tools`,
        '-keyout',
        privateKeyFile,
        '-out',
        certificateFile,
      ],
      { stdio: 'ignore' },
    );
    ca = readFileSync(certificateFile);
    authority = await startTestAuthority({ domain: OAUTH, secure: true, trustProxy: 1 });
    extAuthz = await startTestExtAuthz(authority);
    echo = await startEchoBackend(0, '127.0.0.1');
    const endpoint = (url: string) => ({ address: '127.0.0.1', port: Number(url.split(':').pop()) });
    envoy = await startEnvoy(
      'envoy.yaml',
      {
        token_authority: endpoint(authority.url),
        token_authority_grpc: endpoint(authority.grpcAddress),
        echo: endpoint(echo.url),
        ext_authz: endpoint(extAuthz.grpcAddress),
      },
      { certificateFile, privateKeyFile },
    );
    assert.equal(
      (await authority.admin('POST', '/api/apikeys', { clientId: 'tls-id', clientSecret: 'tls-secret', authorizedEntities: ['route_foo'] }))
        .status,
      201,
    );
  });

  after(async () => {
    for (const step of [() => envoy?.stop(), () => extAuthz?.close(), () => echo?.close(), () => authority?.stop()]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  const form = { 'content-type': 'application/x-www-form-urlencoded' };
  const body = 'grant_type=client_credentials&client_id=tls-id&client_secret=tls-secret';

  it('issues a token over HTTPS, and the token opens foo.oto.tools over HTTPS', async () => {
    const issued = await sendTls(envoy!.httpsPort!, TOKEN_PATH, { host: OAUTH, ca, method: 'POST', headers: form, body });
    assert.equal(issued.status, 200, `${issued.body}\n${envoy!.log().slice(-2000)}`);
    const token = (JSON.parse(issued.body) as { access_token: string }).access_token;
    await extAuthz!.waitFor(() => extAuthz!.replica.apiKey('tls-id') !== undefined);
    const through = await sendTls(envoy!.httpsPort!, '/', { host: 'foo.oto.tools', ca, headers: { authorization: `Bearer ${token}` } });
    assert.equal(through.status, 200, through.body);
    assert.equal((JSON.parse(through.body) as { headers: Record<string, string> }).headers['x-forwarded-proto'], 'https');
  });

  it('refuses the token endpoint over plain HTTP with "use a secure channel", even when the client claims https', async () => {
    for (const headers of [form, { ...form, 'x-forwarded-proto': 'https' }]) {
      const plain = await send(envoy!.url, TOKEN_PATH, { host: OAUTH, method: 'POST', headers, body });
      assert.equal(plain.status, 400, plain.body);
      assert.deepEqual(JSON.parse(plain.body), { error: 'invalid_request', error_description: 'use a secure channel' });
    }
  });
});
