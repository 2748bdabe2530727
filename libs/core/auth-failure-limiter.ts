import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { z } from 'zod';

export interface AuthFailureSettings {
  /** Failures of one client id from one address within the window before that pair is refused. */
  perClientAddress: number;
  /** Failures from one address (any ids) within the window before the address is refused. */
  perAddress: number;
  /** Window, and how long a refusal lasts once the limit is passed, seconds. */
  windowSeconds: number;
  /** Failures of one client id from all addresses within `perClientWindowSeconds` before it slows down. */
  perClient: number;
  /** Window of the per-client budget, seconds. */
  perClientWindowSeconds: number;
  /** Past the per-client budget: one attempt per this many seconds, shared by the addresses not known for the client. */
  slowIntervalSeconds: number;
  /** How long an address that authenticated as a client stays exempt from that client's budget, seconds. */
  knownAddressSeconds: number;
}

export const DEFAULT_AUTH_FAILURE_SETTINGS: AuthFailureSettings = {
  perClientAddress: 10,
  perAddress: 100,
  windowSeconds: 60,
  perClient: 30,
  perClientWindowSeconds: 600,
  slowIntervalSeconds: 10,
  knownAddressSeconds: 86_400,
};

const seconds = (fallback: number) => z.coerce.number().int().min(1).default(fallback);

/** The `authFailures` settings of both services (token authority and ext-authz). */
export const authFailureSettingsSchema = z
  .object({
    /** Failures of one client id from one address before it is refused (429). */
    perClientAddress: z.coerce.number().int().min(1).default(DEFAULT_AUTH_FAILURE_SETTINGS.perClientAddress),
    /** Failures from one address (any ids) before it is refused. */
    perAddress: z.coerce.number().int().min(1).default(DEFAULT_AUTH_FAILURE_SETTINGS.perAddress),
    /** Window and block duration, seconds. */
    windowSeconds: seconds(DEFAULT_AUTH_FAILURE_SETTINGS.windowSeconds),
    /** Failures of one client id from every address before unknown addresses are slowed down. */
    perClient: z.coerce.number().int().min(1).default(DEFAULT_AUTH_FAILURE_SETTINGS.perClient),
    perClientWindowSeconds: seconds(DEFAULT_AUTH_FAILURE_SETTINGS.perClientWindowSeconds),
    slowIntervalSeconds: seconds(DEFAULT_AUTH_FAILURE_SETTINGS.slowIntervalSeconds),
    knownAddressSeconds: seconds(DEFAULT_AUTH_FAILURE_SETTINGS.knownAddressSeconds),
  })
  .prefault({});

/** Environment overrides of `authFailures.*`, for both services. */
export const AUTH_FAILURE_ENV_OVERRIDES = {
  AUTH_FAILURES_PER_CLIENT_ADDRESS: 'authFailures.perClientAddress',
  AUTH_FAILURES_PER_ADDRESS: 'authFailures.perAddress',
  AUTH_FAILURES_PER_CLIENT: 'authFailures.perClient',
  AUTH_FAILURES_PER_CLIENT_WINDOW_SECONDS: 'authFailures.perClientWindowSeconds',
  AUTH_FAILURES_SLOW_INTERVAL_SECONDS: 'authFailures.slowIntervalSeconds',
  AUTH_FAILURES_KNOWN_ADDRESS_SECONDS: 'authFailures.knownAddressSeconds',
} as const;

/**
 * Failed client authentications (token, introspection, revocation; ext-authz's Basic and
 * secret-header extractors), counted by rate-limiter-flexible: in memory, or on Redis when one is
 * given (then shared by every replica; a Redis error falls back to the memory limiter, its
 * `insuranceLimiter`).
 *
 * Three budgets:
 * - per (client id, address) and per address: past either, refused (429) until the window ends;
 * - per client id across all addresses (issue 22: guessing from many real addresses is bounded
 *   too): past it the client is slowed down, not locked out. Addresses that authenticated as that
 *   client within `knownAddressSeconds` are exempt (a stranger cannot lock a working client out);
 *   every other address shares one attempt per `slowIntervalSeconds`. A success does not reset
 *   the budget (else an attacker holding one working address could launder failures).
 *
 * Only failures count, and an unknown id counts exactly like a known one, so the answers say
 * nothing about which ids exist.
 */
export class AuthFailureLimiter {
  private readonly pair: RateLimiterAbstract;
  private readonly address: RateLimiterAbstract;
  private readonly client: RateLimiterAbstract;
  private readonly slow: RateLimiterAbstract;
  private readonly known: RateLimiterAbstract;
  /** Known addresses written lately by this process: a success is written at most once per `refresh`. */
  private readonly recentlyKnown: LRUCache<string, true>;

  constructor(
    readonly settings: AuthFailureSettings,
    redis?: Redis,
    keyPrefix = 'otoroshi-ta:',
  ) {
    const limiter = (name: string, points: number, duration: number): RateLimiterAbstract => {
      const options = { keyPrefix: `${keyPrefix}authfail:${name}`, points, duration };
      const memory = new RateLimiterMemory(options);
      return redis
        ? new RateLimiterRedis({ ...options, storeClient: redis, rejectIfRedisNotReady: true, insuranceLimiter: memory })
        : memory;
    };
    this.pair = limiter('pair', settings.perClientAddress, settings.windowSeconds);
    this.address = limiter('addr', settings.perAddress, settings.windowSeconds);
    this.client = limiter('client', settings.perClient, settings.perClientWindowSeconds);
    this.slow = limiter('slow', 1, settings.slowIntervalSeconds);
    this.known = limiter('known', 1, settings.knownAddressSeconds);
    const refresh = Math.max(1, Math.min(3600, Math.floor(settings.knownAddressSeconds / 4)));
    this.recentlyKnown = new LRUCache({ max: 10_000, ttl: refresh * 1000 });
  }

  /** Ids are whatever a client sends: hashed to a short, safe key. */
  private static clientKey(clientId: string): string {
    return createHash('sha256').update(clientId).digest('base64url').slice(0, 22);
  }

  private static pairKey(clientId: string, address: string): string {
    return `${AuthFailureLimiter.clientKey(clientId)}|${address}`;
  }

  /**
   * Whether this id may try from this address now: undefined when it may, else the seconds to wait.
   * Past the per-client budget, an admitted attempt from an unknown address takes the shared slot.
   */
  async admit(clientId: string, address = 'unknown'): Promise<number | undefined> {
    const clientKey = AuthFailureLimiter.clientKey(clientId);
    const pairKey = AuthFailureLimiter.pairKey(clientId, address);
    const [pair, byAddress, client] = await Promise.all([
      this.pair.get(pairKey).catch(() => null),
      this.address.get(address).catch(() => null),
      this.client.get(clientKey).catch(() => null),
    ]);
    let wait = 0;
    const over = (result: RateLimiterRes | null, points: number) => {
      if (result && result.consumedPoints >= points) wait = Math.max(wait, result.msBeforeNext);
    };
    over(pair, this.settings.perClientAddress);
    over(byAddress, this.settings.perAddress);
    if (wait > 0) return toSeconds(wait);
    if (!client || client.consumedPoints < this.settings.perClient) return undefined;
    if (await this.known.get(pairKey).catch(() => null)) return undefined;
    try {
      await this.slow.consume(clientKey);
      return undefined;
    } catch (refusal) {
      // A RateLimiterRes: the slot is taken; anything else is a store error (the insurance failed too).
      return refusal instanceof RateLimiterRes ? toSeconds(refusal.msBeforeNext) : undefined;
    }
  }

  /** Counts one failure against the pair, the address and the client id. */
  async failed(clientId: string, address = 'unknown'): Promise<void> {
    // penalty() counts without rejecting; admit() decides.
    await Promise.all([
      this.pair.penalty(AuthFailureLimiter.pairKey(clientId, address)).catch(() => undefined),
      this.address.penalty(address).catch(() => undefined),
      this.client.penalty(AuthFailureLimiter.clientKey(clientId)).catch(() => undefined),
    ]);
  }

  /** A successful authentication: this address is known for this client (exempt from its budget) for `knownAddressSeconds`. */
  async succeeded(clientId: string, address = 'unknown'): Promise<void> {
    const pairKey = AuthFailureLimiter.pairKey(clientId, address);
    if (this.recentlyKnown.has(pairKey)) return;
    this.recentlyKnown.set(pairKey, true);
    await this.known.set(pairKey, 1, this.settings.knownAddressSeconds).catch(() => {
      this.recentlyKnown.delete(pairKey);
    });
  }
}

function toSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}
