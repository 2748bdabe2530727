import { execFile } from 'node:child_process';

export interface NodeRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * A Node script run to its end (a CLI), without blocking this process: spawnSync would stop the
 * event loop of a test's in-process authority too, and a kept-alive connection whose server-side
 * timeout passed meanwhile is reset under the next request (ECONNRESET).
 */
export function runNode(args: string[], options: { env?: NodeJS.ProcessEnv; timeout?: number } = {}): Promise<NodeRun> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      args,
      { env: options.env ?? process.env, encoding: 'utf8', timeout: options.timeout ?? 20_000, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = (error as { code?: unknown } | null)?.code;
        resolve({ status: error ? (typeof code === 'number' ? code : null) : 0, stdout, stderr });
      },
    );
  });
}
