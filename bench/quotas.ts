import { connectRedis, RedisQuotaCounters, whenReady } from '../libs/quotas/quota-redis';
import { MemoryQuotaCounters, type QuotaCounters, QuotaEnforcer } from '../libs/quotas/quotas';
import { redisTestPrefix } from '../test/support/quota-fixtures';
import {
  adminPost,
  benchClientToken,
  DURATION_SECONDS,
  envoyCheckRequest,
  formatRow,
  grpcStatusOf,
  h2loadGrpc,
  type LoadResult,
  startAuthorityProcess,
  startExtAuthzProcess,
} from './support';

/**
 * What quotas cost a Check: the same load (h2load replaying one Envoy-shaped CheckRequest with a
 * bearer token, 16 calls in flight) against ext-authz with quotas off, counted in memory, and
 * counted on Redis (127.0.0.1:6379, leased reservations; keys under a prefix of its own, deleted
 * at the end). Goal: Redis costs at most 15 % of the throughput and 1 ms of p99 against off.
 * Each row is the best of two turns (rows measured in turn), reported with its own p50/p99.
 *
 *   npm run build && node dist/bench/quotas.js          (BENCH_SECONDS=10 by default; REDIS_URL to use another Redis)
 */
const CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';
const LOAD = { clients: 2, streams: 8 };
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

async function measure(address: string, frame: Buffer): Promise<LoadResult> {
  const status = await grpcStatusOf(address, CHECK_PATH, frame);
  if (status !== 0) throw new Error(`Check answers grpc-status ${status}`);
  return h2loadGrpc(address, CHECK_PATH, frame, LOAD);
}

/**
 * The enforcer alone, in this process: what a Check pays for its quota, without the noise of a
 * shared machine's gRPC load. 16 calls in flight on one key, Otoroshi's default quotas.
 */
async function enforcerCost(counters: QuotaCounters, leaseMax: number): Promise<string> {
  const enforcer = new QuotaEnforcer(counters, { leaseMax, leaseTtlMs: 1000, refusalCacheMs: 250, waitMs: 1000 });
  const quotas = { throttlingQuota: 10_000_000, dailyQuota: 10_000_000, monthlyQuota: 10_000_000 };
  const calls = 200_000;
  let best = Number.POSITIVE_INFINITY;
  try {
    for (let round = 0; round < 3; round++) {
      let next = 0;
      const started = performance.now();
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next++ < calls) {
            const decision = await enforcer.consume(`bench-${round}`, quotas);
            if (decision.outcome !== 'allowed') throw new Error(`quota ${decision.outcome}`);
          }
        }),
      );
      best = Math.min(best, ((performance.now() - started) * 1000) / calls);
    }
  } finally {
    await enforcer.close();
  }
  return `${best.toFixed(2)} µs per call`;
}

async function main() {
  console.log(
    `ext-authz Check with quotas: h2load -c${LOAD.clients} -m${LOAD.streams}, ${DURATION_SECONDS}s per row (+1 s warm-up), 127.0.0.1`,
  );
  const redisKeys = redisTestPrefix();
  const authority = await startAuthorityProcess();
  const stops: (() => unknown)[] = [() => authority.stop()];
  try {
    // Otoroshi's default quotas (10,000,000 a second, a day, a month): counted on every call, never reached here.
    await adminPost(authority, '/api/apikeys', {
      clientId: 'bench',
      clientSecret: 'bench-secret-0123456789-0123456789-01',
      authorizedEntities: ['route_foo'],
    });
    const token = await benchClientToken(authority);
    const frame = envoyCheckRequest(token);

    const rows: [string, Record<string, string>][] = [
      ['quotas off (QUOTAS_ENABLED=false)', { QUOTAS_ENABLED: 'false' }],
      ['quotas in memory (default)', {}],
      ['quotas on Redis (REDIS_URL, leases of 100)', { REDIS_URL, REDIS_KEY_PREFIX: redisKeys.prefix }],
    ];
    // All three run at once (an idle one costs nothing) and are measured in turns, twice: on a
    // shared machine the best of two turns says more about ext-authz than about the neighbours.
    const targets = [];
    for (const [name, env] of rows) {
      const extAuthz = await startExtAuthzProcess(authority, env);
      stops.push(() => extAuthz.stop());
      targets.push({ name, address: extAuthz.grpcAddress, best: undefined as LoadResult | undefined });
    }
    for (let round = 0; round < 2; round++) {
      for (const target of targets) {
        const result = await measure(target.address, frame);
        if (!target.best || result.requestsPerSecond > target.best.requestsPerSecond) target.best = result;
      }
    }
    const reference = targets[0].best!;
    for (const target of targets) {
      const result = target.best!;
      const line = formatRow(target.name, result, target === targets[0] ? undefined : { name: 'off', value: reference.requestsPerSecond });
      const delta = result.p99Ms - reference.p99Ms;
      console.log(target === targets[0] ? line : `${line}  p99 ${delta >= 0 ? '+' : ''}${delta.toFixed(2)} ms`);
    }
    console.log('QuotaEnforcer.consume alone (this process, 16 in flight, best of 3 × 200,000 calls):');
    console.log(`  memory                                      ${await enforcerCost(new MemoryQuotaCounters(), 1)}`);
    const redis = connectRedis({ url: REDIS_URL, commandTimeoutMs: 2000 });
    if (!(await whenReady(redis, 2000))) throw new Error(`Redis at ${REDIS_URL} is not reachable`);
    console.log(
      `  Redis, leases of 100                        ${await enforcerCost(new RedisQuotaCounters(redis, redisKeys.prefix), 100)}`,
    );
  } finally {
    for (const stop of stops.reverse()) await stop();
    await redisKeys.cleanup(REDIS_URL);
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
