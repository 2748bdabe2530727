import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { Metadata, type ServiceError, status as GrpcStatus } from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { DpopNonces, nonceKey } from '../libs/core/dpop-nonce';
import { decodeErrorInfo } from '../libs/grpc/rich-status';
import { basic, INTROSPECT_PATH, REVOKE_PATH, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { tokenAuthorityClient, type TokenAuthorityClient } from './support/grpc';
import { accessTokenClaims, signWithAuthorityKey } from './support/tokens';

type Operation = 'token' | 'introspect' | 'revoke';

interface Case {
  name: string;
  operation: Operation;
  /** OAuth2 parameters, as a form would carry them; the gRPC message is built from the same. */
  params: Record<string, string> | (() => Promise<Record<string, string>>);
  basic?: [string, string];
  /** Raw Authorization value, for malformed headers. */
  authorization?: string;
  expect: { error: string } | { active: boolean } | { tokenType: 'Bearer'; scope: string | undefined };
}

/** What both faces must agree on: success with the same fields, or the same OAuth2 error. */
type Outcome = { error: string } | { active: boolean } | { tokenType: string; scope: string | undefined; expiresIn: number };

const REST_PATHS: Record<Operation, string> = { token: TOKEN_PATH, introspect: INTROSPECT_PATH, revoke: REVOKE_PATH };
const GRPC_METHODS = { token: 'IssueToken', introspect: 'IntrospectToken', revoke: 'RevokeToken' } as const;
const HTTP_STATUS_BY_GRPC: Record<number, number[]> = {
  [GrpcStatus.UNAUTHENTICATED]: [401],
  [GrpcStatus.INVALID_ARGUMENT]: [400],
  [GrpcStatus.PERMISSION_DENIED]: [400, 403],
};

const GOOD = { grant_type: 'client_credentials', client_id: 'app', client_secret: 'app-secret' };

describe('REST and gRPC give the same answers (one table of cases)', () => {
  let authority: TestAuthority;
  let grpc: TokenAuthorityClient;
  let liveToken: string;
  let revokedToken: string;
  let otherClientsToken: string;

  before(async () => {
    authority = await startTestAuthority({ allowedAudiences: ['billing'] });
    grpc = tokenAuthorityClient(authority.grpcAddress);
    await authority.admin('POST', '/api/apikeys', { clientId: 'app', clientSecret: 'app-secret', scope: 'read write' });
    await authority.admin('POST', '/api/apikeys', { clientId: 'other', clientSecret: 'other-secret' });
    await authority.admin('POST', '/api/apikeys', { clientId: 'off', clientSecret: 'off-secret', enabled: false });
    const issue = async (clientId: string, secret: string) =>
      (
        (await (
          await authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials', client_id: clientId, client_secret: secret })
        ).json()) as { access_token: string }
      ).access_token;
    liveToken = await issue('app', 'app-secret');
    revokedToken = await issue('app', 'app-secret');
    otherClientsToken = await issue('other', 'other-secret');
    assert.equal(
      (await authority.postForm(REVOKE_PATH, { token: revokedToken }, { authorization: basic('app', 'app-secret') })).status,
      200,
    );
  });
  after(async () => {
    grpc.close();
    await authority.stop();
  });

  const asApp = { client_id: 'app', client_secret: 'app-secret' };
  const cases: Case[] = [
    {
      name: 'token: credentials in the body / message',
      operation: 'token',
      params: GOOD,
      expect: { tokenType: 'Bearer', scope: 'read write' },
    },
    {
      name: 'token: credentials by Basic header / metadata',
      operation: 'token',
      params: { grant_type: 'client_credentials', scope: 'read' },
      basic: ['app', 'app-secret'],
      expect: { tokenType: 'Bearer', scope: 'read' },
    },
    {
      name: 'token: allowed audience',
      operation: 'token',
      params: { ...GOOD, audience: 'billing' },
      expect: { tokenType: 'Bearer', scope: 'read write' },
    },
    {
      name: 'token: missing grant_type',
      operation: 'token',
      params: { client_id: 'app', client_secret: 'app-secret' },
      expect: { error: 'invalid_request' },
    },
    {
      name: 'token: unsupported grant type',
      operation: 'token',
      params: { ...GOOD, grant_type: 'password' },
      expect: { error: 'unsupported_grant_type' },
    },
    {
      name: 'token: no credentials',
      operation: 'token',
      params: { grant_type: 'client_credentials' },
      expect: { error: 'invalid_client' },
    },
    { name: 'token: unknown client id', operation: 'token', params: { ...GOOD, client_id: 'ghost' }, expect: { error: 'invalid_client' } },
    {
      name: 'token: wrong secret',
      operation: 'token',
      params: { ...GOOD, client_secret: 'wrong-secret' },
      expect: { error: 'invalid_client' },
    },
    {
      name: 'token: wrong secret by Basic',
      operation: 'token',
      params: { grant_type: 'client_credentials' },
      basic: ['app', 'wrong-secret'],
      expect: { error: 'invalid_client' },
    },
    {
      name: 'token: disabled API key',
      operation: 'token',
      params: { ...GOOD, client_id: 'off', client_secret: 'off-secret' },
      expect: { error: 'invalid_client' },
    },
    {
      name: 'token: Basic and body credentials together',
      operation: 'token',
      params: GOOD,
      basic: ['app', 'app-secret'],
      expect: { error: 'invalid_request' },
    },
    {
      name: 'token: malformed Basic',
      operation: 'token',
      params: { grant_type: 'client_credentials' },
      authorization: 'Basic %%%',
      expect: { error: 'invalid_request' },
    },
    { name: 'token: scope not granted', operation: 'token', params: { ...GOOD, scope: 'admin' }, expect: { error: 'invalid_scope' } },
    { name: 'token: malformed scope', operation: 'token', params: { ...GOOD, scope: 'read "x"' }, expect: { error: 'invalid_scope' } },
    { name: 'token: empty scope', operation: 'token', params: { ...GOOD, scope: '' }, expect: { error: 'invalid_scope' } },
    {
      name: 'token: audience not allowed',
      operation: 'token',
      params: { ...GOOD, audience: 'payroll' },
      expect: { error: 'invalid_target' },
    },
    {
      name: 'token: control characters in client_id',
      operation: 'token',
      params: { ...GOOD, client_id: 'app\u0001' },
      expect: { error: 'invalid_request' },
    },
    { name: 'token: unicode client_id', operation: 'token', params: { ...GOOD, client_id: 'äpp-😀' }, expect: { error: 'invalid_client' } },
    {
      name: 'token: oversized parameter',
      operation: 'token',
      params: { ...GOOD, scope: 'r'.repeat(9000) },
      expect: { error: 'invalid_request' },
    },
    {
      name: 'introspect: live token',
      operation: 'introspect',
      params: async () => ({ token: liveToken, ...asApp }),
      expect: { active: true },
    },
    {
      name: 'introspect: revoked token',
      operation: 'introspect',
      params: async () => ({ token: revokedToken, ...asApp }),
      expect: { active: false },
    },
    {
      name: 'introspect: expired token',
      operation: 'introspect',
      params: async () => {
        const now = Math.floor(Date.now() / 1000);
        return {
          token: await signWithAuthorityKey(authority, {
            ...accessTokenClaims(authority, 'app'),
            iat: now - 7200,
            nbf: now - 7200,
            exp: now - 3600,
          }),
          ...asApp,
        };
      },
      expect: { active: false },
    },
    { name: 'introspect: not a JWT', operation: 'introspect', params: { token: 'not-a-jwt', ...asApp }, expect: { active: false } },
    {
      name: 'introspect: alg none',
      operation: 'introspect',
      params: async () => ({
        token: `${Buffer.from('{"alg":"none","typ":"at+jwt","kid":"otoroshi-jwt-signing"}').toString('base64url')}.${Buffer.from(JSON.stringify(accessTokenClaims(authority, 'app'))).toString('base64url')}.`,
        ...asApp,
      }),
      expect: { active: false },
    },
    {
      name: 'introspect: signed by another key',
      operation: 'introspect',
      params: async () => ({
        token: await new SignJWT(accessTokenClaims(authority, 'app'))
          .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: 'otoroshi-jwt-signing' })
          .sign(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey),
        ...asApp,
      }),
      expect: { active: false },
    },
    {
      name: 'introspect: caller not authenticated',
      operation: 'introspect',
      params: async () => ({ token: liveToken }),
      expect: { error: 'invalid_client' },
    },
    { name: 'introspect: missing token', operation: 'introspect', params: asApp, expect: { error: 'invalid_request' } },
    {
      name: "revoke: another client's token",
      operation: 'revoke',
      params: async () => ({ token: otherClientsToken, ...asApp }),
      expect: { error: 'invalid_request' },
    },
    { name: 'revoke: junk token', operation: 'revoke', params: { token: 'junk', ...asApp }, expect: { active: false } },
    { name: 'revoke: no credentials', operation: 'revoke', params: { token: 'junk' }, expect: { error: 'invalid_client' } },
  ];

  async function viaRest(testCase: Case, params: Record<string, string>): Promise<{ outcome: Outcome; status: number }> {
    const authorization = testCase.authorization ?? (testCase.basic ? basic(...testCase.basic) : undefined);
    const response = await authority.postForm(REST_PATHS[testCase.operation], params, authorization ? { authorization } : {});
    const body = (await response.json()) as Record<string, any>;
    if (response.status !== 200) return { outcome: { error: body.error }, status: response.status };
    if (testCase.operation === 'token')
      return { outcome: { tokenType: body.token_type, scope: body.scope, expiresIn: body.expires_in }, status: 200 };
    return { outcome: { active: testCase.operation === 'introspect' ? body.active : false }, status: 200 };
  }

  async function viaGrpc(testCase: Case, params: Record<string, string>): Promise<{ outcome: Outcome; code: number }> {
    const { client_id, client_secret, ...fields } = params;
    const message: Record<string, unknown> = { ...fields };
    if (client_id !== undefined || client_secret !== undefined) message.client = { client_id, client_secret };
    const authorization = testCase.authorization ?? (testCase.basic ? basic(...testCase.basic) : undefined);
    const result = await grpc.call(GRPC_METHODS[testCase.operation], message, authorization ? { authorization } : {});
    if (!result.ok) {
      const trailer = result.error.metadata.get('oauth-error')[0] as string;
      assert.equal(decodeErrorInfo(result.error.metadata)?.reason, trailer, 'rich status and trailer agree');
      return { outcome: { error: trailer }, code: result.error.code };
    }
    const response = result.response;
    if (testCase.operation === 'token')
      return { outcome: { tokenType: response.token_type, scope: response.scope || undefined, expiresIn: response.expires_in }, code: 0 };
    return { outcome: { active: testCase.operation === 'introspect' ? response.active : false }, code: 0 };
  }

  for (const testCase of cases) {
    it(testCase.name, async () => {
      const params = typeof testCase.params === 'function' ? await testCase.params() : testCase.params;
      const rest = await viaRest(testCase, params);
      const grpcResult = await viaGrpc(testCase, params);
      assert.deepEqual(grpcResult.outcome, rest.outcome, 'same outcome over gRPC and REST');
      if ('error' in testCase.expect) {
        assert.deepEqual(rest.outcome, testCase.expect);
        assert.ok(
          HTTP_STATUS_BY_GRPC[grpcResult.code]?.includes(rest.status),
          `gRPC ${GrpcStatus[grpcResult.code]} for HTTP ${rest.status}`,
        );
      } else if ('active' in testCase.expect) {
        assert.deepEqual(rest.outcome, testCase.expect);
      } else {
        assert.deepEqual(rest.outcome, { tokenType: testCase.expect.tokenType, scope: testCase.expect.scope, expiresIn: 3600 });
      }
    });
  }

  it('the JWKS is the same over both faces', async () => {
    const rest = await (await fetch(`${authority.url}/.well-known/otoroshi/oauth/jwks.json`)).json();
    const result = await grpc.call('GetJwks', {});
    assert.ok(result.ok);
    assert.deepEqual(result.response, rest);
  });

  it('a token issued over gRPC is a token of REST, and revocation over gRPC is seen by REST', async () => {
    const issued = await grpc.call('IssueToken', { grant_type: 'client_credentials', client: asApp, scope: 'read' });
    assert.ok(issued.ok);
    const restIntrospection = async () =>
      (await (
        await authority.postForm(INTROSPECT_PATH, { token: issued.response.access_token }, { authorization: basic('app', 'app-secret') })
      ).json()) as { active: boolean; scope: string };
    assert.deepEqual({ active: true, scope: 'read' }, (({ active, scope }) => ({ active, scope }))(await restIntrospection()));
    const introspected = await grpc.call(
      'IntrospectToken',
      { token: issued.response.access_token },
      { authorization: basic('app', 'app-secret') },
    );
    assert.ok(introspected.ok);
    assert.equal(introspected.response.client_name, 'app');
    assert.equal(introspected.response.access_type, 'apikey');
    assert.ok((await grpc.call('RevokeToken', { token: issued.response.access_token, client: asApp })).ok);
    assert.equal((await restIntrospection()).active, false);
  });
});

describe('DPoP over REST (DPoP header) and gRPC (dpop metadata) give the same answers', () => {
  let authority: TestAuthority;
  let grpc: TokenAuthorityClient;
  let key: Awaited<ReturnType<typeof generateKeyPair>>;
  let jwk: Awaited<ReturnType<typeof exportJWK>>;
  let jkt: string;
  let tokenEndpoint: string;

  before(async () => {
    // Nonces required: a proof without one is use_dpop_nonce over both faces, with the nonce in a header / trailer.
    authority = await startTestAuthority({
      dpop: { requireNonce: true, nonceLifetime: 60 },
      dataPlaneToken: 'parity-data-plane-token-0123',
    });
    grpc = tokenAuthorityClient(authority.grpcAddress);
    await authority.admin('POST', '/api/apikeys', { clientId: 'app', clientSecret: 'app-secret', scope: 'read' });
    key = await generateKeyPair('ES256');
    jwk = await exportJWK(key.publicKey);
    jkt = await calculateJwkThumbprint(jwk);
    tokenEndpoint = `${authority.config.issuer}${TOKEN_PATH}`;
  });
  after(async () => {
    grpc.close();
    await authority.stop();
  });

  const proof = (claims: Record<string, unknown> = {}) =>
    new SignJWT({ htm: 'POST', htu: tokenEndpoint, jti: crypto.randomUUID(), ...claims })
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
      .setIssuedAt()
      .sign(key.privateKey);

  /** The outcome over REST: the OAuth2 error or token type and binding, and the DPoP-Nonce header. */
  async function viaRest(dpop: string) {
    const response = await authority.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials' },
      { authorization: basic('app', 'app-secret'), dpop },
    );
    const body = (await response.json()) as Record<string, any>;
    const nonce = response.headers.get('dpop-nonce') ?? undefined;
    if (response.status !== 200) return { status: response.status, outcome: { error: body.error }, nonce };
    return { status: 200, outcome: { tokenType: body.token_type, cnf: decodeJwt(body.access_token).cnf }, nonce };
  }

  /** The same over gRPC: the nonce in trailing metadata on an error, initial metadata on success. */
  function viaGrpc(dpop: string) {
    const metadata = new Metadata();
    metadata.set('authorization', basic('app', 'app-secret'));
    metadata.set('dpop', dpop);
    return new Promise<{ code: number; outcome: object; nonce?: string }>((resolve) => {
      let initial: string | undefined;
      const call = (grpc.raw as any).IssueToken(
        { grant_type: 'client_credentials' },
        metadata,
        { deadline: Date.now() + 10_000 },
        (error: ServiceError | null, response: any) => {
          if (error)
            resolve({
              code: error.code,
              outcome: { error: error.metadata.get('oauth-error')[0] },
              nonce: error.metadata.get('dpop-nonce')[0] as string | undefined,
            });
          else resolve({ code: 0, outcome: { tokenType: response.token_type, cnf: decodeJwt(response.access_token).cnf }, nonce: initial });
        },
      );
      call.on('metadata', (received: Metadata) => {
        initial = received.get('dpop-nonce')[0] as string | undefined;
      });
    });
  }

  it('a proof without a nonce: 400 / INVALID_ARGUMENT use_dpop_nonce, with the same current nonce', async () => {
    const rest = await viaRest(await proof());
    const rpc = await viaGrpc(await proof());
    assert.deepEqual(rest.outcome, { error: 'use_dpop_nonce' });
    assert.equal(rest.status, 400);
    assert.deepEqual(rpc.outcome, rest.outcome);
    assert.equal(rpc.code, GrpcStatus.INVALID_ARGUMENT);
    assert.match(rest.nonce ?? '', /^[A-Za-z0-9_-]{27}$/);
    assert.equal(rpc.nonce, rest.nonce);
  });

  it('a proof with the nonce: a DPoP token bound to the proof key over both; wrong proofs are invalid_dpop_proof over both', async () => {
    const nonce = (await viaRest(await proof())).nonce;
    const rest = await viaRest(await proof({ nonce }));
    const rpc = await viaGrpc(await proof({ nonce }));
    assert.deepEqual(rest, { status: 200, outcome: { tokenType: 'DPoP', cnf: { jkt } }, nonce: undefined });
    assert.deepEqual(rpc, { code: 0, outcome: rest.outcome, nonce: undefined });
    const replayed = await proof({ nonce });
    assert.equal((await viaRest(replayed)).status, 200);
    for (const [name, value] of [
      ['replayed (used over REST, then over gRPC)', replayed],
      ['wrong htm', await proof({ nonce, htm: 'GET' })],
      ['wrong htu', await proof({ nonce, htu: `${authority.config.issuer}${INTROSPECT_PATH}` })],
      ['garbage', 'not-a-proof'],
    ] as const) {
      const rpcAnswer = await viaGrpc(value);
      assert.deepEqual(rpcAnswer.outcome, { error: 'invalid_dpop_proof' }, name);
      assert.equal(rpcAnswer.code, GrpcStatus.INVALID_ARGUMENT, name);
      if (name !== 'replayed (used over REST, then over gRPC)') assert.deepEqual((await viaRest(value)).outcome, rpcAnswer.outcome, name);
    }
  });

  it('a proof with the previous nonce passes, and the current one comes back (DPoP-Nonce header / initial metadata)', async () => {
    // The previous slot's nonce, as any replica with this data plane token makes it (libs/core/dpop-nonce.ts).
    const nonces = new DpopNonces(nonceKey(undefined, 'parity-data-plane-token-0123', 'token-endpoint').key, 60, 'token-endpoint');
    // Not within 5 s of a slot's end, so previous and current stay what they are during the test.
    if (Date.now() % 60_000 > 55_000) await new Promise((done) => setTimeout(done, 60_000 - (Date.now() % 60_000) + 10));
    const previous = nonces.issue(Date.now() - 60_000);
    const rest = await viaRest(await proof({ nonce: previous }));
    const rpc = await viaGrpc(await proof({ nonce: previous }));
    const current = nonces.issue(Date.now());
    assert.deepEqual(rest, { status: 200, outcome: { tokenType: 'DPoP', cnf: { jkt } }, nonce: current });
    assert.deepEqual(rpc, { code: 0, outcome: rest.outcome, nonce: current });
  });
});
