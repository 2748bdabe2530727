import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { type EchoBackend, startEchoBackend } from '../services/echo-backend/server';
import { basic, startTestAuthority, type TestAuthority, TOKEN_PATH } from './support/authority';
import { accessTokenHash, type DpopProver, dpopProver } from './support/dpop';
import { startTestExtAuthz, TEST_POLICIES, type TestExtAuthz } from './support/ext-authz';
import { startNginx, type TestNginx } from './support/nginx';
import { FOO } from './support/proxy-request';
import { illegalResponseHeaders, rawHead, rawHttp, rawRequest, type RawHttpResponse } from './support/raw-http';

/*
 * An outsider's attack on what ext-authz's HTTP mode (services/ext-authz/http-mode.ts) and the
 * nginx template read since today: X-Original-Method / X-Original-URI, Host, DPoP, Authorization,
 * X-Forwarded-Proto and X-Forwarded-Client-Cert with bytes that are not ASCII or not UTF-8,
 * repeated and huge; request targets nginx hands on as they came (absolute-form, "?x", "//x");
 * and a bounded flood of bad DPoP proofs while good requests are timed. Every answer must be a
 * 400/401/403 (431 for a head over Node's limit) in the product's JSON, never a 500 or a hang.
 * Real processes over loopback: the token authority, ext-authz (in this process), nginx.
 */

const SECRET = 'attack-http-mode-secret-0123456789-abcdef';
/** Node's default limit on a request head. */
const NODE_MAX_HEADER_BYTES = 16 * 1024;

const HOSTILE: [label: string, bytes: Buffer][] = [
  ['"é"', Buffer.from('é')],
  ['"☕ café"', Buffer.from('☕ café')],
  ['DEL', Buffer.from([0x7f])],
  ['lone surrogate (WTF-8)', Buffer.from([0xed, 0xa0, 0x80])],
  ['invalid UTF-8 FF FE', Buffer.from([0xff, 0xfe])],
  ['invalid UTF-8 C3', Buffer.from([0xc3])],
  ['empty', Buffer.alloc(0)],
  ['"*"', Buffer.from('*')],
  ['"//evil.example/x"', Buffer.from('//evil.example/x')],
  ['"http://evil.example/x"', Buffer.from('http://evil.example/x')],
  ['"?x"', Buffer.from('?x')],
  ['"GET\\x00"', Buffer.from('GET\u0000')],
  ['"get"', Buffer.from('get')],
  ['"a@b:1/c"', Buffer.from('a@b:1/c')],
  ['"[::1"', Buffer.from('[::1')],
  ['8000 × "é"', Buffer.from('é'.repeat(4000))],
  ['15 000 × "a"', Buffer.from('a'.repeat(15_000))],
  ['17 000 × "a"', Buffer.from('a'.repeat(17_000))],
];

const DENIALS = [400, 401, 403];

/** A denial in the product's shape: the status, JSON {"Otoroshi-Error"} (or Fastify's {error}), legal header values. */
function assertDenied(response: RawHttpResponse, context: string, headBytes: number): void {
  const statuses = headBytes > NODE_MAX_HEADER_BYTES - 1024 ? [...DENIALS, 431] : DENIALS;
  assert.ok(statuses.includes(response.status), `${context}: status ${response.status} ${response.body.toString('latin1').slice(0, 300)}`);
  assert.deepEqual(illegalResponseHeaders(response), [], `${context}: illegal response header values`);
  if (response.status === 431 && response.body.length === 0) return;
  const body = JSON.parse(response.body.toString('utf8')) as Record<string, unknown>;
  assert.ok(typeof body['Otoroshi-Error'] === 'string' || typeof body.error === 'string', `${context}: body ${JSON.stringify(body)}`);
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];

describe('attack: ext-authz HTTP mode and nginx auth_request with hostile headers and targets', () => {
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  let echo: EchoBackend | undefined;
  let nginx: TestNginx | undefined;
  let prover: DpopProver;
  let dpopToken: string;
  let bearerToken: string;
  let port: number;
  let unexpected: () => Promise<number>;

  before(async () => {
    authority = await startTestAuthority();
    for (const [clientId, tokenBinding] of [
      ['attack-dpop', 'dpop'],
      ['attack-bearer', undefined],
    ] as const) {
      const created = await authority.admin('POST', '/api/apikeys', {
        clientId,
        clientSecret: SECRET,
        authorizedEntities: ['route_foo'],
        ...(tokenBinding && { tokenBinding }),
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
    }
    extAuthz = await startTestExtAuthz(authority, {
      policies: { ...TEST_POLICIES, foo: { extractors: ['bearer', 'basic'], authorizedEntities: ['route_foo'] } },
    });
    port = Number(new URL(extAuthz.url).port);
    await extAuthz.waitFor(
      () => extAuthz!.replica.apiKey('attack-dpop') !== undefined && extAuthz!.replica.apiKey('attack-bearer') !== undefined,
    );
    prover = await dpopProver();
    const issued = await authority.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials' },
      { authorization: basic('attack-dpop', SECRET), dpop: await proof({ htm: 'POST', htu: `${authority.url}${TOKEN_PATH}` }) },
    );
    dpopToken = ((await issued.json()) as { access_token: string }).access_token;
    const bearer = await authority.postForm(
      TOKEN_PATH,
      { grant_type: 'client_credentials' },
      { authorization: basic('attack-bearer', SECRET) },
    );
    bearerToken = ((await bearer.json()) as { access_token: string }).access_token;
    echo = await startEchoBackend(0, '127.0.0.1');
    nginx = await startNginx({ extAuthzUrl: extAuthz.url, echoUrl: echo.url, authorityUrl: authority.url });
    unexpected = async () => {
      const text = await (await fetch(`${extAuthz!.url}/metrics`)).text();
      return [...text.matchAll(/^\w*unexpected\w*\{[^}]*\} (\d+)/gm)].reduce((sum, match) => sum + Number(match[1]), 0);
    };
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
  const origin = () => `http://${FOO}:${nginx!.port}`;

  it('a good DPoP request straight to /authz/foo with X-Original-* passes (the baseline the hostile cases differ from)', async () => {
    const response = await rawRequest(port, '/authz/foo', [
      ['Host', `${FOO}:1`],
      ['X-Original-Method', 'DELETE'],
      ['X-Original-URI', '/api/items?x=1'],
      ['Authorization', `DPoP ${dpopToken}`],
      ['DPoP', await proof({ htm: 'DELETE', htu: `http://${FOO}:1/api/items`, ath: ath(dpopToken) })],
    ]);
    assert.equal(response.status, 200, response.body.toString());
  });

  // Each header in turn gets each hostile value; the others are those of a good DPoP request.
  const HEADERS = ['X-Original-URI', 'X-Original-Method', 'Host', 'DPoP', 'Authorization', 'X-Forwarded-Proto', 'X-Forwarded-Client-Cert'];
  for (const header of HEADERS) {
    it(`${header}: every hostile value, and the header twice, is a clean denial`, async (t: TestContext) => {
      const before = await unexpected();
      const cases: [string, [string, Buffer | string][]][] = [];
      for (const [label, bytes] of HOSTILE) cases.push([label, [[header, bytes]]]);
      cases.push([
        'twice',
        [
          [header, 'GET'],
          [header, '/api/items'],
        ],
      ]);
      cases.push(['100 times', Array.from({ length: 100 }, () => [header, 'x'] as [string, string])]);
      for (const [label, hostile] of cases) {
        const good: [string, Buffer | string][] = [
          ['Host', `${FOO}:1`],
          ['X-Original-Method', 'DELETE'],
          ['X-Original-URI', '/api/items'],
          ['Authorization', `DPoP ${dpopToken}`],
          ['DPoP', await proof({ htm: 'DELETE', htu: `http://${FOO}:1/api/items`, ath: ath(dpopToken) })],
        ];
        const names = new Set(hostile.map(([name]) => name.toLowerCase()));
        const headers = [...good.filter(([name]) => !names.has(name.toLowerCase())), ...hostile];
        const response = await rawRequest(port, '/authz/foo', headers);
        const headBytes = headers.reduce((total, [name, value]) => total + name.length + value.length + 4, 0);
        if (response.status === 200) {
          t.diagnostic(`${header} = ${label}: allowed`);
          // The token is not certificate-bound (XFCC is then not read for it), and no X-Forwarded-Proto is http, what the proof names.
          assert.ok(
            header === 'X-Forwarded-Client-Cert' || (header === 'X-Forwarded-Proto' && label === 'empty'),
            `${header} = ${label}: allowed a request that the proof does not name`,
          );
          continue;
        }
        assertDenied(response, `${header} = ${label}`, headBytes);
      }
      assert.equal(await unexpected(), before, 'an unexpected error was counted');
    });
  }

  it('a proof for GET / does not let DELETE through nginx with an absolute-form target whose $request_uri is "?x"', async () => {
    // nginx: `DELETE http://foo.oto.tools?x` has $request_uri "?x" (not "/..."), which ext-authz
    // took as "no X-Original-URI" and fell back to the subrequest's own GET /: the proof's htm was not checked.
    const target = `http://${FOO}:${nginx!.port}?x`;
    for (const method of ['DELETE', 'POST']) {
      const head = Buffer.from(
        `${method} ${target} HTTP/1.1\r\nHost: ${FOO}:${nginx!.port}\r\nAuthorization: DPoP ${dpopToken}\r\nDPoP: ${await proof({
          htm: 'GET',
          htu: `${origin()}/`,
          ath: ath(dpopToken),
        })}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
      );
      const response = await rawHead(nginx!.port, head);
      assert.equal(
        response.status,
        401,
        `${method} ${target} with a GET proof: ${response.body.toString()}\n${nginx!.errorLog().slice(-1000)}`,
      );
    }
    // The same request with a proof that names it passes: "?x" is the path "/" with a query.
    const head = Buffer.from(
      `DELETE ${target} HTTP/1.1\r\nHost: ${FOO}:${nginx!.port}\r\nAuthorization: DPoP ${dpopToken}\r\nDPoP: ${await proof({
        htm: 'DELETE',
        htu: `${origin()}/`,
        ath: ath(dpopToken),
      })}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
    );
    const allowed = await rawHead(nginx!.port, head);
    assert.equal(allowed.status, 200, allowed.body.toString());
  });

  it('nginx: absolute-form, "//", non-ASCII and invalid UTF-8 targets and Hosts, lowercase and NUL methods, HEAD and OPTIONS: no 500', async () => {
    const problems: string[] = [];
    const targets = [
      `http://${FOO}/api/x`,
      `http://${FOO}:${nginx!.port}`,
      '*',
      '//evil.example/x',
      '/\xff\xfe',
      '/%C3%A9?\xc3',
      '/a#frag',
      '?x',
    ];
    const methods = ['GET', 'HEAD', 'OPTIONS', 'DELETE', 'get', 'GET\x00', 'FOO_BAR'];
    const hosts = [`${FOO}:${nginx!.port}`, '\xc3', 'é.example', 'evil.example'];
    for (const target of targets) {
      for (const method of methods) {
        for (const host of hosts) {
          for (const credentials of [
            `Authorization: DPoP ${dpopToken}\r\nDPoP: ${await proof({ htm: 'GET', htu: `${origin()}/`, ath: ath(dpopToken) })}\r\n`,
            `Authorization: Bearer ${bearerToken}\r\n`,
            '',
          ]) {
            const head = Buffer.from(`${method} ${target} HTTP/1.1\r\nHost: ${host}\r\n${credentials}Connection: close\r\n\r\n`, 'latin1');
            const response = await rawHead(nginx!.port, head).catch((error: Error) => ({ status: -1, body: Buffer.from(error.message) }));
            const what = `${JSON.stringify(method)} ${JSON.stringify(target)} Host ${JSON.stringify(host)} ${credentials.slice(0, 20)}`;
            // The proof names GET <origin>/: only that request, or a bearer token, may pass.
            const named = method === 'GET' && target === origin() && host === `${FOO}:${nginx!.port}`;
            if (response.status === 200) {
              if (!credentials.startsWith('Authorization: Bearer') && !(named && credentials.startsWith('Authorization: DPoP')))
                problems.push(`${what}: allowed without a matching credential`);
            } else if (![400, 401, 403, 404, 405].includes(response.status))
              problems.push(`${what}: ${response.status} ${response.body.toString().slice(0, 200)}`);
          }
        }
      }
    }
    assert.deepEqual(problems, [], nginx!.errorLog().slice(-2000));
  });

  it('a flood of bad DPoP proofs (bounded) leaves good requests answered: their latency is reported', async (t: TestContext) => {
    const FLOOD = 3000;
    const CONCURRENCY = 16;
    const good = async () => {
      const started = process.hrtime.bigint();
      const response = await fetch(`${extAuthz!.url}/authz/foo/api/items`, {
        headers: { authorization: `Bearer ${bearerToken}`, host: FOO },
      });
      await response.arrayBuffer();
      assert.equal(response.status, 200);
      return Number(process.hrtime.bigint() - started) / 1e6;
    };
    const measure = async (count: number) => {
      const times: number[] = [];
      for (let i = 0; i < count; i++) times.push(await good());
      return times.sort((a, b) => a - b);
    };
    const baseline = await measure(300);
    // Proofs signed by another key, for another method, with garbage: each must be refused (401).
    const other = await dpopProver();
    const signed = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        i % 2
          ? other.proof({ htm: 'GET', htu: `http://${FOO}/api/items`, ath: ath(dpopToken) })
          : proof({ htm: 'PATCH', htu: `http://${FOO}/api/items`, ath: ath(dpopToken) }),
      ),
    );
    const bad = (i: number) =>
      i % 5 === 0 ? `${'e'.repeat(i % 300)}.${'\xff'.repeat(3)}.x` : i % 5 === 1 ? 'a'.repeat(8000) : signed[i % signed.length];
    let sent = 0;
    const statuses = new Map<number, number>();
    let flooding = true;
    const flood = Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (sent < FLOOD) {
          const i = sent++;
          const response = await rawHttp(port, {
            method: 'GET',
            target: '/authz/foo/api/items',
            headers: [
              ['Host', FOO],
              ['Authorization', `DPoP ${dpopToken}`],
              ['DPoP', Buffer.from(bad(i), 'latin1')],
            ],
          });
          statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
        }
      }),
    ).finally(() => (flooding = false));
    const during: number[] = [];
    const floodStarted = Date.now();
    while (flooding && during.length < 100_000) during.push(await good());
    await flood;
    const floodMs = Date.now() - floodStarted;
    during.sort((a, b) => a - b);
    assert.deepEqual([...statuses], [[401, FLOOD]], 'every bad proof is a 401');
    const figures = (times: number[]) =>
      `p50 ${percentile(times, 50).toFixed(2)} ms, p99 ${percentile(times, 99).toFixed(2)} ms, max ${times[times.length - 1].toFixed(1)} ms (n=${times.length})`;
    t.diagnostic(`good Check (HTTP mode, bearer) alone: ${figures(baseline)}`);
    t.diagnostic(
      `good Check during ${FLOOD} bad DPoP proofs (${CONCURRENCY} at a time, ${floodMs} ms, ${Math.round((FLOOD * 1000) / floodMs)}/s): ${figures(during)}`,
    );
    assert.ok(during.length > 0, 'no good request was answered during the flood');
    assert.ok(during[during.length - 1] < 2000, `a good request waited ${during[during.length - 1]} ms`);
  });
});
