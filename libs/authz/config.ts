import { z } from 'zod';
import { AUTH_FAILURE_ENV_OVERRIDES, authFailureSettingsSchema } from '../core/auth-failure-limiter';
import { booleanSetting, loadConfig, logLevelSetting, portSetting } from '../config/load-config';
import { httpLimitEnvOverrides, httpLimitsSchema } from '../http/server-limits';
import { trustProxySetting } from '../http/trust-proxy';
import { DPOP_ENV_OVERRIDES, dpopNonceSettingsSchema } from '../core/dpop-nonce';

export const EXTRACTORS = ['bearer', 'basic', 'customHeaders', 'clientId'] as const;
export type ExtractorName = (typeof EXTRACTORS)[number];

/** A route policy: which credentials count, which API keys may pass, what the upstream gets. */
export const policySchema = z
  .object({
    /** Otoroshi's Apikeys plugin extractors, tried in this order: bearer JWT, Basic, id+secret headers, id header alone. */
    extractors: z.array(z.enum(EXTRACTORS)).min(1).default(['bearer']),
    /** The route's identities (`route_foo`, `group_bar`): a key passes if its authorizedEntities share one. Empty: any valid key. */
    authorizedEntities: z.array(z.string().min(1)).default([]),
    /** Audiences a token may carry here (RFC 9068 §4); empty: the authority's default audience. */
    audiences: z.array(z.string().min(1)).default([]),
    /** Scopes the token (or the key, for non-JWT credentials) must all have. */
    requiredScopes: z.array(z.string().min(1)).default([]),
    /** Remove the credential before the request reaches the backend. */
    stripCredential: booleanSetting.default(false),
    /** Header names of the custom-header extractors (Otoroshi's defaults). */
    clientIdHeader: z
      .string()
      .min(1)
      .default('otoroshi-client-id')
      .transform((name) => name.toLowerCase()),
    clientSecretHeader: z
      .string()
      .min(1)
      .default('otoroshi-client-secret')
      .transform((name) => name.toLowerCase()),
    /**
     * When the shared quota counters (Redis) cannot be reached: `open` keeps authorizing without
     * counting (a metric and a log line say so), `closed` answers 503.
     */
    quotaFailure: z.enum(['open', 'closed']).default('open'),
    /** Count the key's quotas on this route (Otoroshi's Apikeys plugin `validateQuotas`); false: calls here are not counted. */
    quotas: booleanSetting.default(true),
  })
  .strict();

export type RoutePolicy = z.infer<typeof policySchema>;

export const extAuthzConfigSchema = z
  .object({
    grpc: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: portSetting.default(9191),
        /**
         * Check's gRPC server: a small one on node:http2 (libs/grpc/h2-server.ts), HTTP/2 frames read
         * from the socket (libs/grpc/h2-wire-server.ts: the cheapest, the shortest tail; opt-in until a
         * full CI run has covered it as the default), or grpc-js.
         */
        server: z.enum(['wire', 'http2', 'grpc-js']).default('http2'),
      })
      .prefault({}),
    http: z.object({ host: z.string().default('0.0.0.0'), port: portSetting.default(9192), limits: httpLimitsSchema }).prefault({}),
    authority: z
      .object({
        /** host:port of the token authority's gRPC face (AuthorityWatch). */
        url: z.string().min(1).default('127.0.0.1:50051'),
        /** Bearer token for DeltaWatch: the authority's data plane token or admin token. */
        token: z.string().min(16, 'must be at least 16 characters').optional(),
        /** Without `token`: a file holding it, read at every (re)connection (the authority's DATA_PLANE_TOKEN_FILE). */
        tokenFile: z.string().min(1).optional(),
        /** Reconnection backoff, ms: doubles from `initialBackoff` up to `maxBackoff`, with jitter. */
        initialBackoff: z.coerce.number().int().min(10).default(100),
        maxBackoff: z.coerce.number().int().min(100).default(5000),
      })
      .prefault({}),
    /** Identity headers set on allowed requests (they overwrite whatever the client sent). */
    identityHeaders: z
      .object({
        clientId: z.string().min(1).default('x-client-id'),
        clientName: z.string().min(1).default('x-client-name'),
        scopes: z.string().min(1).default('x-client-scopes'),
      })
      .prefault({}),
    /** Route policies by name: Envoy's context_extensions `route`, or the HTTP mode's path. */
    policies: z.record(z.string().regex(/^[A-Za-z0-9._-]+$/, 'policy names use A-Z a-z 0-9 . _ -'), policySchema).default({}),
    /** Otoroshi's per-key quotas (throttlingQuota, dailyQuota, monthlyQuota); see README "Quotas and abuse limits". */
    quotas: z
      .object({
        enabled: booleanSetting.default(true),
        /** Shared counters for several replicas; in memory (one ext-authz) when unset. */
        redisUrl: z.string().min(1).optional(),
        /** Prefix of every Redis key (the token authority must use the same to read them). */
        keyPrefix: z.string().default('otoroshi-ta:'),
        /** Calls a replica reserves at once on Redis (1: a round trip per call). */
        leaseMax: z.coerce.number().int().min(1).max(10_000).default(100),
        /** Unspent reserved calls go back to Redis after this long without use, ms. */
        leaseTtlMs: z.coerce.number().int().min(10).default(1000),
        /**
         * How long a Check waits for Redis, ms; past it the call fails open or closed (quotaFailure).
         * Keep it under the proxy's ext_authz timeout (0.25 s in envoy/*.yaml).
         */
        commandTimeoutMs: z.coerce.number().int().min(1).default(100),
      })
      .prefault({}),
    /** Failed Basic / custom-header authentications, limited per client id and address (see README). */
    authFailures: authFailureSettingsSchema,
    /**
     * DPoP proofs (RFC 9449 §9 nonces). Their jtis are remembered on Redis (quotas.redisUrl) when
     * one is set, so a proof is taken once across replicas; else in this process's memory.
     */
    dpop: dpopNonceSettingsSchema,
    /**
     * HTTP mode: whose X-Real-IP / X-Forwarded-For gives the client address for the failure limits
     * (libs/http/trust-proxy.ts, as the authority's TRUST_PROXY). 1 by default: the HTTP mode sits
     * behind one nginx or Envoy; list the proxies' addresses when anything else can reach its port.
     */
    trustProxy: trustProxySetting.default({ hops: 1 }),
    /** Bound of the verified-token cache, in tokens (0 turns it off)... */
    cacheSize: z.coerce.number().int().min(0).default(100_000),
    /** ... and in heap bytes (about 250 a token; 0 turns it off). */
    cacheMaxBytes: z.coerce
      .number()
      .int()
      .min(0)
      .default(32 * 1024 * 1024),
    log: z.object({ level: logLevelSetting }).prefault({}),
  })
  .strict();

export type ExtAuthzConfig = z.infer<typeof extAuthzConfigSchema>;

export const EXT_AUTHZ_ENV_OVERRIDES = {
  GRPC_HOST: 'grpc.host',
  GRPC_PORT: 'grpc.port',
  GRPC_SERVER: 'grpc.server',
  HTTP_HOST: 'http.host',
  HTTP_PORT: 'http.port',
  ...httpLimitEnvOverrides('HTTP_', 'http.limits'),
  AUTHORITY_GRPC_URL: 'authority.url',
  AUTHORITY_TOKEN: 'authority.token',
  AUTHORITY_TOKEN_FILE: 'authority.tokenFile',
  CACHE_SIZE: 'cacheSize',
  CACHE_MAX_BYTES: 'cacheMaxBytes',
  QUOTAS_ENABLED: 'quotas.enabled',
  REDIS_URL: 'quotas.redisUrl',
  REDIS_KEY_PREFIX: 'quotas.keyPrefix',
  QUOTA_LEASE_MAX: 'quotas.leaseMax',
  ...AUTH_FAILURE_ENV_OVERRIDES,
  ...DPOP_ENV_OVERRIDES,
  TRUST_PROXY: 'trustProxy',
  LOG_LEVEL: 'log.level',
} as const;

export function loadExtAuthzConfig(env: NodeJS.ProcessEnv = process.env): ExtAuthzConfig {
  return loadConfig(extAuthzConfigSchema, {
    file: env.CONFIG_FILE ?? 'config/ext-authz.yaml',
    env,
    overrides: EXT_AUTHZ_ENV_OVERRIDES,
    required: env.CONFIG_FILE !== undefined,
  });
}
