import { createHash, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import { readOrCreateSecretFile, SecretFileError } from './secret-file';
import { AdminService } from './admin-service';
import { adminTokenActor } from './audit';
import { type AuthorityConfig, BEARER_TOKEN_CHARACTERS, BEARER_TOKEN_RULE } from './config';
import { DataPlaneFeed } from './data-plane';
import { RouteFeed } from './route-feed';
import { parseSeedBackend, seedRoutesOnFirstStart } from './route-seed';
import { generateSecret } from './crypto/secret-hash';
import { AdminError, adminTokenRequired, tooManyAdminFailures, tooManyWrongTokens } from './errors';
import { KeyProtector } from './crypto/key-encryption';
import { KeyRing } from './key-ring';
import { RotationScheduler } from './key-rotation';
import type { AuthorityObserver } from './observer';
import type { AuthorityStore } from './store/repositories';
import { openStore } from './store/open-store';
import { TokenService } from './token-service';
import { AuthFailureLimiter } from './auth-failure-limiter';
import { DpopNonces, nonceKey } from './dpop-nonce';
import { connectRedis, RedisQuotaCounters } from '../quotas/quota-redis';
import { ReplicaQuotaCounters } from '../quotas/replica-counters';

export interface AuthorityLogger {
  info(message: string): void;
  warn(message: string): void;
}

/** The token authority's core, wired: what every transport adapter calls. */
export interface Authority {
  config: AuthorityConfig;
  store: AuthorityStore;
  keyRing: KeyRing;
  tokens: TokenService;
  admin: AdminService;
  /** The updates data planes replicate the state from. */
  dataPlane: DataPlaneFeed;
  /** Route changes for the control plane (xDS): a snapshot, then deltas; see route-feed.ts. */
  routes: RouteFeed;
  /**
   * The ext-authz replicas that count quotas in their own memory, asked for their counters
   * (AuthorityWatch.QuotaCounters); undefined when the counters are shared on Redis.
   */
  replicaQuotas?: ReplicaQuotaCounters;
  /** Whether an `Authorization` header carries the admin bearer token. */
  isAdmin(authorization: string | undefined): boolean;
  /**
   * The admin API's door: resolves when `authorization` carries the admin token, else throws 401;
   * behind the failure limits (authFailures, counted apart from the OAuth clients'), so an address
   * that sent too many wrong tokens gets 429 with Retry-After before its token is checked.
   */
  authorizeAdmin(authorization: string | undefined, address: string): Promise<void>;
  /** The audit log's actor for an admin API call: which admin token, by a digest that does not reveal it. */
  adminActor(authorization: string | undefined): string;
  /** Whether it carries a token that may follow DeltaWatch (the data plane token or the admin token). */
  isDataPlane(authorization: string | undefined): boolean;
  /**
   * isDataPlane behind a wrong-token budget like the admin API's (counted apart, under its own
   * name), so AuthorityWatch is no unlimited oracle for the admin token: false for a wrong or
   * missing token; throws 429 (tooManyWrongTokens) past the budget, before the token is checked.
   */
  authorizeDataPlane(authorization: string | undefined, address: string): Promise<boolean>;
  close(): Promise<void>;
}

/** The admin token's name in its failure limiter (the limiter's one "client id"). */
const ADMIN_IDENTITY = 'admin-token';
/** AuthorityWatch's callers (the data plane or admin token) in the same limiter: budgets of their own. */
const WATCH_IDENTITY = 'authority-watch';

const sha256 = (value: string) => createHash('sha256').update(value, 'utf8').digest();

/** Constant-time check of `Authorization: Bearer <token>` against a token's SHA-256. */
function bearerMatches(authorization: string | undefined, expectedHash: Buffer | undefined): boolean {
  const match = /^Bearer (.+)$/i.exec(authorization ?? '');
  return expectedHash !== undefined && match !== null && timingSafeEqual(sha256(match[1].trim()), expectedHash);
}

export { storePath } from './store/open-store';

/**
 * The admin token's hash: from ADMIN_TOKEN, or generated on first start, kept (hashed) under
 * the data folder and shown once on the terminal, never through the logger. Replicas sharing the
 * data folder agree: the first to start creates the hash, the others read it.
 */
function adminTokenHash(config: AuthorityConfig, log: AuthorityLogger): Buffer {
  if (config.adminToken) return sha256(config.adminToken);
  const file = join(config.dataDir, 'admin-token.sha256');
  let token: string | undefined;
  const { value: stored, created } = readOrCreateSecretFile(file, () => {
    token = generateSecret();
    return sha256(token).toString('hex');
  });
  if (!/^[0-9a-f]{64}$/.test(stored))
    throw new SecretFileError(`${file} is not a SHA-256 hex digest; delete it to generate a new admin token, or set ADMIN_TOKEN`);
  if (created && token) {
    process.stderr.write(`\nGenerated admin API token (shown once, only its hash is kept in ${file}):\n\n  ${token}\n\n`);
    log.warn(`generated a new admin token; its hash is in ${file}`);
  }
  return Buffer.from(stored, 'hex');
}

/**
 * The data plane token: DATA_PLANE_TOKEN, or the one in DATA_PLANE_TOKEN_FILE, generated there on
 * first start when the file does not exist (docker-compose shares it with ext-authz, which reads
 * it with AUTHORITY_TOKEN_FILE). Never logged.
 */
function dataPlaneToken(config: AuthorityConfig, log: AuthorityLogger): string | undefined {
  if (config.dataPlaneToken || !config.dataPlaneTokenFile) return config.dataPlaneToken;
  const file = config.dataPlaneTokenFile;
  const { value, created } = readOrCreateSecretFile(file, generateSecret);
  if (value.length < 16)
    throw new SecretFileError(`${file} holds no data plane token of at least 16 characters; delete it to generate one`);
  if (!BEARER_TOKEN_CHARACTERS.test(value))
    throw new SecretFileError(`${file}: the data plane token may hold ${BEARER_TOKEN_RULE}; delete it to generate one`);
  if (created) log.info(`generated a data plane token in ${file}`);
  return value;
}

export interface AuthorityOptions {
  store?: AuthorityStore;
  /** The server needs the admin token; the CLI, which works on the store directly, does not. */
  adminApi?: boolean;
  /** Told the outcome of every OAuth2 request (metrics, logs). */
  observer?: AuthorityObserver;
  /** Publish scheduled key rotations when due (default: with the admin API, i.e. in the server and not the CLI). */
  rotationScheduler?: boolean;
  /** Servers write the seed routes on a store's first start (config `routes.seed`); the CLI does not. */
  seedRoutes?: boolean;
}

export async function createAuthority(config: AuthorityConfig, log: AuthorityLogger, options: AuthorityOptions = {}): Promise<Authority> {
  // A bad key-encryption key setting fails before the store is touched.
  const protector = KeyProtector.fromSettings(config.keyEncryption);
  const authorityStore = options.store ?? (await openStore(config, (level, message) => log[level](message)));
  const keyRing = new KeyRing(authorityStore.keyPairs, Date.now, protector);
  // Redis, when configured: the quota counters ext-authz keeps there, and shared failure limits.
  const redis = config.redis.url
    ? connectRedis({
        url: config.redis.url,
        commandTimeoutMs: 1000,
        onStateChange: (up, error) =>
          log.warn(
            up ? 'redis connection ready' : `redis connection lost${error ? `: ${error.message}` : ''}; failure limits fall back to memory`,
          ),
      })
    : undefined;
  // Without Redis each ext-authz counts in its own memory: the authority asks them.
  const quotaCounters = redis ? new RedisQuotaCounters(redis, config.redis.keyPrefix) : new ReplicaQuotaCounters();
  const replicaQuotas: ReplicaQuotaCounters | undefined = quotaCounters instanceof ReplicaQuotaCounters ? quotaCounters : undefined;
  const admin = new AdminService(config, authorityStore, keyRing, Date.now, quotaCounters);
  if (!(await authorityStore.keyPairs.get(config.defaultKeyPair))) {
    try {
      await admin.createKeyPair({
        id: config.defaultKeyPair,
        algorithm: config.defaultKeyPairAlgorithm,
        description: 'default signing key pair',
      });
      log.info(`generated the default key pair '${config.defaultKeyPair}' (${config.defaultKeyPairAlgorithm})`);
    } catch (error) {
      // Another process sharing the store (a replica, the CLI) created it first: use theirs.
      if (!(error instanceof AdminError && error.status === 409)) throw error;
    }
  }
  if (config.routes.seed && options.seedRoutes !== false) {
    const seeded = await seedRoutesOnFirstStart(authorityStore, admin, parseSeedBackend(config.routes.seedBackend));
    if (seeded.length) log.info(`first start: wrote the seed routes ${seeded.join(', ')} (backend ${config.routes.seedBackend})`);
  }
  // The feed reads the change log after every store change (ours, or another process's seen
  // through SQLite's data_version) and reloads the key ring when key pairs changed: that is
  // what keeps signing keys current. Where the log stands is read before the key pairs, so a
  // key pair another process commits in between is published (and loaded), never skipped.
  const dataPlane = new DataPlaneFeed(authorityStore, keyRing, { issuer: config.issuer, audience: config.audience }, (error) =>
    log.warn(`data plane update failed: ${error.message}`),
  );
  await dataPlane.start();
  const routes = new RouteFeed(authorityStore, (error) => log.warn(`route feed update failed: ${error.message}`));
  await routes.start();
  try {
    // Opens every signing key: a wrong or missing key-encryption key fails the start here.
    await keyRing.reload();
  } catch (error) {
    dataPlane.close();
    routes.close();
    if (!options.store) await authorityStore.close();
    redis?.disconnect();
    throw error;
  }
  if (protector.enabled) {
    const plaintext = (await authorityStore.keyPairs.list()).filter((keyPair) =>
      keyPair.versions.some((version) => version.privateKeyPem !== undefined),
    );
    if (plaintext.length)
      log.warn(
        `${plaintext.length} key pair(s) keep private keys in plaintext (stored before KEY_ENCRYPTION_KEY was set): run \`npm run cli -- keypairs encrypt\``,
      );
  }
  const dataPlaneSecret = dataPlaneToken(config, log);
  const dataPlaneHash = dataPlaneSecret ? sha256(dataPlaneSecret) : undefined;
  // RFC 9449 §8 nonces, checked by every replica alike: the key is configured or derived from the data plane token.
  let dpopNonces: DpopNonces | undefined;
  if (config.dpop.requireNonce) {
    const { key, shared } = nonceKey(config.dpop.nonceKey, dataPlaneSecret, 'token-endpoint');
    if (!shared)
      log.warn(
        "DPoP nonces are required but neither DPOP_NONCE_KEY nor a data plane token is set: replicas will not take each other's nonces",
      );
    dpopNonces = new DpopNonces(key, config.dpop.nonceLifetime, 'token-endpoint');
  }
  const tokens = new TokenService(
    config,
    authorityStore,
    keyRing,
    undefined,
    options.observer,
    new AuthFailureLimiter(config.authFailures, redis, config.redis.keyPrefix),
    undefined,
    dpopNonces,
  );
  const adminHash = options.adminApi === false ? undefined : adminTokenHash(config, log);
  // Wrong admin tokens have their own budgets (keys apart from the OAuth clients'), the admin
  // token being the one "client" (AuthorityWatch's tokens another): per address, then for the token across addresses, where the
  // addresses that presented the right token lately are exempt (auth-failure-limiter.ts).
  const adminFailures = new AuthFailureLimiter(config.authFailures, redis, `${config.redis.keyPrefix}admin-`);
  const isDataPlane = (authorization: string | undefined) =>
    bearerMatches(authorization, adminHash) || bearerMatches(authorization, dataPlaneHash);

  // Scheduled key rotations: every replica looks, the store lets only the first write each one.
  const scheduler =
    (options.rotationScheduler ?? options.adminApi !== false)
      ? new RotationScheduler({
          now: Date.now,
          run: async () => {
            const { rotated, nextDueAt } = await admin.rotateDueKeyPairs();
            for (const { keyPair, kid, switchAt } of rotated)
              log.info(`key pair '${keyPair}': published ${kid}, which signs from ${new Date(switchAt).toISOString()}`);
            return nextDueAt;
          },
          onError: (error) => log.warn(`scheduled key rotation failed: ${error.message}`),
        })
      : undefined;
  if (scheduler) {
    // A schedule set here, or by another process (the feed reloads the key ring on its change).
    admin.onSchedule = () => scheduler.poke();
    keyRing.onChange = () => scheduler.poke();
    scheduler.start();
  }

  const purge = () => authorityStore.revocations.purgeExpired(Date.now()).catch(() => 0);
  await purge();
  const purgeTimer = setInterval(purge, 3_600_000).unref();
  // Used private_key_jwt jtis live 5.5 minutes at most: dropped every minute, so the table stays about that size.
  const purgeAssertions = () => authorityStore.assertionReplays.purgeExpired(Date.now()).catch(() => 0);
  const assertionPurgeTimer = setInterval(purgeAssertions, 60_000).unref();

  return {
    config,
    store: authorityStore,
    keyRing,
    tokens,
    admin,
    dataPlane,
    routes,
    replicaQuotas,
    isAdmin: (authorization) => bearerMatches(authorization, adminHash),
    async authorizeAdmin(authorization, address) {
      const wait = await adminFailures.admit(ADMIN_IDENTITY, address);
      if (wait !== undefined) throw tooManyAdminFailures(wait);
      if (bearerMatches(authorization, adminHash)) return adminFailures.succeeded(ADMIN_IDENTITY, address);
      // Only a token presented counts: a request without one (a console before sign-in) guesses nothing.
      if (/^Bearer /i.test(authorization ?? '')) await adminFailures.failed(ADMIN_IDENTITY, address);
      throw adminTokenRequired();
    },
    adminActor: (authorization) => adminTokenActor(/^Bearer (.+)$/i.exec(authorization ?? '')?.[1].trim() ?? ''),
    isDataPlane,
    async authorizeDataPlane(authorization, address) {
      const wait = await adminFailures.admit(WATCH_IDENTITY, address);
      if (wait !== undefined) throw tooManyWrongTokens(wait);
      if (isDataPlane(authorization)) {
        await adminFailures.succeeded(WATCH_IDENTITY, address);
        return true;
      }
      if (/^Bearer /i.test(authorization ?? '')) await adminFailures.failed(WATCH_IDENTITY, address);
      return false;
    },
    async close() {
      clearInterval(purgeTimer);
      await scheduler?.close();
      clearInterval(assertionPurgeTimer);
      replicaQuotas?.close();
      dataPlane.close();
      routes.close();
      redis?.disconnect();
      await authorityStore.close();
    },
  };
}
