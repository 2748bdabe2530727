import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { registerUnexpectedErrors } from '../observability/unexpected-errors';
import type { Decision } from './decision';
import type { AuthorityReplica } from './replica';

interface DecisionCount {
  labels: { mode: string; policy: string; decision: string; reason: string };
  count: number;
  reported: number;
}

/** Prometheus metrics of ext-authz (prom-client), one registry per instance. */
export class AuthzMetrics {
  readonly registry = new Registry();
  private readonly quotaStoreFailures: Counter<'policy' | 'outcome'>;
  /**
   * ext_authz_decisions_total counted here by mode, policy and reason (bounded: known policies,
   * deny reasons) and handed to prom-client at each scrape: prom-client hashes the labels on every
   * inc(), and every Check counts.
   */
  private readonly decisionCounters = {
    grpc: new Map<string, Map<string, DecisionCount>>(),
    http: new Map<string, Map<string, DecisionCount>>(),
  };
  /** Whether the quota store (Redis) answers; always 1 for memory counters. */
  quotaStoreUp = true;
  /** The verified-token cache's fill (Authorizer.tokenCache), once the authorizer exists. */
  tokenCache: () => { tokens: number; bytes: number } = () => ({ tokens: 0, bytes: 0 });

  constructor(
    replica: AuthorityReplica,
    watch: { reconnects: number },
    /** Known policy names: anything else is counted as "(unknown)", so clients cannot mint label values. */
    private readonly policies: { has(name: string): boolean },
  ) {
    collectDefaultMetrics({ register: this.registry, prefix: 'ext_authz_' });
    registerUnexpectedErrors(this.registry);
    const counts = this.decisionCounters;
    // Registered for its collect() only: the counts live in decisionCounters (cheaper per Check).
    new Counter({
      name: 'ext_authz_decisions_total',
      help: 'Authorization decisions, by transport, policy, outcome and deny reason.',
      labelNames: ['mode', 'policy', 'decision', 'reason'],
      registers: [this.registry],
      collect() {
        for (const byPolicy of [...counts.grpc.values(), ...counts.http.values()])
          for (const count of byPolicy.values()) {
            if (count.count > count.reported) this.inc(count.labels, count.count - count.reported);
            count.reported = count.count;
          }
      },
    });
    this.quotaStoreFailures = new Counter({
      name: 'ext_authz_quota_store_failures_total',
      help: 'Calls whose quota could not be counted (Redis away): let through (fail open) or refused with 503 (fail closed).',
      labelNames: ['policy', 'outcome'],
      registers: [this.registry],
    });
    const metrics = this;
    new Gauge({
      name: 'ext_authz_quota_store_up',
      help: '1 while the quota counters (Redis when REDIS_URL is set) answer.',
      registers: [this.registry],
      collect() {
        this.set(metrics.quotaStoreUp ? 1 : 0);
      },
    });
    new Gauge({
      name: 'ext_authz_authority_connected',
      help: '1 while the DeltaWatch stream to the token authority is up.',
      registers: [this.registry],
      collect() {
        this.set(replica.status === 'synced' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'ext_authz_replica_age_seconds',
      help: 'Seconds since the last state received from the authority (-1 before the first).',
      registers: [this.registry],
      collect() {
        this.set(replica.lastUpdateAt === undefined ? -1 : (Date.now() - replica.lastUpdateAt) / 1000);
      },
    });
    new Gauge({
      name: 'ext_authz_replica_objects',
      help: 'Objects in the replica of the authority state.',
      labelNames: ['kind'],
      registers: [this.registry],
      collect() {
        const counts = replica.counts;
        this.set({ kind: 'keys' }, counts.keys);
        this.set({ kind: 'api_keys' }, counts.apiKeys);
        this.set({ kind: 'revoked_tokens' }, counts.revokedTokens);
      },
    });
    new Gauge({
      name: 'ext_authz_replica_updates_applied',
      help: 'Updates from the authority applied since start: whole snapshots, and deltas.',
      labelNames: ['kind'],
      registers: [this.registry],
      collect() {
        this.set({ kind: 'snapshot' }, replica.applied.snapshots);
        this.set({ kind: 'delta' }, replica.applied.deltas);
      },
    });
    new Gauge({
      name: 'ext_authz_token_cache',
      help: 'The verified-token cache: tokens held, and their estimated heap bytes (bounded by cacheSize and cacheMaxBytes).',
      labelNames: ['measure'],
      registers: [this.registry],
      collect() {
        const { tokens, bytes } = metrics.tokenCache();
        this.set({ measure: 'tokens' }, tokens);
        this.set({ measure: 'bytes' }, bytes);
      },
    });
    new Gauge({
      name: 'ext_authz_authority_reconnects',
      help: 'Reconnections of the DeltaWatch stream since start.',
      registers: [this.registry],
      collect() {
        this.set(watch.reconnects);
      },
    });
  }

  recordQuotaStoreFailure(policy: string, failOpen: boolean): void {
    this.quotaStoreFailures.inc({ policy: this.policies.has(policy) ? policy : '(unknown)', outcome: failOpen ? 'open' : 'closed' });
  }

  record(mode: 'grpc' | 'http', policy: string | undefined, decision: Decision): void {
    const label = policy !== undefined && this.policies.has(policy) ? policy : '(unknown)';
    const reason = decision.allowed ? 'ok' : decision.reason;
    // The labelled counter is looked up without building a label object or key string per call (every Check counts).
    let byPolicy = this.decisionCounters[mode].get(label);
    if (!byPolicy) {
      byPolicy = new Map();
      this.decisionCounters[mode].set(label, byPolicy);
    }
    let count = byPolicy.get(reason);
    if (!count) {
      count = { labels: { mode, policy: label, decision: decision.allowed ? 'allow' : 'deny', reason }, count: 0, reported: 0 };
      byPolicy.set(reason, count);
    }
    count.count += 1;
  }
}
