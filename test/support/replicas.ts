import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ADMIN_TOKEN, basic, INTROSPECT_PATH, TOKEN_PATH } from './authority';
import { ChildService } from './child-service';
import { freePort } from './ports';

const MAIN = resolve(__dirname, '../../services/token-authority/main.js');

/** A token authority replica in its own process (the real entry point) on a shared PostgreSQL schema. */
export class AuthorityReplica extends ChildService {
  readonly url: string;
  readonly grpcAddress: string;
  private readonly dataDir: string;

  static async create(name: string, storeUrl: string, schema: string, env: Record<string, string> = {}): Promise<AuthorityReplica> {
    return new AuthorityReplica(name, storeUrl, schema, await freePort(), await freePort(), env);
  }

  private constructor(name: string, storeUrl: string, schema: string, httpPort: number, grpcPort: number, env: Record<string, string>) {
    const dataDir = mkdtempSync(join(tmpdir(), `ta-${name}-`));
    const url = `http://127.0.0.1:${httpPort}`;
    super(
      name,
      MAIN,
      {
        PATH: process.env.PATH,
        DATA_DIR: dataDir,
        STORE_URL: storeUrl,
        STORE_SCHEMA: schema,
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(httpPort),
        GRPC_HOST: '127.0.0.1',
        GRPC_PORT: String(grpcPort),
        ADMIN_TOKEN,
        LOG_LEVEL: 'warn',
        ...env,
      },
      async () => (await fetch(`${url}/health`)).status === 200,
    );
    this.url = url;
    this.grpcAddress = `127.0.0.1:${grpcPort}`;
    this.dataDir = dataDir;
  }

  async admin(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : undefined };
  }

  async token(clientId: string, secret: string): Promise<{ status: number; body: any }> {
    const response = await fetch(`${this.url}${TOKEN_PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(clientId, secret) },
      body: 'grant_type=client_credentials',
    });
    return { status: response.status, body: await response.json() };
  }

  async introspect(token: string, clientId: string, secret: string): Promise<{ status: number; body: any }> {
    const response = await fetch(`${this.url}${INTROSPECT_PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(clientId, secret) },
      body: new URLSearchParams({ token }).toString(),
    });
    return { status: response.status, body: await response.json() };
  }

  async remove(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Polls `probe` every 5 ms until true; resolves to the time it took (ms), rejects after `timeoutMs`. */
export async function within(timeoutMs: number, probe: () => Promise<boolean>): Promise<number> {
  const started = performance.now();
  for (;;) {
    if (await probe().catch(() => false)) return Math.round(performance.now() - started);
    if (performance.now() - started > timeoutMs) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 5));
  }
}
