import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from './ports';

export const NGINX_BINARY = process.env.NGINX_BINARY ?? '/usr/sbin/nginx';
export const NGINX_TEMPLATE = path.resolve(__dirname, '..', '..', '..', 'nginx', 'nginx.conf.template');

export interface NginxOptions {
  /** Base URL of ext-authz's HTTP mode (http://127.0.0.1:port). */
  extAuthzUrl: string;
  /** Base URL of the echo backend. */
  echoUrl: string;
  /** Base URL of the token authority's REST face. */
  authorityUrl: string;
}

export interface TestNginx {
  /** http://127.0.0.1:port; send a Host header to pick a server block. */
  url: string;
  port: number;
  /** The prefix directory (config, pid, logs, temp files). */
  prefix: string;
  /** nginx's error log so far, for assertion messages. */
  errorLog(): string;
  /** Stops nginx (fast shutdown, then SIGKILL) and removes the prefix directory. */
  stop(): Promise<void>;
}

/** The template's placeholders, as the quickstart's envsubst list names them. */
export const NGINX_PLACEHOLDERS = ['LISTEN', 'EXT_AUTHZ', 'BACKEND', 'AUTHORITY'] as const;

/**
 * Fills ${LISTEN} etc. as `envsubst '${LISTEN} ...'` does: those names only, since every other `$`
 * belongs to nginx. Each must be used by the template.
 */
export function renderNginxConfig(template: string, values: Record<(typeof NGINX_PLACEHOLDERS)[number], string>): string {
  let rendered = template;
  for (const name of NGINX_PLACEHOLDERS) {
    if (!rendered.includes(`\${${name}}`)) throw new Error(`nginx template: \${${name}} is not used`);
    rendered = rendered.split(`\${${name}}`).join(values[name]);
  }
  return rendered;
}

/** host:port of a base URL, as nginx's `server` and `proxy_pass` want it. */
function hostPort(url: string): string {
  const parsed = new URL(url);
  if (!parsed.port) throw new Error(`nginx: ${url} has no explicit port`);
  return parsed.host;
}

function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * A real nginx (daemon off, a child of this process) running nginx/nginx.conf.template from a
 * temporary prefix directory, on a free port of 127.0.0.1. Fails, never skips, without nginx.
 */
export async function startNginx(options: NginxOptions): Promise<TestNginx> {
  if (!existsSync(NGINX_BINARY)) {
    throw new Error(
      `nginx is required for this test and was not found at ${NGINX_BINARY}: apt-get install nginx-light (.ci/run does it), or set NGINX_BINARY`,
    );
  }
  const template = readFileSync(NGINX_TEMPLATE, 'utf8');
  let lastError: Error | undefined;
  // A free port can be taken between freePort() and nginx's bind: try again with another.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const rendered = renderNginxConfig(template, {
      LISTEN: `127.0.0.1:${port}`,
      EXT_AUTHZ: hostPort(options.extAuthzUrl),
      BACKEND: hostPort(options.echoUrl),
      AUTHORITY: hostPort(options.authorityUrl),
    });
    const prefix = mkdtempSync(path.join(tmpdir(), 'nginx-test-'));
    // Started as root, nginx's workers run as nobody: they must reach the temp directories.
    chmodSync(prefix, 0o755);
    const conf = path.join(prefix, 'nginx.conf');
    writeFileSync(conf, rendered);
    const args = ['-p', `${prefix}/`, '-c', conf];
    const errorLog = () => {
      try {
        return readFileSync(path.join(prefix, 'error.log'), 'utf8');
      } catch {
        return '';
      }
    };
    const checked = spawnSync(NGINX_BINARY, ['-t', '-q', ...args], { encoding: 'utf8', timeout: 10_000 });
    if (checked.status !== 0) {
      rmSync(prefix, { recursive: true, force: true });
      throw new Error(
        `nginx -t rejected the rendered nginx/nginx.conf.template:\n${checked.stderr}${checked.stdout}${checked.error ? String(checked.error) : ''}`,
      );
    }

    const child: ChildProcess = spawn(NGINX_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
    let running = true;
    void exited.then(() => (running = false));
    // If this test process dies without calling stop(), do not leave nginx behind.
    const onExit = () => child.kill('SIGTERM');
    process.once('exit', onExit);

    const stop = async () => {
      process.removeListener('exit', onExit);
      if (running) {
        child.kill('SIGTERM'); // fast shutdown: the master stops its workers and exits
        const killed = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(killed);
      }
      rmSync(prefix, { recursive: true, force: true });
    };

    const started = Date.now();
    while (running && !(await portAnswers(port))) {
      if (Date.now() - started > 5000) break;
      await new Promise((done) => setTimeout(done, 20));
    }
    if (running && (await portAnswers(port))) {
      return { url: `http://127.0.0.1:${port}`, port, prefix, errorLog, stop };
    }
    const log = `${stderr}${errorLog()}`;
    await stop();
    lastError = new Error(`nginx did not start on 127.0.0.1:${port}:\n${log}`);
    if (!/Address already in use/i.test(log)) break;
  }
  throw lastError;
}
