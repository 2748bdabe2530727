import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { registerUnexpectedErrors } from '../observability/unexpected-errors';
import type { Decision } from './decision';
import type { AuthorityReplica } from './replica';

/** Prometheus metrics of ext-authz (prom-client), one registry per instance. */
export class AuthzMetrics {
  readonly registry = new Registry();
  private readonly decisions: Counter<'mode' | 'policy' | 'decision' | 'reason'>;
  private readonly quotaStoreFailures: Counter<'policy' | 'outcome'>;
  /** Whether the quota store (Redis) answers; always 1 for memory counters. */
  quotaStoreUp = true;
  /** The verified-token cache's fill (Authorizer.tokenCache), once the authorizer exists. */
  tokenCache: () => { tokens: number; bytes: number } = () => ({ tokens: 0, bytes: 0 });

  constructor(
    replica: AuthorityReplica,
    watch: { reconnects: number },
    /** Known policy names: anything else is counted as "(unknown)", so clients cannot mint label values. */
    private readonly policies: ReadonlySet<string>,
  ) {
    collectDefaultMetrics({ register: this.registry, prefix: 'ext_authz_' });
    registerUnexpectedErrors(this.registry);
    this.decisions = new Counter({
      name: 'ext_authz_decisions_total',
      help: 'Authorization decisions, by transport, policy, outcome and deny reason.',
      labelNames: ['mode', 'policy', 'decision', 'reason'],
      registers: [this.registry],
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
    this.decisions.inc({
      mode,
      policy: label,
      decision: decision.allowed ? 'allow' : 'deny',
      reason: decision.allowed ? 'ok' : decision.reason,
    });
  }
}
