import 'reflect-metadata';
import { Module, type DynamicModule } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import type { FastifyReply } from 'fastify';
import { createAuthority, type Authority } from '../../libs/core/authority';
import type { AuthorityConfig } from '../../libs/core/config';
import { AdminController, AdminTokenGuard } from './admin.controller';
import { AUTHORITY, METRICS, XDS_STATUS } from './authority.provider';
import { AuthorityMetrics } from './metrics';
import type { Registry } from 'prom-client';
import { observers } from '../../libs/core/observer';
import { instrumentGrpcServer } from '../../libs/observability/grpc-instrument';
import { instrumentHttpServer } from '../../libs/observability/http-instrument';
import { installTraceContext, traceChildLoggerFactory } from '../../libs/observability/trace-context';
import { outcomeLog } from './outcome-log';
import { ErrorFilter } from './error-filter';
import { OAuthEndpointGuard } from './oauth-endpoint.guard';
import { OAuthController } from './oauth.controller';
import { TokenAuthorityGrpcController } from './grpc.controller';
import { HealthController } from './health.controller';
import { OpenApiController } from './openapi.controller';
import { RouteTable, ROUTES } from './route-table';
import { serveConsole } from './console';
import { AuthorityWatchService } from './authority-watch.service';
import { refuseDuplicateJsonKeys } from './json-body';
import { createHealth, TOKEN_AUTHORITY_SERVICE, tokenAuthorityGrpcOptions } from './grpc-options';
import type { HealthImplementation } from 'grpc-health-check';
import type { Logger } from 'pino';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { AdsServer } from '../../libs/xds/ads-server';
import { xdsPlacement } from '../../libs/xds/config';
import { XdsResourceBuilder } from '../../libs/xds/resources';
import { followRoutes } from '../../libs/xds/route-source';
import type { XdsStatusHolder } from './admin.controller';
import { createLogger, NestPinoLogger } from '../../libs/logging';
import { capConnections, fastifyLimitOptions } from '../../libs/http/server-limits';
import { describeTrustProxy, fastifyTrustProxy } from '../../libs/http/trust-proxy';

@Module({})
class TokenAuthorityModule {
  static forAuthority(authority: Authority, metrics: Registry, routes: RouteTable, xdsStatus: XdsStatusHolder): DynamicModule {
    return {
      module: TokenAuthorityModule,
      controllers: [OAuthController, AdminController, HealthController, OpenApiController, TokenAuthorityGrpcController],
      providers: [
        { provide: AUTHORITY, useValue: authority },
        { provide: METRICS, useValue: metrics },
        { provide: ROUTES, useValue: routes },
        { provide: XDS_STATUS, useValue: xdsStatus },
        { provide: APP_FILTER, useClass: ErrorFilter },
        OAuthEndpointGuard,
        AdminTokenGuard,
      ],
    };
  }
}

export interface TokenAuthorityApp {
  app: NestFastifyApplication;
  authority: Authority;
  /** Base URL of the REST face once listening. */
  url: string;
  /** host:port of the gRPC face once listening. */
  grpcAddress: string;
  health: HealthImplementation;
  /** Envoy's control plane (ADS on its own gRPC port, xds.port), when xds.enabled. */
  xds: AdsServer | undefined;
  /** host:port of the ADS server, when xds.enabled. */
  xdsAddress: string | undefined;
  /** Every HTTP route registered (method and Fastify URL), HEAD included: what the OpenAPI test compares. */
  routes: { method: string; url: string }[];
  close(): Promise<void>;
}

/** Builds and starts the token authority (REST) on the configured host and port. */
export async function startTokenAuthority(config: AuthorityConfig): Promise<TokenAuthorityApp> {
  const logger = createLogger('token-authority', config.log.level);
  const metrics = new AuthorityMetrics();
  const authority = await createAuthority(
    config,
    {
      info: (message) => logger.info(message),
      warn: (message) => logger.warn(message),
    },
    { observer: observers(metrics, outcomeLog(logger)) },
  );
  const adapter = new FastifyAdapter({
    loggerInstance: config.log.requests ? logger : undefined,
    // Its request log lines carry the caller's trace ids.
    childLoggerFactory: traceChildLoggerFactory as never,
    bodyLimit: config.http.bodyLimit,
    // Only the configured proxies' X-Forwarded-* count (issue 22): a function from @fastify/proxy-addr.
    trustProxy: fastifyTrustProxy(config.trustProxy),
    // Slow, idle or too many clients must not hold sockets.
    ...fastifyLimitOptions(config.http.limits),
    // A path Fastify's router cannot decode (`/api/apikeys/%FF`) is refused before any route, so
    // outside Nest's error filter: answer it in the same OAuth2 error shape as every other 400.
    frameworkErrors: (_error: unknown, _request: unknown, reply: FastifyReply) => {
      void reply
        .status(400)
        .header('cache-control', 'no-store')
        .send({ error: 'invalid_request', error_description: 'the URL path is not valid percent-encoded UTF-8' });
    },
  });
  const routes = new RouteTable();
  adapter.getInstance().addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routes.add(method, route.url);
  });
  const watch = new AuthorityWatchService(authority, logger);
  metrics.watchState(authority, watch);
  const xdsStatus: XdsStatusHolder = {};
  const app = await NestFactory.create<NestFastifyApplication>(
    TokenAuthorityModule.forAuthority(authority, metrics.registry, routes, xdsStatus),
    adapter,
    {
      logger: new NestPinoLogger(logger),
    },
  );
  // Only form and JSON bodies are OAuth2 requests; anything else is refused as an unsupported type.
  const fastify = app.getHttpAdapter().getInstance();
  fastify.removeContentTypeParser('text/plain');
  // Before Nest registers its routes (app.init), so that every route has the hooks.
  installTraceContext(fastify);
  instrumentHttpServer(fastify, metrics);
  const health = createHealth();
  const control = config.xds.enabled ? await createAdsServer(config, authority, metrics, logger) : undefined;
  const xds = control?.ads;
  xdsStatus.source = xds;
  const grpcOptions = tokenAuthorityGrpcOptions(config, health, (server) => {
    // First, so that every service added after it (Nest's, DeltaWatch, health, reflection) is measured and traced.
    instrumentGrpcServer(server, metrics);
    watch.addTo(server);
  });
  const microservice = app.connectMicroservice(grpcOptions, { inheritAppConfig: true });
  const xdsServer = control ? await serveAds(config, control.ads, metrics) : undefined;
  await app.startAllMicroservices();
  // The admin console's static files at /console/ (when built), on the same origin as the admin API.
  const consoleServed = await serveConsole(app.getHttpAdapter().getInstance());
  // Nest registers its body parsers on init: replace its JSON parser after that.
  await app.init();
  refuseDuplicateJsonKeys(app.getHttpAdapter().getInstance());
  await app.listen(config.http.port, config.http.host);
  capConnections(app.getHttpServer(), config.http.limits);
  const grpcPort = config.grpc.port || boundGrpcPort(microservice);
  const address = app.getHttpServer().address();
  const port = typeof address === 'object' && address ? address.port : config.http.port;
  const host = config.http.host === '0.0.0.0' || config.http.host === '::' ? '127.0.0.1' : config.http.host;
  const grpcHost = config.grpc.host === '0.0.0.0' || config.grpc.host === '::' ? '127.0.0.1' : config.grpc.host;
  health.setStatus('', 'SERVING');
  health.setStatus(TOKEN_AUTHORITY_SERVICE, 'SERVING');
  // A shared store out of reach: gRPC health says so too (as GET /health does), so balancers move on.
  let storeAvailable = true;
  const storeWatch = setInterval(() => {
    const available = authority.store.status?.().available ?? true;
    if (available === storeAvailable || closing !== undefined) return;
    storeAvailable = available;
    health.setStatus('', available ? 'SERVING' : 'NOT_SERVING');
    health.setStatus(TOKEN_AUTHORITY_SERVICE, available ? 'SERVING' : 'NOT_SERVING');
  }, STORE_HEALTH_MS).unref();
  logger.info(
    {
      port,
      grpcPort,
      issuer: config.issuer,
      trustProxy: describeTrustProxy(config.trustProxy),
      console: consoleServed ? '/console' : 'not built',
    },
    'token authority listening (REST and gRPC)',
  );
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      // Tell health checkers first, then let calls in flight finish (bounded), then release the store.
      clearInterval(storeWatch);
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(TOKEN_AUTHORITY_SERVICE, 'NOT_SERVING');
      // Watch streams never end by themselves: end them so data planes reconnect elsewhere.
      watch.endAll();
      control?.stop();
      xds?.endAll();
      if (xdsServer) await new Promise<void>((done) => xdsServer.server.tryShutdown(() => done()));
      await withDeadline(app.close(), SHUTDOWN_GRACE_MS, () => forceShutdownGrpc(microservice));
      await authority.close();
    })());
  return {
    app,
    authority,
    url: `http://${host}:${port}`,
    grpcAddress: `${grpcHost}:${grpcPort}`,
    health,
    xds,
    xdsAddress: xdsServer
      ? `${config.grpc.host === '0.0.0.0' || config.grpc.host === '::' ? '127.0.0.1' : config.grpc.host}:${xdsServer.port}`
      : undefined,
    routes: routes.entries,
    close,
  };
}

/**
 * The ADS server, serving the stored routes (the route feed: a snapshot, then each change) and
 * reading the data plane token as DeltaWatch does.
 */
async function createAdsServer(
  config: AuthorityConfig,
  authority: Authority,
  metrics: AuthorityMetrics,
  logger: Logger,
): Promise<{ ads: AdsServer; stop(): void }> {
  let countNack: (typeUrl: string) => void = () => {};
  let ads: AdsServer | undefined;
  const followed = await followRoutes(
    authority.routes,
    (change) => ('routes' in change ? ads?.setRoutes(change.routes) : ads?.changeRoutes(change.upserted, change.removed)),
    (error) => logger.warn({ err: error.message }, 'xds: reading the routes failed'),
  );
  ads = new AdsServer(new XdsResourceBuilder(xdsPlacement(config.xds)), followed.routes, {
    authorize: (metadata) => {
      const [authorization] = metadata.get('authorization');
      return authority.isDataPlane(typeof authorization === 'string' ? authorization : undefined);
    },
    onNack: (nack) => countNack(nack.typeUrl),
    log: logger,
  });
  countNack = metrics.xdsState(ads);
  return { ads, stop: followed.stop };
}

/**
 * ADS on a grpc-js server of its own (xds.port, on grpc.host): an Envoy's requests grow with its
 * resources (a subscription to 10,000 endpoints, the versions it holds on reconnecting: hundreds of
 * KiB), past the 64 KiB the authority's own RPCs accept.
 */
async function serveAds(config: AuthorityConfig, ads: AdsServer, metrics: AuthorityMetrics): Promise<{ server: Server; port: number }> {
  const server = new Server({
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    'grpc.max_send_message_length': 256 * 1024 * 1024,
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 10_000,
  });
  instrumentGrpcServer(server, metrics);
  ads.addTo(server);
  const host = config.grpc.host.includes(':') ? `[${config.grpc.host}]` : config.grpc.host;
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${config.xds.port}`, ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  return { server, port };
}

/** How often gRPC health follows the store's reachability. */
const STORE_HEALTH_MS = 500;

/** How long calls in flight may take to finish after SIGTERM before they are cut. */
const SHUTDOWN_GRACE_MS = 10_000;

async function withDeadline(work: Promise<unknown>, ms: number, onTimeout: () => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((done) => {
    timer = setTimeout(() => {
      onTimeout();
      done();
    }, ms);
  });
  await Promise.race([work, deadline]);
  clearTimeout(timer);
}

/** The grpc-js server inside Nest's gRPC transport (Nest keeps it as `grpcClient`). */
function grpcServerOf(microservice: unknown): { forceShutdown(): void; http2Servers?: Map<unknown, unknown> } | undefined {
  return (microservice as { serverInstance?: { grpcClient?: { forceShutdown(): void } } }).serverInstance?.grpcClient;
}

function forceShutdownGrpc(microservice: unknown): void {
  grpcServerOf(microservice)?.forceShutdown();
}

/** With port 0 (tests), the port the OS chose. */
function boundGrpcPort(microservice: unknown): number {
  const server = grpcServerOf(microservice) as { http2Servers?: Map<{ address(): { port: number } }, unknown> } | undefined;
  for (const http2Server of server?.http2Servers?.keys() ?? []) return http2Server.address().port;
  throw new Error('gRPC server has no bound port');
}
