import type { ApiKeyQuotas } from '../core/data-plane';

/**
 * Otoroshi's per-key quotas: `throttlingQuota` calls per second, `dailyQuota` per UTC day,
 * `monthlyQuota` per UTC month. Framework-free; two back ends share one contract:
 *
 * - MemoryQuotaCounters: exact, for one ext-authz.
 * - RedisQuotaCounters (quota-redis.ts): shared by every replica on one Redis.
 *
 * The per-second throttle is GCRA (the generic cell rate algorithm, a token bucket kept as one
 * timestamp): a burst of up to `throttlingQuota` calls passes at once, and over any window the
 * key never gets more than `throttlingQuota` per second plus that one burst. Day and month are
 * plain counters keyed by the UTC day (20261128) and month (202611), as Otoroshi counts them.
 *
 * Counters are consumed by *reservations*: a call is only admitted against calls already counted
 * in the store, so replicas never admit more than the quota together. With Redis a replica
 * reserves a small batch (a lease) and spends it locally, so most Checks take no round trip;
 * see QuotaEnforcer for how leases are sized and given back.
 */

export type QuotaPeriod = 'second' | 'day' | 'month';

/** What a reservation got. `granted` 0 means refused, because of `exceeded`. */
export interface Grant {
  granted: number;
  /** Calls counted today and this month after the reservation, across all replicas. */
  dailyUsed: number;
  monthlyUsed: number;
  exceeded?: QuotaPeriod;
  /** When refused for the second: ms until one call fits again. */
  retryAfterMs?: number;
}

/** Otoroshi's RemainingQuotas (GET /api/apikeys/:clientId/quotas). */
export interface QuotaConsumption {
  authorizedCallsPerSec: number;
  currentCallsPerSec: number;
  remainingCallsPerSec: number;
  authorizedCallsPerDay: number;
  currentCallsPerDay: number;
  remainingCallsPerDay: number;
  authorizedCallsPerMonth: number;
  currentCallsPerMonth: number;
  remainingCallsPerMonth: number;
}

/** The store of counters. Implementations reject (never hang) when they cannot answer. */
export interface QuotaCounters {
  readonly kind: 'memory' | 'redis';
  /** Reserves up to `want` calls (at least one when any is left) at `now`. */
  reserve(clientId: string, quotas: ApiKeyQuotas, want: number, now: number): Promise<Grant>;
  /** Gives back reserved calls that were not used (same UTC day and month only). */
  release(clientId: string, calls: number, day: string, month: string): Promise<void>;
  consumption(clientId: string, quotas: ApiKeyQuotas, now: number): Promise<QuotaConsumption>;
  /** Forgets the key's counters (second, day, month). */
  reset(clientId: string, now: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * The UTC day (20261128) and month (202611) of an instant. Formatting a date costs more than the
 * rest of a quota check, so the day of the last instant asked is kept, with its bounds.
 */
const calendar = { start: 0, end: 0, day: '', month: '' };
function periodsOf(now: number): typeof calendar {
  if (now < calendar.start || now >= calendar.end) {
    const date = new Date(now);
    calendar.start = Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate());
    calendar.end = calendar.start + 86_400_000;
    const iso = date.toISOString();
    calendar.day = iso.slice(0, 10).replaceAll('-', '');
    calendar.month = iso.slice(0, 7).replace('-', '');
  }
  return calendar;
}
export const utcDay = (now: number): string => periodsOf(now).day;
export const utcMonth = (now: number): string => periodsOf(now).month;

/** Ms until the next UTC day, and until the next UTC month. */
export function msUntilNextDay(now: number): number {
  const date = new Date(now);
  return Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate() + 1) - now;
}
export function msUntilNextMonth(now: number): number {
  const date = new Date(now);
  return Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + 1, 1) - now;
}

/** GCRA's state for one key: the theoretical arrival time (ms) of the next call. */
export function gcraReserve(tat: number, rate: number, want: number, now: number): { granted: number; tat: number; retryAfterMs: number } {
  if (rate <= 0) return { granted: 0, tat, retryAfterMs: 1000 };
  const period = 1000 / rate;
  const start = Math.max(tat, now);
  // A burst of `rate` calls: the bucket holds one second of calls.
  const available = Math.floor((1000 - (start - now)) / period + 1e-9);
  if (available < 1) return { granted: 0, tat, retryAfterMs: Math.max(1, Math.ceil(start - now - 1000 + period)) };
  const granted = Math.min(want, available);
  return { granted, tat: start + granted * period, retryAfterMs: 0 };
}

/** Calls in the bucket at `now` (Otoroshi's "current calls per second"). */
export function gcraCurrent(tat: number, rate: number, now: number): number {
  if (rate <= 0 || tat <= now) return 0;
  return Math.min(rate, Math.ceil((tat - now) / (1000 / rate) - 1e-9));
}

/**
 * How many calls a reservation may take when `left` remain in a period: all it wants while
 * plenty is left, one at a time near the end (so N replicas together can spend the last calls).
 */
export function leaseCap(left: number): number {
  return Math.max(1, Math.floor(left / 64));
}

export function consumptionOf(quotas: ApiKeyQuotas, perSecond: number, daily: number, monthly: number): QuotaConsumption {
  return {
    authorizedCallsPerSec: quotas.throttlingQuota,
    currentCallsPerSec: perSecond,
    remainingCallsPerSec: Math.max(0, quotas.throttlingQuota - perSecond),
    authorizedCallsPerDay: quotas.dailyQuota,
    currentCallsPerDay: daily,
    remainingCallsPerDay: Math.max(0, quotas.dailyQuota - daily),
    authorizedCallsPerMonth: quotas.monthlyQuota,
    currentCallsPerMonth: monthly,
    remainingCallsPerMonth: Math.max(0, quotas.monthlyQuota - monthly),
  };
}

interface MemoryEntry {
  tat: number;
  day: string;
  daily: number;
  month: string;
  monthly: number;
}

/** Exact counters in this process (the default: one ext-authz). */
export class MemoryQuotaCounters implements QuotaCounters {
  readonly kind = 'memory';
  private readonly entries = new Map<string, MemoryEntry>();

  private entry(clientId: string, now: number): MemoryEntry {
    const day = utcDay(now);
    const month = utcMonth(now);
    let entry = this.entries.get(clientId);
    if (!entry) {
      entry = { tat: 0, day, daily: 0, month, monthly: 0 };
      this.entries.set(clientId, entry);
    }
    if (entry.day !== day) {
      entry.day = day;
      entry.daily = 0;
    }
    if (entry.month !== month) {
      entry.month = month;
      entry.monthly = 0;
    }
    return entry;
  }

  /** Synchronous: the enforcer calls this directly on the hot path. */
  reserveNow(clientId: string, quotas: ApiKeyQuotas, want: number, now: number): Grant {
    const entry = this.entry(clientId, now);
    const refused = (exceeded: QuotaPeriod, retryAfterMs?: number): Grant => ({
      granted: 0,
      dailyUsed: entry.daily,
      monthlyUsed: entry.monthly,
      exceeded,
      retryAfterMs,
    });
    if (entry.daily >= quotas.dailyQuota) return refused('day');
    if (entry.monthly >= quotas.monthlyQuota) return refused('month');
    const limit = Math.min(want, quotas.dailyQuota - entry.daily, quotas.monthlyQuota - entry.monthly);
    const throttled = gcraReserve(entry.tat, quotas.throttlingQuota, limit, now);
    if (!throttled.granted) return refused('second', throttled.retryAfterMs);
    entry.tat = throttled.tat;
    entry.daily += throttled.granted;
    entry.monthly += throttled.granted;
    return { granted: throttled.granted, dailyUsed: entry.daily, monthlyUsed: entry.monthly };
  }

  async reserve(clientId: string, quotas: ApiKeyQuotas, want: number, now: number): Promise<Grant> {
    return this.reserveNow(clientId, quotas, want, now);
  }

  async release(clientId: string, calls: number, day: string, month: string): Promise<void> {
    const entry = this.entries.get(clientId);
    if (entry?.day === day) entry.daily = Math.max(0, entry.daily - calls);
    if (entry?.month === month) entry.monthly = Math.max(0, entry.monthly - calls);
  }

  async consumption(clientId: string, quotas: ApiKeyQuotas, now: number): Promise<QuotaConsumption> {
    const entry = this.entry(clientId, now);
    return consumptionOf(quotas, gcraCurrent(entry.tat, quotas.throttlingQuota, now), entry.daily, entry.monthly);
  }

  async reset(clientId: string): Promise<void> {
    this.entries.delete(clientId);
  }

  /**
   * The key's counters at `now` without creating an entry (the authority's queries, see
   * replica-counters.ts, must not fill the map with keys that made no call): zeros for a key
   * never counted, and for a day or month that has passed.
   */
  peek(clientId: string, quotas: ApiKeyQuotas, now: number): { perSecond: number; daily: number; monthly: number } {
    const entry = this.entries.get(clientId);
    if (!entry) return { perSecond: 0, daily: 0, monthly: 0 };
    return {
      perSecond: gcraCurrent(entry.tat, quotas.throttlingQuota, now),
      daily: entry.day === utcDay(now) ? entry.daily : 0,
      monthly: entry.month === utcMonth(now) ? entry.monthly : 0,
    };
  }

  /** Keys with counters (for tests and metrics). */
  get size(): number {
    return this.entries.size;
  }

  async close(): Promise<void> {}
}

/** What the enforcer answers for one call. */
export type QuotaDecision =
  | { outcome: 'allowed'; dailyRemaining: number; monthlyRemaining: number }
  | { outcome: 'exceeded'; period: QuotaPeriod; retryAfterSeconds: number }
  | { outcome: 'unavailable'; error: Error };

interface Lease {
  /** Reserved calls not spent yet. */
  left: number;
  day: string;
  month: string;
  /** When the store last answered for this key: leases older than the lease TTL are given back. */
  at: number;
  /** Usage after the last reservation, for the remaining-calls headers. */
  dailyUsed: number;
  monthlyUsed: number;
  /** Refused until then (ms), without asking the store again. */
  refusedUntil: number;
  refusal?: { period: QuotaPeriod; retryAfterSeconds: number };
  pending?: Promise<void>;
  /** Size of the last grant: a large lease is topped up before it runs out (see spend). */
  lastGrant: number;
}

export interface QuotaEnforcerOptions {
  /** Largest lease (calls reserved at once); 1 reserves every call (memory does that anyway). */
  leaseMax: number;
  /** Unspent leases are given back after this long without use (ms). */
  leaseTtlMs: number;
  /** A refusal for the day or month is remembered this long (ms) before the store is asked again. */
  refusalCacheMs: number;
  /**
   * How long a Check waits for the store (ms); then it fails open or closed as its policy says.
   * The reservation itself goes on: what it gets is kept for the next calls, never lost.
   */
  waitMs: number;
}

/** Whether `promise` settles within `ms` (it keeps running either way). */
function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    promise.then(
      () => {
        clearTimeout(timer);
        resolve(true);
      },
      () => {
        clearTimeout(timer);
        resolve(true);
      },
    );
  });
}

/**
 * Spends reservations call by call. With the memory back end every call is reserved at once and
 * exactly. With Redis a replica reserves a lease of up to `leaseMax` calls (fewer near the end of
 * a quota, see leaseCap, and no more than a tenth of a second of the throttle) and spends it
 * without a round trip; one reservation per key is in flight at a time, and unspent leases go
 * back after `leaseTtlMs`. No call is ever admitted that the store has not counted, so the
 * replicas together never exceed a quota; what a lease costs is that its calls are counted
 * before they happen (the remaining-calls headers run ahead by at most the leases out).
 */
export class QuotaEnforcer {
  private readonly leases = new Map<string, Lease>();
  private readonly sweep: NodeJS.Timeout;

  constructor(
    readonly counters: QuotaCounters,
    private readonly options: QuotaEnforcerOptions,
    private readonly now: () => number = Date.now,
  ) {
    this.sweep = setInterval(() => this.giveBackIdleLeases(), Math.max(100, options.leaseTtlMs)).unref();
  }

  /**
   * The call's decision when it needs no store round trip: always in memory; with Redis, a call
   * spent from the lease in hand or a refusal remembered. Undefined when consume() must wait.
   */
  consumeNow(clientId: string, quotas: ApiKeyQuotas): QuotaDecision | undefined {
    const now = this.now();
    if (this.counters instanceof MemoryQuotaCounters) {
      const grant = this.counters.reserveNow(clientId, quotas, 1, now);
      if (grant.granted === 0) return this.decide(grant, now);
      return {
        outcome: 'allowed',
        dailyRemaining: Math.max(0, quotas.dailyQuota - grant.dailyUsed),
        monthlyRemaining: Math.max(0, quotas.monthlyQuota - grant.monthlyUsed),
      };
    }
    const lease = this.leases.get(clientId);
    if (!lease || lease.day !== utcDay(now) || lease.month !== utcMonth(now)) return undefined;
    if (lease.left > 0) return this.spend(clientId, lease, quotas, now);
    if (lease.refusal && lease.refusedUntil > now) return { outcome: 'exceeded', ...lease.refusal };
    return undefined;
  }

  async consume(clientId: string, quotas: ApiKeyQuotas): Promise<QuotaDecision> {
    const decided = this.consumeNow(clientId, quotas);
    if (decided) return decided;
    // Each pass either spends a reserved call, meets a remembered refusal, waits for the
    // reservation in flight, or makes one itself (and then gets the first of what it reserved),
    // so every caller ends; the bound is only a safety net.
    for (let pass = 0; pass < 1000; pass++) {
      const now = this.now();
      const day = utcDay(now);
      const month = utcMonth(now);
      let lease = this.leases.get(clientId);
      if (lease && (lease.day !== day || lease.month !== month)) {
        // A new UTC day or month: what was reserved belonged to the last one.
        this.leases.delete(clientId);
        lease = undefined;
      }
      if (lease && lease.left > 0) return this.spend(clientId, lease, quotas, now);
      if (lease?.refusal && lease.refusedUntil > now) return { outcome: 'exceeded', ...lease.refusal };
      if (lease?.pending !== undefined) {
        if (!(await settlesWithin(lease.pending, this.options.waitMs))) return this.slow();
        continue;
      }
      const current = lease ?? { left: 0, day, month, at: now, dailyUsed: 0, monthlyUsed: 0, refusedUntil: 0, lastGrant: 0 };
      this.leases.set(clientId, current);
      let outcome: QuotaDecision | undefined;
      let abandoned = false;
      current.pending = this.counters
        .reserve(clientId, quotas, this.want(quotas), now)
        .then(
          (grant) => {
            this.granted(current, grant, now);
            if (grant.granted > 0) {
              // The caller that reserved spends first, before any waiter wakes up; if it gave up
              // waiting, the calls stay in the lease for the next ones (they are counted already).
              if (!abandoned) outcome = this.spend(clientId, current, quotas, now);
              return;
            }
            const refused = this.decide(grant, now);
            current.refusal = { period: refused.period, retryAfterSeconds: refused.retryAfterSeconds };
            current.refusedUntil = now + (refused.period === 'second' ? (grant.retryAfterMs ?? 1000) : this.options.refusalCacheMs);
            outcome = refused;
          },
          (error: Error) => {
            outcome = { outcome: 'unavailable', error };
          },
        )
        .finally(() => {
          current.pending = undefined;
        });
      if (!(await settlesWithin(current.pending, this.options.waitMs))) {
        abandoned = true;
        return this.slow();
      }
      if (outcome) return outcome;
    }
    return { outcome: 'exceeded', period: 'second', retryAfterSeconds: 1 };
  }

  private slow(): QuotaDecision {
    return { outcome: 'unavailable', error: new Error(`the quota store did not answer within ${this.options.waitMs} ms`) };
  }

  private granted(lease: Lease, grant: Grant, now: number): void {
    lease.left += grant.granted;
    lease.at = now;
    lease.dailyUsed = grant.dailyUsed;
    lease.monthlyUsed = grant.monthlyUsed;
    if (grant.granted > 0) {
      lease.refusal = undefined;
      lease.lastGrant = grant.granted;
    }
  }

  private spend(clientId: string, lease: Lease, quotas: ApiKeyQuotas, now: number): QuotaDecision {
    lease.left -= 1;
    lease.at = now;
    // A busy key's lease is topped up in the background when a quarter is left, so its calls
    // never wait for Redis in the steady state. Small leases (the end of a quota) are not: there,
    // every call is reserved when it comes, which keeps the last calls exact across replicas.
    if (lease.lastGrant >= 8 && lease.left <= lease.lastGrant / 4 && lease.pending === undefined && !lease.refusal) {
      lease.pending = this.counters
        .reserve(clientId, quotas, this.want(quotas), now)
        .then(
          (grant) => {
            if (this.leases.get(clientId) !== lease) {
              // Dropped meanwhile (new day, reset, idle): give the calls back.
              if (grant.granted > 0) this.counters.release(clientId, grant.granted, lease.day, lease.month).catch(() => undefined);
              return;
            }
            this.granted(lease, grant, now);
            if (grant.granted === 0) {
              const refused = this.decide(grant, now);
              lease.refusal = { period: refused.period, retryAfterSeconds: refused.retryAfterSeconds };
              lease.refusedUntil = now + (refused.period === 'second' ? (grant.retryAfterMs ?? 1000) : this.options.refusalCacheMs);
            }
          },
          // The next call that finds the lease empty asks again, and fails open or closed then.
          () => undefined,
        )
        .finally(() => {
          lease.pending = undefined;
        });
    }
    // The store counted the whole lease: what this replica has not spent yet is still to come.
    return {
      outcome: 'allowed',
      dailyRemaining: Math.max(0, quotas.dailyQuota - lease.dailyUsed + lease.left),
      monthlyRemaining: Math.max(0, quotas.monthlyQuota - lease.monthlyUsed + lease.left),
    };
  }

  private want(quotas: ApiKeyQuotas): number {
    return Math.max(1, Math.min(this.options.leaseMax, Math.floor(quotas.throttlingQuota / 10)));
  }

  /** A refused reservation as the caller's answer: Retry-After is the next second, UTC day or month. */
  private decide(grant: Grant, now: number): QuotaDecision & { outcome: 'exceeded' } {
    const ms =
      grant.exceeded === 'day' ? msUntilNextDay(now) : grant.exceeded === 'month' ? msUntilNextMonth(now) : (grant.retryAfterMs ?? 1000);
    return { outcome: 'exceeded', period: grant.exceeded ?? 'second', retryAfterSeconds: Math.max(1, Math.ceil(ms / 1000)) };
  }

  /** Forgets this replica's lease and refusal for a key (after an admin reset). */
  forget(clientId: string): void {
    this.leases.delete(clientId);
  }

  private giveBackIdleLeases(): void {
    const now = this.now();
    for (const [clientId, lease] of this.leases) {
      if (lease.pending || now - lease.at < this.options.leaseTtlMs) continue;
      if (lease.refusal && lease.refusedUntil > now) continue;
      this.leases.delete(clientId);
      if (lease.left > 0) this.counters.release(clientId, lease.left, lease.day, lease.month).catch(() => undefined);
    }
  }

  /** Gives back every unspent lease (on shutdown), then closes the store. */
  async close(): Promise<void> {
    clearInterval(this.sweep);
    await Promise.all(
      [...this.leases].map(([clientId, lease]) =>
        lease.left > 0 ? this.counters.release(clientId, lease.left, lease.day, lease.month).catch(() => undefined) : undefined,
      ),
    );
    this.leases.clear();
    await this.counters.close();
  }
}
