import { Redis } from 'ioredis';
import type { ApiKeyQuotas } from '../core/data-plane';
import {
  consumptionOf,
  gcraCurrent,
  msUntilNextDay,
  msUntilNextMonth,
  type Grant,
  type QuotaConsumption,
  type QuotaCounters,
  type QuotaPeriod,
  utcDay,
  utcMonth,
} from './quotas';

/**
 * Key layout, shared by ext-authz (which counts) and the token authority (which shows and resets,
 * GET/DELETE /api/apikeys/:clientId/quotas): `<prefix>quota:{<clientId>}:sec` (GCRA timestamp),
 * `...:day:<YYYYMMDD>`, `...:month:<YYYYMM>`. The braces keep one key's counters in one Redis
 * Cluster slot, as a script needs.
 */
export function quotaKeys(prefix: string, clientId: string, now: number): { second: string; day: string; month: string } {
  const base = `${prefix}quota:{${clientId}}`;
  return { second: `${base}:sec`, day: `${base}:day:${utcDay(now)}`, month: `${base}:month:${utcMonth(now)}` };
}

/**
 * One atomic reservation: refuses when the day, the month or the throttle has nothing left,
 * otherwise counts up to `want` calls in all three (fewer near the end of a day or month, see
 * leaseCap in quotas.ts, which this mirrors). Returns granted, daily used, monthly used, the
 * refused period (0 none, 1 second, 2 day, 3 month), and ms to wait for the throttle.
 */
const RESERVE_SCRIPT = `
local want = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local dq = tonumber(ARGV[3])
local mq = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local daily = tonumber(redis.call('GET', KEYS[2]) or '0')
local monthly = tonumber(redis.call('GET', KEYS[3]) or '0')
if daily >= dq then return {0, daily, monthly, 2, 0} end
if monthly >= mq then return {0, daily, monthly, 3, 0} end
if rate <= 0 then return {0, daily, monthly, 1, 1000} end
local period = 1000 / rate
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local available = math.floor((1000 - (tat - now)) / period + 1e-9)
if available < 1 then return {0, daily, monthly, 1, math.max(1, math.ceil(tat - now - 1000 + period))} end
local granted = math.min(want, available, dq - daily, mq - monthly,
  math.max(1, math.floor((dq - daily) / 64)), math.max(1, math.floor((mq - monthly) / 64)))
tat = tat + granted * period
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
daily = redis.call('INCRBY', KEYS[2], granted)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]))
monthly = redis.call('INCRBY', KEYS[3], granted)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[7]))
return {granted, daily, monthly, 0, 0}
`;

/** Gives back unspent calls, never below zero. */
const RELEASE_SCRIPT = `
for i = 1, 2 do
  local left = tonumber(redis.call('GET', KEYS[i]) or '0')
  if left > 0 then redis.call('DECRBY', KEYS[i], math.min(left, tonumber(ARGV[1]))) end
end
return 1
`;

const PERIODS: (QuotaPeriod | undefined)[] = [undefined, 'second', 'day', 'month'];
/** Counters outlive their period a little, for the admin API and clock skew between replicas. */
const KEEP_MS = 24 * 3_600_000;

type ScriptedRedis = Redis & {
  reserveQuota(...args: (string | number)[]): Promise<[number, number, number, number, number]>;
  releaseQuota(...args: (string | number)[]): Promise<number>;
};

export interface RedisConnectionOptions {
  url: string;
  /** A command that takes longer fails (the caller fails open or closed), ms. */
  commandTimeoutMs: number;
  /** Told when the connection goes down or comes back (logs, metrics). */
  onStateChange?: (up: boolean, error?: Error) => void;
}

/**
 * An ioredis connection for the hot path: commands fail at once while Redis is away (no offline
 * queue, one attempt) instead of piling up, and ioredis reconnects by itself (backoff to 2 s).
 */
export function connectRedis(options: RedisConnectionOptions): Redis {
  const redis = new Redis(options.url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: options.commandTimeoutMs,
    connectTimeout: 2000,
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
    lazyConnect: false,
  });
  let up = false;
  redis.on('ready', () => {
    if (!up) options.onStateChange?.(true);
    up = true;
  });
  redis.on('error', (error: Error) => {
    if (up) options.onStateChange?.(false, error);
    up = false;
  });
  redis.on('close', () => {
    if (up) options.onStateChange?.(false);
    up = false;
  });
  return redis;
}

/** Resolves once the connection is ready, or after `timeoutMs` (commands fail until it is). */
export async function whenReady(redis: Redis, timeoutMs: number): Promise<boolean> {
  if (redis.status === 'ready') return true;
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(false), timeoutMs);
    const onReady = () => done(true);
    function done(ready: boolean) {
      clearTimeout(timer);
      redis.off('ready', onReady);
      resolve(ready);
    }
    redis.once('ready', onReady);
  });
}

/** Counters on Redis, shared by every replica (and read by the token authority's admin API). */
export class RedisQuotaCounters implements QuotaCounters {
  readonly kind = 'redis';
  private readonly redis: ScriptedRedis;

  constructor(
    redis: Redis,
    private readonly prefix: string,
  ) {
    redis.defineCommand('reserveQuota', { numberOfKeys: 3, lua: RESERVE_SCRIPT });
    redis.defineCommand('releaseQuota', { numberOfKeys: 2, lua: RELEASE_SCRIPT });
    this.redis = redis as ScriptedRedis;
  }

  async reserve(clientId: string, quotas: ApiKeyQuotas, want: number, now: number): Promise<Grant> {
    const keys = quotaKeys(this.prefix, clientId, now);
    const [granted, dailyUsed, monthlyUsed, refused, retryAfterMs] = await this.redis.reserveQuota(
      keys.second,
      keys.day,
      keys.month,
      want,
      quotas.throttlingQuota,
      quotas.dailyQuota,
      quotas.monthlyQuota,
      now,
      msUntilNextDay(now) + KEEP_MS,
      msUntilNextMonth(now) + KEEP_MS,
    );
    return { granted, dailyUsed, monthlyUsed, exceeded: PERIODS[refused], retryAfterMs };
  }

  async release(clientId: string, calls: number, day: string, month: string): Promise<void> {
    const base = `${this.prefix}quota:{${clientId}}`;
    await this.redis.releaseQuota(`${base}:day:${day}`, `${base}:month:${month}`, calls);
  }

  async consumption(clientId: string, quotas: ApiKeyQuotas, now: number): Promise<QuotaConsumption> {
    const keys = quotaKeys(this.prefix, clientId, now);
    const [tat, daily, monthly] = await this.redis.mget(keys.second, keys.day, keys.month);
    return consumptionOf(quotas, gcraCurrent(Number(tat ?? 0), quotas.throttlingQuota, now), Number(daily ?? 0), Number(monthly ?? 0));
  }

  async reset(clientId: string, now: number): Promise<void> {
    const keys = quotaKeys(this.prefix, clientId, now);
    await this.redis.del(keys.second, keys.day, keys.month);
  }

  async close(): Promise<void> {
    this.redis.disconnect();
  }
}
