import assert from 'node:assert/strict';
import { envoyBinary } from './support/envoy';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { type EchoBackend, type EchoResponse, startEchoBackend } from '../services/echo-backend/server';
import { EXT_AUTHZ_ENV, EXT_AUTHZ_NODE_FLAGS } from '../services/ext-authz/node-flags';

const ROOT = path.resolve(__dirname, '..', '..');

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile?: string };
  command?: string[];
  environment?: Record<string, string>;
  ports?: (string | { published: number | string; target: number; host_ip?: string })[];
  volumes?: (string | { type?: string; source: string; target: string; read_only?: boolean })[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  user?: string;
  profiles?: string[];
  networks?: Record<string, { aliases?: string[] } | null>;
}
interface ComposeConfig {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

/** Tokens given explicitly (without them, the authority generates its own: see below). */
const SECRETS = { ADMIN_TOKEN: 'compose-test-admin-token-0123456789', DATA_PLANE_TOKEN: 'compose-test-data-plane-token-0123' };

function runComposeConfig(env: NodeJS.ProcessEnv) {
  const result = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config'], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 });
  if (result.error) {
    assert.fail(
      `could not run docker-compose (${result.error.message}); install it (Debian: apt-get install docker-compose, as .ci/run does)`,
    );
  }
  return result;
}

/** `docker-compose config`: the file as Compose understands it, variables resolved. */
function composeConfig(extraEnv: Record<string, string> = {}): ComposeConfig {
  const env: NodeJS.ProcessEnv = { ...process.env, ...SECRETS, ...extraEnv };
  if (!('ENVOY_CONFIG' in extraEnv)) delete env.ENVOY_CONFIG;
  if (!('ENVOY_CLUSTER_CONFIG' in extraEnv)) delete env.ENVOY_CLUSTER_CONFIG;
  const result = runComposeConfig(env);
  assert.equal(result.status, 0, `docker-compose config failed:\n${result.stderr}`);
  return parse(result.stdout) as ComposeConfig;
}

/** Published ports as {hostIp, published, target}, whichever syntax Compose printed ("127.0.0.1:9901:9901/tcp" or a mapping). */
function ports(service: ComposeService): { hostIp?: string; published: number; target: number }[] {
  return (service.ports ?? []).map((port) => {
    if (typeof port !== 'string') return { hostIp: port.host_ip, published: Number(port.published), target: Number(port.target) };
    const parts = port.replace(/\/\w+$/, '').split(':');
    const [target, published, hostIp] = parts.reverse();
    return { hostIp, published: Number(published), target: Number(target) };
  });
}

/** Volume mounts as {source, target, readOnly}, whichever syntax Compose printed. */
function mounts(service: ComposeService): { source: string; target: string; readOnly: boolean }[] {
  return (service.volumes ?? []).map((volume) => {
    if (typeof volume !== 'string') return { source: volume.source, target: volume.target, readOnly: volume.read_only === true };
    const [source, target, mode = 'rw'] = volume.split(':');
    return { source, target, readOnly: mode.split(',').includes('ro') };
  });
}

describe('docker-compose.yml', () => {
  const NODE_SERVICES = ['token-authority', 'ext-authz', 'echo', 'authority-a', 'authority-b', 'cluster-ext-authz'];
  let config: ComposeConfig;
  before(() => {
    config = composeConfig();
  });

  it('has the four services, and the cluster profile beside them', () => {
    const byProfile = (profile: string | undefined) =>
      Object.entries(config.services)
        .filter(([, service]) => service.profiles?.[0] === profile)
        .map(([name]) => name)
        .sort();
    assert.deepEqual(byProfile(undefined), ['echo', 'envoy', 'ext-authz', 'token-authority'], 'docker-compose up: the tutorial');
    assert.deepEqual(byProfile('cluster'), ['authority-a', 'authority-b', 'cluster-envoy', 'cluster-ext-authz', 'postgres', 'redis']);
  });

  it('cluster profile: two replicas on one PostgreSQL, ext-authz fed by them, Envoy balancing them on :8180', () => {
    const postgres = config.services.postgres;
    assert.match(postgres.image ?? '', /^postgres:\d+\.\d+/, 'a pinned release');
    assert.deepEqual(ports(postgres), [], 'the database is not published');
    for (const name of ['authority-a', 'authority-b']) {
      const replica = config.services[name];
      assert.match(replica.environment?.STORE_URL ?? '', /^postgres:\/\/authority:[^@]+@postgres:5432\/authority$/, name);
      assert.equal(replica.depends_on?.postgres?.condition, 'service_healthy');
      assert.equal(replica.environment?.ADMIN_TOKEN, SECRETS.ADMIN_TOKEN);
      assert.deepEqual(replica.networks?.default?.aliases, ['token-authority-replicas']);
      assert.deepEqual(ports(replica), [], 'reached through Envoy only');
    }
    const extAuthz = config.services['cluster-ext-authz'];
    assert.equal(extAuthz.environment?.AUTHORITY_GRPC_URL, 'token-authority-replicas:50051');
    // Quotas on one Redis: the replicas' admin API reads the counters ext-authz keeps.
    const redis = config.services.redis;
    assert.match(redis.image ?? '', /^redis:\d+\.\d+/, 'a pinned release');
    assert.deepEqual(ports(redis), [], 'Redis is not published');
    for (const name of ['authority-a', 'authority-b', 'cluster-ext-authz']) {
      assert.equal(config.services[name].environment?.REDIS_URL, 'redis://redis:6379', name);
      assert.equal(config.services[name].depends_on?.redis?.condition, 'service_healthy', name);
    }
    assert.equal(extAuthz.environment?.AUTHORITY_TOKEN, SECRETS.DATA_PLANE_TOKEN);
    const envoy = config.services['cluster-envoy'];
    assert.equal(envoy.image, config.services.envoy.image, 'the Envoy release the tests run');
    // Its config from either replica over xDS: the bootstrap names both, and the profile's token volume.
    assert.deepEqual(mounts(envoy), [
      { source: path.join(ROOT, 'envoy', 'envoy-cluster-xds.yaml'), target: '/etc/envoy/envoy.yaml', readOnly: true },
      { source: 'cluster-data-plane-token', target: '/data-plane', readOnly: true },
    ]);
    for (const name of ['authority-a', 'authority-b']) assert.equal(config.services[name].environment?.XDS_ENABLED, 'true', name);
    assert.deepEqual(
      ports(envoy).map((port) => [port.hostIp, port.published, port.target]),
      [
        ['127.0.0.1', 8180, 8080],
        ['127.0.0.1', 9911, 9901],
      ],
    );
    assert.equal(envoy.depends_on?.['cluster-ext-authz']?.condition, 'service_started', 'not chained on health checks');
  });

  it('runs a pinned Envoy release from envoy/envoy-xds.yaml (the authority as control plane), mounted read-only', () => {
    const envoy = config.services.envoy;
    assert.match(envoy.image ?? '', /^envoyproxy\/envoy:v\d+\.\d+\.\d+$/, 'a release tag, never latest');
    // The release the tests run (test/envoy.test.ts) is the release compose runs.
    const tested = /\/(\d+\.\d+\.\d+)\//.exec(spawnSync(envoyBinary(), ['--version'], { encoding: 'utf8' }).stdout)?.[1];
    assert.equal(envoy.image, `envoyproxy/envoy:v${tested}`);
    assert.deepEqual(mounts(envoy), [
      { source: path.join(ROOT, 'envoy', 'envoy-xds.yaml'), target: '/etc/envoy/envoy.yaml', readOnly: true },
      // The data plane token for the ADS stream, when the authority generated it (read-only).
      { source: 'data-plane-token', target: '/data-plane', readOnly: true },
    ]);
    assert.equal(config.services['token-authority'].environment?.XDS_ENABLED, 'true');
    assert.equal(envoy.environment?.DATA_PLANE_TOKEN, SECRETS.DATA_PLANE_TOKEN, 'the token Envoy presents to ADS, when given');
    assert.equal(envoy.user, '1000:1000', 'not root; the uid that can read the generated token file');
    // Published on loopback only: the tutorial's *.oto.tools is 127.0.0.1.
    assert.deepEqual(
      ports(envoy).map((port) => [port.hostIp, port.published, port.target]),
      [
        ['127.0.0.1', 8080, 8080],
        ['127.0.0.1', 9901, 9901],
      ],
    );
    // Started with ext-authz, not after its health check: ext_authz denies (fails closed) for the
    // second or two before ext-authz has the authority's state, and the first answer comes within
    // 15 s of `up` (test/docker/compose-up.test.ts) instead of 46 s.
    for (const service of ['ext-authz', 'token-authority', 'echo'])
      assert.equal(envoy.depends_on?.[service]?.condition, 'service_started', service);
    assert.equal(
      config.services['ext-authz'].depends_on?.['token-authority']?.condition,
      'service_started',
      'it reconnects until the authority answers',
    );
  });

  it('starts without tokens: the authority generates them (no default value in the file), shared with ext-authz through a volume', () => {
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const name of Object.keys(SECRETS)) delete env[name];
    delete env.ENVOY_CONFIG;
    delete env.ENVOY_CLUSTER_CONFIG;
    const result = runComposeConfig(env);
    assert.equal(result.status, 0, result.stderr);
    const unset = parse(result.stdout) as ComposeConfig;
    for (const [authority, extAuthz, dataVolume, tokenVolume] of [
      ['token-authority', 'ext-authz', 'authority-data', 'data-plane-token'],
      ['authority-a', 'cluster-ext-authz', 'cluster-authority-data', 'cluster-data-plane-token'],
      ['authority-b', 'cluster-ext-authz', 'cluster-authority-data', 'cluster-data-plane-token'],
    ]) {
      const environment = unset.services[authority].environment ?? {};
      // Empty is unset: generated on first start (the admin token printed once in the log, its hash kept).
      assert.equal(environment.ADMIN_TOKEN ?? '', '', authority);
      assert.equal(environment.DATA_PLANE_TOKEN ?? '', '', authority);
      assert.equal(environment.DATA_PLANE_TOKEN_FILE, '/app/data-plane/token', authority);
      assert.equal(unset.services[extAuthz].environment?.AUTHORITY_TOKEN ?? '', '', extAuthz);
      assert.equal(unset.services[extAuthz].environment?.AUTHORITY_TOKEN_FILE, '/app/data-plane/token', extAuthz);
      assert.deepEqual(
        mounts(unset.services[authority]).map((mount) => [mount.source, mount.target, mount.readOnly]),
        [
          [dataVolume, '/app/data', false],
          [tokenVolume, '/app/data-plane', false],
        ],
        authority,
      );
      assert.deepEqual(
        mounts(unset.services[extAuthz]).map((mount) => [mount.source, mount.target, mount.readOnly]),
        [[tokenVolume, '/app/data-plane', true]],
        `${extAuthz} reads the token, nothing else of the authority's data`,
      );
    }
  });

  it('switches Envoy to a static file with ENVOY_CONFIG (envoy.yaml, or envoy-http.yaml for ext_authz in HTTP mode), and the cluster with ENVOY_CLUSTER_CONFIG', () => {
    const envoy = composeConfig({ ENVOY_CONFIG: 'envoy-http.yaml' }).services.envoy;
    assert.equal(mounts(envoy)[0].source, path.join(ROOT, 'envoy', 'envoy-http.yaml'));
    const cluster = composeConfig({ ENVOY_CLUSTER_CONFIG: 'envoy-cluster.yaml' }).services['cluster-envoy'];
    assert.equal(mounts(cluster)[0].source, path.join(ROOT, 'envoy', 'envoy-cluster.yaml'));
  });

  it('builds the Node services from a Dockerfile that exists', () => {
    for (const name of NODE_SERVICES) {
      const build = config.services[name].build;
      assert.ok(build, `${name} has build:`);
      const dockerfile = path.resolve(build.context, build.dockerfile ?? 'Dockerfile');
      assert.ok(existsSync(dockerfile), `${name}: ${dockerfile} exists`);
    }
  });

  it("builds the image with the project's own build (dist/ and the reflection descriptor sets)", () => {
    const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    assert.match(dockerfile, /^RUN npm run build\b/m, 'npm run build, not tsc alone: the image needs dist/proto/*.binpb too');
    for (const built of [
      'dist/services/token-authority/main.js',
      'dist/services/ext-authz/main.js',
      'dist/services/echo-backend/main.js',
      'dist/proto/token_authority.binpb',
      'dist/proto/health.binpb',
    ]) {
      assert.ok(existsSync(path.join(ROOT, built)), `${built} is what npm run build makes and the image runs`);
    }
  });

  it('configures the token authority: issuer, admin token, data volume, gRPC port', () => {
    const authority = config.services['token-authority'];
    assert.equal(authority.environment?.ISSUER, 'http://oauth.oto.tools:8080');
    assert.equal(authority.environment?.ADMIN_TOKEN, SECRETS.ADMIN_TOKEN);
    assert.equal(authority.environment?.DATA_PLANE_TOKEN, SECRETS.DATA_PLANE_TOKEN);
    assert.equal(
      config.services['ext-authz'].environment?.AUTHORITY_TOKEN,
      SECRETS.DATA_PLANE_TOKEN,
      'ext-authz watches with the data plane token',
    );
    const data = mounts(authority).find((mount) => mount.target === '/app/data');
    assert.ok(data && config.volumes && data.source in config.volumes, 'a named volume on /app/data');
    assert.deepEqual(
      ports(authority).map((port) => [port.hostIp, port.published, port.target]),
      [['127.0.0.1', 50051, 50051]],
    );
  });

  it('runs ext-authz and the echo backend from the same image with their own commands', () => {
    const extAuthz = config.services['ext-authz'];
    // The heap bounds every start of ext-authz uses (services/ext-authz/node-flags.ts).
    assert.deepEqual(extAuthz.command, ['node', ...EXT_AUTHZ_NODE_FLAGS, 'dist/services/ext-authz/main.js']);
    assert.deepEqual(config.services['cluster-ext-authz'].command, extAuthz.command);
    // And the environment they go with (MALLOC_ARENA_MAX), in both ext-authz services and the npm script.
    for (const [name, value] of Object.entries(EXT_AUTHZ_ENV)) {
      assert.equal(extAuthz.environment?.[name], value, name);
      assert.equal(config.services['cluster-ext-authz'].environment?.[name], value, name);
    }
    const scripts = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
    const assignments = Object.entries(EXT_AUTHZ_ENV)
      .map(([name, value]) => `${name}=${value} `)
      .join('');
    assert.ok(
      scripts['start:ext-authz'].endsWith(`${assignments}node ${EXT_AUTHZ_NODE_FLAGS.join(' ')} dist/services/ext-authz/main.js`),
      scripts['start:ext-authz'],
    );
    assert.equal(extAuthz.environment?.AUTHORITY_GRPC_URL, 'token-authority:50051');
    assert.ok(extAuthz.healthcheck?.test.join(' ').includes('http://127.0.0.1:9192/health'));
    assert.deepEqual(config.services.echo.command, ['node', 'dist/services/echo-backend/main.js']);
    assert.equal(config.services.echo.environment?.PORT, '8081');
  });

  it('health-checks the Node services with node itself (slim images have no curl)', () => {
    for (const name of NODE_SERVICES) assert.deepEqual(config.services[name].healthcheck?.test.slice(0, 3), ['CMD', 'node', '-e'], name);
  });
});

describe('Dockerfile', () => {
  const lines = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').split('\n');
  const instructions = (keyword: string) =>
    lines.filter((line) => line.startsWith(`${keyword} `)).map((line) => line.slice(keyword.length + 1));

  it('builds on a pinned Node 24 LTS bookworm-slim image', () => {
    const images = instructions('FROM').map((from) => from.split(' ')[0]);
    const external = images.filter((image) => image.includes(':'));
    assert.deepEqual(external, ['node:24.21-bookworm-slim']);
  });

  it('runs as an unprivileged user, the token authority by default', () => {
    const users = instructions('USER');
    assert.ok(users.length > 0 && !['root', '0'].includes(users[users.length - 1]), 'USER is not root');
    assert.deepEqual(instructions('CMD'), ['["node", "dist/services/token-authority/main.js"]']);
  });
});

describe('echo backend over HTTP', () => {
  let backend: EchoBackend;
  before(async () => {
    backend = await startEchoBackend(0, '127.0.0.1');
  });
  after(() => backend.close());

  it('answers with the method, path and request headers as JSON', async () => {
    const response = await fetch(`${backend.url}/anything/here?x=1`, {
      headers: { Authorization: 'Bearer generated-token-xxxxx', 'X-Client-Id': 'my-id' },
    });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
    const body = (await response.json()) as EchoResponse;
    assert.equal(body.method, 'GET');
    assert.equal(body.path, '/anything/here?x=1');
    assert.equal(body.headers.authorization, 'Bearer generated-token-xxxxx', 'the tutorial shows the Authorization header');
    assert.equal(body.headers['x-client-id'], 'my-id', 'header names lower-cased');
  });

  it('answers a POST with a body the same way', async () => {
    const response = await fetch(`${backend.url}/`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ a: 1 }),
    });
    const body = (await response.json()) as EchoResponse;
    assert.equal(body.method, 'POST');
    assert.equal(body.path, '/');
    assert.equal(body.headers['content-type'], 'application/json');
  });
});
