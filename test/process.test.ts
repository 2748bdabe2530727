import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { basic, INTROSPECT_PATH, REVOKE_PATH, TOKEN_PATH } from './support/authority';
import { startTestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';

const MAIN = resolve(__dirname, '../services/token-authority/main.js');
const CLI = resolve(__dirname, '../services/token-authority/cli.js');
const ADMIN = 'process-test-admin-token';

/** The real entry point, as `npm start` runs it, in its own process. */
async function startProcess(env: Record<string, string>): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const port = await freePort();
  let output = '';
  const child = spawn(process.execPath, [MAIN], {
    env: {
      ...process.env,
      HTTP_HOST: '127.0.0.1',
      HTTP_PORT: String(port),
      GRPC_HOST: '127.0.0.1',
      GRPC_PORT: '0',
      LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}: ${output}`);
    try {
      await fetch(`${url}/.well-known/otoroshi/oauth/jwks.json`);
      return { child, url, output: () => output };
    } catch {
      await new Promise((done) => setTimeout(done, 100));
    }
  }
  child.kill('SIGKILL');
  throw new Error(`did not start in 15 s: ${output}`);
}

const exited = (child: ChildProcess) =>
  new Promise<void>((done) => (child.exitCode !== null || child.signalCode !== null ? done() : child.once('exit', () => done())));

describe('the token authority process', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'ta-process-'));
  after(() => rmSync(dataDir, { recursive: true, force: true }));

  it('loses nothing acknowledged when killed with SIGKILL, revocations included', async () => {
    const first = await startProcess({ DATA_DIR: dataDir, ADMIN_TOKEN: ADMIN });
    const created = await fetch(`${first.url}/api/apikeys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ clientId: 'durable', clientSecret: 'durable-secret' }),
    });
    assert.equal(created.status, 201);
    const form = (fields: Record<string, string>) => ({
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic('durable', 'durable-secret') },
      body: new URLSearchParams(fields).toString(),
    });
    const { access_token: revokedToken } = (await (
      await fetch(`${first.url}${TOKEN_PATH}`, form({ grant_type: 'client_credentials' }))
    ).json()) as { access_token: string };
    const { access_token: liveToken } = (await (
      await fetch(`${first.url}${TOKEN_PATH}`, form({ grant_type: 'client_credentials' }))
    ).json()) as { access_token: string };
    assert.equal((await fetch(`${first.url}${REVOKE_PATH}`, form({ token: revokedToken }))).status, 200);
    first.child.kill('SIGKILL');
    await exited(first.child);

    const second = await startProcess({ DATA_DIR: dataDir, ADMIN_TOKEN: ADMIN });
    try {
      const introspect = async (token: string) =>
        ((await (await fetch(`${second.url}${INTROSPECT_PATH}`, form({ token }))).json()) as { active: boolean }).active;
      assert.equal(await introspect(liveToken), true, 'the API key and the signing key survived');
      assert.equal(await introspect(revokedToken), false, 'the revocation survived');
    } finally {
      second.child.kill('SIGTERM');
      await exited(second.child);
    }
  });

  it('generates an admin token on first start, prints it once, keeps only its hash', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ta-admin-'));
    try {
      const first = await startProcess({ DATA_DIR: dir, ADMIN_TOKEN: '' });
      const printed = /Generated admin API token[^\n]*\n\n\s+(\S+)/.exec(first.output());
      assert.ok(printed, first.output());
      const token = printed[1];
      assert.equal((await fetch(`${first.url}/api/apikeys`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
      first.child.kill('SIGTERM');
      await exited(first.child);
      const second = await startProcess({ DATA_DIR: dir, ADMIN_TOKEN: '' });
      assert.equal(second.output().includes('Generated admin API token'), false, 'printed once');
      assert.equal(second.output().includes(token), false);
      assert.equal((await fetch(`${second.url}/api/apikeys`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
      second.child.kill('SIGTERM');
      await exited(second.child);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('two processes starting at once on one data folder share one generated admin token and one data plane token, which ext-authz reads from the file', async () => {
    // As docker-compose's replicas: the data folder and the token file on shared volumes; each its own store here.
    const dir = mkdtempSync(join(tmpdir(), 'ta-shared-'));
    const tokenFile = join(dir, 'data-plane', 'token');
    const grpcPort = await freePort();
    // ext-authz first, as compose may start it: the file does not exist yet, the refused stream retries.
    const extAuthz = await startTestExtAuthz(
      { grpcAddress: `127.0.0.1:${grpcPort}` },
      { authority: { url: `127.0.0.1:${grpcPort}`, tokenFile, initialBackoff: 50, maxBackoff: 200 } },
      false,
    );
    const started: Awaited<ReturnType<typeof startProcess>>[] = [];
    try {
      const common = { DATA_DIR: dir, ADMIN_TOKEN: '', DATA_PLANE_TOKEN: '', DATA_PLANE_TOKEN_FILE: tokenFile };
      started.push(
        ...(await Promise.all([
          startProcess({ ...common, STORE_PATH: join(dir, 'a.sqlite'), GRPC_PORT: String(grpcPort) }),
          startProcess({ ...common, STORE_PATH: join(dir, 'b.sqlite') }),
        ])),
      );
      const printed = started.flatMap((instance) => [...instance.output().matchAll(/Generated admin API token[^\n]*\n\n\s+(\S+)/g)]);
      assert.equal(printed.length, 1, 'printed once, by the process that created the hash');
      for (const instance of started) {
        const status = (await fetch(`${instance.url}/api/apikeys`, { headers: { authorization: `Bearer ${printed[0][1]}` } })).status;
        assert.equal(status, 200, 'both processes accept the one admin token');
      }
      const dataPlaneToken = readFileSync(tokenFile, 'utf8');
      assert.ok(dataPlaneToken.length >= 32);
      assert.equal(statSync(tokenFile).mode & 0o777, 0o600);
      assert.deepEqual(readdirSync(join(dir, 'data-plane')), ['token'], 'nothing left beside it (the losing writer removed its draft)');
      for (const instance of started)
        assert.equal(instance.output().includes(dataPlaneToken), false, 'the data plane token is never printed');
      await extAuthz.waitFor(() => extAuthz.replica.ready, 10_000);
    } finally {
      await extAuthz.close();
      for (const { child } of started) {
        child.kill('SIGTERM');
        await exited(child);
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses to start on a bad setting and names it', () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ EXPIRATION: 'soon' }, /expiration \(from env EXPIRATION\)/],
      [{ ISSUER: 'not a url' }, /issuer \(from env ISSUER\)/],
      [{ HTTP_PORT: '70000' }, /http\.port \(from env HTTP_PORT\)/],
      [{ DEFAULT_KEY_PAIR_ALGORITHM: 'HS256' }, /defaultKeyPairAlgorithm/],
      [{ SECURE: 'maybe' }, /secure \(from env SECURE\)/],
      // Issue 22: "trust every hop" would let clients pick their own address; the message names the accepted forms.
      [{ TRUST_PROXY: 'true' }, /trustProxy \(from env TRUST_PROXY\): "true" \(trust every hop\) is refused.*a hop count 1-10/],
      [{ TRUST_PROXY: '10.0.0.0/33' }, /trustProxy \(from env TRUST_PROXY\)/],
      [{ TRUST_PROXY: '1,2' }, /trustProxy \(from env TRUST_PROXY\): "1" is not an IPv4 address in dotted-quad form/],
      [{ CONFIG_FILE: '/nonexistent/config.yaml' }, /does not exist/],
    ];
    for (const [env, message] of cases) {
      const result = spawnSync(process.execPath, [MAIN], {
        env: { ...process.env, DATA_DIR: dataDir, ...env },
        encoding: 'utf8',
        timeout: 15_000,
      });
      assert.equal(result.status, 2, `${JSON.stringify(env)}: ${result.stderr}`);
      assert.match(result.stderr, message);
    }
  });

  it('refuses to start, in one line, on a generated-secret file it cannot use (a dangling symbolic link, bad content)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ta-secret-files-'));
    try {
      const cases: [string, Record<string, string>, () => void, RegExp][] = [
        [
          'admin token hash behind a dangling link',
          { DATA_DIR: join(dir, 'a') },
          () => {
            mkdirSync(join(dir, 'a'));
            symlinkSync(join(dir, 'nowhere', 'admin'), join(dir, 'a', 'admin-token.sha256'));
          },
          /admin-token\.sha256 is a symbolic link to .*nowhere\/admin, which does not exist/,
        ],
        [
          'data plane token behind a dangling link',
          { DATA_DIR: join(dir, 'b'), ADMIN_TOKEN: ADMIN, DATA_PLANE_TOKEN_FILE: join(dir, 'b-token') },
          () => symlinkSync(join(dir, 'nowhere', 'dp'), join(dir, 'b-token')),
          /b-token is a symbolic link to .*nowhere\/dp, which does not exist/,
        ],
        [
          'admin token hash that is not one',
          { DATA_DIR: join(dir, 'c') },
          () => {
            mkdirSync(join(dir, 'c'));
            writeFileSync(join(dir, 'c', 'admin-token.sha256'), 'not a digest');
          },
          /admin-token\.sha256 is not a SHA-256 hex digest/,
        ],
      ];
      for (const [name, env, prepare, message] of cases) {
        prepare();
        const result = spawnSync(process.execPath, [MAIN], {
          env: { ...process.env, DATA_DIR: dataDir, HTTP_PORT: '0', GRPC_PORT: '0', ...env },
          encoding: 'utf8',
          timeout: 15_000,
        });
        assert.equal(result.status, 2, `${name}: ${result.stderr}`);
        assert.match(result.stderr, message, name);
        const failure = result.stderr.split('\n').filter((line) => line.includes('failed to start'));
        assert.equal(failure.length, 1, `${name}: ${result.stderr}`);
        assert.doesNotMatch(result.stderr, /\n\s+at /, `${name}: no stack`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a running server signs with a key pair the CLI rotated, within a second', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ta-cli-live-'));
    const server = await startProcess({ DATA_DIR: dir, ADMIN_TOKEN: ADMIN });
    try {
      const kids = async () =>
        ((await (await fetch(`${server.url}/.well-known/otoroshi/oauth/jwks.json`)).json()) as { keys: { kid: string }[] }).keys.map(
          (key) => key.kid,
        );
      assert.deepEqual(await kids(), ['otoroshi-jwt-signing']);
      const rotated = spawnSync(process.execPath, [CLI, 'keypairs', 'rotate', 'otoroshi-jwt-signing'], {
        env: { ...process.env, DATA_DIR: dir },
        encoding: 'utf8',
        timeout: 15_000,
      });
      assert.equal(rotated.status, 0, rotated.stderr);
      const newKid = JSON.parse(rotated.stdout).activeKid as string;
      const started = Date.now();
      while (!(await kids()).includes(newKid)) {
        assert.ok(Date.now() - started < 1000, 'the server did not see the rotation within 1 s');
        await new Promise((done) => setTimeout(done, 25));
      }
    } finally {
      server.child.kill('SIGTERM');
      await exited(server.child);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the CLI manages API keys on the same store', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ta-cli-'));
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, DATA_DIR: dir }, encoding: 'utf8', timeout: 15_000 });
    try {
      const created = cli('apikeys', 'create', '--id', 'cli-id', '--secret', 'cli-secret', '--scope', 'a b', '--metadata', 'team=core');
      assert.equal(created.status, 0, created.stderr);
      assert.equal(JSON.parse(created.stdout).clientSecret, 'cli-secret');
      assert.deepEqual(JSON.parse(cli('apikeys', 'get', 'cli-id').stdout).scope, ['a', 'b']);
      assert.equal(JSON.parse(cli('apikeys', 'update', 'cli-id', '--disable').stdout).enabled, false);
      const duplicate = cli('apikeys', 'create', '--id', 'cli-id');
      assert.equal(duplicate.status, 1);
      assert.match(duplicate.stderr, /already exists/);
      assert.equal(cli('apikeys', 'get', 'nobody').status, 4);
      assert.equal(cli('keypairs', 'create', 'cli-ec', '--alg', 'ES256').status, 0);
      assert.equal(JSON.parse(cli('keypairs', 'list').stdout).length, 2);
      const scheduled = cli('keypairs', 'schedule', 'cli-ec', '--rotate-every', '30d', '--publish-ahead', '12h');
      assert.equal(scheduled.status, 0, scheduled.stderr);
      const view = JSON.parse(scheduled.stdout);
      assert.deepEqual(view.rotation, { rotateEvery: 2_592_000, publishAhead: 43_200, leeway: 60 });
      assert.equal(view.nextRotation.switchAt, view.createdAt + 2_592_000_000);
      const badDuration = cli('keypairs', 'schedule', 'cli-ec', '--rotate-every', 'monthly', '--publish-ahead', '1d');
      assert.equal(badDuration.status, 1);
      assert.match(badDuration.stderr, /--rotate-every takes a duration/);
      const tooLong = cli('keypairs', 'schedule', 'cli-ec', '--rotate-every', '1h', '--publish-ahead', '1h');
      assert.equal(tooLong.status, 1);
      assert.match(tooLong.stderr, /publishAhead must be shorter than rotateEvery/);
      assert.equal(JSON.parse(cli('keypairs', 'unschedule', 'cli-ec').stdout).rotation, null);
      // An unexpected failure (here better-sqlite3's TypeError): one line and exit 1; the stack with --verbose or DEBUG.
      const failed = cli('store', 'backup', join(dir, 'no-such-folder', 'backup.db'));
      assert.equal(failed.status, 1);
      assert.equal(failed.stderr, 'error: Cannot save backup because the directory does not exist (--verbose for details)\n');
      const verbose = cli('store', 'backup', join(dir, 'no-such-folder', 'backup.db'), '--verbose');
      assert.equal(verbose.status, 1);
      assert.match(verbose.stderr, /^error: Cannot save backup[^\n]*\nTypeError: Cannot save backup[^\n]*\n\s+at /);
      assert.equal(cli('nonsense', 'verb').status, 1);
      assert.equal(cli('apikeys', 'create', '--no-such-flag').status, 2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('ends at once on SIGTERM even with a request stuck on the thread pool (process.exit would wait for it)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ta-blocked-'));
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const child = spawn(process.execPath, [resolve(__dirname, 'support/blocked-service.js')], {
      env: { ...process.env, BLOCKED_FIFO: fifo },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (chunk) => (output += chunk));
    child.stderr!.on('data', (chunk) => (output += chunk));
    try {
      for (let i = 0; i < 100 && !output.includes('blocked service ready'); i += 1) await new Promise((done) => setTimeout(done, 50));
      assert.match(output, /blocked service ready/);
      const signalled = Date.now();
      child.kill('SIGTERM');
      // Bounded: 5 s, then the test fails and the child is killed below.
      await Promise.race([exited(child), new Promise((done) => setTimeout(done, 5000))]);
      const took = Date.now() - signalled;
      assert.equal(child.signalCode, 'SIGTERM', `still running after ${took} ms:\n${output}`);
      assert.ok(took < 2000, `ended after ${took} ms`);
      assert.match(output, /closed in \d+ ms\n.*ending by SIGTERM without waiting for FSReqCallback/);
    } finally {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the ext-authz process', () => {
  it('does not load ioredis until REDIS_URL asks for it (quota-redis.test.ts runs the other way)', () => {
    const script = `require(${JSON.stringify(resolve(__dirname, '../services/ext-authz/app.js'))});
      process.stdout.write(String(Object.keys(require.cache).some((path) => path.includes('/node_modules/ioredis/'))));`;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout, 'false', '4 MB of RSS for nothing with quotas in memory');
  });

  it('does not load Nest (its HTTP mode is three Fastify routes: services/ext-authz/http-mode.ts)', () => {
    const script = `require(${JSON.stringify(resolve(__dirname, '../services/ext-authz/app.js'))});
      process.stdout.write(JSON.stringify(Object.keys(require.cache).filter((path) => /\\/node_modules\\/(@nestjs|rxjs|reflect-metadata)\\//.test(path)).slice(0, 3)));`;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout, '[]', 'about 20 MB of RSS and 9 MB of heap for three routes');
  });
});
