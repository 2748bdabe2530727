import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  gcraCurrent,
  gcraReserve,
  leaseCap,
  MemoryQuotaCounters,
  msUntilNextDay,
  msUntilNextMonth,
  QuotaEnforcer,
  utcDay,
  utcMonth,
} from '../../libs/quotas/quotas';
import { TestClock } from './support/fixtures';

/* Otoroshi's quotas (libs/quotas/quotas.ts): the GCRA throttle and the UTC day and month counters, on injected clocks. */

describe('GCRA throttle', () => {
  it('lets a burst of `rate` calls through at once, then one every 1/rate s', () => {
    let tat = 0;
    const now = 1_000_000;
    for (let call = 0; call < 5; call++) {
      const step = gcraReserve(tat, 5, 1, now);
      assert.equal(step.granted, 1, `call ${call + 1} of the burst`);
      tat = step.tat;
    }
    const refused = gcraReserve(tat, 5, 1, now);
    assert.deepEqual([refused.granted, refused.retryAfterMs], [0, 200], 'the sixth waits one period (200 ms)');
    assert.equal(refused.tat, tat, 'a refusal does not move the state');
    assert.equal(gcraReserve(tat, 5, 1, now + 199).granted, 0);
    assert.equal(gcraReserve(tat, 5, 1, now + 200).granted, 1);
  });

  it('grants part of a batch when only part fits, and never more than `rate` in the bucket', () => {
    const half = gcraReserve(0, 10, 4, 0);
    assert.equal(half.granted, 4);
    const rest = gcraReserve(half.tat, 10, 100, 0);
    assert.equal(rest.granted, 6);
    assert.equal(gcraCurrent(rest.tat, 10, 0), 10);
    assert.equal(gcraCurrent(rest.tat, 10, 500), 5, 'half a second drains half');
    assert.equal(gcraCurrent(rest.tat, 10, 1000), 0);
    // Over any window: at most rate per second plus the one burst.
    let tat = 0;
    let granted = 0;
    for (let t = 0; t < 3000; t += 7) {
      const step = gcraReserve(tat, 10, 1, t);
      granted += step.granted;
      tat = step.tat;
    }
    assert.ok(granted <= 10 + 30 && granted >= 30, `${granted} calls in 3 s at 10/s`);
  });

  it('refuses everything at rate 0', () => {
    assert.deepEqual(gcraReserve(0, 0, 1, 0), { granted: 0, tat: 0, retryAfterMs: 1000 });
    assert.equal(gcraCurrent(10, 0, 0), 0);
  });

  it('takes whole leases while plenty is left, and one call at a time near the end', () => {
    assert.equal(leaseCap(6400), 100);
    assert.equal(leaseCap(63), 1);
    assert.equal(leaseCap(0), 1);
  });
});

describe('UTC day and month', () => {
  it('names periods by UTC, whatever the local zone, and counts down to the next one', () => {
    const lastMs = Date.UTC(2026, 0, 31, 23, 59, 59, 999);
    assert.deepEqual([utcDay(lastMs), utcMonth(lastMs)], ['20260131', '202601']);
    assert.deepEqual([utcDay(lastMs + 1), utcMonth(lastMs + 1)], ['20260201', '202602']);
    assert.equal(msUntilNextDay(lastMs), 1);
    assert.equal(msUntilNextMonth(lastMs), 1);
    assert.equal(msUntilNextDay(Date.UTC(2026, 1, 1)), 86_400_000);
    assert.equal(msUntilNextMonth(Date.UTC(2026, 1, 1)), 28 * 86_400_000, 'February 2026 has 28 days');
    assert.equal(msUntilNextMonth(Date.UTC(2028, 1, 1)), 29 * 86_400_000, '2028 is a leap year');
    // The cached period must follow the clock backwards too.
    assert.equal(utcDay(Date.UTC(2025, 11, 31, 12)), '20251231');
    assert.equal(utcDay(lastMs), '20260131');
  });
});

describe('MemoryQuotaCounters', () => {
  const quotas = { throttlingQuota: 1000, dailyQuota: 3, monthlyQuota: 5 };

  it('refuses past the daily quota until the next UTC day, then past the monthly one until the next month', async () => {
    const counters = new MemoryQuotaCounters();
    let now = Date.UTC(2026, 0, 30, 23, 0);
    const take = () => counters.reserveNow('k', quotas, 1, now);
    for (let call = 1; call <= 3; call++) assert.deepEqual(take(), { granted: 1, dailyUsed: call, monthlyUsed: call });
    assert.equal(take().exceeded, 'day');
    now = Date.UTC(2026, 0, 30, 23, 59, 59, 999);
    assert.equal(take().exceeded, 'day', 'still the same day');
    now = Date.UTC(2026, 0, 31);
    assert.deepEqual(take(), { granted: 1, dailyUsed: 1, monthlyUsed: 4 }, 'a new day, the same month');
    assert.deepEqual(take(), { granted: 1, dailyUsed: 2, monthlyUsed: 5 });
    const month = take();
    assert.equal(month.exceeded, 'month');
    assert.equal(month.granted, 0);
    now = Date.UTC(2026, 1, 1);
    assert.deepEqual(take(), { granted: 1, dailyUsed: 1, monthlyUsed: 1 }, 'a new month');
    const consumption = await counters.consumption('k', quotas, now);
    assert.deepEqual(
      [
        consumption.currentCallsPerDay,
        consumption.remainingCallsPerDay,
        consumption.currentCallsPerMonth,
        consumption.remainingCallsPerMonth,
      ],
      [1, 2, 1, 4],
    );
  });

  it('grants a batch only up to what the day and month have left; gives back within the same period only', async () => {
    const counters = new MemoryQuotaCounters();
    const now = Date.UTC(2026, 3, 10, 12);
    assert.equal(counters.reserveNow('k', quotas, 10, now).granted, 3);
    await counters.release('k', 2, utcDay(now), utcMonth(now));
    assert.equal(counters.reserveNow('k', quotas, 10, now).dailyUsed, 3);
    await counters.release('k', 1, '20000101', '200001');
    assert.equal(counters.reserveNow('k', quotas, 1, now).exceeded, 'day', 'a release for another day changes nothing');
    await counters.reset('k');
    assert.equal(counters.reserveNow('k', quotas, 1, now).dailyUsed, 1);
    assert.equal(counters.reserveNow('other', quotas, 1, now).dailyUsed, 1, 'counters are per key');
  });

  it('throttles per second before counting the day', () => {
    const counters = new MemoryQuotaCounters();
    const tight = { throttlingQuota: 2, dailyQuota: 100, monthlyQuota: 100 };
    const now = Date.UTC(2026, 3, 10);
    counters.reserveNow('k', tight, 1, now);
    counters.reserveNow('k', tight, 1, now);
    const refused = counters.reserveNow('k', tight, 1, now);
    assert.deepEqual([refused.exceeded, refused.retryAfterMs, refused.dailyUsed], ['second', 500, 2]);
    assert.equal(counters.reserveNow('k', tight, 1, now + 500).granted, 1);
  });
});

describe('QuotaEnforcer (memory counters)', () => {
  it('says how long until the next UTC day when the day is spent', async () => {
    const clock = new TestClock(Date.UTC(2026, 4, 10, 21, 0, 0));
    const enforcer = new QuotaEnforcer(
      new MemoryQuotaCounters(),
      { leaseMax: 1, leaseTtlMs: 1000, refusalCacheMs: 1000, waitMs: 100 },
      clock.now,
    );
    try {
      const quotas = { throttlingQuota: 10, dailyQuota: 1, monthlyQuota: 100 };
      assert.equal((await enforcer.consume('k', quotas)).outcome, 'allowed');
      assert.deepEqual(await enforcer.consume('k', quotas), { outcome: 'exceeded', period: 'day', retryAfterSeconds: 3 * 3600 });
    } finally {
      await enforcer.close();
    }
  });

  it('answers Retry-After until the next second, UTC day or month, and the remaining-calls figures', async () => {
    const clock = new TestClock(Date.UTC(2026, 0, 31, 23, 59, 58));
    const enforcer = new QuotaEnforcer(
      new MemoryQuotaCounters(),
      { leaseMax: 100, leaseTtlMs: 1000, refusalCacheMs: 1000, waitMs: 100 },
      clock.now,
    );
    try {
      const quotas = { throttlingQuota: 1, dailyQuota: 2, monthlyQuota: 3 };
      assert.deepEqual(await enforcer.consume('k', quotas), { outcome: 'allowed', dailyRemaining: 1, monthlyRemaining: 2 });
      assert.deepEqual(await enforcer.consume('k', quotas), { outcome: 'exceeded', period: 'second', retryAfterSeconds: 1 });
      clock.advance(1000);
      assert.deepEqual(await enforcer.consume('k', quotas), { outcome: 'allowed', dailyRemaining: 0, monthlyRemaining: 1 });
      clock.advance(500);
      assert.deepEqual(
        await enforcer.consume('k', quotas),
        { outcome: 'exceeded', period: 'day', retryAfterSeconds: 1 },
        '0.5 s to midnight',
      );
      clock.advance(500);
      assert.deepEqual(await enforcer.consume('k', quotas), { outcome: 'allowed', dailyRemaining: 1, monthlyRemaining: 2 }, 'February');
      clock.advance(1000);
      assert.deepEqual(await enforcer.consume('k', quotas), { outcome: 'allowed', dailyRemaining: 0, monthlyRemaining: 1 });
      clock.advance(86_400_000);
      assert.deepEqual(await enforcer.consume('k', quotas), { outcome: 'allowed', dailyRemaining: 1, monthlyRemaining: 0 });
      clock.advance(1000);
      const month = await enforcer.consume('k', quotas);
      assert.equal(month.outcome === 'exceeded' && month.period, 'month');
      assert.equal(month.outcome === 'exceeded' && month.retryAfterSeconds, Math.ceil(msUntilNextMonth(clock.ms) / 1000));
    } finally {
      await enforcer.close();
    }
  });
});
