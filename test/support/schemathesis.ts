import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';

/** The release .ci/run installs (into .ci/venv) and the tests are written against. */
export const SCHEMATHESIS_RELEASE = '4.32.5';

export type SchemathesisTool = { binary: string; python: string } | { missing: string };

/**
 * Schemathesis (PyPI): SCHEMATHESIS_BINARY, or `schemathesis` on PATH. Its Python (the one
 * of its virtualenv, for the OpenAPI 3.1 check) is read from the script's shebang.
 */
export function findSchemathesis(): SchemathesisTool {
  const binary = process.env.SCHEMATHESIS_BINARY ?? 'schemathesis';
  const probe = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  if (probe.status !== 0) {
    return {
      missing: `'${binary}' did not run (${probe.error?.message ?? probe.stderr.trim()}): pip install schemathesis==${SCHEMATHESIS_RELEASE} (.ci/run does it into .ci/venv), or set SCHEMATHESIS_BINARY`,
    };
  }
  const located = path.isAbsolute(binary) ? binary : spawnSync('sh', ['-c', `command -v "${binary}"`], { encoding: 'utf8' }).stdout.trim();
  const script = realpathSync(located);
  const shebang = /^#!\s*(\S+)/.exec(readFileSync(script, 'utf8').split('\n', 1)[0]);
  const python = shebang && existsSync(shebang[1]) ? shebang[1] : path.join(path.dirname(script), 'python');
  return { binary, python };
}

/** Without Schemathesis a test skips with the reason shown, unless CI=true or SCHEMATHESIS_REQUIRED=1, where it fails. */
export function schemathesisSkip(tool: SchemathesisTool): string | false {
  if (!('missing' in tool) || process.env.CI === 'true' || process.env.SCHEMATHESIS_REQUIRED === '1') return false;
  return `Schemathesis not found, skipped: ${tool.missing}`;
}

/** The tool, or the failure that says how to install it. */
export function requireSchemathesis(tool: SchemathesisTool): { binary: string; python: string } {
  if ('missing' in tool) throw new Error(`Schemathesis is required (CI=true or SCHEMATHESIS_REQUIRED=1) and ${tool.missing}`);
  return tool;
}

export interface ProcessResult {
  code: number | null;
  output: string;
}

/** Runs a command without blocking the event loop (the server under test lives in this process), killed after `timeoutMs`. */
export function run(
  command: string,
  args: string[],
  timeoutMs: number,
  options: { input?: string; cwd?: string } = {},
): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
    child.stdin.end(options.input ?? '');
  });
}
