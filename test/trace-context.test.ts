import { type Client, credentials, makeGenericClientConstructor, type ServiceError } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseTraceparent } from '../libs/observability/trace-context';
import { startEchoBackend } from '../services/echo-backend/server';
import { loadAuthorizationService } from '../services/ext-authz/envoy-check';
import { ADMIN_TOKEN, basic, TOKEN_PATH } from './support/authority';
import { ChildService, type OutputMark } from './support/child-service';
import { startEnvoy } from './support/envoy';
import { tokenAuthorityClient } from './support/grpc';
import { httpRequest } from './support/http';
import { freePort } from './support/ports';
import { FOO, send } from './support/proxy-request';

const AUTHORITY_MAIN = resolve(__dirname, '../services/token-authority/main.js');
const EXT_AUTHZ_MAIN = resolve(__dirname, '../services/ext-authz/main.js');
const EXT_AUTHZ_CONFIG = resolve(__dirname, '../../config/ext-authz.yaml');
const CLIENT = { id: 'trace-app', secret: 'trace-secret-123' };

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_ID = '00f067aa0ba902b7';
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_ID}-01`;

/** Values a receiver must ignore (W3C Trace Context §3.2 and §4.3). */
const INVALID: Record<string, string> = {
  'upper-case hex': `00-${TRACE_ID.toUpperCase()}-${PARENT_ID}-01`,
  'non-hex character': `00-${TRACE_ID.slice(0, -1)}g-${PARENT_ID}-01`,
  'all-zero trace-id': `00-${'0'.repeat(32)}-${PARENT_ID}-01`,
  'all-zero parent-id': `00-${TRACE_ID}-${'0'.repeat(16)}-01`,
  'short trace-id': `00-${TRACE_ID.slice(1)}-${PARENT_ID}-01`,
  'version 00 with more after it': `${TRACEPARENT}-extra`,
  'version ff': `ff-${TRACE_ID}-${PARENT_ID}-01`,
  'a later version not followed by a dash': `01-${TRACE_ID}-${PARENT_ID}-01x`,
  'two headers joined': `${TRACEPARENT}, ${TRACEPARENT}`,
  'non-ASCII': `00-${TRACE_ID.slice(0, -1)}é-${PARENT_ID}-01`,
};

const AuthorizationClient = makeGenericClientConstructor(loadAuthorizationService() as never, 'Authorization');

interface LogLine {
  msg?: string;
  trace_id?: string;
  span_id?: string;
  [field: string]: unknown;
}

function logLines(service: ChildService, mark: OutputMark): LogLine[] {
  return service
    .stdoutSince(mark)
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as LogLine);
}

/** The log line with message `msg` written since `mark`, waiting a little for it to be flushed. */
async function logLine(service: ChildService, mark: OutputMark, msg: string): Promise<LogLine> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const found = logLines(service, mark).filter((line) => line.msg === msg);
    if (found.length === 1) return found[0];
    if (found.length > 1 || Date.now() > deadline)
      throw new Error(`${found.length} '${msg}' lines in:\n${service.stdoutSince(mark)}\n${service.stderrSince(mark)}`);
    await new Promise((done) => setTimeout(done, 20));
  }
}

const healthy = async (port: number) => (await httpRequest(`http://127.0.0.1:${port}/health`)).status === 200;

describe('W3C Trace Context in the logs', () => {
  const ports = { http: 0, grpc: 0, authzHttp: 0, authzGrpc: 0 };
  const dataDir = mkdtempSync(join(tmpdir(), 'ta-trace-'));
  let authority: ChildService;
  let extAuthz: ChildService;
  let accessToken = '';
  const authorityUrl = () => `http://127.0.0.1:${ports.http}`;

  before(async () => {
    for (const name of Object.keys(ports) as (keyof typeof ports)[]) ports[name] = await freePort();
    const base = { PATH: process.env.PATH ?? '', LOG_LEVEL: 'debug' };
    authority = new ChildService(
      'token-authority',
      AUTHORITY_MAIN,
      {
        ...base,
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(ports.http),
        GRPC_HOST: '127.0.0.1',
        GRPC_PORT: String(ports.grpc),
        DATA_DIR: dataDir,
        ADMIN_TOKEN,
        LOG_REQUESTS: 'true',
      },
      () => healthy(ports.http),
    );
    await authority.start();
    const created = await httpRequest(`${authorityUrl()}/api/apikeys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ clientId: CLIENT.id, clientSecret: CLIENT.secret, authorizedEntities: ['route_foo'] }),
    });
    assert.equal(created.status, 201, created.body);
    extAuthz = new ChildService(
      'ext-authz',
      EXT_AUTHZ_MAIN,
      {
        ...base,
        CONFIG_FILE: EXT_AUTHZ_CONFIG,
        GRPC_HOST: '127.0.0.1',
        GRPC_PORT: String(ports.authzGrpc),
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(ports.authzHttp),
        AUTHORITY_GRPC_URL: `127.0.0.1:${ports.grpc}`,
        AUTHORITY_TOKEN: ADMIN_TOKEN,
      },
      () => healthy(ports.authzHttp),
    );
    await extAuthz.start();
    accessToken = (JSON.parse((await issueOverRest()).body) as { access_token: string }).access_token;
    // ext-authz has the key once it allows its token.
    const deadline = Date.now() + 5000;
    while ((await checkOverHttp(undefined)).status !== 200) {
      if (Date.now() > deadline) throw new Error('ext-authz never learned the API key');
      await new Promise((done) => setTimeout(done, 50));
    }
  });

  after(async () => {
    await extAuthz?.stop();
    await authority?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const withTrace = (traceparent: string | undefined): Record<string, string> => (traceparent === undefined ? {} : { traceparent });
  const issueOverRest = (traceparent?: string, secret = CLIENT.secret) =>
    httpRequest(`${authorityUrl()}${TOKEN_PATH}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: basic(CLIENT.id, secret),
        ...withTrace(traceparent),
      },
      body: 'grant_type=client_credentials',
    });
  const checkOverHttp = (traceparent: string | undefined, authorization = `Bearer ${accessToken}`) =>
    httpRequest(`http://127.0.0.1:${ports.authzHttp}/authz/foo/some/path`, {
      headers: { ...(authorization ? { authorization } : {}), ...withTrace(traceparent) },
    });
  const checkOverGrpc = (traceparent: string | undefined): Promise<{ status: { code: number } }> => {
    const client = new AuthorizationClient(`127.0.0.1:${ports.authzGrpc}`, credentials.createInsecure()) as Client &
      Record<string, (...args: unknown[]) => void>;
    const request = {
      attributes: {
        request: {
          http: { method: 'GET', path: '/', host: FOO, headers: { authorization: `Bearer ${accessToken}`, ...withTrace(traceparent) } },
        },
        context_extensions: { route: 'foo' },
      },
    };
    return new Promise((done, fail) =>
      client.Check(request, { deadline: Date.now() + 5000 }, (error: ServiceError | null, response: { status: { code: number } }) => {
        client.close();
        if (error) fail(error);
        else done(response);
      }),
    );
  };
  const issueOverGrpc = async (traceparent: string | undefined) => {
    const client = tokenAuthorityClient(`127.0.0.1:${ports.grpc}`);
    try {
      return await client.call(
        'IssueToken',
        { grant_type: 'client_credentials', client: { client_id: CLIENT.id, client_secret: CLIENT.secret } },
        withTrace(traceparent),
      );
    } finally {
      client.close();
    }
  };

  const assertTraced = (line: LogLine, traceId = TRACE_ID, spanId = PARENT_ID) => {
    assert.equal(line.trace_id, traceId, JSON.stringify(line));
    assert.equal(line.span_id, spanId, JSON.stringify(line));
  };

  it('the authority over REST: the token line and a refusal carry the caller trace_id and span_id', async () => {
    let mark = authority.mark();
    assert.equal((await issueOverRest(TRACEPARENT)).status, 200);
    assertTraced(await logLine(authority, mark, 'token issued'));
    // Fastify's request lines (log.requests) too, each field once.
    for (const msg of ['incoming request', 'request completed']) assertTraced(await logLine(authority, mark, msg));
    const raw = authority.stdoutSince(mark).split('\n');
    assert.ok(raw.filter((line) => line.includes('"msg":"request completed"')).every((line) => line.split('"trace_id"').length === 2));
    mark = authority.mark();
    assert.equal((await issueOverRest(TRACEPARENT, 'wrong-secret')).status, 401);
    // A refusal is logged at info, the default level; the secret is not.
    const refusal = await logLine(authority, mark, 'client authentication failed');
    assertTraced(refusal);
    assert.equal(refusal.level, 30);
    assert.equal(refusal.reason, 'invalid_secret');
    assert.equal(authority.stdoutSince(mark).includes('wrong-secret'), false);
  });

  it('the authority over gRPC: traceparent metadata', async () => {
    const mark = authority.mark();
    assert.equal((await issueOverGrpc(TRACEPARENT)).ok, true);
    assertTraced(await logLine(authority, mark, 'token issued'));
  });

  it('ext-authz in HTTP mode: the decision line, allowed or denied', async () => {
    let mark = extAuthz.mark();
    assert.equal((await checkOverHttp(TRACEPARENT)).status, 200);
    assertTraced(await logLine(extAuthz, mark, 'request allowed'));
    mark = extAuthz.mark();
    assert.equal((await checkOverHttp(TRACEPARENT, '')).status, 401);
    const denial = await logLine(extAuthz, mark, 'request denied');
    assertTraced(denial);
    assert.equal(denial.level, 30);
  });

  it("ext-authz's Envoy Check: the traceparent among CheckRequest's headers", async () => {
    const mark = extAuthz.mark();
    assert.equal((await checkOverGrpc(TRACEPARENT)).status.code, 0);
    assertTraced(await logLine(extAuthz, mark, 'request allowed'));
  });

  it('a later version is read by its version 00 fields (§4.3)', async () => {
    const future = `cc-${TRACE_ID}-${PARENT_ID}-01-what-comes-next`;
    assert.deepEqual(parseTraceparent(future), { traceId: TRACE_ID, parentId: PARENT_ID, flags: '01' });
    const mark = extAuthz.mark();
    assert.equal((await checkOverHttp(future)).status, 200);
    assertTraced(await logLine(extAuthz, mark, 'request allowed'));
  });

  for (const [name, value] of Object.entries(INVALID)) {
    it(`an invalid traceparent (${name}) is ignored and the request served as without one`, async () => {
      assert.equal(parseTraceparent(value), undefined);
      const authorityMark = authority.mark();
      assert.equal((await issueOverRest(value)).status, 200);
      assert.equal((await logLine(authority, authorityMark, 'token issued')).trace_id, undefined);
      if (/^[\x20-\x7e]*$/.test(value)) {
        // gRPC metadata values are printable ASCII: the client itself refuses anything else.
        const grpcMark = authority.mark();
        assert.equal((await issueOverGrpc(value)).ok, true);
        assert.equal((await logLine(authority, grpcMark, 'token issued')).trace_id, undefined);
      }
      let mark = extAuthz.mark();
      assert.equal((await checkOverHttp(value)).status, 200);
      assert.equal((await logLine(extAuthz, mark, 'request allowed')).trace_id, undefined);
      mark = extAuthz.mark();
      assert.equal((await checkOverGrpc(value)).status.code, 0);
      assert.equal((await logLine(extAuthz, mark, 'request allowed')).trace_id, undefined);
    });
  }

  const envoyPath = `/tmp/envoy-venv/bin:${process.env.PATH}`;
  const envoyFound = spawnSync('envoy', ['--version'], { env: { ...process.env, PATH: envoyPath }, timeout: 10_000 }).status === 0;
  it('through a real Envoy: the client traceparent reaches ext-authz', { skip: envoyFound ? false : 'envoy is not on PATH' }, async () => {
    process.env.PATH = envoyPath;
    const echo = await startEchoBackend(0, '127.0.0.1');
    const endpoint = (port: number) => ({ address: '127.0.0.1', port });
    const envoy = await startEnvoy('envoy.yaml', {
      token_authority: endpoint(ports.http),
      token_authority_grpc: endpoint(ports.grpc),
      echo: endpoint(Number(new URL(echo.url).port)),
      ext_authz: endpoint(ports.authzGrpc),
    });
    try {
      const traceId = `${'a'.repeat(31)}b`;
      const mark = extAuthz.mark();
      const answer = await send(envoy.url, '/hello', {
        host: FOO,
        headers: { authorization: `Bearer ${accessToken}`, traceparent: `00-${traceId}-${PARENT_ID}-00` },
      });
      assert.equal(answer.status, 200, answer.body);
      assertTraced(await logLine(extAuthz, mark, 'request allowed'), traceId);
    } finally {
      await envoy.stop();
      await echo.close();
    }
  });
});
