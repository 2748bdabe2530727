import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { authorityConfigSchema } from '../libs/core/config';
import { createLogger, redactUrl } from '../libs/logging';
import { ADMIN_TOKEN, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { httpRequest } from './support/http';

const LIMITS = { maxConnections: 40, headersTimeout: 1000, requestTimeout: 3000, keepAliveTimeout: 1000, idleTimeout: 2000 };

function open(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => resolve(socket));
    socket.on('error', reject);
    // Read what the server sends (a 408 before it closes), or its FIN is never seen.
    socket.resume();
  });
}

const closed = (socket: Socket) => new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve())));

/** Slow and idle clients, too many clients: against both HTTP faces, with short limits. */
for (const face of ['token authority REST', 'ext-authz HTTP mode'] as const) {
  describe(`connection limits of the ${face}`, () => {
    let authority: TestAuthority;
    let extAuthz: TestExtAuthz | undefined;
    let url: string;
    before(async () => {
      authority = await startTestAuthority(face === 'token authority REST' ? { http: { host: '127.0.0.1', port: 0, limits: LIMITS } } : {});
      if (face === 'ext-authz HTTP mode') {
        extAuthz = await startTestExtAuthz(authority, { http: { host: '127.0.0.1', port: 0, limits: LIMITS } });
        url = extAuthz.url;
      } else {
        url = authority.url;
      }
    });
    after(async () => {
      await extAuthz?.close();
      await authority.stop();
    });

    it('closes silent, byte-a-second and idle keep-alive connections; a normal client is unaffected', async () => {
      const silent = await Promise.all(Array.from({ length: 10 }, () => open(url)));
      const slow = await Promise.all(Array.from({ length: 10 }, () => open(url)));
      const drip = setInterval(() => slow.forEach((socket) => socket.destroyed || socket.write('X')), 200);
      slow.forEach((socket) => socket.write('GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: '));
      const keepAlive = await open(url);
      keepAlive.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
      try {
        const started = Date.now();
        await Promise.all([...silent, ...slow, keepAlive].map(closed));
        const elapsed = Date.now() - started;
        assert.ok(elapsed < 6000, `all closed after ${elapsed} ms`);
        assert.equal((await httpRequest(`${url}/health`)).status, 200);
      } finally {
        clearInterval(drip);
        [...silent, ...slow, keepAlive].forEach((socket) => socket.destroy());
      }
    });

    if (face === 'ext-authz HTTP mode') {
      it('denies a path that names no policy with 403, not a 404', async () => {
        for (const path of ['/authz', '/authz/', '/authz//x', '/authz/%C3%A9/x', '/authz/a%20b', '/authz?x=1']) {
          const response = await httpRequest(`${url}${path}`);
          assert.equal(response.status, 403, path);
          assert.deepEqual(JSON.parse(response.body), { 'Otoroshi-Error': 'No authorization policy for this route' }, path);
        }
      });
    }

    it('caps open connections and serves again once they are gone', async () => {
      const sockets = await Promise.all(Array.from({ length: 60 }, () => open(url).catch(() => undefined)));
      await new Promise((done) => setTimeout(done, 200));
      const open_ = sockets.filter((socket) => socket && !socket.destroyed);
      assert.ok(open_.length <= LIMITS.maxConnections, `${open_.length} of 60 still open`);
      sockets.forEach((socket) => socket?.destroy());
      await new Promise((done) => setTimeout(done, 100));
      assert.equal((await httpRequest(`${url}/health`)).status, 200);
    });
  });
}

describe('request hygiene of the token authority', () => {
  let authority: TestAuthority;
  before(async () => {
    authority = await startTestAuthority();
    assert.equal((await authority.admin('POST', '/api/apikeys', { clientId: 'my-id', clientSecret: 'my-secret-1' })).status, 201);
  });
  after(() => authority.stop());

  it('refuses a JSON body that repeats a key, instead of taking the last one', async () => {
    for (const body of [
      '{"grant_type":"client_credentials","client_id":"nope","client_id":"my-id","client_secret":"my-secret-1"}',
      '{"grant_type":"client_credentials","client_id":"my-id","client_secret":"wrong","client_\\u0073ecret":"my-secret-1"}',
    ]) {
      const response = await httpRequest(`${authority.url}${TOKEN_PATH}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      assert.equal(response.status, 400, body);
      assert.equal(JSON.parse(response.body).error, 'invalid_request');
      assert.match(JSON.parse(response.body).error_description, /repeats the key 'client_(id|secret)'/);
    }
    // The same key in different objects, or inside strings, is no repetition.
    const admin = await httpRequest(`${authority.url}/api/apikeys`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
      body: '{"clientId":"nested","metadata":{"clientId":"x","a":"\\"clientId\\":"},"description":"{\\"clientId\\":1}"}',
    });
    assert.equal(admin.status, 201, admin.body);
    const repeated = await httpRequest(`${authority.url}/api/apikeys`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
      body: '{"clientId":"twice","enabled":true,"enabled":false}',
    });
    assert.equal(repeated.status, 400);
  });

  it('pages the API key list with a cursor and filters it', async () => {
    for (let index = 0; index < 25; index += 1) {
      const body = {
        clientId: `page-${String(index).padStart(2, '0')}`,
        enabled: index % 5 !== 0,
        tags: index % 2 ? ['odd'] : ['even'],
        authorizedEntities: index < 3 ? ['route_foo'] : [],
      };
      assert.equal((await authority.admin('POST', '/api/apikeys', body)).status, 201);
    }
    const seen: string[] = [];
    let next: string | undefined = '/api/apikeys?limit=10';
    let pages = 0;
    while (next && pages < 10) {
      const response: Response = await fetch(`${authority.url}${next}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(response.status, 200);
      const items = (await response.json()) as { clientId: string; clientSecret?: string; secretHash?: string }[];
      assert.ok(items.length <= 10);
      assert.ok(items.every((item) => item.secretHash === undefined && item.clientSecret === undefined));
      seen.push(...items.map((item) => item.clientId));
      next = /<([^>]+)>; rel="next"/.exec(response.headers.get('link') ?? '')?.[1];
      pages += 1;
    }
    assert.equal(seen.length, 27, 'every key once');
    assert.deepEqual(seen, [...seen].sort());
    const list = async (query: string) =>
      ((await authority.admin('GET', `/api/apikeys?${query}`)).body as { clientId: string }[]).map((item) => item.clientId);
    assert.equal((await list('')).length, 27, 'default page size 100');
    assert.deepEqual(await list('enabled=false'), ['page-00', 'page-05', 'page-10', 'page-15', 'page-20']);
    assert.equal((await list('tag=odd')).length, 12);
    assert.deepEqual(await list('authorizedEntity=route_foo'), ['page-00', 'page-01', 'page-02']);
    for (const bad of ['limit=0', 'limit=1001', 'limit=abc', 'enabled=maybe', 'unknown=1']) {
      assert.equal((await authority.admin('GET', `/api/apikeys?${bad}`)).status, 400, bad);
    }
  });

  it("quotes at most 64 characters of a client's input in an error, over REST and gRPC", async () => {
    const response = await authority.postForm(TOKEN_PATH, { grant_type: 'é'.repeat(8192) });
    const body = (await response.json()) as { error: string; error_description: string };
    assert.equal(body.error, 'unsupported_grant_type');
    assert.ok(body.error_description.length < 120, body.error_description);
    assert.match(body.error_description, /^grant_type 'é{64}…' is not supported/);
  });

  it('refuses text that has no UTF-8 form (a lone surrogate) in OAuth parameters and admin input', async () => {
    const token = await httpRequest(`${authority.url}${TOKEN_PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"grant_type":"client_credentials","scope":"\\ud800"}',
    });
    assert.equal(token.status, 400);
    assert.match(JSON.parse(token.body).error_description, /not well-formed Unicode/);
    for (const body of ['{"clientName":"a\\ud800b"}', '{"metadata":{"\\udc00":"x"}}', '{"tags":["\\ud800"]}']) {
      const created = await httpRequest(`${authority.url}/api/apikeys`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
        body,
      });
      assert.equal(created.status, 400, body);
      assert.match(created.body, /not well-formed Unicode/);
    }
  });

  it('refuses limits Node could not start with, naming the setting', () => {
    const result = authorityConfigSchema.safeParse({ http: { limits: { requestTimeout: 5000 } } });
    assert.equal(result.success, false);
    assert.match(JSON.stringify(result.error?.issues), /headersTimeout must not exceed requestTimeout/);
  });

  it('redacts credentials from logged URLs', async () => {
    assert.equal(
      redactUrl('/token?client_secret=s3cret&x=1&access_token=t&Token=u&client_%73ecret=v'),
      '/token?client_secret=[redacted]&x=1&access_token=[redacted]&Token=[redacted]&client_%73ecret=[redacted]',
    );
    assert.equal(redactUrl('/plain/path'), '/plain/path');
    // Through the real request log: a pino logger on a captured stream with the service's serializers.
    const lines: string[] = [];
    const logged = createLogger('test', 'info');
    const capture = pino(
      { serializers: (logged as unknown as { [key: symbol]: unknown })[pino.symbols.serializersSym] as never },
      new Writable({ write: (chunk, _encoding, done) => (lines.push(String(chunk)), done()) }),
    );
    capture.info({ req: { method: 'POST', url: '/x?client_secret=hunter2', headers: {}, socket: {} } }, 'incoming request');
    assert.doesNotMatch(lines.join(''), /hunter2/);
    assert.match(lines.join(''), /client_secret=\[redacted\]/);
  });
});
