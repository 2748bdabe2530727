import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { envoyBinary } from './envoy';
import { freePort } from './ports';

export interface LocalStack {
  stack: ChildProcess;
  /** Envoy's plain HTTP listener (the tutorial's :8080). */
  base: string;
  dataDir: string;
  /** Everything the stack printed so far (it goes on collecting after start). */
  output: () => string;
  /** The port of each part, by its environment variable (PORT, ECHO_PORT...). */
  ports: Record<string, string>;
}

/**
 * `npm start`'s stack (<root>/dist/services/local-stack/main.js) with a real Envoy, every part on
 * a free loopback port and its store in a new folder under the temporary directory; resolves once
 * it prints "local stack ready", rejects if it exits or takes longer than `startMs`.
 */
export async function startLocalStack(options: {
  root: string;
  adminToken: string;
  dataDirPrefix: string;
  startMs?: number;
  /** More environment for the stack (ENVOY_CONFIG...). */
  env?: Record<string, string>;
}): Promise<LocalStack> {
  const binary = envoyBinary();
  const ports: Record<string, string> = {};
  for (const name of [
    'PORT',
    'HTTPS_PORT',
    'AUTHORITY_HTTP_PORT',
    'AUTHORITY_GRPC_PORT',
    'EXT_AUTHZ_GRPC_PORT',
    'EXT_AUTHZ_HTTP_PORT',
    'ECHO_PORT',
    'ENVOY_ADMIN_PORT',
    'XDS_PORT',
  ])
    ports[name] = String(await freePort());
  const dataDir = mkdtempSync(path.join(tmpdir(), options.dataDirPrefix));
  const stack = spawn(process.execPath, [path.join(options.root, 'dist', 'services', 'local-stack', 'main.js')], {
    cwd: options.root,
    env: {
      PATH: `${path.dirname(binary)}:${process.env.PATH}`,
      ENVOY_BINARY: binary,
      ADMIN_TOKEN: options.adminToken,
      DATA_DIR: dataDir,
      HTTP_HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      ...options.env,
      ...ports,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  stack.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  stack.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const started = Date.now();
  const startMs = options.startMs ?? 60_000;
  while (!output.includes('local stack ready')) {
    if (stack.exitCode !== null || Date.now() - started > startMs) {
      // Nothing is left behind for the caller to clean up when the stack never became ready.
      stack.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
      throw new Error(`the stack did not start:\n${output}`);
    }
    await new Promise((done) => setTimeout(done, 100));
  }
  return { stack, base: `http://127.0.0.1:${ports.PORT}`, dataDir, output: () => output, ports };
}
