import { credentials, loadPackageDefinition, Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LOADER_OPTIONS, TOKEN_AUTHORITY_PROTO } from '../../services/token-authority/grpc-options';
import { type DockerEngine, DOCKER, engineUnavailable, run, startEngine } from '../support/docker-engine';
import { type Answer, send } from '../support/proxy-request';

/**
 * `docker compose up` for real (npm run test:compose; .ci/run runs it after npm test): a Docker
 * engine of this run's own, the stand-in base images (test/support/docker-standins.sh, cached by
 * content), the product image built from the Dockerfile, then both profiles as a user runs them,
 * reached only through the ports they publish on 127.0.0.1. No load goes through them.
 * Where no engine can start: fails under CI=true, skipped (with the reason) otherwise.
 */
const ROOT = path.resolve(__dirname, '..', '..', '..');
const PROJECT = 'ta-compose-test';
const IMAGE = 'otoroshi-token-authority:local';
/** Run in the image: every package under /app/node_modules (nested ones too), as a JSON list of names. */
const LIST_PACKAGES = `const fs = require('node:fs'), path = require('node:path'), names = new Set();
const walk = (dir) => {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name === '.bin') continue;
    const scoped = entry.name.startsWith('@');
    for (const name of scoped ? fs.readdirSync(path.join(dir, entry.name)).map((inner) => entry.name + '/' + inner) : [entry.name]) {
      names.add(name);
      const nested = path.join(dir, name, 'node_modules');
      if (fs.existsSync(nested)) walk(nested);
    }
  }
};
walk('/app/node_modules');
console.log(JSON.stringify([...names].sort()));`;
const OAUTH = 'oauth.oto.tools';
const FOO = 'foo.oto.tools';
const TUTORIAL = 'http://127.0.0.1:8080';
const CLUSTER = 'http://127.0.0.1:8180';
const PUBLISHED = [8080, 9901, 50051, 8180, 9911];
const NODE_SERVICES = ['token-authority', 'ext-authz', 'echo'];

const unavailable = engineUnavailable();
if (unavailable && process.env.CI === 'true') throw new Error(`CI=true and no Docker engine can start here: ${unavailable}`);

const figures: string[] = [];
const figure = (line: string) => {
  figures.push(line);
  process.stdout.write(`# compose: ${line}\n`);
};
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

/** One request through a published port, with a Host header; never hangs past 10 s. */
function call(base: string, host: string, rawPath: string, options: Parameters<typeof send>[2] = {}): Promise<Answer> {
  return Promise.race([
    send(base, rawPath, { ...options, host }),
    sleep(10_000).then(() => Promise.reject(new Error(`${host}${rawPath}: no answer in 10 s`))),
  ]);
}
const json = (body: unknown) => ({
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(body),
});
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

/** Polls `probe` every 100 ms until it holds, at most `timeoutMs`; the time it took. */
async function until(what: string, probe: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = Date.now();
  let last: unknown;
  for (let attempt = 0; attempt < 10_000; attempt += 1) {
    try {
      if (await probe()) return Date.now() - started;
    } catch (error) {
      last = error;
    }
    if (Date.now() - started > timeoutMs) break;
    await sleep(100);
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last instanceof Error ? ` (last: ${last.message})` : ''}`);
}

function portTaken(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function issue(base: string, clientId: string, clientSecret: string): Promise<string> {
  const answer = await call(
    base,
    OAUTH,
    '/.well-known/otoroshi/oauth/token',
    json({ grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret }),
  );
  assert.equal(answer.status, 200, answer.body);
  return (JSON.parse(answer.body) as { access_token: string }).access_token;
}

/** The admin token the authority printed once in its log (or the replicas' logs). */
function printedAdminTokens(logs: string): string[] {
  return [...logs.matchAll(/Generated admin API token[^\n]*\n(?:[^\n]*\|)?\s*\n(?:[^\n]*\|)?\s+(\S+)/g)].map((match) => match[1]);
}

describe('docker compose up, in a Docker engine of its own', { skip: unavailable, timeout: 20 * 60_000 }, () => {
  let engine: DockerEngine;
  let env: NodeJS.ProcessEnv;
  const compose = (args: string[], options: { env?: Record<string, string>; timeoutMs?: number } = {}) =>
    run('docker-compose', ['-p', PROJECT, ...args], { ...env, ...options.env }, { cwd: ROOT, timeoutMs: options.timeoutMs ?? 180_000 });
  // By label: whichever profile is active.
  const containerId = (service: string) =>
    engine
      .docker([
        'ps',
        '-aq',
        '--filter',
        `label=com.docker.compose.project=${PROJECT}`,
        '--filter',
        `label=com.docker.compose.service=${service}`,
      ])
      .trim();
  const inspect = (id: string, format: string) => engine.docker(['inspect', '--format', format, id]).trim();

  /**
   * `docker stop` of each service in turn (SIGTERM, then the exit awaited; a kill after 10 s is
   * exit 137), in compose's order: dependents first. Each Node service must have ended within 2 s
   * of the command (its container's FinishedAt); the figure adds how long docker stop took and how
   * long the process itself took to close (its "closed in" line). 2.5 s once for ext-authz: its gRPC client asked DNS for a TXT record (service
   * config) that Docker's embedded DNS forwarded to an upstream that never answers here, and
   * `docker stop` waited for that question to time out (services/ext-authz/authority-connection.ts).
   * 3 s once for a replica after the PostgreSQL restart: a lookup of `postgres` was pending, and
   * process.exit waits for it (libs/service-main.ts now ends by the signal then, exit 143).
   */
  const stopOneByOne = (profile: string, services: string[], nodeServices: string[]) => {
    const lines: string[] = [];
    try {
      for (const service of services) {
        const id = containerId(service);
        const started = Date.now();
        engine.docker(['stop', id]);
        const took = Date.now() - started;
        const exitCode = inspect(id, '{{.State.ExitCode}}');
        // When the process ended (the engine's clock is this machine's), apart from the engine's own
        // clean-up after it: that waits for DNS questions the container forwarded to an upstream that
        // never answers here (lookups of `postgres` during its restart), which a user's DNS answers.
        const finished = Date.parse(inspect(id, '{{.State.FinishedAt}}').replace(/(\.\d{3})\d*Z$/, '$1Z'));
        const ended = finished - started;
        // The service's stderr is the CLI's: both streams through a shell.
        const logs = run('sh', ['-c', `"$DOCKER" logs --tail 20 ${id} 2>&1`], { ...env, DOCKER }, { timeoutMs: 30_000 });
        const closed = /closed in (\d+) ms/.exec(logs)?.[1];
        lines.push(
          `${service} ${seconds(took)} (exit ${exitCode} after ${ended} ms${closed === undefined ? '' : `, closed itself in ${closed} ms`})`,
        );
        if (!nodeServices.includes(service)) continue;
        assert.notEqual(exitCode, '137', `${service} was killed`);
        // 143: it closed, then ended by the SIGTERM instead of waiting for a DNS lookup (libs/service-main.ts).
        assert.ok(exitCode === '0' || (exitCode === '143' && /ending by SIGTERM/.test(logs)), `${service} exited ${exitCode}:\n${logs}`);
        assert.ok(ended < 2000, `${service} ended ${ended} ms after docker stop began`);
        assert.ok(took < 10_000, `${service}: docker stop took ${took} ms`);
      }
    } finally {
      figure(`${profile}: docker stop, one by one: ${lines.join(', ')}`);
    }
  };

  before(async () => {
    for (const port of PUBLISHED) assert.equal(await portTaken(port), false, `127.0.0.1:${port} is taken: compose publishes it`);
    let started = Date.now();
    engine = await startEngine();
    figure(`engine up in ${seconds(Date.now() - started)} (dockerd, ${engine.driver}, ${engine.dir})`);
    env = { ...engine.env };
    // What a user's shell would not have: the tests' own tokens and settings.
    for (const name of [
      'ADMIN_TOKEN',
      'DATA_PLANE_TOKEN',
      'ENVOY_CONFIG',
      'ENVOY_CLUSTER_CONFIG',
      'POSTGRES_PASSWORD',
      'KEY_ENCRYPTION_KEY',
      'COMPOSE_PROJECT_NAME',
    ])
      delete env[name];
    started = Date.now();
    run('bash', [path.join(ROOT, 'test', 'support', 'docker-standins.sh')], { ...env, DOCKER }, { timeoutMs: 15 * 60_000 });
    figure(`stand-in base images ready in ${seconds(Date.now() - started)} (built once, then loaded from the cache)`);
    started = Date.now();
    // --network host: the build reaches the npm registry (no NAT here); otherwise as compose builds it.
    engine.docker(['build', '-q', '--network', 'host', '-t', IMAGE, ROOT], { timeoutMs: 15 * 60_000 });
    const size = Number(inspect(IMAGE, '{{.Size}}'));
    figure(`product image built in ${seconds(Date.now() - started)}; ${IMAGE} is ${(size / 1e6).toFixed(0)} MB`);
  });

  after(async () => {
    if (engine) {
      try {
        compose(['--profile', 'cluster', 'down', '-v', '--remove-orphans'], { timeoutMs: 120_000 });
      } catch {
        // the engine's stop below ends whatever is left
      }
      await engine.stop();
    }
    process.stdout.write(`# compose figures:\n${figures.map((line) => `#   ${line}`).join('\n')}\n`);
  });

  describe('the default profile: the tutorial', () => {
    let adminToken = '';

    it('answers the tutorial within 15 s of `up`, with no token given (generated, the admin token printed once)', async () => {
      const up = spawn('docker-compose', ['-p', PROJECT, 'up', '-d', '--no-build'], {
        cwd: ROOT,
        env,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let upErrors = '';
      up.stderr.on('data', (chunk) => (upErrors += chunk));
      const upExit = new Promise<number | null>((done) => up.once('exit', (code) => done(code)));
      const jwks = await until(
        'JWKS through Envoy',
        async () => (await call(TUTORIAL, OAUTH, '/.well-known/otoroshi/oauth/jwks.json')).status === 200,
        60_000,
      );
      const denied = await until(
        'foo.oto.tools 401 through ext-authz',
        async () => (await call(TUTORIAL, FOO, '/')).status === 401,
        60_000,
      );
      assert.equal(await upExit, 0, upErrors);
      figure(`default profile: first tutorial answer (JWKS) ${seconds(jwks)} after up, ext-authz deciding after ${seconds(jwks + denied)}`);
      assert.ok(jwks <= 15_000, `first answer after ${jwks} ms`);
      const printed = printedAdminTokens(compose(['logs', '--no-color', '--no-log-prefix', 'token-authority']));
      assert.equal(printed.length, 1, 'the admin token, printed once');
      adminToken = printed[0];
    });

    it("runs README's Quick start with Docker verbatim (curl to *.oto.tools, sent to the published 127.0.0.1:8080)", () => {
      const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
      const section = readme.slice(readme.indexOf('### Quick start with Docker'));
      const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1];
      assert.ok(block, 'the section has a sh block');
      // The user's `docker compose` is docker-compose here; `--build` builds without a registry's NAT,
      // so the image built above stands for it. curl goes to 127.0.0.1 whatever the name resolves to.
      const shims = [
        // As a user's shell: -e, but no pipefail (awk leaves the log pipe early).
        'set -eu',
        `docker() { if [ "$1" = compose ]; then shift; local a args=(); for a in "$@"; do [ "$a" = --build ] && a=--no-build; args+=("$a"); done; docker-compose -p ${PROJECT} "\${args[@]}"; else command "${DOCKER}" "$@"; fi; }`,
        `curl() { command curl -sS --max-time 10 --connect-to ::127.0.0.1: -w '\\n' "$@"; }`,
      ].join('\n');
      const output = run('bash', ['-c', `${shims}\n${block}`], env, { cwd: ROOT, timeoutMs: 120_000 });
      const answers = output
        .split('\n')
        .filter((line) => line.trim().startsWith('{'))
        .map((line) => JSON.parse(line));
      assert.equal(answers.length, 4, output);
      const [jwks, denied, created, echoed] = answers;
      assert.ok(jwks.keys.length >= 1, 'JWKS');
      assert.deepEqual(denied, { 'Otoroshi-Error': 'No ApiKey provided' });
      assert.equal(created.clientId, 'my-id', 'created with the printed admin token');
      assert.match(echoed.headers.authorization, /^Bearer ey/, 'the echo backend shows the Authorization header');
      assert.equal(echoed.headers['x-client-id'], 'my-id');
    });

    it('serves a route created by the admin API through Envoy within 1 s (Envoy follows the authority over xDS)', async () => {
      const created = await call(TUTORIAL, OAUTH, '/api/routes', {
        ...json({
          id: 'compose-route',
          frontend: { domains: ['compose.oto.tools'] },
          backend: { targets: [{ hostname: 'echo', port: 8081 }] },
          apikeys: { extractors: ['bearer'], authorizedEntities: ['route_foo'] },
        }),
        headers: { 'content-type': 'application/json', ...bearer(adminToken) },
      });
      assert.equal(created.status, 201, created.body);
      const live = await until(
        'compose.oto.tools through Envoy',
        async () => (await call(TUTORIAL, 'compose.oto.tools', '/')).status === 401,
        5000,
      );
      figure(`default profile: a route created by the admin API answered through Envoy ${live} ms later`);
      assert.ok(live < 1000, `${live} ms`);
      const token = await issue(TUTORIAL, 'my-id', 'my-secret');
      assert.equal((await call(TUTORIAL, 'compose.oto.tools', '/', { headers: bearer(token) })).status, 200);
      const read = JSON.parse((await call(TUTORIAL, OAUTH, '/api/routes/compose-route', { headers: bearer(adminToken) })).body);
      assert.equal(read.status.xds.state, 'accepted', JSON.stringify(read.status));
    });

    it('serves the console at /console', async () => {
      const answer = await call(TUTORIAL, OAUTH, '/console/');
      assert.equal(answer.status, 200);
      assert.match(String(answer.headers['content-type']), /^text\/html/);
    });

    it('issues a token over gRPC through Envoy (IssueToken, :authority oauth.oto.tools)', async () => {
      const api = loadPackageDefinition(loadSync(TOKEN_AUTHORITY_PROTO, LOADER_OPTIONS)) as any;
      const client = new api.token_authority.v1.TokenAuthority('127.0.0.1:8080', credentials.createInsecure(), {
        'grpc.default_authority': OAUTH,
      });
      try {
        const { error, response } = await new Promise<{ error: ServiceError | null; response: { access_token?: string } }>((resolve) =>
          client.IssueToken(
            { grant_type: 'client_credentials', client: { client_id: 'my-id', client_secret: 'my-secret' } },
            new Metadata(),
            { deadline: Date.now() + 10_000 },
            (error: ServiceError | null, response: { access_token?: string }) => resolve({ error, response }),
          ),
        );
        assert.equal(error, null, error?.details);
        assert.match(response.access_token ?? '', /^ey/);
      } finally {
        client.close();
      }
    });

    it('runs every process as a non-root user', () => {
      for (const service of NODE_SERVICES) assert.equal(compose(['exec', '-T', service, 'id', '-u']).trim(), '1000', service);
      assert.notEqual(compose(['exec', '-T', 'envoy', 'id', '-u']).trim(), '0', 'envoy');
    });

    it('ships production dependencies only: no devDependency, no type declarations (@types)', () => {
      const devDependencies = Object.keys(JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).devDependencies);
      const listing = engine.docker(['run', '--rm', '--network', 'none', IMAGE, 'node', '-e', LIST_PACKAGES]);
      const installed: string[] = JSON.parse(listing);
      assert.ok(installed.includes('@grpc/grpc-js'), 'the listing reads node_modules');
      assert.deepEqual(
        installed.filter((name) => name.startsWith('@types/') || name === 'undici-types' || devDependencies.includes(name)),
        [],
      );
    });

    it('switches to ext_authz in HTTP mode with ENVOY_CONFIG=envoy-http.yaml', async () => {
      compose(['up', '-d', '--no-build', 'envoy'], { env: { ENVOY_CONFIG: 'envoy-http.yaml' } });
      const token = await (async () => {
        let issued = '';
        await until('a token through the new Envoy', async () => Boolean((issued = await issue(TUTORIAL, 'my-id', 'my-secret'))), 30_000);
        return issued;
      })();
      await until(
        'foo.oto.tools 200 in HTTP mode',
        async () => (await call(TUTORIAL, FOO, '/', { headers: bearer(token) })).status === 200,
        30_000,
      );
      assert.equal((await call(TUTORIAL, FOO, '/')).status, 401);
      const mounted = inspect(containerId('envoy'), '{{range .Mounts}}{{.Source}} {{end}}');
      assert.match(mounted, /envoy-http\.yaml/);
      compose(['up', '-d', '--no-build', 'envoy']); // back to the default, xDS
      await until(
        'JWKS after switching back',
        async () => (await call(TUTORIAL, OAUTH, '/.well-known/otoroshi/oauth/jwks.json')).status === 200,
        30_000,
      );
    });

    it('stops each Node service within 2 s of docker stop (SIGTERM handled, no 10 s kill)', () => {
      stopOneByOne('default profile', ['envoy', 'echo', 'ext-authz', 'token-authority'], NODE_SERVICES);
    });

    it('keeps its data across down + up on the named volumes, and loses it after down -v', async () => {
      compose(['down']);
      compose(['up', '-d', '--no-build']);
      await until(
        'JWKS after down + up',
        async () => (await call(TUTORIAL, OAUTH, '/.well-known/otoroshi/oauth/jwks.json')).status === 200,
        60_000,
      );
      assert.deepEqual(printedAdminTokens(compose(['logs', '--no-color', '--no-log-prefix', 'token-authority'])), [], 'no new admin token');
      const listed = await call(TUTORIAL, OAUTH, '/api/apikeys/my-id', { headers: bearer(adminToken) });
      assert.equal(listed.status, 200, 'the admin token and the API key survived');
      const token = await issue(TUTORIAL, 'my-id', 'my-secret');
      await until(
        'ext-authz with the same data plane token',
        async () => (await call(TUTORIAL, FOO, '/', { headers: bearer(token) })).status === 200,
        30_000,
      );
      compose(['down', '-v']);
      const volumes = engine.docker(['volume', 'ls', '-q', '--filter', `label=com.docker.compose.project=${PROJECT}`]).trim();
      assert.equal(volumes, '', 'down -v removed the volumes');
      compose(['up', '-d', '--no-build', 'token-authority']);
      await until(
        'a fresh start generates again',
        async () => printedAdminTokens(compose(['logs', '--no-color', '--no-log-prefix', 'token-authority'])).length === 1,
        60_000,
      );
      const fresh = printedAdminTokens(compose(['logs', '--no-color', '--no-log-prefix', 'token-authority']))[0];
      assert.notEqual(fresh, adminToken);
      compose(['down', '-v']);
    });
  });

  describe('--profile cluster: PostgreSQL, Redis, two replicas, ext-authz and Envoy on :8180', () => {
    let adminToken = '';
    const admin = (method: string, rawPath: string, body?: unknown) =>
      call(CLUSTER, OAUTH, rawPath, {
        method,
        headers: { ...bearer(adminToken), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    /** An admin call made inside one replica's container, to that replica alone (not through Envoy's balancing); its status. */
    const adminInside = (service: string, method: string, rawPath: string, body?: unknown) =>
      Number(
        compose([
          '--profile',
          'cluster',
          'exec',
          '-T',
          '-e',
          `T=${adminToken}`,
          '-e',
          `B=${body === undefined ? '' : JSON.stringify(body)}`,
          service,
          'node',
          '-e',
          `fetch('http://127.0.0.1:8080${rawPath}', { method: '${method}', headers: { authorization: 'Bearer ' + process.env.T, 'content-type': 'application/json' }, body: process.env.B || undefined }).then((r) => console.log(r.status), () => console.log(0))`,
        ]).trim(),
      );

    it('comes up with no token given; one replica generates and prints the admin token, both accept it', async () => {
      const started = Date.now();
      compose(['--profile', 'cluster', 'up', '-d', '--no-build', 'cluster-envoy']);
      const ready = await until(
        'JWKS on :8180',
        async () => (await call(CLUSTER, OAUTH, '/.well-known/otoroshi/oauth/jwks.json')).status === 200,
        90_000,
      );
      figure(`cluster profile: first answer on :8180 ${seconds(Date.now() - started)} after up (${seconds(ready)} after up returned)`);
      const printed = printedAdminTokens(compose(['logs', '--no-color', '--no-log-prefix', 'authority-a', 'authority-b']));
      assert.equal(printed.length, 1, 'printed once, by the replica that created it');
      adminToken = printed[0];
      // A key created through replica A itself (inside its container), then used through Envoy.
      const created = adminInside('authority-a', 'POST', '/api/apikeys', {
        clientId: 'my-id',
        clientSecret: 'my-secret',
        authorizedEntities: ['route_foo'],
        throttlingQuota: 1000,
        dailyQuota: 1000,
        monthlyQuota: 10000,
      });
      assert.equal(created, 201);
      assert.equal(adminInside('authority-b', 'GET', '/api/apikeys/my-id'), 200, 'replica B reads the key A created');
      for (let i = 0; i < 4; i += 1) {
        assert.equal((await admin('GET', '/api/apikeys/my-id')).status, 200, 'both replicas accept the one admin token');
        assert.ok(await issue(CLUSTER, 'my-id', 'my-secret'));
      }
    });

    it('authorizes through ext-authz fed by the replicas, and counts quota consumption readable through the admin API', async () => {
      const token = await issue(CLUSTER, 'my-id', 'my-secret');
      await until('foo 200 on :8180', async () => (await call(CLUSTER, FOO, '/', { headers: bearer(token) })).status === 200, 30_000);
      for (let i = 0; i < 4; i += 1) assert.equal((await call(CLUSTER, FOO, '/', { headers: bearer(token) })).status, 200);
      await until(
        'consumption on Redis',
        async () => {
          const answer = await admin('GET', '/api/apikeys/my-id/quotas');
          return answer.status === 200 && (JSON.parse(answer.body) as { currentCallsPerDay: number }).currentCallsPerDay >= 5;
        },
        10_000,
      );
    });

    it('serves a route created on one replica through Envoy within 1 s, whichever replica its ADS stream is on', async () => {
      const created = adminInside('authority-a', 'POST', '/api/routes', {
        id: 'cluster-route',
        frontend: { domains: ['cluster.oto.tools'] },
        backend: { targets: [{ hostname: 'echo', port: 8081 }] },
        apikeys: { enabled: false },
      });
      const createdAt = Date.now();
      assert.equal(created, 201);
      const live = await until(
        'cluster.oto.tools on :8180',
        async () => (await call(CLUSTER, 'cluster.oto.tools', '/')).status === 200,
        5000,
      );
      // adminInside includes a docker exec of its own (a few hundred ms): the figure is an upper bound.
      figure(
        `cluster profile: a route created on replica A answered through Envoy ${live} ms after the exec returned (${Date.now() - createdAt} ms)`,
      );
      assert.ok(live < 1000, `${live} ms`);
    });

    it('runs every process of the profile as a non-root user', () => {
      for (const service of ['authority-a', 'authority-b', 'cluster-ext-authz'])
        assert.equal(compose(['--profile', 'cluster', 'exec', '-T', service, 'id', '-u']).trim(), '1000', service);
      assert.notEqual(compose(['--profile', 'cluster', 'exec', '-T', 'cluster-envoy', 'id', '-u']).trim(), '0', 'cluster-envoy');
    });

    it('keeps serving when one replica is killed (docker kill): tokens from the other, decisions from ext-authz', async () => {
      const token = await issue(CLUSTER, 'my-id', 'my-secret');
      engine.docker(['kill', containerId('authority-a')]);
      const killedAt = Date.now();
      const failures = { token: 0, foo: 0 };
      let streak = 0;
      // Bounded: at most 15 s, until 20 rounds in a row succeed (a token request, then foo.oto.tools
      // through ext-authz, whose authority stream may have been on the killed replica).
      while (streak < 20 && Date.now() - killedAt < 15_000) {
        const issued = await call(
          CLUSTER,
          OAUTH,
          '/.well-known/otoroshi/oauth/token',
          json({ grant_type: 'client_credentials', client_id: 'my-id', client_secret: 'my-secret' }),
        ).catch(() => undefined);
        const decided = await call(CLUSTER, FOO, '/', { headers: bearer(token) }).catch(() => undefined);
        if (issued?.status !== 200) failures.token += 1;
        if (decided?.status !== 200) failures.foo += 1;
        streak = issued?.status === 200 && decided?.status === 200 ? streak + 1 : 0;
        await sleep(50);
      }
      figure(
        `replica A killed: ${failures.token} failed token request(s) and ${failures.foo} failed call(s) through ext-authz before 20 rounds in a row succeeded (${seconds(Date.now() - killedAt)})`,
      );
      assert.equal(streak, 20, `${JSON.stringify(failures)} failures and no steady service within 15 s`);
      engine.docker(['start', containerId('authority-a')]);
    });

    it('recovers from a PostgreSQL restart without restarting the replicas', async () => {
      await until('replica A back', async () => inspect(containerId('authority-a'), '{{.State.Health.Status}}') === 'healthy', 60_000);
      const startedAt = ['authority-a', 'authority-b'].map((service) => inspect(containerId(service), '{{.State.StartedAt}}'));
      const restartedAt = Date.now();
      engine.docker(['restart', containerId('postgres')]);
      const recovered = await until(
        'a key created after the restart',
        async () =>
          [201, 409].includes(
            (
              await admin('POST', '/api/apikeys', {
                clientId: 'after-restart',
                clientSecret: 'after-secret',
                authorizedEntities: ['route_foo'],
              })
            ).status,
          ),
        60_000,
      );
      // Each replica on its own reads it from the database again...
      for (const service of ['authority-a', 'authority-b'])
        await until(`the key through ${service}`, async () => adminInside(service, 'GET', '/api/apikeys/after-restart') === 200, 30_000);
      for (let i = 0; i < 4; i += 1) assert.ok(await issue(CLUSTER, 'after-restart', 'after-secret'));
      // ... and ext-authz, fed by a replica, learns it (the change pushed after the restart).
      const token = await issue(CLUSTER, 'after-restart', 'after-secret');
      await until(
        'the new key accepted by ext-authz',
        async () => (await call(CLUSTER, FOO, '/', { headers: bearer(token) })).status === 200,
        30_000,
      );
      figure(
        `PostgreSQL restarted (docker restart): the replicas wrote again ${seconds(Date.now() - restartedAt)} after it began (${seconds(recovered)} after it returned)`,
      );
      assert.deepEqual(
        ['authority-a', 'authority-b'].map((service) => inspect(containerId(service), '{{.State.StartedAt}}')),
        startedAt,
        'the replicas were not restarted',
      );
    });

    it('stops each Node service of the profile within 2 s of docker stop', () => {
      stopOneByOne(
        'cluster profile',
        ['cluster-envoy', 'cluster-ext-authz', 'authority-a', 'authority-b', 'redis', 'postgres'],
        ['cluster-ext-authz', 'authority-a', 'authority-b'],
      );
    });
  });
});
