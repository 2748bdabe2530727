import type { Authorizer } from '../../libs/authz/authorizer';
import type { Decision } from '../../libs/authz/decision';
import type { AuthzMetrics } from '../../libs/authz/metrics';
import type { QuotaEnforcer } from '../../libs/quotas/quotas';
import type { AuthorityReplica } from '../../libs/authz/replica';
import type { TrustProxy } from '../../libs/http/trust-proxy';

/** The wired ext-authz core, as its transports (gRPC Check, HTTP mode) use it. */
export interface ExtAuthz {
  authorizer: Authorizer;
  replica: AuthorityReplica;
  metrics: AuthzMetrics;
  watch: { reconnects: number };
  /** Every decision, whatever the transport: counted and logged. */
  decided(mode: 'grpc' | 'http', policy: string | undefined, decision: Decision): void;
  /** Undefined when quotas are off. */
  quotas?: QuotaEnforcer;
  /** HTTP mode: whose forwarded addresses are believed (TRUST_PROXY). */
  trustProxy: TrustProxy;
}
