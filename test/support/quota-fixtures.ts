import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { TOKEN_PATH, type TestAuthority } from './authority';
import { freePort } from './ports';

/** A backend that answers 200 and counts the calls that reached it (a 429 must not reach it). */
export async function startCountingBackend(): Promise<{ url: string; calls: () => number; close(): Promise<void> }> {
  let calls = 0;
  const server = createServer((request, response) => {
    calls += 1;
    request.resume();
    request.on('end', () => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ path: request.url, headers: request.headers }));
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    calls: () => calls,
    close: () => new Promise<void>((done) => server.close(() => done())),
  };
}

/** Creates an API key with the given quotas on route_foo and returns a token for it. */
export async function keyWithQuotas(
  authority: TestAuthority,
  clientId: string,
  quotas: { throttlingQuota?: number; dailyQuota?: number; monthlyQuota?: number },
): Promise<string> {
  const clientSecret = `${clientId}-secret-0123456789-0123456789`;
  const created = await authority.admin('POST', '/api/apikeys', { clientId, clientSecret, authorizedEntities: ['route_foo'], ...quotas });
  if (created.status !== 201 && created.status !== 200)
    throw new Error(`create ${clientId}: ${created.status} ${JSON.stringify(created.body)}`);
  const response = await authority.postForm(TOKEN_PATH, {
    grant_type: 'client_credentials',
    client_id: clientId,
    client_secret: clientSecret,
  });
  const body = (await response.json()) as { access_token: string };
  return body.access_token;
}

/** A key prefix of its own for a test on the shared Redis, and a function that deletes its keys. */
export function redisTestPrefix(): { prefix: string; cleanup(url?: string): Promise<void> } {
  const prefix = `test-${randomBytes(6).toString('hex')}:`;
  return {
    prefix,
    async cleanup(url = 'redis://127.0.0.1:6379') {
      const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
      try {
        await redis.connect();
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
          cursor = next;
          if (keys.length) await redis.del(...keys);
        } while (cursor !== '0');
      } finally {
        redis.disconnect();
      }
    },
  };
}

export const SHARED_REDIS = 'redis://127.0.0.1:6379';

/** A private redis-server on a free loopback port, no persistence, that a test may stop and start again. */
export class PrivateRedis {
  private child: ChildProcess | undefined;
  port = 0;

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    const child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: 'ignore',
    });
    this.child = child;
    const onExit = () => child.kill('SIGKILL');
    process.once('exit', onExit);
    child.once('exit', () => process.removeListener('exit', onExit));
    const started = Date.now();
    for (;;) {
      const probe = new Redis(this.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      probe.on('error', () => undefined);
      const up = await probe.connect().then(
        () => probe.ping().then(() => true),
        () => false,
      );
      probe.disconnect();
      if (up) return;
      if (child.exitCode !== null || Date.now() - started > 10_000) throw new Error(`redis-server did not start on port ${this.port}`);
      await new Promise((done) => setTimeout(done, 50));
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((done) => child.once('exit', () => done()));
    child.kill('SIGKILL');
    await exited;
  }
}
