import type { ApiKeyQuotas } from '../core/data-plane';
import { consumptionOf, type QuotaConsumption } from './quotas';

/**
 * The quota counters ext-authz replicas keep in their own memory, read by asking them. Without a
 * shared Redis each replica counts and enforces on its own (MemoryQuotaCounters); the authority
 * holds a stream to every replica (AuthorityWatch.QuotaCounters) and, when an admin reads or
 * resets a key's quotas, asks every connected replica and waits at most `waitMs` for the answers.
 *
 * What the figure means: the **sum** of what the replicas counted. Enforcement is per replica,
 * not shared: each replica admits up to the quota by itself, so N replicas behind a load
 * balancer may admit up to N times the quota together (share counters on Redis for a shared
 * limit). Each replica's figures are capped at the quotas (see below), so the sums are at most
 * N × the quotas.
 *
 * Framework-free: a replica is whatever can `send` a query; the transport (a gRPC stream) calls
 * `answer` with what the replica said and `disconnect` when it goes. Answers are untrusted:
 * figures are cleaned (negative or not a number: 0; a fraction: rounded down) and capped at what
 * one replica can have counted (the rate, the daily and the monthly quota), so the sums stay
 * within N × the quotas; answers to no pending query, for another key, or a second time are
 * ignored. A quota lowered below what a replica already counted shows that replica at the new
 * quota (remaining 0 either way).
 */

/** What the authority asks a replica. */
export interface CountersQuery {
  requestId: number;
  clientId: string;
  quotas: ApiKeyQuotas;
  /** Forget the key's counters first, then answer. */
  reset: boolean;
}

/** What a replica answered (as decoded; any field may be missing or of the wrong kind). */
export interface CountsAnswer {
  requestId?: unknown;
  clientId?: unknown;
  callsPerSecond?: unknown;
  callsToday?: unknown;
  callsThisMonth?: unknown;
}

/** A key's consumption summed over the replicas that answered. */
export interface ReplicaReading {
  consumption: QuotaConsumption;
  /** Replicas that answered in time. */
  replicas: number;
  /** Replicas asked that did not answer in time (or went away first). */
  replicasUnanswered: number;
}

/** One connected replica, as the transport sees it. */
export interface ReplicaHandle {
  readonly node: string;
  /** Takes the replica's answer to a query. */
  answer(counts: CountsAnswer): void;
  /** The replica went away: stop waiting for it. */
  disconnect(): void;
}

export interface ReplicaCountersOptions {
  /** Longest wait for the replicas' answers (ms). */
  waitMs?: number;
}

interface Replica {
  node: string;
  send: (query: CountersQuery) => void;
}

interface Figures {
  perSecond: number;
  daily: number;
  monthly: number;
}

interface Pending {
  query: CountersQuery;
  waiting: Set<Replica>;
  answers: Figures[];
  asked: number;
  timer: NodeJS.Timeout;
  finished: boolean;
  done: () => void;
}

/** A figure from a replica as a bounded non-negative integer: anything else counts as 0. */
export function cleanCount(value: unknown, cap: number = Number.MAX_SAFE_INTEGER): number {
  const number = typeof value === 'number' ? value : typeof value === 'bigint' || typeof value === 'string' ? Number(value) : Number.NaN;
  if (!Number.isFinite(number) || number <= 0) return 0;
  return Math.min(Math.floor(number), Math.max(0, cap), Number.MAX_SAFE_INTEGER);
}

const capSum = (values: number[]) =>
  Math.min(
    Number.MAX_SAFE_INTEGER,
    values.reduce((sum, value) => sum + value, 0),
  );

export class ReplicaQuotaCounters {
  private readonly replicas = new Set<Replica>();
  private readonly pending = new Map<number, Pending>();
  private nextRequestId = 1;
  private readonly waitMs: number;
  /** Answers dropped (no pending query, another key, a second answer), for logs and tests. */
  ignoredAnswers = 0;

  constructor(options: ReplicaCountersOptions = {}) {
    this.waitMs = options.waitMs ?? 2000;
  }

  /** Replicas connected now. */
  get connected(): number {
    return this.replicas.size;
  }

  /** A replica joined; queries go to it through `send` until it disconnects. */
  connect(node: string, send: (query: CountersQuery) => void): ReplicaHandle {
    const replica: Replica = { node, send };
    this.replicas.add(replica);
    return {
      node,
      answer: (counts) => this.answer(replica, counts),
      disconnect: () => this.disconnect(replica),
    };
  }

  /** The key's consumption, summed over the replicas that answer within `waitMs`. */
  read(clientId: string, quotas: ApiKeyQuotas): Promise<ReplicaReading> {
    return this.ask(clientId, quotas, false);
  }

  /**
   * Asks every replica to forget the key's counters. `replicasUnanswered` > 0 means the reset is
   * not confirmed everywhere (a replica that did not answer may still count the old calls).
   */
  reset(clientId: string, quotas: ApiKeyQuotas): Promise<ReplicaReading> {
    return this.ask(clientId, quotas, true);
  }

  /** Stops waiting for anything (shutdown): pending queries end with what they have. */
  close(): void {
    for (const pending of [...this.pending.values()]) pending.done();
    this.replicas.clear();
  }

  private ask(clientId: string, quotas: ApiKeyQuotas, reset: boolean): Promise<ReplicaReading> {
    const query: CountersQuery = { requestId: this.nextRequestId++, clientId, quotas, reset };
    return new Promise((resolve) => {
      const pending: Pending = {
        query,
        waiting: new Set(this.replicas),
        answers: [],
        asked: this.replicas.size,
        timer: setTimeout(() => pending.done(), this.waitMs),
        finished: false,
        done: () => {
          if (pending.finished) return;
          pending.finished = true;
          clearTimeout(pending.timer);
          this.pending.delete(query.requestId);
          const { answers } = pending;
          resolve({
            consumption: consumptionOf(
              quotas,
              capSum(answers.map((figures) => figures.perSecond)),
              capSum(answers.map((figures) => figures.daily)),
              capSum(answers.map((figures) => figures.monthly)),
            ),
            replicas: answers.length,
            replicasUnanswered: pending.asked - answers.length,
          });
        },
      };
      this.pending.set(query.requestId, pending);
      for (const replica of pending.waiting) {
        try {
          replica.send(query);
        } catch {
          // A stream that cannot take the query counts as unanswered.
          pending.waiting.delete(replica);
        }
      }
      if (pending.waiting.size === 0) pending.done();
    });
  }

  private answer(replica: Replica, counts: CountsAnswer): void {
    const requestId = typeof counts.requestId === 'number' || typeof counts.requestId === 'string' ? Number(counts.requestId) : Number.NaN;
    const pending = this.pending.get(requestId);
    if (!pending || counts.clientId !== pending.query.clientId || !pending.waiting.delete(replica)) {
      this.ignoredAnswers += 1;
      return;
    }
    // What one replica can have counted: its bucket never holds more than the rate, and it admits
    // no more than the daily and monthly quotas.
    const { throttlingQuota, dailyQuota, monthlyQuota } = pending.query.quotas;
    pending.answers.push({
      perSecond: cleanCount(counts.callsPerSecond, throttlingQuota),
      daily: cleanCount(counts.callsToday, dailyQuota),
      monthly: cleanCount(counts.callsThisMonth, monthlyQuota),
    });
    if (pending.waiting.size === 0) pending.done();
  }

  private disconnect(replica: Replica): void {
    if (!this.replicas.delete(replica)) return;
    for (const pending of [...this.pending.values()]) {
      if (pending.waiting.delete(replica) && pending.waiting.size === 0) pending.done();
    }
  }
}
