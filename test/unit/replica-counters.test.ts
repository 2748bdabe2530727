import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryQuotaCounters } from '../../libs/quotas/quotas';
import { cleanCount, type CountersQuery, type ReplicaHandle, ReplicaQuotaCounters } from '../../libs/quotas/replica-counters';

/* Reading and resetting the quota counters ext-authz replicas keep in memory (issue 18 item 1). */
const QUOTAS = { throttlingQuota: 10, dailyQuota: 1000, monthlyQuota: 100_000 };

/** A replica that answers every query at once from fixed figures. */
function answering(counters: ReplicaQuotaCounters, figures: { perSecond?: unknown; today?: unknown; month?: unknown }, node = 'r') {
  const queries: CountersQuery[] = [];
  const handle: ReplicaHandle = counters.connect(node, (query) => {
    queries.push(query);
    handle.answer({
      requestId: query.requestId,
      clientId: query.clientId,
      callsPerSecond: figures.perSecond ?? 0,
      callsToday: figures.today ?? 0,
      callsThisMonth: figures.month ?? 0,
    });
  });
  return { handle, queries };
}

/** A replica that keeps its queries and answers only when told. */
function silent(counters: ReplicaQuotaCounters, node = 's') {
  const queries: CountersQuery[] = [];
  const handle = counters.connect(node, (query) => queries.push(query));
  return { handle, queries };
}

describe('ReplicaQuotaCounters', () => {
  it('answers zeros at once with no replica connected', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 5000 });
    const started = Date.now();
    const reading = await counters.read('k', QUOTAS);
    assert.ok(Date.now() - started < 100);
    assert.deepEqual([reading.replicas, reading.replicasUnanswered], [0, 0]);
    assert.equal(reading.consumption.currentCallsPerDay, 0);
    assert.equal(reading.consumption.remainingCallsPerDay, 1000);
    assert.equal(reading.consumption.authorizedCallsPerSec, 10);
  });

  it('sums what every replica counted, in Otoroshi RemainingQuotas shape', async () => {
    const counters = new ReplicaQuotaCounters();
    answering(counters, { perSecond: 3, today: 100, month: 2000 }, 'a');
    answering(counters, { perSecond: 4, today: 250, month: 3000 }, 'b');
    const reading = await counters.read('k', QUOTAS);
    assert.deepEqual(reading, {
      consumption: {
        authorizedCallsPerSec: 10,
        currentCallsPerSec: 7,
        remainingCallsPerSec: 3,
        authorizedCallsPerDay: 1000,
        currentCallsPerDay: 350,
        remainingCallsPerDay: 650,
        authorizedCallsPerMonth: 100_000,
        currentCallsPerMonth: 5000,
        remainingCallsPerMonth: 95_000,
      },
      replicas: 2,
      replicasUnanswered: 0,
    });
  });

  it("caps a replica's per-second count at the rate (its bucket never holds more)", async () => {
    const counters = new ReplicaQuotaCounters();
    answering(counters, { perSecond: 1_000_000 }, 'a');
    answering(counters, { perSecond: 5 }, 'b');
    const reading = await counters.read('k', QUOTAS);
    assert.equal(reading.consumption.currentCallsPerSec, 15);
    assert.equal(reading.consumption.remainingCallsPerSec, 0);
  });

  it('cleans hostile figures: negative, NaN, infinite, strings, objects, fractions, past 2^53', async () => {
    assert.deepEqual(
      [-5, Number.NaN, Number.POSITIVE_INFINITY, '12', 'x', {}, null, undefined, 2.9, 2 ** 60, 10n].map((value) => cleanCount(value)),
      [0, 0, 0, 12, 0, 0, 0, 0, 2, Number.MAX_SAFE_INTEGER, 10],
    );
    const counters = new ReplicaQuotaCounters();
    answering(counters, { perSecond: -1, today: Number.NaN, month: 2 ** 63 }, 'a');
    answering(counters, { perSecond: 'lots', today: 2 ** 63, month: 2 ** 63 }, 'b');
    const { consumption } = await counters.read('k', QUOTAS);
    assert.equal(consumption.currentCallsPerSec, 0);
    assert.equal(consumption.currentCallsPerDay, QUOTAS.dailyQuota, 'a huge figure counts as the quota');
    assert.equal(consumption.currentCallsPerMonth, 2 * QUOTAS.monthlyQuota, 'at most the quota per replica');
    assert.equal(consumption.remainingCallsPerDay, 0);
    for (const value of Object.values(consumption)) assert.ok(Number.isSafeInteger(value) && value >= 0, String(value));
  });

  it("caps a replica's day and month at their quotas (a replica admits no more)", async () => {
    const counters = new ReplicaQuotaCounters();
    answering(counters, { perSecond: Number.MAX_SAFE_INTEGER, today: Number.MAX_SAFE_INTEGER, month: Number.MAX_SAFE_INTEGER }, 'hostile');
    answering(counters, { perSecond: 3, today: 40, month: 900 }, 'honest');
    answering(counters, { today: '9007199254740993', month: '18446744073709551615' }, 'uint64');
    const reading = await counters.read('k', QUOTAS);
    assert.deepEqual(reading.consumption, {
      authorizedCallsPerSec: 10,
      currentCallsPerSec: 10 + 3,
      remainingCallsPerSec: 0,
      authorizedCallsPerDay: 1000,
      currentCallsPerDay: 1000 + 40 + 1000,
      remainingCallsPerDay: 0,
      authorizedCallsPerMonth: 100_000,
      currentCallsPerMonth: 100_000 + 900 + 100_000,
      remainingCallsPerMonth: 0,
    });
    assert.equal(reading.replicas, 3);
    // One honest replica alone: its figures as they are.
    const alone = new ReplicaQuotaCounters();
    answering(alone, { perSecond: 3, today: 40, month: 900 });
    const { consumption } = await alone.read('k', QUOTAS);
    assert.deepEqual(
      [
        consumption.currentCallsPerDay,
        consumption.remainingCallsPerDay,
        consumption.currentCallsPerMonth,
        consumption.remainingCallsPerMonth,
      ],
      [40, 960, 900, 99_100],
    );
  });

  it('waits at most waitMs for a replica that does not answer, and reports it unanswered', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 150 });
    answering(counters, { today: 7 }, 'a');
    silent(counters);
    const started = Date.now();
    const reading = await counters.read('k', QUOTAS);
    const waited = Date.now() - started;
    assert.ok(waited >= 140 && waited < 1000, `waited ${waited} ms`);
    assert.deepEqual([reading.replicas, reading.replicasUnanswered, reading.consumption.currentCallsPerDay], [1, 1, 7]);
  });

  it('answers as soon as the last replica answers, not after waitMs', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 5000 });
    const late = silent(counters);
    const started = Date.now();
    const reading = counters.read('k', QUOTAS);
    setTimeout(() => {
      const [query] = late.queries;
      late.handle.answer({ requestId: query.requestId, clientId: 'k', callsToday: 4 });
    }, 20);
    assert.equal((await reading).consumption.currentCallsPerDay, 4);
    assert.ok(Date.now() - started < 1000);
  });

  it('stops waiting for a replica that disconnects', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 5000 });
    answering(counters, { today: 1 }, 'a');
    const gone = silent(counters);
    const started = Date.now();
    const reading = counters.read('k', QUOTAS);
    setTimeout(() => gone.handle.disconnect(), 20);
    assert.deepEqual(await reading.then((r) => [r.replicas, r.replicasUnanswered]), [1, 1]);
    assert.ok(Date.now() - started < 1000);
    assert.equal(counters.connected, 1);
    // Not asked again once gone.
    await counters.read('k', QUOTAS);
    assert.equal(gone.queries.length, 1);
  });

  it('ignores answers to no pending query, for another key, and a second answer from the same replica', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 200 });
    const replica = silent(counters);
    const reading = counters.read('k', QUOTAS);
    const [query] = replica.queries;
    replica.handle.answer({ requestId: query.requestId + 1000, clientId: 'k', callsToday: 900 });
    replica.handle.answer({ requestId: 'not a number', clientId: 'k', callsToday: 900 });
    replica.handle.answer({ requestId: query.requestId, clientId: 'other', callsToday: 900 });
    replica.handle.answer({ requestId: query.requestId, clientId: 'k', callsToday: 3 });
    replica.handle.answer({ requestId: query.requestId, clientId: 'k', callsToday: 900 });
    const result = await reading;
    assert.deepEqual([result.replicas, result.replicasUnanswered, result.consumption.currentCallsPerDay], [1, 0, 3]);
    assert.equal(counters.ignoredAnswers, 4);
    // An answer after the query ended changes nothing.
    replica.handle.answer({ requestId: query.requestId, clientId: 'k', callsToday: 900 });
    assert.equal(counters.ignoredAnswers, 5);
  });

  it("ignores a replica's answer to a query it was not asked (connected after the query)", async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 100 });
    const first = silent(counters, 'first');
    const reading = counters.read('k', QUOTAS);
    const latecomer = counters.connect('late', () => {});
    latecomer.answer({ requestId: first.queries[0].requestId, clientId: 'k', callsToday: 50 });
    const result = await reading;
    assert.deepEqual([result.replicas, result.replicasUnanswered, result.consumption.currentCallsPerDay], [0, 1, 0]);
  });

  it('a flood of stray answers costs nothing and leaves no state', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 1000 });
    const replica = silent(counters);
    const started = Date.now();
    for (let i = 0; i < 200_000; i++) replica.handle.answer({ requestId: i, clientId: 'k', callsToday: i });
    assert.ok(Date.now() - started < 1000, `${Date.now() - started} ms`);
    assert.equal(counters.ignoredAnswers, 200_000);
    const reading = counters.read('k', QUOTAS);
    replica.handle.answer({ requestId: replica.queries[0].requestId, clientId: 'k', callsToday: 2 });
    assert.equal((await reading).consumption.currentCallsPerDay, 2);
  });

  it('sends the reset flag and the quotas; a reset a replica does not confirm is reported unanswered', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 100 });
    const confirmed = answering(counters, {}, 'a');
    silent(counters, 'b');
    const reading = await counters.reset('k', QUOTAS);
    assert.deepEqual(
      confirmed.queries.map((query) => [query.clientId, query.reset, query.quotas]),
      [['k', true, QUOTAS]],
    );
    assert.deepEqual([reading.replicas, reading.replicasUnanswered], [1, 1]);
  });

  it('a replica whose stream cannot take the query counts as unanswered at once', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 5000 });
    counters.connect('broken', () => {
      throw new Error('stream closed');
    });
    const started = Date.now();
    const reading = await counters.read('k', QUOTAS);
    assert.deepEqual([reading.replicas, reading.replicasUnanswered], [0, 1]);
    assert.ok(Date.now() - started < 100);
  });

  it('keeps concurrent queries apart by request id', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 1000 });
    const replica = silent(counters);
    const a = counters.read('a', QUOTAS);
    const b = counters.read('b', QUOTAS);
    const [qa, qb] = replica.queries;
    assert.notEqual(qa.requestId, qb.requestId);
    replica.handle.answer({ requestId: qb.requestId, clientId: 'b', callsToday: 2 });
    replica.handle.answer({ requestId: qa.requestId, clientId: 'a', callsToday: 1 });
    assert.deepEqual([(await a).consumption.currentCallsPerDay, (await b).consumption.currentCallsPerDay], [1, 2]);
  });

  it('close ends pending queries with what they have', async () => {
    const counters = new ReplicaQuotaCounters({ waitMs: 60_000 });
    silent(counters);
    const reading = counters.read('k', QUOTAS);
    counters.close();
    assert.deepEqual(await reading.then((r) => [r.replicas, r.replicasUnanswered]), [0, 1]);
  });
});

describe('MemoryQuotaCounters.peek', () => {
  it('reads a key without creating an entry, and honours the UTC day and month', () => {
    const counters = new MemoryQuotaCounters();
    const now = Date.UTC(2026, 10, 30, 23, 59, 59, 0);
    assert.deepEqual(counters.peek('never', QUOTAS, now), { perSecond: 0, daily: 0, monthly: 0 });
    assert.equal(counters.size, 0, 'peek created nothing');
    for (let i = 0; i < 3; i++) assert.equal(counters.reserveNow('k', QUOTAS, 1, now).granted, 1);
    assert.deepEqual(counters.peek('k', QUOTAS, now), { perSecond: 3, daily: 3, monthly: 3 });
    // Past midnight on the last day of the month: a new day and a new month.
    assert.deepEqual(counters.peek('k', QUOTAS, now + 2000), { perSecond: 0, daily: 0, monthly: 0 });
    assert.equal(counters.size, 1);
  });
});
