import assert from 'node:assert/strict';
import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Authorizer, type AuthzRequest } from '../../libs/authz/authorizer';
import type { Decision } from '../../libs/authz/decision';
import { authenticateClient, ClientAuthError, extractClientCredentials } from '../../libs/core/client-auth';
import { authorityConfigSchema } from '../../libs/core/config';
import { hashSecret } from '../../libs/core/crypto/secret-hash';
import { KeyRing } from '../../libs/core/key-ring';
import type { ApiKeyRecord } from '../../libs/core/model';
import {
  certificateDer,
  certificateKeyInJwks,
  forwardedThumbprint,
  parseClientCertificate,
  parseXfcc,
  subjectMatches,
  tlsClientAuthMatches,
  xfccCertificate,
} from '../../libs/core/mtls';
import { OAuthError } from '../../libs/core/errors';
import type { ApiKeyRepository } from '../../libs/core/store/repositories';
import { SqliteStore } from '../../libs/core/store/sqlite-store';
import { TokenService } from '../../libs/core/token-service';
import { forwardedClientCertificate } from '../../libs/http/trust-proxy';
import { createTestPki, type TestCertificate, type TestPki, urlEncodedPem, xfccHeader } from '../support/certificates';
import { apiKeyRecord } from '../support/records';
import { accessClaims, apiKey, authzConfig, replicaWith, signAccessToken, storeKeyPair, TestClock, testKeyPair } from './support/fixtures';

/*
 * RFC 8705 in the core (libs/core/mtls.ts, client-auth.ts, token-service.ts) and at ext-authz
 * (the cnf decision of libs/authz/authorizer.ts), with certificates made by openssl for the test.
 */

let pki: TestPki;
let client: TestCertificate;
let other: TestCertificate;
let selfSigned: TestCertificate;
const x5t = (pem: string) => createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');

before(() => {
  pki = createTestPki();
  client = pki.issue('client', {
    subject: '/C=FR/O=Example, Inc./CN=client-1',
    subjectAltName: 'DNS:client.example.com,URI:spiffe://example.com/client-1,IP:10.1.2.3,IP:2001:db8::1,email:ops@example.com',
  });
  other = pki.issue('other', { subject: '/C=FR/O=Example, Inc./CN=client-2', subjectAltName: 'DNS:other.example.com' });
  selfSigned = pki.selfSigned('self', '/CN=self-signed client');
});
after(() => pki.cleanup());

describe('forwarded certificates: XFCC and PEM', () => {
  it("reads Envoy's x-forwarded-client-cert: the last element's Cert, quoted values with , ; = and escaped quotes", () => {
    const header = `By=spiffe://a;Cert="${urlEncodedPem(other.certificate)}",${xfccHeader(client.certificate, 'CN=client-1,O=Example\\, Inc.,C=FR')}`;
    const elements = parseXfcc(header);
    assert.equal(elements.length, 2);
    assert.equal(elements[1].subject, 'CN=client-1,O=Example, Inc.,C=FR');
    assert.equal(elements[1].by, 'spiffe://oauth.oto.tools');
    assert.deepEqual(parseXfcc('Hash=ab;Subject="a=\\"b\\";c"'), [{ hash: 'ab', subject: 'a="b";c' }]);
    assert.equal(xfccCertificate(header), urlEncodedPem(client.certificate));
    assert.equal(xfccCertificate(['By=x', xfccHeader(client.certificate)]), urlEncodedPem(client.certificate), 'repeated header lines');
    assert.equal(xfccCertificate('By=spiffe://a;Hash=00'), undefined, 'no Cert');
    assert.equal(xfccCertificate(undefined), undefined);
  });

  it('takes the DER of PEM or URL-encoded PEM; its SHA-256 is x5t#S256; anything else is no certificate', () => {
    const der = new X509Certificate(client.certificate).raw;
    assert.deepEqual(certificateDer(client.certificate), der);
    assert.deepEqual(certificateDer(urlEncodedPem(client.certificate)), der);
    assert.equal(forwardedThumbprint(urlEncodedPem(client.certificate)), x5t(client.certificate));
    for (const bad of ['', 'garbage', '%E0%A4%A', '-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----', 'x'.repeat(20_000)])
      assert.equal(forwardedThumbprint(bad), undefined, bad.slice(0, 20));
    assert.equal(parseClientCertificate('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----'), undefined, 'not X.509');
  });

  it('believes XFCC only from a trusted proxy (TRUST_PROXY), never with false', () => {
    const header = xfccHeader(client.certificate);
    assert.equal(forwardedClientCertificate({ hops: 1 })('127.0.0.1', header), urlEncodedPem(client.certificate));
    assert.equal(forwardedClientCertificate({ addresses: ['10.0.0.5'] })('10.0.0.5', header), urlEncodedPem(client.certificate));
    assert.equal(forwardedClientCertificate({ addresses: ['10.0.0.5'] })('10.0.0.6', header), undefined);
    assert.equal(forwardedClientCertificate({ addresses: ['loopback'] })('::ffff:127.0.0.1', header), urlEncodedPem(client.certificate));
    assert.equal(forwardedClientCertificate(false)('127.0.0.1', header), undefined);
    assert.equal(forwardedClientCertificate({ hops: 1 })(undefined, header), undefined);
  });
});

describe('tls_client_auth and self_signed_tls_client_auth (RFC 8705 §2)', () => {
  const NOW = Date.UTC(2026, 5, 1);
  const cert = () => parseClientCertificate(client.certificate)!;

  it('matches the registered subject DN (RFC 4514, either RDN order) or exactly one SAN of each type', () => {
    const x509 = new X509Certificate(client.certificate);
    assert.ok(subjectMatches(x509, 'CN=client-1,O=Example\\, Inc.,C=FR'));
    assert.ok(subjectMatches(x509, 'C=FR, O=Example\\, Inc., cn=client-1'), 'types without case, spaces after commas');
    for (const wrong of ['CN=client-1', 'CN=client-2,O=Example\\, Inc.,C=FR', 'CN=Client-1,O=Example\\, Inc.,C=FR', ''])
      assert.ok(!subjectMatches(x509, wrong), wrong);
    const matches = (fields: Partial<ApiKeyRecord>) => tlsClientAuthMatches(fields, x509);
    assert.ok(matches({ tls_client_auth_san_dns: 'client.example.com' }));
    assert.ok(matches({ tls_client_auth_san_dns: 'CLIENT.example.com' }));
    assert.ok(matches({ tls_client_auth_san_uri: 'spiffe://example.com/client-1' }));
    assert.ok(matches({ tls_client_auth_san_ip: '10.1.2.3' }));
    assert.ok(matches({ tls_client_auth_san_ip: '2001:DB8:0::1' }));
    assert.ok(matches({ tls_client_auth_san_email: 'ops@example.com' }));
    for (const wrong of [
      { tls_client_auth_san_dns: 'example.com' },
      { tls_client_auth_san_dns: 'other.example.com' },
      { tls_client_auth_san_uri: 'spiffe://example.com/client' },
      { tls_client_auth_san_ip: '10.1.2.4' },
      { tls_client_auth_san_email: 'client.example.com' },
      {},
    ])
      assert.ok(!matches(wrong), JSON.stringify(wrong));
  });

  it('finds a certificate public key in a JWKS', () => {
    const x509 = new X509Certificate(selfSigned.certificate);
    const jwk = createPublicKey(selfSigned.privateKey).export({ format: 'jwk' });
    const otherJwk = createPublicKey(other.privateKey).export({ format: 'jwk' });
    assert.ok(certificateKeyInJwks(x509, { keys: [otherJwk as Record<string, unknown>, jwk as Record<string, unknown>] }));
    assert.ok(!certificateKeyInJwks(x509, { keys: [otherJwk as Record<string, unknown>, { kty: 'oct', k: 'AAAA' }] }));
  });

  it('reads a client id with a certificate and no secret as certificate authentication; a secret or assertion wins', () => {
    const certificate = cert();
    assert.deepEqual(extractClientCredentials(undefined, { client_id: 'app' }, certificate), {
      clientId: 'app',
      certificate,
      method: 'tls_client_auth',
    });
    assert.equal(extractClientCredentials(undefined, { client_id: 'app', client_secret: 's' }, certificate)?.method, 'client_secret_post');
    assert.equal(extractClientCredentials(undefined, { client_id: 'app' })?.method, 'client_secret_post', 'no certificate');
    assert.equal(extractClientCredentials(undefined, {}, certificate), undefined, 'a certificate alone names no client');
  });

  it('authenticates by the registered attribute or key, and answers one invalid_client with its reason otherwise', async () => {
    const selfJwk = createPublicKey(selfSigned.privateKey).export({ format: 'jwk' }) as Record<string, unknown>;
    const records = [
      apiKeyRecord('by-dn', { secretHash: '', tls_client_auth_subject_dn: 'CN=client-1,O=Example\\, Inc.,C=FR' }),
      apiKeyRecord('by-dns', { secretHash: '', tls_client_auth_san_dns: 'client.example.com' }),
      apiKeyRecord('self', { secretHash: '', jwks: { keys: [selfJwk] } }),
      apiKeyRecord('self-remote', { secretHash: '', jwks_uri: 'https://client.example/jwks' }),
      apiKeyRecord('secret-only', { secretHash: await hashSecret('S'.repeat(43)) }),
      apiKeyRecord('off', { secretHash: '', tls_client_auth_san_dns: 'client.example.com', enabled: false }),
    ];
    const byId = new Map(records.map((record) => [record.clientId, record]));
    const keys = { get: async (id: string) => byId.get(id) } as unknown as ApiKeyRepository;
    let fetches = 0;
    const context = {
      audiences: [],
      replays: { useOnce: async () => true },
      remoteJwks: async () => {
        fetches++;
        return { keys: [selfJwk] };
      },
    };
    const auth = async (clientId: string, pem: string, unverified = false) => {
      try {
        const certificate = parseClientCertificate(pem, unverified)!;
        return (await authenticateClient(keys, { clientId, certificate, method: 'tls_client_auth' }, NOW, context)).clientId;
      } catch (error) {
        assert.ok(error instanceof ClientAuthError);
        return `${error.code}/${error.reason}`;
      }
    };
    assert.equal(await auth('by-dn', client.certificate), 'by-dn');
    assert.equal(await auth('by-dns', client.certificate), 'by-dns');
    assert.equal(await auth('self', selfSigned.certificate), 'self');
    assert.equal(await auth('self-remote', selfSigned.certificate), 'self-remote');
    assert.equal(fetches, 1);
    assert.equal(await auth('by-dn', other.certificate), 'invalid_client/certificate_mismatch');
    assert.equal(await auth('by-dns', selfSigned.certificate), 'invalid_client/certificate_mismatch');
    assert.equal(await auth('self', client.certificate), 'invalid_client/certificate_mismatch');
    assert.equal(await auth('self-remote', client.certificate), 'invalid_client/certificate_mismatch');
    assert.equal(fetches, 3, 'an unknown key looks again once (the cache bounds how often)');
    assert.equal(await auth('secret-only', client.certificate), 'invalid_client/no_certificate_auth');
    assert.equal(await auth('off', client.certificate), 'invalid_client/disabled');
    assert.equal(await auth('ghost', client.certificate), 'invalid_client/unknown_client');
    // A certificate the proxy took without verifying its chain: its names are the client's word, its key is not.
    assert.equal(await auth('by-dn', client.certificate, true), 'invalid_client/certificate_unverified');
    assert.equal(await auth('by-dns', client.certificate, true), 'invalid_client/certificate_unverified');
    assert.equal(await auth('self', selfSigned.certificate, true), 'self');
    assert.equal(await auth('self', client.certificate, true), 'invalid_client/certificate_mismatch');
  });
});

describe('TokenService: certificate-bound tokens (RFC 8705 §3)', () => {
  const clock = new TestClock();
  let store: SqliteStore;
  let service: TokenService;
  const SECRET = 'S'.repeat(43);
  before(async () => {
    store = new SqliteStore(':memory:');
    await storeKeyPair(store, clock.ms);
    await store.apiKeys.createMany([
      apiKeyRecord('app', { secretHash: await hashSecret(SECRET) }),
      apiKeyRecord('pinned', { secretHash: '', tls_client_auth_san_dns: 'client.example.com', tokenBinding: 'mtls' }),
    ]);
    const keyRing = new KeyRing(store.keyPairs, clock.now);
    await keyRing.reload();
    service = new TokenService(authorityConfigSchema.parse({ defaultKeyPair: 'kp', expiration: 60_000 }), store, keyRing, clock);
  });
  after(() => store.close());
  const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) as Record<string, unknown>;

  it('binds a token issued with a client certificate (any client auth) to it; introspection shows cnf', async () => {
    const bound = await service.issueToken({
      params: { grant_type: 'client_credentials', client_id: 'app', client_secret: SECRET },
      clientCertificate: urlEncodedPem(client.certificate),
    });
    assert.equal(bound.token_type, 'Bearer');
    assert.deepEqual(claimsOf(bound.access_token).cnf, { 'x5t#S256': x5t(client.certificate) });
    const introspected = await service.introspect({
      params: { token: bound.access_token, client_id: 'app', client_secret: SECRET },
    });
    assert.equal(introspected.active && introspected.token_type, 'Bearer');
    assert.deepEqual(introspected.active && introspected.cnf, { 'x5t#S256': x5t(client.certificate) });
    const plain = await service.issueToken({ params: { grant_type: 'client_credentials', client_id: 'app', client_secret: SECRET } });
    assert.equal(claimsOf(plain.access_token).cnf, undefined, 'no certificate, no binding');
    const byCertificate = await service.issueToken({
      params: { grant_type: 'client_credentials', client_id: 'pinned' },
      clientCertificate: client.certificate,
    });
    assert.deepEqual(claimsOf(byCertificate.access_token).cnf, { 'x5t#S256': x5t(client.certificate) });
    // Unverified by the proxy: still binds a secret client's token, but authenticates no tls_client_auth client.
    const unverified = await service.issueToken({
      params: { grant_type: 'client_credentials', client_id: 'app', client_secret: SECRET },
      clientCertificate: client.certificate,
      clientCertificateUnverified: true,
    });
    assert.deepEqual(claimsOf(unverified.access_token).cnf, { 'x5t#S256': x5t(client.certificate) });
    await assert.rejects(
      service.issueToken({
        params: { grant_type: 'client_credentials', client_id: 'pinned' },
        clientCertificate: client.certificate,
        clientCertificateUnverified: true,
      }),
      (error: OAuthError) => error.status === 401 && error.code === 'invalid_client',
    );
  });

  it("refuses a tokenBinding 'mtls' key without a certificate, and a forwarded certificate that is none", async () => {
    const refused = async (request: Parameters<TokenService['issueToken']>[0]) => {
      try {
        await service.issueToken(request);
        return 'issued';
      } catch (error) {
        assert.ok(error instanceof OAuthError);
        return `${error.status} ${error.code}`;
      }
    };
    assert.equal(await refused({ params: { grant_type: 'client_credentials', client_id: 'pinned' } }), '401 invalid_client');
    assert.equal(
      await refused({ params: { grant_type: 'client_credentials', client_id: 'app', client_secret: SECRET }, clientCertificate: 'junk' }),
      '400 invalid_request',
    );
    const metadata = service.metadata();
    assert.equal(metadata.tls_client_certificate_bound_access_tokens, true);
    assert.ok((metadata.token_endpoint_auth_methods_supported as string[]).includes('self_signed_tls_client_auth'));
    assert.ok((metadata.token_endpoint_auth_methods_supported as string[]).includes('tls_client_auth'));
  });

  it("refuses to issue a bearer token to a tokenBinding 'mtls' key that authenticated otherwise", async () => {
    await store.apiKeys.createMany([apiKeyRecord('strict', { secretHash: await hashSecret(SECRET), tokenBinding: 'mtls' })]);
    await assert.rejects(
      service.issueToken({ params: { grant_type: 'client_credentials', client_id: 'strict', client_secret: SECRET } }),
      (error: OAuthError) => error.status === 400 && error.code === 'invalid_request' && /certificate-bound/.test(error.description ?? ''),
    );
    const issued = await service.issueToken({
      params: { grant_type: 'client_credentials', client_id: 'strict', client_secret: SECRET },
      clientCertificate: other.certificate,
    });
    assert.deepEqual(claimsOf(issued.access_token).cnf, { 'x5t#S256': x5t(other.certificate) });
  });
});

describe('Authorizer: certificate-bound tokens (RFC 8705 §3)', () => {
  const pair = testKeyPair('kp-1');

  async function setup() {
    const clock = new TestClock();
    const replica = replicaWith([pair], [apiKey('app', { scopes: ['read'] })], clock.now);
    const authorizer = new Authorizer(authzConfig(), replica, clock.now);
    const token = (cnf?: unknown) => signAccessToken(pair, accessClaims('app', clock.seconds, cnf === undefined ? {} : { cnf }));
    const check = (accessToken: string, request: Partial<AuthzRequest> = {}): Promise<Decision> =>
      authorizer.check({ policy: 'api', headers: { authorization: `Bearer ${accessToken}` }, ...request });
    return { token, check };
  }
  const outcome = (decision: Decision) =>
    decision.allowed ? 'allowed' : `${decision.status} ${decision.reason} ${decision.wwwAuthenticate ?? ''}`;

  it('allows a bound token over a connection with its certificate, refuses it without or with another (401 invalid_token)', async () => {
    const { token, check } = await setup();
    const bound = await token({ 'x5t#S256': x5t(client.certificate) });
    assert.equal(outcome(await check(bound, { clientCertificate: urlEncodedPem(client.certificate) })), 'allowed');
    assert.equal(outcome(await check(bound, { clientCertificate: client.certificate })), 'allowed', 'plain PEM too');
    const refused = '401 wrong_certificate Bearer realm="api", error="invalid_token"';
    assert.equal(outcome(await check(bound)), refused);
    assert.equal(outcome(await check(bound, { clientCertificate: urlEncodedPem(other.certificate) })), refused);
    assert.equal(outcome(await check(bound, { clientCertificate: 'garbage' })), refused);
    // Cached after the first check: the certificate is still compared on every call.
    assert.equal(outcome(await check(bound, { clientCertificate: urlEncodedPem(client.certificate) })), 'allowed');
    assert.equal(outcome(await check(bound)), refused);
  });

  it('keeps bearer tokens bearer with or without a certificate, and refuses a cnf it cannot enforce', async () => {
    const { token, check } = await setup();
    const plain = await token();
    assert.equal(outcome(await check(plain)), 'allowed');
    assert.equal(outcome(await check(plain, { clientCertificate: urlEncodedPem(client.certificate) })), 'allowed');
    for (const cnf of [{}, { x5t: 'abc' }, { 'x5t#S256': 5 }, { 'x5t#S256': '' }, { 'x5t#S256': x5t(client.certificate), jwk: {} }, 'x'])
      assert.match(
        outcome(await check(await token(cnf), { clientCertificate: urlEncodedPem(client.certificate) })),
        /^401 sender_constrained/,
        JSON.stringify(cnf),
      );
    // tokenBinding mtls (sent with the key): only its certificate-bound tokens count, bearer ones issued before the switch not.
    const strictReplica = replicaWith([pair], [apiKey('app', { scopes: ['read'], tokenBinding: 'mtls' })]);
    const strict = new Authorizer(authzConfig(), strictReplica);
    const nowSeconds = Math.floor(Date.now() / 1000);
    const strictCheck = async (cnf: unknown, clientCertificate?: string) =>
      outcome(
        await strict.check({
          policy: 'api',
          headers: {
            authorization: `Bearer ${await signAccessToken(pair, accessClaims('app', nowSeconds, cnf === undefined ? {} : { cnf }))}`,
          },
          clientCertificate,
        }),
      );
    assert.equal(
      await strictCheck(undefined, urlEncodedPem(client.certificate)),
      '401 mtls_required Bearer realm="api", error="invalid_token"',
    );
    assert.equal(await strictCheck({ 'x5t#S256': x5t(client.certificate) }, urlEncodedPem(client.certificate)), 'allowed');
    // Bound to a DPoP key and a certificate: as Bearer it is still refused for its DPoP key.
    const both = await token({ jkt: 'thumb', 'x5t#S256': x5t(client.certificate) });
    assert.match(outcome(await check(both, { clientCertificate: urlEncodedPem(client.certificate) })), /^401 sender_constrained/);
    assert.match(outcome(await check(both)), /^401 wrong_certificate/);
  });
});
