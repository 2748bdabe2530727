import { z } from 'zod';
import { AUTH_FAILURE_ENV_OVERRIDES, authFailureSettingsSchema } from './auth-failure-limiter';
import { booleanSetting, loadConfig, logLevelSetting, portSetting } from '../config/load-config';
import { httpLimitEnvOverrides, httpLimitsSchema } from '../http/server-limits';
import { trustProxySetting } from '../http/trust-proxy';
import { xdsSettingsSchema } from '../xds/config';
import { DPOP_ENV_OVERRIDES, dpopNonceSettingsSchema } from './dpop-nonce';

export const SIGNING_ALGORITHMS = ['RS256', 'PS256', 'ES256', 'EdDSA'] as const;
export type SigningAlgorithm = (typeof SIGNING_ALGORITHMS)[number];

/** Settings of the token authority. Otoroshi's plugin settings keep their names. */
/**
 * RFC 6750's b64token: what a Bearer credential may hold. The data plane token goes into Envoy's
 * xDS bootstrap (a YAML string) and gRPC metadata as it is, so nothing else is taken.
 */
export const BEARER_TOKEN_CHARACTERS = /^[A-Za-z0-9\-._~+/]+=*$/;
export const BEARER_TOKEN_RULE = 'only letters, digits and - . _ ~ + / (then = padding), as in a Bearer token (RFC 6750)';

export const authorityConfigSchema = z
  .object({
    /** Host on which the OAuth endpoints answer: `*`, an exact host, or a glob such as `*.oto.tools`. */
    domain: z.string().min(1).default('*'),
    /** Token lifetime in milliseconds (Otoroshi's `expiration`). */
    expiration: z.coerce
      .number()
      .int()
      .min(1000)
      .max(31 * 24 * 3600 * 1000)
      .default(3_600_000),
    /** Id of the key pair that signs tokens unless an API key names its own. */
    defaultKeyPair: z.string().min(1).max(200).default('otoroshi-jwt-signing'),
    /** Algorithm of the default key pair when it has to be generated on first start. */
    defaultKeyPairAlgorithm: z.enum(SIGNING_ALGORITHMS).default('RS256'),
    /** Answer only requests that arrived over HTTPS (Otoroshi's `secure`). */
    secure: booleanSetting.default(false),
    /**
     * Which proxies' X-Forwarded-For / -Proto / -Host are believed: `false`, a hop count 1-10, or a
     * list of proxy addresses/CIDRs (libs/http/trust-proxy.ts); `true` is refused.
     */
    trustProxy: trustProxySetting.default(false),
    /** `iss` of every token; never derived from the Host header. */
    issuer: z.url().default('http://oauth.oto.tools:8080'),
    /** Default `aud` of every token. */
    audience: z.string().min(1).default('otoroshi'),
    /** Audiences a client may ask for with `audience` / `resource` (the default is always allowed). */
    allowedAudiences: z.array(z.string().min(1)).default([]),
    introspection: z
      .object({
        /** RFC 7662 §2.1 asks for caller authentication; Otoroshi does not. */
        requireClientAuth: booleanSetting.default(true),
      })
      .prefault({}),
    http: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: portSetting.default(8080),
        /** Largest accepted request body in bytes. */
        bodyLimit: z.coerce
          .number()
          .int()
          .min(1024)
          .max(10 * 1024 * 1024)
          .default(64 * 1024),
        limits: httpLimitsSchema,
      })
      .prefault({}),
    grpc: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: portSetting.default(50051),
      })
      .prefault({}),
    store: z
      .object({
        kind: z.enum(['sqlite']).default('sqlite'),
        /** SQLite file; relative paths are resolved against `dataDir`. */
        path: z.string().min(1).default('token-authority.sqlite'),
        /**
         * `postgres://...` (or `postgresql://`): PostgreSQL, shared by replicas. Anything else is
         * a SQLite file path (as `path`). Unset: SQLite at `path`.
         */
        url: z.string().min(1).optional(),
        /** PostgreSQL schema of the tables (created when missing); replicas sharing it share the data. */
        schema: z
          .string()
          .regex(/^[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'a PostgreSQL identifier: letters, digits, _')
          .default('public'),
      })
      .prefault({}),
    /**
     * Envelope encryption of private keys at rest (crypto/key-encryption.ts): a base64 32-byte
     * key-encryption key, given or read from a file; `previousKey` only opens (during a rotation).
     */
    keyEncryption: z
      .object({
        key: z.string().min(1).optional(),
        keyFile: z.string().min(1).optional(),
        previousKey: z.string().min(1).optional(),
        previousKeyFile: z.string().min(1).optional(),
      })
      .prefault({}),
    /** Folder for the SQLite file and the generated admin token. */
    dataDir: z.string().min(1).default('data'),
    /** Bearer token of the admin API; generated on first start when unset. */
    adminToken: z.string().min(16, 'must be at least 16 characters').optional(),
    /** Bearer token with which data planes (ext-authz) may follow DeltaWatch; the admin token works too. */
    dataPlaneToken: z.string().min(16, 'must be at least 16 characters').regex(BEARER_TOKEN_CHARACTERS, BEARER_TOKEN_RULE).optional(),
    /** Without dataPlaneToken: the file holding it, generated there on first start (shared with ext-authz, e.g. on a volume). */
    dataPlaneTokenFile: z.string().min(1).optional(),
    /**
     * Redis shared with ext-authz: the admin API reads and resets the quota counters there (GET and
     * DELETE /api/apikeys/:clientId/quotas), and the failure limits are shared by replicas.
     */
    redis: z
      .object({
        url: z.string().min(1).optional(),
        /** Must equal ext-authz's `quotas.keyPrefix`. */
        keyPrefix: z.string().default('otoroshi-ta:'),
      })
      .prefault({}),
    /** Routes (libs/core/routes.ts) a new store starts with (libs/core/route-seed.ts). */
    routes: z
      .object({
        /** Write the seed routes (foo, bar) on the first start of a store. */
        seed: booleanSetting.default(true),
        /** host:port of the seed routes' backend (the echo service of docker compose). */
        seedBackend: z
          .string()
          .regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$/, 'host:port')
          .default('echo:8081'),
      })
      .prefault({}),
    /** Failed client authentications: limits per (client id, address) and per address (see README). */
    authFailures: authFailureSettingsSchema,
    /** DPoP proofs at the token endpoint (RFC 9449). */
    dpop: dpopNonceSettingsSchema,
    log: z
      .object({
        level: logLevelSetting,
        /** One access-log line per request (costs throughput). */
        requests: booleanSetting.default(false),
      })
      .prefault({}),
    /** Envoy's control plane over ADS (libs/xds): off by default. */
    xds: xdsSettingsSchema,
  })
  .strict();

export type AuthorityConfig = z.infer<typeof authorityConfigSchema>;

/** Environment variables that override the YAML file. */
export const AUTHORITY_ENV_OVERRIDES = {
  DOMAIN: 'domain',
  EXPIRATION: 'expiration',
  DEFAULT_KEY_PAIR: 'defaultKeyPair',
  DEFAULT_KEY_PAIR_ALGORITHM: 'defaultKeyPairAlgorithm',
  SECURE: 'secure',
  TRUST_PROXY: 'trustProxy',
  ISSUER: 'issuer',
  AUDIENCE: 'audience',
  INTROSPECTION_REQUIRE_CLIENT_AUTH: 'introspection.requireClientAuth',
  HTTP_HOST: 'http.host',
  HTTP_PORT: 'http.port',
  HTTP_BODY_LIMIT: 'http.bodyLimit',
  ...httpLimitEnvOverrides('HTTP_', 'http.limits'),
  GRPC_HOST: 'grpc.host',
  GRPC_PORT: 'grpc.port',
  STORE_PATH: 'store.path',
  STORE_URL: 'store.url',
  STORE_SCHEMA: 'store.schema',
  KEY_ENCRYPTION_KEY: 'keyEncryption.key',
  KEY_ENCRYPTION_KEY_FILE: 'keyEncryption.keyFile',
  KEY_ENCRYPTION_KEY_PREVIOUS: 'keyEncryption.previousKey',
  KEY_ENCRYPTION_KEY_PREVIOUS_FILE: 'keyEncryption.previousKeyFile',
  DATA_DIR: 'dataDir',
  ADMIN_TOKEN: 'adminToken',
  DATA_PLANE_TOKEN: 'dataPlaneToken',
  DATA_PLANE_TOKEN_FILE: 'dataPlaneTokenFile',
  REDIS_URL: 'redis.url',
  REDIS_KEY_PREFIX: 'redis.keyPrefix',
  ...AUTH_FAILURE_ENV_OVERRIDES,
  ...DPOP_ENV_OVERRIDES,
  XDS_ENABLED: 'xds.enabled',
  XDS_PORT: 'xds.port',
  XDS_LISTENER_ADDRESS: 'xds.listener.address',
  XDS_LISTENER_PORT: 'xds.listener.port',
  XDS_TLS_PORT: 'xds.tls.port',
  XDS_TLS_CERTIFICATE_FILE: 'xds.tls.certificateFile',
  XDS_TLS_PRIVATE_KEY_FILE: 'xds.tls.privateKeyFile',
  XDS_TLS_CLIENT_CERTIFICATE: 'xds.tls.clientCertificate',
  XDS_TLS_CLIENT_CA_FILE: 'xds.tls.clientCaFile',
  ROUTES_SEED: 'routes.seed',
  ROUTES_SEED_BACKEND: 'routes.seedBackend',
  LOG_LEVEL: 'log.level',
  LOG_REQUESTS: 'log.requests',
} as const;

export function loadAuthorityConfig(env: NodeJS.ProcessEnv = process.env): AuthorityConfig {
  const file = env.CONFIG_FILE ?? 'config/token-authority.yaml';
  return loadConfig(authorityConfigSchema, {
    file,
    env,
    overrides: AUTHORITY_ENV_OVERRIDES,
    required: env.CONFIG_FILE !== undefined,
  });
}
