import { loadAuthorizationService } from '../services/ext-authz/envoy-check';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from '../test/support/ports';

export { freePort };

/** Load loops here are bounded: every run has a fixed duration and connection count, on 127.0.0.1 only. */
export const DURATION_SECONDS = Number(process.env.BENCH_SECONDS ?? 10);

export interface Spawned {
  child: ChildProcess;
  url: string;
  stop(): Promise<void>;
}

/** How a node script is started: node flags before it, and an IPC channel to it. */
export interface SpawnOptions {
  nodeArgs?: string[];
  ipc?: boolean;
}

/** Starts a node script in its own process and waits until `readyPath` answers. */
export async function spawnNode(
  script: string,
  env: Record<string, string>,
  port: number,
  readyPath: string,
  options: SpawnOptions = {},
): Promise<Spawned> {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), resolve(__dirname, script)], {
    env: { ...process.env, ...env },
    stdio: options.ipc ? ['ignore', 'ignore', 'inherit', 'ipc'] : ['ignore', 'ignore', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  // About 15 s: a process that never answers fails the bench here instead of later, as a row of errors.
  for (let attempt = 0; ; attempt += 1) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`${script} exited with ${child.exitCode ?? child.signalCode}`);
    try {
      await fetch(`${url}${readyPath}`);
      break;
    } catch {
      if (attempt >= 150) {
        child.kill('SIGKILL');
        throw new Error(`${script} did not answer ${readyPath} on port ${port}`);
      }
      await new Promise((done) => setTimeout(done, 100));
    }
  }
  return {
    child,
    url,
    stop: () => new Promise((done) => (child.exitCode !== null ? done() : (child.once('exit', () => done()), child.kill('SIGTERM')))),
  };
}

export async function startAuthorityProcess(
  extraEnv: Record<string, string> = {},
): Promise<Spawned & { adminToken: string; grpcAddress: string }> {
  const port = await freePort();
  const grpcPort = await freePort();
  const adminToken = 'bench-admin-token-0123456789';
  const spawned = await spawnNode(
    '../services/token-authority/main.js',
    {
      DATA_DIR: mkdtempSync(join(tmpdir(), 'ta-bench-')),
      HTTP_HOST: '127.0.0.1',
      HTTP_PORT: String(port),
      GRPC_HOST: '127.0.0.1',
      GRPC_PORT: String(grpcPort),
      ADMIN_TOKEN: adminToken,
      LOG_LEVEL: 'warn',
      ...extraEnv,
    },
    port,
    '/.well-known/otoroshi/oauth/jwks.json',
  );
  return { ...spawned, adminToken, grpcAddress: `127.0.0.1:${grpcPort}` };
}

export async function adminPost(base: { url: string; adminToken: string }, path: string, body: unknown): Promise<any> {
  const response = await fetch(`${base.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${base.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

export interface LoadResult {
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
}

function toMs(value: string): number {
  const match = /^([\d.]+)(us|ms|s)$/.exec(value.trim());
  if (!match) return Number.NaN;
  const scale = { us: 0.001, ms: 1, s: 1000 }[match[2] as 'us' | 'ms' | 's'];
  return Number(match[1]) * scale;
}

/** wrk (Debian's package): one thread, a fixed number of connections, a fixed duration. */
/** A token for the `bench` API key (created by the caller), from the authority's token endpoint. */
export async function benchClientToken(authority: { url: string }): Promise<string> {
  const answer = await fetch(`${authority.url}/.well-known/otoroshi/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials&client_id=bench&client_secret=bench-secret-0123456789-0123456789-01',
  });
  return ((await answer.json()) as { access_token: string }).access_token;
}

export function wrk(
  url: string,
  options: { connections: number; method?: string; body?: string; headers?: Record<string, string> },
): LoadResult {
  const script = join(mkdtempSync(join(tmpdir(), 'wrk-')), 'request.lua');
  const lines = [`wrk.method = ${JSON.stringify(options.method ?? 'GET')}`];
  if (options.body !== undefined) lines.push(`wrk.body = ${JSON.stringify(options.body)}`);
  for (const [name, value] of Object.entries(options.headers ?? {}))
    lines.push(`wrk.headers[${JSON.stringify(name)}] = ${JSON.stringify(value)}`);
  writeFileSync(script, `${lines.join('\n')}\n`);
  const result = spawnSync('wrk', ['-t1', `-c${options.connections}`, `-d${DURATION_SECONDS}s`, '--latency', '-s', script, url], {
    encoding: 'utf8',
    timeout: (DURATION_SECONDS + 30) * 1000,
  });
  if (result.status !== 0) throw new Error(`wrk failed: ${result.stderr || result.error}`);
  const output = result.stdout;
  const requestsPerSecond = Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1]);
  const p50Ms = toMs(/\s50%\s+(\S+)/.exec(output)?.[1] ?? '');
  const p99Ms = toMs(/\s99%\s+(\S+)/.exec(output)?.[1] ?? '');
  const errors =
    Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(output)?.[1] ?? 0) + Number(/Socket errors:.*timeout (\d+)/.exec(output)?.[1] ?? 0);
  return { requestsPerSecond, p50Ms, p99Ms, errors };
}

export function formatRow(name: string, result: LoadResult, reference?: { name: string; value: number }): string {
  const ratio = reference ? `  ${((result.requestsPerSecond / reference.value) * 100).toFixed(0)}% of ${reference.name}` : '';
  return `${name.padEnd(44)} ${result.requestsPerSecond.toFixed(0).padStart(7)} req/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms  errors ${result.errors}${ratio}`;
}

/** A gRPC request as it travels: 1 byte "not compressed", 4 bytes length, the message. */
export function grpcFrame(message: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(message.length, 1);
  return Buffer.concat([header, message]);
}

/** Sends one framed gRPC request over HTTP/2 and returns its grpc-status, to check a payload before loading a server with it. */
export async function grpcStatusOf(address: string, path: string, frame: Buffer, headers: Record<string, string> = {}): Promise<number> {
  const { connect } = await import('node:http2');
  const session = connect(`http://${address}`);
  try {
    return await new Promise<number>((resolve, reject) => {
      const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
      stream.on(
        'response',
        (responseHeaders) => responseHeaders['grpc-status'] !== undefined && resolve(Number(responseHeaders['grpc-status'])),
      );
      stream.on('trailers', (trailers) => resolve(Number(trailers['grpc-status'])));
      stream.on('error', reject);
      stream.resume();
      stream.end(frame);
    });
  } finally {
    session.close();
  }
}

/**
 * h2load (Debian's nghttp2-client) replaying one pre-serialized gRPC request: the load tool
 * costs little, so the server is what is measured. Latency percentiles come from its log file.
 */
export function h2loadGrpc(
  address: string,
  path: string,
  frame: Buffer,
  options: { clients: number; streams: number; headers?: Record<string, string> },
): LoadResult {
  const dir = mkdtempSync(join(tmpdir(), 'h2load-'));
  const dataFile = join(dir, 'request.bin');
  const logFile = join(dir, 'log.tsv');
  writeFileSync(dataFile, frame);
  const headerArgs = Object.entries({ 'content-type': 'application/grpc', te: 'trailers', ...options.headers }).flatMap(([name, value]) => [
    '-H',
    `${name}: ${value}`,
  ]);
  const result = spawnSync(
    'h2load',
    [
      `-c${options.clients}`,
      `-m${options.streams}`,
      `-D${DURATION_SECONDS}`,
      '--warm-up-time=1',
      '-d',
      dataFile,
      '--log-file',
      logFile,
      ...headerArgs,
      `http://${address}${path}`,
    ],
    {
      encoding: 'utf8',
      timeout: (DURATION_SECONDS + 30) * 1000,
    },
  );
  if (result.status !== 0) throw new Error(`h2load failed: ${result.stderr || result.stdout || result.error}`);
  const requestsPerSecond = Number(/finished in [^,]+, ([\d.]+) req\/s/.exec(result.stdout)?.[1]);
  const failed = Number(/(\d+) failed/.exec(result.stdout)?.[1] ?? 0) + Number(/(\d+) errored/.exec(result.stdout)?.[1] ?? 0);
  // Log lines: start time (µs), HTTP status, duration (µs).
  const durations = readFileSync(logFile, 'utf8')
    .trim()
    .split('\n')
    .map((line) => Number(line.split('\t')[2]) / 1000)
    .sort((a, b) => a - b);
  const percentile = (p: number) => durations[Math.min(durations.length - 1, Math.floor((p / 100) * durations.length))] ?? Number.NaN;
  return { requestsPerSecond, p50Ms: percentile(50), p99Ms: percentile(99), errors: failed };
}

/**
 * The CheckRequest Envoy sends for `GET <path>` on `host` with a bearer token, with the `foo`
 * policy in context_extensions, pre-serialized and framed for h2load.
 */
export function envoyCheckRequest(token: string, host = 'foo.oto.tools:8080', path = '/api/items?page=2'): Buffer {
  const message = {
    attributes: {
      source: { address: { socket_address: { address: '127.0.0.1', port_value: 53422 } } },
      destination: { address: { socket_address: { address: '127.0.0.1', port_value: 8080 } } },
      request: {
        time: { seconds: Math.floor(Date.now() / 1000) },
        http: {
          id: '13359530303458620493',
          method: 'GET',
          headers: {
            ':authority': host,
            ':path': path,
            ':method': 'GET',
            ':scheme': 'http',
            'user-agent': 'curl/7.88.1',
            accept: '*/*',
            authorization: `Bearer ${token}`,
            'x-forwarded-proto': 'http',
            'x-request-id': '4a8d3bd6-d5c5-4b5c-9a0e-6c7b1c0f2f4e',
          },
          path,
          host,
          scheme: 'http',
          protocol: 'HTTP/1.1',
        },
      },
      context_extensions: { route: 'foo' },
    },
  };
  return grpcFrame(checkMethod().requestSerialize(message));
}

let loadedCheck: ReturnType<typeof loadAuthorizationService>['Check'] | undefined;
/** proto-loader's Check, parsed from the .proto files once (that takes about 50 ms a time). */
function checkMethod() {
  loadedCheck ??= loadAuthorizationService().Check;
  return loadedCheck;
}

/**
 * ext-authz in its own process on free ports of 127.0.0.1, with the shipped policies
 * (config/ext-authz.yaml), following `authority`; resolves once it holds the authority's state.
 */
export async function startExtAuthzProcess(
  authority: { grpcAddress: string; adminToken: string },
  env: Record<string, string> = {},
  options: SpawnOptions & { /** Another build's dist/services/ext-authz/main.js (to compare builds in one run). */ main?: string } = {},
) {
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const spawned = await spawnNode(
    options.main ?? '../services/ext-authz/main.js',
    {
      CONFIG_FILE: resolve(__dirname, '../../config/ext-authz.yaml'),
      GRPC_HOST: '127.0.0.1',
      GRPC_PORT: String(grpcPort),
      HTTP_HOST: '127.0.0.1',
      HTTP_PORT: String(httpPort),
      AUTHORITY_GRPC_URL: authority.grpcAddress,
      AUTHORITY_TOKEN: authority.adminToken,
      LOG_LEVEL: 'warn',
      ...env,
    },
    httpPort,
    '/health',
    options,
  );
  // /health answers 503 until the first state arrives.
  for (let attempt = 0; (await fetch(`${spawned.url}/health`)).status !== 200; attempt += 1) {
    if (attempt === 100) throw new Error('ext-authz holds no state of the authority 5 s after it listens');
    await new Promise((done) => setTimeout(done, 50));
  }
  return { ...spawned, grpcPort, httpPort, grpcAddress: `127.0.0.1:${grpcPort}` };
}
