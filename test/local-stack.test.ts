import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLocalStack } from './support/local-stack';
import { EXT_AUTHZ_NODE_FLAGS } from '../services/ext-authz/node-flags';
import { FOO, send } from './support/proxy-request';

const ROOT = path.resolve(__dirname, '..', '..');
const ADMIN_TOKEN = 'local-stack-admin-token-0123456789';

/** Pids of `root`'s descendants (from /proc), to prove nothing is left behind. */
function descendants(root: number): number[] {
  const { readdirSync, readFileSync } = require('node:fs') as typeof import('node:fs');
  const parents = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const found: number[] = [];
  const walk = (pid: number) => {
    for (const [child, parent] of parents) {
      if (parent !== pid) continue;
      found.push(child);
      walk(child);
    }
  };
  walk(root);
  return found;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** `npm start`'s stack (dist/services/local-stack/main.js) with a real Envoy, on free ports. */
describe('the local stack (npm start) with Envoy on PATH', () => {
  let stack: ChildProcess;
  let output = () => '';
  let base = '';
  let dataDir = '';

  before(async () => {
    ({ stack, base, dataDir, output } = await startLocalStack({ root: ROOT, adminToken: ADMIN_TOKEN, dataDirPrefix: 'local-stack-' }));
  });

  after(() => {
    if (stack && stack.exitCode === null) stack.kill('SIGKILL');
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('says where each part listens, Envoy first', () => {
    assert.match(output(), /Envoy 1\.\d+\.\d+: http:\/\/oauth\.oto\.tools:\d+ \(token authority\) and http:\/\/foo\.oto\.tools:\d+/);
    assert.match(output(), /token authority: REST http:\/\/127\.0\.0\.1:\d+, gRPC/);
    assert.match(output(), /ext-authz: Envoy Check/);
    assert.match(output(), /HTTPS: https:\/\/oauth\.oto\.tools:\d+ and https:\/\/foo\.oto\.tools:\d+, with a self-signed certificate/);
    assert.match(output(), /admin console: http:\/\/oauth\.oto\.tools:\d+\/console/);
  });

  it('starts ext-authz with its heap bounds (services/ext-authz/node-flags.ts), and V8 took them', async () => {
    const { readFileSync } = require('node:fs') as typeof import('node:fs');
    const extAuthz = descendants(stack.pid!)
      .map((pid) => ({ pid, argv: readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0') }))
      .find(({ argv }) => argv.some((arg) => arg.endsWith(path.join('ext-authz', 'main.js'))));
    assert.ok(extAuthz, 'an ext-authz process under the stack');
    assert.deepEqual(extAuthz.argv.slice(1, 1 + EXT_AUTHZ_NODE_FLAGS.length), [...EXT_AUTHZ_NODE_FLAGS]);
    // V8's default young generation alone would be 32 MB resident before any load (2 x 2 MB here).
    const httpPort = /ext-authz: Envoy Check \(gRPC\) [\d.]+:\d+, HTTP mode http:\/\/127\.0\.0\.1:(\d+)/.exec(output())?.[1];
    const metrics = { body: await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text() };
    const newSpace = Number(/^ext_authz_nodejs_heap_space_size_total_bytes\{space="new"\} (\d+)/m.exec(metrics.body)?.[1]);
    assert.ok(newSpace > 0 && newSpace <= 4 * 1024 * 1024, `new space ${newSpace} bytes`);
  });

  it('serves the admin console through Envoy at oauth.oto.tools/console', async () => {
    const page = await send(base, '/console/', { host: 'oauth.oto.tools:8080' });
    assert.equal(page.status, 200);
    assert.match(String(page.headers['content-security-policy']), /script-src 'self'/);
    assert.match(page.body, /<script type="module" crossorigin src="\/console\/assets\/index-[^"]+\.js"><\/script>/);
  });

  it('serves the tutorial through Envoy, with the admin token given and nothing else set', async () => {
    const json = { 'content-type': 'application/json' };
    assert.equal((await send(base, '/.well-known/otoroshi/oauth/jwks.json', { host: 'oauth.oto.tools:8080' })).status, 200);
    const created = await send(base, '/api/apikeys', {
      host: 'oauth.oto.tools:8080',
      method: 'POST',
      headers: { ...json, authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify({ clientId: 'my-id', clientSecret: 'my-secret', authorizedEntities: ['route_foo'] }),
    });
    assert.equal(created.status, 201, created.body);
    const issued = await send(base, '/.well-known/otoroshi/oauth/token', {
      host: 'oauth.oto.tools:8080',
      method: 'POST',
      headers: json,
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: 'my-id', client_secret: 'my-secret' }),
    });
    assert.equal(issued.status, 200, issued.body);
    const token = (JSON.parse(issued.body) as { access_token: string }).access_token;
    const denied = await send(base, '/', { host: `${FOO}:8080` });
    assert.equal(denied.status, 401);
    assert.equal(denied.body, JSON.stringify({ 'Otoroshi-Error': 'No ApiKey provided' }));
    // ext-authz follows the authority over DeltaWatch: the new key arrives within a second.
    let allowed = await send(base, '/', { host: `${FOO}:8080`, headers: { authorization: `Bearer ${token}` } });
    for (let attempt = 0; allowed.status !== 200 && attempt < 20; attempt += 1) {
      await new Promise((done) => setTimeout(done, 100));
      allowed = await send(base, '/', { host: `${FOO}:8080`, headers: { authorization: `Bearer ${token}` } });
    }
    assert.equal(allowed.status, 200, allowed.body);
    assert.equal((JSON.parse(allowed.body) as { headers: Record<string, string> }).headers['x-client-id'], 'my-id');
  });

  it('stops every part on SIGTERM, leaving no process behind', async () => {
    const parts = descendants(stack.pid!);
    assert.ok(parts.length >= 4, `${parts.length} processes under the stack`);
    const exited = new Promise<number | null>((resolve) => stack.once('exit', (code) => resolve(code)));
    stack.kill('SIGTERM');
    assert.equal(await exited, 0, output().slice(-2000));
    await new Promise((done) => setTimeout(done, 200));
    assert.deepEqual(parts.filter(alive), [], 'every part has exited');
  });
});
