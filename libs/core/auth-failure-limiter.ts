import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, type RateLimiterAbstract, type RateLimiterRes } from 'rate-limiter-flexible';
import { z } from 'zod';

export interface AuthFailureSettings {
  /** Failures of one client id from one address within the window before that pair is refused. */
  perClientAddress: number;
  /** Failures from one address (any ids) within the window before the address is refused. */
  perAddress: number;
  /** Window, and how long a refusal lasts once the limit is passed, seconds. */
  windowSeconds: number;
}

export const DEFAULT_AUTH_FAILURE_SETTINGS: AuthFailureSettings = { perClientAddress: 10, perAddress: 100, windowSeconds: 60 };

/** The `authFailures` settings of both services (token authority and ext-authz). */
export const authFailureSettingsSchema = z
  .object({
    /** Failures of one client id from one address before it is refused (429). */
    perClientAddress: z.coerce.number().int().min(1).default(DEFAULT_AUTH_FAILURE_SETTINGS.perClientAddress),
    /** Failures from one address (any ids) before it is refused. */
    perAddress: z.coerce.number().int().min(1).default(DEFAULT_AUTH_FAILURE_SETTINGS.perAddress),
    /** Window and block duration, seconds. */
    windowSeconds: z.coerce.number().int().min(1).default(DEFAULT_AUTH_FAILURE_SETTINGS.windowSeconds),
  })
  .prefault({});

/**
 * Failed client authentications (token, introspection, revocation; ext-authz's Basic and
 * secret-header extractors), counted by rate-limiter-flexible: in memory, or on Redis when one is
 * given (then shared by every replica; a Redis error falls back to the memory limiter, its
 * `insuranceLimiter`).
 *
 * Two counters: per (client id, address) and per address. Not per client id alone: that one would
 * let anybody lock a client out by failing on its id, and the issue rules out slowing down a
 * client for other people's failures beyond its address's limit. Only failures count, and an
 * unknown id counts exactly like a known one, so the answers say nothing about which ids exist.
 */
export class AuthFailureLimiter {
  private readonly pair: RateLimiterAbstract;
  private readonly address: RateLimiterAbstract;

  constructor(
    readonly settings: AuthFailureSettings,
    redis?: Redis,
    keyPrefix = 'otoroshi-ta:',
  ) {
    const limiter = (name: string, points: number): RateLimiterAbstract => {
      const options = { keyPrefix: `${keyPrefix}authfail:${name}`, points, duration: settings.windowSeconds };
      const memory = new RateLimiterMemory(options);
      return redis
        ? new RateLimiterRedis({ ...options, storeClient: redis, rejectIfRedisNotReady: true, insuranceLimiter: memory })
        : memory;
    };
    this.pair = limiter('pair', settings.perClientAddress);
    this.address = limiter('addr', settings.perAddress);
  }

  private static pairKey(clientId: string, address: string): string {
    // Ids are whatever a client sends: hashed to a short, safe key.
    return `${createHash('sha256').update(clientId).digest('base64url').slice(0, 22)}|${address}`;
  }

  /** Seconds to wait when this id or this address has failed too often; undefined when it may try. */
  async retryAfter(clientId: string, address = 'unknown'): Promise<number | undefined> {
    const [pair, byAddress] = await Promise.all([
      this.pair.get(AuthFailureLimiter.pairKey(clientId, address)).catch(() => null),
      this.address.get(address).catch(() => null),
    ]);
    let wait = 0;
    const over = (result: RateLimiterRes | null, points: number) => {
      if (result && result.consumedPoints >= points) wait = Math.max(wait, result.msBeforeNext);
    };
    over(pair, this.settings.perClientAddress);
    over(byAddress, this.settings.perAddress);
    return wait > 0 ? Math.max(1, Math.ceil(wait / 1000)) : undefined;
  }

  /** Counts one failure against the pair and the address. */
  async failed(clientId: string, address = 'unknown'): Promise<void> {
    // penalty() counts without rejecting; retryAfter() decides.
    await Promise.all([
      this.pair.penalty(AuthFailureLimiter.pairKey(clientId, address)).catch(() => undefined),
      this.address.penalty(address).catch(() => undefined),
    ]);
  }
}
