import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/** Load loops here are bounded: every run has a fixed duration and connection count, on 127.0.0.1 only. */
export const DURATION_SECONDS = Number(process.env.BENCH_SECONDS ?? 10);

export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => done(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export interface Spawned {
  child: ChildProcess;
  url: string;
  stop(): Promise<void>;
}

/** Starts a node script in its own process and waits until `readyPath` answers. */
export async function spawnNode(script: string, env: Record<string, string>, port: number, readyPath: string): Promise<Spawned> {
  const child = spawn(process.execPath, [resolve(__dirname, script)], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
  const url = `http://127.0.0.1:${port}`;
  for (let attempt = 0; attempt < 150; attempt += 1) {
    if (child.exitCode !== null) throw new Error(`${script} exited with ${child.exitCode}`);
    try {
      await fetch(`${url}${readyPath}`);
      break;
    } catch {
      await new Promise((done) => setTimeout(done, 100));
    }
  }
  return {
    child,
    url,
    stop: () => new Promise((done) => (child.exitCode !== null ? done() : (child.once('exit', () => done()), child.kill('SIGTERM')))),
  };
}

export async function startAuthorityProcess(extraEnv: Record<string, string> = {}): Promise<Spawned & { adminToken: string }> {
  const port = await freePort();
  const adminToken = 'bench-admin-token-0123456789';
  const spawned = await spawnNode('../services/token-authority/main.js', {
    DATA_DIR: mkdtempSync(join(tmpdir(), 'ta-bench-')),
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: String(port),
    GRPC_HOST: '127.0.0.1',
    GRPC_PORT: String(await freePort()),
    ADMIN_TOKEN: adminToken,
    LOG_LEVEL: 'warn',
    ...extraEnv,
  }, port, '/.well-known/otoroshi/oauth/jwks.json');
  return { ...spawned, adminToken };
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
export function wrk(url: string, options: { connections: number; method?: string; body?: string; headers?: Record<string, string> }): LoadResult {
  const script = join(mkdtempSync(join(tmpdir(), 'wrk-')), 'request.lua');
  const lines = [`wrk.method = ${JSON.stringify(options.method ?? 'GET')}`];
  if (options.body !== undefined) lines.push(`wrk.body = ${JSON.stringify(options.body)}`);
  for (const [name, value] of Object.entries(options.headers ?? {})) lines.push(`wrk.headers[${JSON.stringify(name)}] = ${JSON.stringify(value)}`);
  writeFileSync(script, `${lines.join('\n')}\n`);
  const result = spawnSync('wrk', ['-t1', `-c${options.connections}`, `-d${DURATION_SECONDS}s`, '--latency', '-s', script, url], { encoding: 'utf8', timeout: (DURATION_SECONDS + 30) * 1000 });
  if (result.status !== 0) throw new Error(`wrk failed: ${result.stderr || result.error}`);
  const output = result.stdout;
  const requestsPerSecond = Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1]);
  const p50Ms = toMs(/\s50%\s+(\S+)/.exec(output)?.[1] ?? '');
  const p99Ms = toMs(/\s99%\s+(\S+)/.exec(output)?.[1] ?? '');
  const errors = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(output)?.[1] ?? 0) + Number(/Socket errors:.*timeout (\d+)/.exec(output)?.[1] ?? 0);
  return { requestsPerSecond, p50Ms, p99Ms, errors };
}

export function formatRow(name: string, result: LoadResult, reference?: { name: string; value: number }): string {
  const ratio = reference ? `  ${((result.requestsPerSecond / reference.value) * 100).toFixed(0)}% of ${reference.name}` : '';
  return `${name.padEnd(44)} ${result.requestsPerSecond.toFixed(0).padStart(7)} req/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms  errors ${result.errors}${ratio}`;
}
