import { spawn, type ChildProcess } from 'node:child_process';

const KEEP_CHARS = 512 * 1024;

/** A bounded log of a stream with absolute offsets, so callers can ask for "what came since". */
class OutputLog {
  private text = '';
  private total = 0;
  append(chunk: string): void {
    this.text += chunk;
    this.total += chunk.length;
    if (this.text.length > KEEP_CHARS) this.text = this.text.slice(-KEEP_CHARS);
  }
  get mark(): number {
    return this.total;
  }
  since(mark: number): string {
    return this.text.slice(Math.max(0, this.text.length - (this.total - mark)));
  }
}

export interface OutputMark {
  stdout: number;
  stderr: number;
}

/**
 * A service run as its own node process (the real entry point, as `npm start` runs it), with its
 * output kept for assertion messages and every exit that was not asked for recorded.
 */
export class ChildService {
  private child: ChildProcess | undefined;
  private stopping = false;
  private readonly stdout = new OutputLog();
  private readonly stderr = new OutputLog();
  /** Exits nobody asked for: what, and the process's stderr at the time. */
  readonly deaths: { exit: string; stderr: string }[] = [];
  private readonly killOnExit = () => this.child?.kill('SIGKILL');

  constructor(
    readonly name: string,
    private readonly script: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly ready: () => Promise<boolean>,
  ) {}

  async start(timeoutMs = 20_000): Promise<void> {
    this.stopping = false;
    const child = spawn(process.execPath, [this.script], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => this.stdout.append(chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => this.stderr.append(chunk));
    child.once('exit', (code, signal) => {
      if (!this.stopping)
        this.deaths.push({ exit: `exited with code ${code} signal ${signal}`, stderr: this.stderr.since(0).slice(-4000) });
    });
    process.once('exit', this.killOnExit);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(
          `${this.name} exited at start (${child.exitCode ?? child.signalCode}):\n${this.stderr.since(0)}\n${this.stdout.since(0)}`,
        );
      if (await this.ready().catch(() => false)) return;
      await new Promise((done) => setTimeout(done, 50));
    }
    throw new Error(`${this.name} did not become ready within ${timeoutMs} ms:\n${this.stderr.since(0)}\n${this.stdout.since(0)}`);
  }

  /** Undefined while running; otherwise how it ended. */
  exitDescription(): string | undefined {
    const child = this.child;
    if (!child) return 'never started';
    if (child.exitCode === null && child.signalCode === null) return undefined;
    return `exited with code ${child.exitCode} signal ${child.signalCode}`;
  }

  get exitCode(): number | null | undefined {
    return this.child?.exitCode;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  mark(): OutputMark {
    return { stdout: this.stdout.mark, stderr: this.stderr.mark };
  }

  stderrSince(mark: OutputMark): string {
    return this.stderr.since(mark.stderr);
  }

  stdoutSince(mark: OutputMark): string {
    return this.stdout.since(mark.stdout);
  }

  /** SIGTERM (graceful), SIGKILL after 5 s. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.stopping = true;
    process.removeListener('exit', this.killOnExit);
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((done) => child.once('exit', () => done()));
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(killer);
  }

  /** After a crash: a fresh process on the same settings (ports, data folder). */
  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}
