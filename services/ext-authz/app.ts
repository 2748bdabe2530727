import { Server, ServerCredentials } from '@grpc/grpc-js';
import Fastify from 'fastify';
import { HealthImplementation } from 'grpc-health-check';
import { hostname } from 'node:os';
import { Authorizer } from '../../libs/authz/authorizer';
import type { ExtAuthzConfig } from '../../libs/authz/config';
import { AuthzMetrics } from '../../libs/authz/metrics';
import { AuthorityReplica } from '../../libs/authz/replica';
import { MemoryQuotaCounters, QuotaEnforcer, type QuotaCounters } from '../../libs/quotas/quotas';
import { QuotaCountersClient } from './quota-counters-client';
import { AuthFailureLimiter } from '../../libs/core/auth-failure-limiter';
import { DpopVerifier } from '../../libs/core/dpop';
import { DpopNonces, nonceKey } from '../../libs/core/dpop-nonce';
import { currentAuthorityToken } from './authority-connection';
import { createLogger } from '../../libs/logging';
import { capConnections, fastifyLimitOptions } from '../../libs/http/server-limits';
import { countUnexpectedError } from '../../libs/observability/unexpected-errors';
import { AuthorityWatchClient } from './authority-watch';
import { logDecision } from './decision-log';
import { addCheckService } from './envoy-check';
import { H2GrpcServer } from '../../libs/grpc/h2-server';
import { H2WireGrpcServer } from '../../libs/grpc/h2-wire-server';
import type { Decision } from '../../libs/authz/decision';
import { installTraceContext } from '../../libs/observability/trace-context';
import type { ExtAuthz } from './ext-authz.provider';
import { addHttpModeRoutes } from './http-mode';
import { exposedGc, IdleMemoryRelease } from './idle-memory';

export const AUTHORIZATION_SERVICE = 'envoy.service.auth.v3.Authorization';
const SHUTDOWN_GRACE_MS = 5_000;
/** /authz/<policy>, then anything: the client's path in Envoy's http_service mode. */
const HTTP_MODE_PATH = /^(\/authz\/[A-Za-z0-9._-]+)(?:[/?].*)?$/s;
/** Any other /authz path names no policy there can be (names are [A-Za-z0-9._-]): it is denied as such, not a 404. */
const NO_POLICY_PATH = '/authz/~';

export interface ExtAuthzApp extends ExtAuthz {
  /** host:port of Envoy's gRPC Check. */
  grpcAddress: string;
  /** Base URL of the HTTP mode, /health and /metrics. */
  url: string;
  health: HealthImplementation;
  /** The stream on which the authority reads the counters kept in memory; undefined with Redis or without quotas. */
  quotaCounters?: QuotaCountersClient;
  close(): Promise<void>;
}

const displayHost = (host: string) => (host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host);

export interface ExtAuthzOptions {
  /** The quotas' clock (tests move it to the next UTC day); token times keep the real one. */
  quotaClock?: () => number;
}

/** Wires the core, connects to the authority, serves Check over gRPC and the HTTP mode. */
export async function startExtAuthz(config: ExtAuthzConfig, options: ExtAuthzOptions = {}): Promise<ExtAuthzApp> {
  const logger = createLogger('ext-authz', config.log.level);
  const replica = new AuthorityReplica();
  const watch = new AuthorityWatchClient(config, replica, logger, `ext-authz@${hostname()}:${process.pid}`);
  // The config's policies, then the route ids of inline (xDS) policies as the authorizer meets them.
  const metrics = new AuthzMetrics(replica, watch, { has: (name) => authorizer.policyNames.has(name) });

  // Quotas: counters in memory, or on Redis (shared by replicas, leases: see libs/quotas/quotas.ts).
  // ioredis is loaded only when there is a Redis to talk to (4 MB of RSS and 6 MB of heap otherwise).
  const redisUrl = config.quotas.redisUrl;
  const redisModule = redisUrl ? (require('../../libs/quotas/quota-redis') as typeof import('../../libs/quotas/quota-redis')) : undefined;
  const redis =
    redisModule && redisUrl
      ? redisModule.connectRedis({
          url: redisUrl,
          // A backstop for a hung Redis; Checks wait only quotas.commandTimeoutMs (the enforcer's waitMs).
          commandTimeoutMs: Math.max(2000, config.quotas.commandTimeoutMs),
          onStateChange: (up, error) => {
            metrics.quotaStoreUp = up;
            if (up) logger.info('quota store (redis) connected');
            else
              logger.warn(
                { err: error?.message },
                'quota store (redis) unreachable; policies fail open or closed (quotaFailure) until it is back',
              );
          },
        })
      : undefined;
  if (redisModule && redis && !(await redisModule.whenReady(redis, 2000))) {
    metrics.quotaStoreUp = false;
    logger.warn('quota store (redis) not reachable at start; reconnecting in the background');
  }
  const counters: QuotaCounters | undefined = config.quotas.enabled
    ? redisModule && redis
      ? new redisModule.RedisQuotaCounters(redis, config.quotas.keyPrefix)
      : new MemoryQuotaCounters()
    : undefined;
  const quotas =
    counters &&
    new QuotaEnforcer(
      counters,
      {
        leaseMax: redis ? config.quotas.leaseMax : 1,
        leaseTtlMs: config.quotas.leaseTtlMs,
        refusalCacheMs: 250,
        waitMs: config.quotas.commandTimeoutMs,
      },
      options.quotaClock,
    );
  // Counted in this process's memory: the authority asks for the counters over a stream.
  const quotaCountersClient =
    counters instanceof MemoryQuotaCounters
      ? new QuotaCountersClient(config, counters, quotas, logger, `ext-authz@${hostname()}:${process.pid}`, options.quotaClock)
      : undefined;
  let lastStoreFailureLog = 0;
  // DPoP proofs: jtis on Redis when there is one (once across replicas), nonces when required,
  // keyed by DPOP_NONCE_KEY or by the data plane token every replica holds (read at first use).
  let lastReplayFailureLog = 0;
  const { RedisDpopReplays } = redisModule
    ? (require('../../libs/authz/dpop-redis') as typeof import('../../libs/authz/dpop-redis'))
    : { RedisDpopReplays: undefined };
  const dpop = new DpopVerifier({
    replays:
      redis && RedisDpopReplays
        ? new RedisDpopReplays(redis, config.quotas.keyPrefix, config.quotas.commandTimeoutMs, (error) => {
            if (Date.now() - lastReplayFailureLog > 1000) {
              lastReplayFailureLog = Date.now();
              logger.warn({ err: error.message }, 'DPoP proof jti checked in this process only: redis did not answer');
            }
          })
        : undefined,
    nonces: config.dpop.requireNonce
      ? new DpopNonces(
          () => {
            const { key, shared } = nonceKey(config.dpop.nonceKey, currentAuthorityToken(config.authority, logger), 'resource');
            if (!shared)
              logger.warn(
                "DPoP nonces are required but neither DPOP_NONCE_KEY nor an authority token is set: replicas will not take each other's nonces",
              );
            return key;
          },
          config.dpop.nonceLifetime,
          'resource',
        )
      : undefined,
  });
  const authorizer = new Authorizer(config, replica, Date.now, {
    dpop,
    quotas,
    failures: new AuthFailureLimiter(config.authFailures, redis, config.quotas.keyPrefix),
    onQuotaStoreFailure: (error, policy, failOpen) => {
      metrics.recordQuotaStoreFailure(policy, failOpen);
      // One line per second at most: an outage must not flood the log.
      if (Date.now() - lastStoreFailureLog > 1000) {
        lastStoreFailureLog = Date.now();
        logger.warn(
          { err: error.message, policy, failOpen },
          failOpen ? 'quota not counted (fail open)' : 'call refused: quota store unavailable (fail closed)',
        );
      }
    },
  });
  metrics.tokenCache = () => authorizer.tokenCache();
  const core: ExtAuthz = {
    authorizer,
    replica,
    metrics,
    watch,
    quotas,
    trustProxy: config.trustProxy,
    decided(mode, policy, decision) {
      metrics.record(mode, policy, decision);
      logDecision(logger, mode, policy, decision);
    },
  };

  // Health: SERVING once a state is loaded, and through authority outages (decisions go on).
  const health = new HealthImplementation({ '': 'NOT_SERVING', [AUTHORIZATION_SERVICE]: 'NOT_SERVING' });
  replica.onUpdate(() => {
    health.setStatus('', 'SERVING');
    health.setStatus(AUTHORIZATION_SERVICE, 'SERVING');
  });
  // The first snapshot (large with many API keys) streams in while the servers start; Check
  // and health answer "not ready" until it is whole.
  watch.start();
  quotaCountersClient?.start();
  // A port already taken: what started so far stops before the error goes up (a process exits
  // anyway; a test's would stay alive).
  const started: (() => unknown)[] = [() => watch.stop(), () => quotaCountersClient?.stop(), () => quotas?.close() ?? redis?.disconnect()];
  const abort = async (error: unknown): Promise<never> => {
    for (const stop of started.reverse())
      await Promise.resolve()
        .then(stop)
        .catch(() => undefined);
    throw error;
  };

  const grpcOptions = {
    maxReceiveMessageLength: 1024 * 1024,
    keepaliveTimeMs: 60_000,
    keepaliveTimeoutMs: 20_000,
    maxConcurrentStreams: 10_000,
  };
  const onUnexpected = (error: Error) => {
    countUnexpectedError('grpc');
    logger.error({ err: error }, 'Check failed unexpectedly; answered INTERNAL');
  };
  const onCheck = (decision: Decision, policy: string | undefined) => core.decided('grpc', policy, decision);
  const grpcHost = config.grpc.host.includes(':') ? `[${config.grpc.host}]` : config.grpc.host;
  let grpcPort: number;
  let closeGrpc: () => Promise<void>;
  if (config.grpc.server !== 'grpc-js') {
    const h2Server = config.grpc.server === 'wire' ? new H2WireGrpcServer(grpcOptions) : new H2GrpcServer(grpcOptions);
    addCheckService(h2Server, authorizer, onCheck, onUnexpected);
    health.addToServer(h2Server as never);
    grpcPort = await h2Server.listen(config.grpc.port, config.grpc.host).catch(abort);
    closeGrpc = () => h2Server.close(SHUTDOWN_GRACE_MS);
  } else {
    const grpcServer = new Server({
      'grpc.max_receive_message_length': grpcOptions.maxReceiveMessageLength,
      'grpc.keepalive_time_ms': grpcOptions.keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': grpcOptions.keepaliveTimeoutMs,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.http2.min_ping_interval_without_data_ms': 10_000,
      'grpc.max_concurrent_streams': grpcOptions.maxConcurrentStreams,
    });
    addCheckService(grpcServer, authorizer, onCheck, onUnexpected);
    health.addToServer(grpcServer);
    grpcPort = await new Promise<number>((resolve, reject) =>
      grpcServer.bindAsync(`${grpcHost}:${config.grpc.port}`, ServerCredentials.createInsecure(), (error, port) =>
        error ? reject(error) : resolve(port),
      ),
    ).catch(abort);
    closeGrpc = () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          grpcServer.forceShutdown();
          resolve();
        }, SHUTDOWN_GRACE_MS);
        grpcServer.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
  }

  const http = Fastify({
    ...fastifyLimitOptions(config.http.limits),
    bodyLimit: 1024 * 1024,
    // Only /authz/<policy> matters; what follows is the client's path, which may be anything
    // (even bad percent-encoding that Fastify's router would refuse), so it is cut before routing.
    rewriteUrl: (request: { url?: string }) => {
      const url = request.url ?? '/';
      return HTTP_MODE_PATH.exec(url)?.[1] ?? (/^\/authz(?:[/?]|$)/.test(url) ? NO_POLICY_PATH : url);
    },
  });
  // Proxies ask with the client's headers and no body worth reading: never parse one.
  http.removeAllContentTypeParsers();
  // The decision's log line carries the caller's trace ids.
  installTraceContext(http);
  http.addContentTypeParser('*', (_request, payload, done) => {
    payload.resume();
    payload.on('end', () => done(null, undefined));
    payload.on('error', (error) => done(error, undefined));
  });
  addHttpModeRoutes(http, core, (error) => {
    countUnexpectedError('rest');
    logger.error({ err: error }, 'HTTP mode request failed unexpectedly; answered 500');
  });
  started.push(closeGrpc, () => http.close());
  await http.listen({ port: config.http.port, host: config.http.host }).catch(abort);
  capConnections(http.server, config.http.limits);
  const address = http.server.address();
  const httpPort = typeof address === 'object' && address ? address.port : config.http.port;

  logger.info({ grpcPort, httpPort, authority: config.authority.url, policies: Object.keys(config.policies) }, 'ext-authz listening');
  // What a load made V8 take is given back once it stops (with --expose-gc, in the shipped node flags).
  const idleMemory = new IdleMemoryRelease({
    gc: exposedGc(),
    onRelease: ({ rssBefore, rssAfter, ms }) =>
      logger.debug(
        { rssBeforeMb: Math.round(rssBefore / 2 ** 20), rssAfterMb: Math.round(rssAfter / 2 ** 20), ms: Math.round(ms) },
        'idle: memory released',
      ),
  }).start();

  let closing: Promise<void> | undefined;
  return {
    ...core,
    health,
    quotaCounters: quotaCountersClient,
    grpcAddress: `${displayHost(config.grpc.host)}:${grpcPort}`,
    url: `http://${displayHost(config.http.host)}:${httpPort}`,
    close: () =>
      (closing ??= (async () => {
        health.setStatus('', 'NOT_SERVING');
        health.setStatus(AUTHORIZATION_SERVICE, 'NOT_SERVING');
        idleMemory.stop();
        watch.stop();
        quotaCountersClient?.stop();
        await closeGrpc();
        await http.close();
        await quotas?.close();
        if (!quotas) redis?.disconnect();
      })()),
  };
}
