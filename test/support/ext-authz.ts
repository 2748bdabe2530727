import { extAuthzConfigSchema, type ExtAuthzConfig } from '../../libs/authz/config';
import { startExtAuthz, type ExtAuthzApp, type ExtAuthzOptions } from '../../services/ext-authz/app';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ADMIN_TOKEN, type TestAuthority } from './authority';
import { ChildService } from './child-service';
import { freePort } from './ports';

export interface TestExtAuthz extends ExtAuthzApp {
  config: ExtAuthzConfig;
  /** Resolves once the replica holds a state for which `predicate` is true (polls every 10 ms). */
  waitFor(predicate: () => boolean, timeoutMs?: number): Promise<number>;
}

/** The policies the tests use, besides any given. */
export const TEST_POLICIES = {
  foo: { extractors: ['bearer'], authorizedEntities: ['route_foo'] },
  open: { extractors: ['bearer'] },
  scoped: { extractors: ['bearer'], requiredScopes: ['read', 'write'] },
  strip: { extractors: ['bearer'], stripCredential: true },
  basic: { extractors: ['basic'] },
  headers: { extractors: ['customHeaders'] },
  clientid: { extractors: ['clientId'] },
  all: { extractors: ['bearer', 'basic', 'customHeaders', 'clientId'] },
  billing: { extractors: ['bearer'], audiences: ['billing'] },
};

/**
 * A real ext-authz on 127.0.0.1 (random ports) watching a real token authority's gRPC face.
 * Resolves once the first state has arrived, unless `waitForState` is false.
 */
export async function startTestExtAuthz(
  authority: TestAuthority | { grpcAddress: string },
  settings: Record<string, unknown> = {},
  waitForState = true,
  options: ExtAuthzOptions = {},
): Promise<TestExtAuthz> {
  const config = extAuthzConfigSchema.parse({
    grpc: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    authority: { url: authority.grpcAddress, token: ADMIN_TOKEN, initialBackoff: 50, maxBackoff: 500 },
    policies: TEST_POLICIES,
    log: { level: 'silent' },
    // As in authority.ts: the failure limits are tested on their own (abuse-limits.test.ts).
    authFailures: { perClientAddress: 1_000_000, perAddress: 1_000_000 },
    ...settings,
  });
  const app = await startExtAuthz(config, options);
  const waitFor = async (predicate: () => boolean, timeoutMs = 5000) => {
    const started = Date.now();
    while (!predicate()) {
      if (Date.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
      await new Promise((done) => setTimeout(done, 10));
    }
    return Date.now() - started;
  };
  if (waitForState)
    await waitFor(() => app.replica.ready).catch(async (error: unknown) => {
      await app.close(); // else its servers and watch outlive the failed before()
      throw error;
    });
  return { ...app, config, waitFor };
}

const EXT_AUTHZ_MAIN = resolve(__dirname, '../../services/ext-authz/main.js');

/**
 * A real ext-authz as a process of its own (`name`), on free ports of 127.0.0.1: its settings
 * (everything but grpc and http) written as JSON in `dir`, started, and answered once /health is 200.
 */
export async function startExtAuthzProcess(
  name: string,
  dir: string,
  settings: Record<string, unknown>,
): Promise<{ replica: ChildService; base: string }> {
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const config = join(dir, `${name}.json`);
  writeFileSync(
    config,
    JSON.stringify({ grpc: { host: '127.0.0.1', port: grpcPort }, http: { host: '127.0.0.1', port: httpPort }, ...settings }),
  );
  const base = `http://127.0.0.1:${httpPort}`;
  const replica = new ChildService(
    name,
    EXT_AUTHZ_MAIN,
    { PATH: process.env.PATH, CONFIG_FILE: config },
    async () => (await fetch(`${base}/health`)).status === 200,
  );
  await replica.start();
  return { replica, base };
}
