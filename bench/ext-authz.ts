import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import {
  adminPost,
  benchClientToken,
  DURATION_SECONDS,
  formatRow,
  freePort,
  envoyCheckRequest,
  grpcStatusOf,
  startExtAuthzProcess,
  h2loadGrpc,
  startAuthorityProcess,
  type LoadResult,
} from './support';

/**
 * ext-authz Check benchmark: our Check (warm verification cache, and cold: every call verifies
 * the RS256 signature) against a bare grpc-js Check server that answers OK, all driven by h2load
 * replaying one pre-serialized Envoy-shaped CheckRequest, 16 calls in flight, in one run.
 *
 *   npm run build && node dist/bench/ext-authz.js          (BENCH_SECONDS=10 by default)
 */
const CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';
const LOAD = { clients: 2, streams: 8 };

async function startBareServer(): Promise<{ address: string; stop(): void }> {
  const port = await freePort();
  const child = spawn(process.execPath, [resolve(__dirname, 'bare-check-server.js')], {
    env: { ...process.env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((done) => child.stdout!.once('data', () => done()));
  return { address: `127.0.0.1:${port}`, stop: () => child.kill('SIGTERM') };
}

async function measure(address: string, frame: Buffer): Promise<LoadResult> {
  const status = await grpcStatusOf(address, CHECK_PATH, frame);
  if (status !== 0) throw new Error(`Check answers grpc-status ${status}`);
  return h2loadGrpc(address, CHECK_PATH, frame, LOAD);
}

async function main() {
  console.log(
    `ext-authz Check benchmark: h2load -c${LOAD.clients} -m${LOAD.streams}, ${DURATION_SECONDS}s per row (+1 s warm-up), 127.0.0.1`,
  );
  const authority = await startAuthorityProcess();
  const stops: (() => unknown)[] = [() => authority.stop()];
  try {
    await adminPost(authority, '/api/apikeys', {
      clientId: 'bench',
      clientSecret: 'bench-secret-0123456789-0123456789-01',
      authorizedEntities: ['route_foo'],
      scope: 'read',
    });
    const token = await benchClientToken(authority);
    const frame = envoyCheckRequest(token);

    const bare = await startBareServer();
    stops.push(() => bare.stop());
    const warm = await startExtAuthzProcess(authority, {});
    stops.push(() => warm.stop());
    const cold = await startExtAuthzProcess(authority, { CACHE_SIZE: '0' });
    stops.push(() => cold.stop());

    const reference = await measure(bare.address, frame);
    console.log(formatRow('bare grpc-js Check (always OK)', reference));
    console.log(
      formatRow('ext-authz Check, warm cache', await measure(warm.grpcAddress, frame), {
        name: 'bare grpc-js',
        value: reference.requestsPerSecond,
      }),
    );
    console.log(
      formatRow('ext-authz Check, cold (verify RS256 each call)', await measure(cold.grpcAddress, frame), {
        name: 'bare grpc-js',
        value: reference.requestsPerSecond,
      }),
    );
  } finally {
    for (const stop of stops.reverse()) await stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
