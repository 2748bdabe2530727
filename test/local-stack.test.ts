import assert from 'node:assert/strict';
import { type ChildProcess, spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLocalStack } from './support/local-stack';
import { EXT_AUTHZ_ENV, EXT_AUTHZ_NODE_FLAGS } from '../services/ext-authz/node-flags';
import { FOO, send, sendTls } from './support/proxy-request';

const ROOT = path.resolve(__dirname, '..', '..');
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
/** README's tutorial section: its first sh block, and the admin token it exports. */
const TUTORIAL_BLOCK = /```sh\n([\s\S]*?)```/.exec(README.slice(README.indexOf('## The tutorial, with curl')))?.[1] ?? '';
const ADMIN_TOKEN = /^export ADMIN_TOKEN=(\S+)$/m.exec(TUTORIAL_BLOCK)?.[1] ?? 'local-stack-admin-token-0123456789';

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

/** `npm start`'s stack (dist/services/local-stack/main.js) with a real Envoy, on free ports: Envoy's routes over xDS. */
describe('the local stack (npm start) with Envoy on PATH', () => {
  let stack: ChildProcess;
  let output = () => '';
  let base = '';
  let dataDir = '';
  let ports: Record<string, string> = {};

  before(async () => {
    ({ stack, base, dataDir, output, ports } = await startLocalStack({
      root: ROOT,
      adminToken: ADMIN_TOKEN,
      dataDirPrefix: 'local-stack-',
    }));
  });

  after(() => {
    if (stack && stack.exitCode === null) stack.kill('SIGKILL');
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('says where each part listens, Envoy first', () => {
    assert.match(output(), /Envoy 1\.\d+\.\d+: http:\/\/oauth\.oto\.tools:\d+ \(token authority\) and http:\/\/foo\.oto\.tools:\d+/);
    assert.match(output(), /token authority: REST http:\/\/127\.0\.0\.1:\d+, gRPC/);
    assert.match(output(), /ext-authz: Envoy Check/);
    assert.match(output(), /Envoy's routes: from the token authority over xDS \(ADS 127\.0\.0\.1:\d+\)/);
    assert.match(output(), /HTTPS: https:\/\/oauth\.oto\.tools:\d+ and https:\/\/foo\.oto\.tools:\d+, with a self-signed certificate/);
    assert.match(output(), /admin console: http:\/\/oauth\.oto\.tools:\d+\/console \(sign in with the admin token; routes at #\/routes\)/);
  });

  it('starts ext-authz with its heap bounds (services/ext-authz/node-flags.ts), and V8 took them', async () => {
    const { readFileSync } = require('node:fs') as typeof import('node:fs');
    const extAuthz = descendants(stack.pid!)
      .map((pid) => ({ pid, argv: readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0') }))
      .find(({ argv }) => argv.some((arg) => arg.endsWith(path.join('ext-authz', 'main.js'))));
    assert.ok(extAuthz, 'an ext-authz process under the stack');
    assert.deepEqual(extAuthz.argv.slice(1, 1 + EXT_AUTHZ_NODE_FLAGS.length), [...EXT_AUTHZ_NODE_FLAGS]);
    // ...and its environment (MALLOC_ARENA_MAX: glibc reads it before node starts).
    const environment = new Map(
      readFileSync(`/proc/${extAuthz.pid}/environ`, 'utf8')
        .split('\0')
        .map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]),
    );
    for (const [name, value] of Object.entries(EXT_AUTHZ_ENV)) assert.equal(environment.get(name), value, name);
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

  it('serves the seed routes through Envoy over xDS with no step: foo.oto.tools asks for an API key', async () => {
    const denied = await send(base, '/', { host: `${FOO}:8080` });
    assert.equal(denied.status, 401);
    assert.equal(denied.body, JSON.stringify({ 'Otoroshi-Error': 'No ApiKey provided' }));
    assert.equal((await send(base, '/public/x', { host: `${FOO}:8080` })).status, 200, 'foo /public/ is open');
  });

  it('serves HTTPS on the listener the authority pushes (xds.tls), with the certificate made for the run', async () => {
    const certificate = /curl --cacert (\S+)\)/.exec(output())?.[1];
    assert.ok(certificate, 'the certificate path is printed');
    const ca = readFileSync(certificate);
    const jwks = await sendTls(Number(ports.HTTPS_PORT), '/.well-known/otoroshi/oauth/jwks.json', { host: 'oauth.oto.tools', ca });
    assert.equal(jwks.status, 200, jwks.body);
    const denied = await sendTls(Number(ports.HTTPS_PORT), '/', { host: FOO, ca });
    assert.equal(denied.status, 401);
    assert.equal(denied.body, JSON.stringify({ 'Otoroshi-Error': 'No ApiKey provided' }));
  });

  it("runs README's tutorial block as written, a step at a time (the route made by the admin API, live in Envoy)", () => {
    assert.ok(TUTORIAL_BLOCK.includes('curl -X POST http://oauth.oto.tools:8080/api/routes'), 'the tutorial creates its route by the API');
    // The stack is already up (npm start & is a no-op); curl goes to this stack's Envoy whatever
    // the name resolves to, and the route's backend is this stack's echo port instead of 8081.
    const shims = [
      'set -eu',
      'npm() { :; }',
      `curl() { command curl -sS --max-time 10 --connect-to ::127.0.0.1:${ports.PORT} -w '\\n' "$@"; }`,
    ].join('\n');
    // A pause between steps, as a user typing them: ext-authz learns a new key within a second.
    const steps = TUTORIAL_BLOCK.replaceAll('"port": 8081', `"port": ${ports.ECHO_PORT}`)
      .split(/\n\s*\n/)
      .join('\nsleep 1\n');
    const run = spawnSync('bash', ['-c', `${shims}\n${steps}`], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, `${run.stderr}\n${run.stdout}`);
    const answers = run.stdout
      .split('\n')
      .filter((line) => line.trim().startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, any>);
    const [jwks, route, noKey, key, issued, echoed, active, revocation, refused] = answers;
    assert.equal(answers.length, 9, run.stdout);
    assert.ok(jwks.keys.length >= 1, 'JWKS');
    assert.deepEqual(
      [route.id, route.frontend.domains, route.apikeys.authorizedEntities],
      ['my-app', ['my-app.oto.tools'], ['route_my-app']],
    );
    assert.deepEqual(noKey, { 'Otoroshi-Error': 'No ApiKey provided' }, 'the new route is live in Envoy');
    assert.equal(key.clientId, 'my-id');
    assert.equal(issued.scope, 'read write');
    assert.equal(echoed.headers['x-client-id'], 'my-id', 'the echo backend behind the new route');
    assert.equal(active.active, true);
    assert.deepEqual(revocation, {});
    assert.deepEqual(refused, { 'Otoroshi-Error': 'Token revoked' });
  });

  it('shows the route with status.xds accepted, and takes a change by the admin API within 1 s', async () => {
    const admin = { host: 'oauth.oto.tools:8080', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } };
    const read = await send(base, '/api/routes/my-app', admin);
    assert.equal(read.status, 200, read.body);
    assert.equal((JSON.parse(read.body) as { status: { xds: { state: string } } }).status.xds.state, 'accepted');
    const patched = await send(base, '/api/routes/my-app', {
      ...admin,
      method: 'PATCH',
      headers: { ...admin.headers, 'content-type': 'application/json' },
      body: JSON.stringify({ enabled: false }),
    });
    assert.equal(patched.status, 200, patched.body);
    const started = Date.now();
    while ((await send(base, '/', { host: 'my-app.oto.tools:8080' })).status !== 404 && Date.now() - started < 2000)
      await new Promise((done) => setTimeout(done, 20));
    const took = Date.now() - started;
    assert.ok(took < 1000, `404 after ${took} ms`);
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

/** ENVOY_CONFIG=envoy.yaml: the static file of before routes were data, with the HTTPS listener. */
describe('the local stack with the static Envoy config (ENVOY_CONFIG=envoy.yaml)', () => {
  let stack: ChildProcess;
  let output = () => '';
  let base = '';
  let dataDir = '';

  before(async () => {
    ({ stack, base, dataDir, output } = await startLocalStack({
      root: ROOT,
      adminToken: ADMIN_TOKEN,
      dataDirPrefix: 'local-stack-static-',
      env: { ENVOY_CONFIG: 'envoy.yaml' },
    }));
  });

  after(() => {
    if (stack && stack.exitCode === null) stack.kill('SIGKILL');
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("routes from envoy/envoy.yaml, HTTPS on its own port, and foo.oto.tools through ext-authz's policy file", async () => {
    assert.match(output(), /Envoy's routes: the static file envoy\/envoy\.yaml \(ENVOY_CONFIG\)/);
    assert.match(output(), /HTTPS: https:\/\/oauth\.oto\.tools:\d+ and https:\/\/foo\.oto\.tools:\d+, with a self-signed certificate/);
    const denied = await send(base, '/', { host: `${FOO}:8080` });
    assert.equal(denied.status, 401);
    assert.equal(denied.body, JSON.stringify({ 'Otoroshi-Error': 'No ApiKey provided' }));
    const exited = new Promise<number | null>((resolve) => stack.once('exit', (code) => resolve(code)));
    stack.kill('SIGTERM');
    assert.equal(await exited, 0, output().slice(-2000));
  });
});
