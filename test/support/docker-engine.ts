import { type ChildProcess, spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/** The Docker CLI of Debian's docker.io (another `docker` earlier on PATH may not talk to a 20.10 engine). */
export const DOCKER = process.env.DOCKER ?? (spawnSync('test', ['-x', '/usr/bin/docker']).status === 0 ? '/usr/bin/docker' : 'docker');

export interface DockerEngine {
  /** DOCKER_HOST and friends for every docker / docker-compose call against this engine. */
  env: NodeJS.ProcessEnv;
  dir: string;
  /** The storage driver it runs (overlay2, or vfs where overlay cannot mount). */
  driver: string;
  /** Runs the Docker CLI; throws with its output unless it exits 0. */
  docker(args: string[], options?: { timeoutMs?: number; input?: string }): string;
  stop(): Promise<void>;
}

/**
 * Why this machine cannot run its own Docker engine, or undefined when it can try: dockerd
 * needs root (cgroups, namespaces, mounts).
 */
export function engineUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'dockerd needs root (this process runs as another user)';
  for (const tool of ['dockerd', DOCKER, 'docker-compose', 'debootstrap', 'curl', 'jq']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
      return `${tool} is not installed (Debian: apt-get install docker.io docker-compose debootstrap curl jq)`;
  }
  return undefined;
}

export function run(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  options: { timeoutMs?: number; input?: string; cwd?: string } = {},
): string {
  const result: SpawnSyncReturns<string> = spawnSync(command, args, {
    env,
    cwd: options.cwd,
    input: options.input,
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 120_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  if (result.status !== 0)
    throw new Error(
      `${command} ${args.join(' ')} failed (${result.error?.message ?? result.signal ?? result.status}):\n${result.stdout}\n${result.stderr}`,
    );
  return result.stdout;
}

/**
 * A Docker engine of its own for one test run: dockerd as root with no iptables (no NAT:
 * containers reach only their compose networks; published ports go through docker-proxy), no
 * default bridge, and its data root, exec root, pid file and socket under one temporary folder,
 * removed by stop(). Storage: overlay2 where the kernel and file system allow it, else vfs (works
 * anywhere, but copies every layer and every container's file system whole: builds and `up` take
 * several times longer). DOCKER_STORAGE_DRIVER chooses; COMPOSE_TEST_DOCKER_HOST uses a running
 * engine instead (left running).
 */
export async function startEngine(): Promise<DockerEngine> {
  // An engine already running (while working on the suite: its layer cache makes rebuilds quick).
  const existing = process.env.COMPOSE_TEST_DOCKER_HOST;
  if (existing) {
    const env: NodeJS.ProcessEnv = { ...process.env, DOCKER_HOST: existing, DOCKER_BUILDKIT: '0', COMPOSE_DOCKER_CLI_BUILD: '0' };
    const docker = (args: string[], options: { timeoutMs?: number; input?: string } = {}) => run(DOCKER, args, env, options);
    return { env, dir: existing, driver: docker(['info', '--format', '{{.Driver}}']).trim(), docker, stop: async () => {} };
  }
  const drivers = process.env.DOCKER_STORAGE_DRIVER ? [process.env.DOCKER_STORAGE_DRIVER] : ['overlay2', 'vfs'];
  let failure: unknown;
  for (const driver of drivers) {
    try {
      return await startEngineWith(driver);
    } catch (error) {
      failure = error;
    }
  }
  throw failure;
}

async function startEngineWith(driver: string): Promise<DockerEngine> {
  // Short: a unix socket path is limited to 107 bytes.
  const dir = mkdtempSync('/tmp/ta-dockerd-');
  const socket = join(dir, 'docker.sock');
  const logFile = join(dir, 'dockerd.log');
  const child: ChildProcess = spawn(
    'dockerd',
    [
      `--storage-driver=${driver}`,
      '--iptables=false',
      '--ip-masq=false',
      '--bridge=none',
      `--data-root=${join(dir, 'data')}`,
      `--exec-root=${join(dir, 'exec')}`,
      `--pidfile=${join(dir, 'dockerd.pid')}`,
      `--host=unix://${socket}`,
    ],
    { stdio: ['ignore', openSync(logFile, 'a'), openSync(logFile, 'a')] },
  );
  // The classic builder: BuildKit would fetch the Dockerfile's `# syntax=` frontend from a registry.
  const env: NodeJS.ProcessEnv = { ...process.env, DOCKER_HOST: `unix://${socket}`, DOCKER_BUILDKIT: '0', COMPOSE_DOCKER_CLI_BUILD: '0' };
  delete env.DOCKER_CONTEXT;
  const docker = (args: string[], options: { timeoutMs?: number; input?: string } = {}) => run(DOCKER, args, env, options);
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      // Stops the containers still running too (their shutdown timeout, 10 s at most).
      child.kill('SIGTERM');
      const killed = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(killed);
    }
    // dockerd leaves its network namespace mounted under the exec root.
    spawnSync('umount', [join(dir, 'exec', 'netns', 'default')], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) {
      const log = readFileSync(logFile, 'utf8');
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`dockerd exited (${child.exitCode}): ${log.slice(-2000)}`);
    }
    if (spawnSync(DOCKER, ['version', '--format', '{{.Server.Version}}'], { env, timeout: 5000 }).status === 0) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error('dockerd did not answer within 60 s');
    }
    await new Promise((done) => setTimeout(done, 200));
  }
  const used = docker(['info', '--format', '{{.Driver}}']).trim();
  if (used !== driver) {
    await stop();
    throw new Error(`dockerd runs ${used}, not ${driver}`);
  }
  return { env, dir, driver, docker, stop };
}
