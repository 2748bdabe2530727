import { status as grpcStatus } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { basic, INTROSPECT_PATH, REVOKE_PATH, startTestAuthority, type TestAuthority, TOKEN_PATH } from './support/authority';
import { startTestExtAuthz } from './support/ext-authz';
import { type TokenAuthorityClient, tokenAuthorityClient } from './support/grpc';
import { httpRequest } from './support/http';
import { growth, type Scrape, scrapeMetrics, series } from './support/metrics';

const SECRET = 'a-secret-123';
const TOKENS = 'token_authority_token_requests_total';
const AUTH_FAILURES = 'token_authority_client_auth_failures_total';
const INTROSPECTIONS = 'token_authority_introspections_total';
const REVOCATIONS = 'token_authority_revocations_total';
const HTTP_COUNT = 'token_authority_http_request_duration_seconds_count';
const GRPC_COUNT = 'token_authority_grpc_request_duration_seconds_count';
const TOKEN_SERVICE = 'token_authority.v1.TokenAuthority';

describe('token authority metrics', () => {
  let authority: TestAuthority;
  let grpc: TokenAuthorityClient;

  before(async () => {
    authority = await startTestAuthority();
    grpc = tokenAuthorityClient(authority.grpcAddress);
    assert.equal((await authority.admin('POST', '/api/keypairs', { id: 'metrics-es', algorithm: 'ES256' })).status, 201);
    const keys = [
      { clientId: 'metrics-ok', clientSecret: SECRET },
      { clientId: 'metrics-es', clientSecret: SECRET, metadata: { 'jwt-sign-keypair': 'metrics-es' } },
      { clientId: 'metrics-disabled', clientSecret: SECRET, enabled: false },
      { clientId: 'metrics-expired', clientSecret: SECRET, validUntil: Date.now() - 60_000 },
    ];
    for (const key of keys) assert.equal((await authority.admin('POST', '/api/apikeys', key)).status, 201, key.clientId);
  });
  after(async () => {
    grpc?.close();
    await authority?.stop();
  });

  const token = (authorization: string | undefined, form: Record<string, string> = {}) =>
    authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials', ...form }, authorization ? { authorization } : {});
  const grpcToken = (clientId: string, clientSecret: string) =>
    grpc.call('IssueToken', { grant_type: 'client_credentials', client: { client_id: clientId, client_secret: clientSecret } });

  it('counts every token request, REST and gRPC alike, by algorithm and outcome, and each client authentication failure by reason', async () => {
    const before: Scrape = await scrapeMetrics(authority.url);
    // Issued: two over REST, two over gRPC (one of them signed by the ES256 key pair).
    assert.equal((await token(basic('metrics-ok', SECRET))).status, 200);
    assert.equal((await token(undefined, { client_id: 'metrics-ok', client_secret: SECRET })).status, 200);
    assert.equal((await grpcToken('metrics-ok', SECRET)).ok, true);
    assert.equal((await grpcToken('metrics-es', SECRET)).ok, true);
    // Refused: each client authentication failure once, over either transport.
    const refusals: [string, number, () => Promise<number>][] = [
      ['unknown_client', 401, async () => (await token(basic('nobody', SECRET))).status],
      [
        'invalid_secret',
        grpcStatus.UNAUTHENTICATED,
        async () => {
          const answer = await grpcToken('metrics-ok', 'wrong-secret');
          return answer.ok ? 0 : answer.error.code;
        },
      ],
      ['disabled', 401, async () => (await token(basic('metrics-disabled', SECRET))).status],
      ['expired', 401, async () => (await token(basic('metrics-expired', SECRET))).status],
      ['no_credentials', 401, async () => (await token(undefined)).status],
      ['malformed', 400, async () => (await token('Basic !!!not-base64')).status],
      ['multiple_methods', 400, async () => (await token(basic('metrics-ok', SECRET), { client_secret: SECRET })).status],
    ];
    for (const [reason, expected, send] of refusals) assert.equal(await send(), expected, reason);
    assert.equal(
      (await authority.postForm(TOKEN_PATH, { grant_type: 'password' }, { authorization: basic('metrics-ok', SECRET) })).status,
      400,
    );
    const after = await scrapeMetrics(authority.url);

    const grew = (key: string) => growth(before, after, key);
    assert.equal(grew(series(TOKENS, { algorithm: 'RS256', outcome: 'issued' })), 3);
    assert.equal(grew(series(TOKENS, { algorithm: 'ES256', outcome: 'issued' })), 1);
    assert.equal(grew(series(TOKENS, { algorithm: 'none', outcome: 'invalid_client' })), 5);
    assert.equal(grew(series(TOKENS, { algorithm: 'none', outcome: 'invalid_request' })), 2);
    assert.equal(grew(series(TOKENS, { algorithm: 'none', outcome: 'unsupported_grant_type' })), 1);
    for (const [reason] of refusals) assert.equal(grew(series(AUTH_FAILURES, { endpoint: 'token', reason })), 1, reason);
    // Latency: one observation per request, by route template and status class, and by gRPC method and code.
    const tokenRoute = (statusClass: string) =>
      series(HTTP_COUNT, { method: 'POST', route: '/.well-known/otoroshi/oauth/token', status_class: statusClass });
    assert.equal(grew(tokenRoute('2xx')), 2);
    assert.equal(grew(tokenRoute('4xx')), 7);
    assert.equal(grew(series(GRPC_COUNT, { service: TOKEN_SERVICE, method: 'IssueToken', code: 'OK' })), 2);
    assert.equal(grew(series(GRPC_COUNT, { service: TOKEN_SERVICE, method: 'IssueToken', code: 'UNAUTHENTICATED' })), 1);
    // The scrape before is itself a request.
    assert.equal(grew(series(HTTP_COUNT, { method: 'GET', route: '/metrics', status_class: '2xx' })), 1);
  });

  it('counts introspections and revocations by outcome', async () => {
    const issued = (await (await token(basic('metrics-ok', SECRET))).json()) as { access_token: string };
    const before = await scrapeMetrics(authority.url);
    const auth = { authorization: basic('metrics-ok', SECRET) };
    assert.equal(((await (await authority.postForm(INTROSPECT_PATH, { token: issued.access_token }, auth)).json()) as any).active, true);
    const garbage = await grpc.call('IntrospectToken', {
      token: 'not-a-token',
      client: { client_id: 'metrics-ok', client_secret: SECRET },
    });
    assert.equal(garbage.ok && garbage.response.active, false);
    assert.equal((await authority.postForm(INTROSPECT_PATH, { token: issued.access_token })).status, 401);
    assert.equal((await authority.postForm(REVOKE_PATH, { token: issued.access_token }, auth)).status, 200);
    assert.equal(
      (await grpc.call('RevokeToken', { token: 'not-a-token', client: { client_id: 'metrics-ok', client_secret: SECRET } })).ok,
      true,
    );
    assert.equal(
      (await authority.postForm(REVOKE_PATH, { token: issued.access_token }, { authorization: basic('metrics-ok', 'wrong') })).status,
      401,
    );
    const after = await scrapeMetrics(authority.url);
    const grew = (key: string) => growth(before, after, key);
    assert.equal(grew(series(INTROSPECTIONS, { outcome: 'active' })), 1);
    assert.equal(grew(series(INTROSPECTIONS, { outcome: 'inactive' })), 1);
    assert.equal(grew(series(INTROSPECTIONS, { outcome: 'invalid_client' })), 1);
    assert.equal(grew(series(AUTH_FAILURES, { endpoint: 'introspect', reason: 'no_credentials' })), 1);
    assert.equal(grew(series(REVOCATIONS, { outcome: 'revoked' })), 1);
    assert.equal(grew(series(REVOCATIONS, { outcome: 'ignored' })), 1);
    assert.equal(grew(series(REVOCATIONS, { outcome: 'invalid_client' })), 1);
    assert.equal(grew(series(AUTH_FAILURES, { endpoint: 'revoke', reason: 'invalid_secret' })), 1);
    assert.equal(grew(series(GRPC_COUNT, { service: TOKEN_SERVICE, method: 'IntrospectToken', code: 'OK' })), 1);
    assert.equal(grew(series(GRPC_COUNT, { service: TOKEN_SERVICE, method: 'RevokeToken', code: 'OK' })), 1);
  });

  it('shows when each scheduled key pair switches next, and how many keys each publishes', async () => {
    const created = await authority.admin('POST', '/api/keypairs', {
      id: 'metrics-rotating',
      algorithm: 'EdDSA',
      rotation: { rotateEvery: 86_400, publishAhead: 3_600 },
    });
    assert.equal(created.status, 201);
    const scrape = await scrapeMetrics(authority.url);
    const switchAt = scrape.get(series('token_authority_key_pair_next_switch_timestamp_seconds', { key_pair: 'metrics-rotating' }));
    assert.equal(switchAt, created.body.nextRotation.switchAt / 1000);
    assert.equal(
      scrape.get(series('token_authority_key_pair_next_switch_timestamp_seconds', { key_pair: 'metrics-es' })),
      undefined,
      'no schedule',
    );
    assert.equal(scrape.get(series('token_authority_key_pair_published_keys', { key_pair: 'metrics-rotating' })), 1);
    assert.equal((await authority.admin('POST', '/api/keypairs/metrics-es/rotate', {})).status, 200);
    assert.equal(
      (await scrapeMetrics(authority.url)).get(series('token_authority_key_pair_published_keys', { key_pair: 'metrics-es' })),
      2,
    );
  });

  it('counts DeltaWatch streams when they open and when they end', async () => {
    const watch = (event: 'opened' | 'closed', code?: string) =>
      series(`token_authority_grpc_streams_${event}_total`, {
        service: 'token_authority.v1.AuthorityWatch',
        method: 'DeltaWatch',
        ...(code ? { code } : {}),
      });
    const before = await scrapeMetrics(authority.url);
    const extAuthz = await startTestExtAuthz(authority);
    const open = await scrapeMetrics(authority.url);
    assert.equal(growth(before, open, watch('opened')), 1);
    assert.equal(open.get('token_authority_watch_streams'), 1);
    await extAuthz.close();
    const deadline = Date.now() + 5000;
    let closed = open;
    while (growth(before, closed, watch('closed', 'CANCELLED')) === 0 && Date.now() < deadline) {
      await new Promise((done) => setTimeout(done, 20));
      closed = await scrapeMetrics(authority.url);
    }
    assert.equal(growth(before, closed, watch('closed', 'CANCELLED')), 1);
  });

  it('keeps label values bounded: 1,000 random URLs add no label value', async () => {
    const routeLabels = (scrape: Scrape) =>
      new Set([...scrape.keys()].filter((key) => key.startsWith(HTTP_COUNT)).map((key) => /route="([^"]*)"/.exec(key)?.[1]));
    const before = await scrapeMetrics(authority.url);
    const methods = ['GET', 'POST', 'PUT', 'DELETE', 'PROPFIND', 'PATCH'];
    const prefixes = ['/', '/api/apikeys/', '/.well-known/otoroshi/oauth/', '/api/keypairs/', '/metrics/'];
    const marks: string[] = [];
    const started = Date.now();
    for (let batch = 0; batch < 50 && Date.now() - started < 60_000; batch++) {
      await Promise.all(
        Array.from({ length: 20 }, async (_, index) => {
          const mark = `rnd${randomBytes(6).toString('hex')}`;
          marks.push(mark);
          const path = `${prefixes[(batch + index) % prefixes.length]}${mark}/${encodeURIComponent(randomBytes(4).toString('latin1'))}?q=${mark}`;
          const answer = await httpRequest(`${authority.url}${path}`, { method: methods[index % methods.length] });
          assert.ok(answer.status < 500, `${path}: ${answer.status}`);
        }),
      );
    }
    assert.equal(marks.length, 1000);
    const after = await scrapeMetrics(authority.url);
    const text = [...after.keys()].join('\n');
    for (const mark of marks) assert.equal(text.includes(mark), false, `${mark} became a label value`);
    const added = [...routeLabels(after)].filter((label) => !routeLabels(before).has(label));
    assert.ok(
      added.every((label) => label === '(unmatched)' || label?.endsWith('/*') || label?.includes('/:')),
      `only route templates and (unmatched): ${added.join(', ')}`,
    );
    assert.ok(routeLabels(after).size <= 20, `${routeLabels(after).size} route labels`);
    const methodLabels = new Set(
      [...after.keys()].filter((key) => key.startsWith(HTTP_COUNT)).map((key) => /method="([^"]*)"/.exec(key)?.[1]),
    );
    assert.equal(methodLabels.has('PROPFIND'), false);
    assert.equal(methodLabels.has('OTHER'), true);
  });
});
