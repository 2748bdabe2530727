import type { Logger } from 'pino';
import type { AuthorityObserver } from '../../libs/core/observer';

/**
 * One log line per OAuth2 request, whatever its transport, carrying the caller's trace ids
 * (trace-context.ts): refusals at `info`, successes at `debug` (one line per token would cost
 * the hot path). Only the outcome and reason are logged, never a credential or a token.
 */
export function outcomeLog(logger: Logger): AuthorityObserver {
  return {
    tokenRequest(outcome, algorithm) {
      if (outcome === 'issued') logger.debug({ endpoint: 'token', outcome, algorithm }, 'token issued');
      else logger.info({ endpoint: 'token', outcome }, 'token request refused');
    },
    clientAuthFailed(endpoint, reason) {
      logger.info({ endpoint, reason }, 'client authentication failed');
    },
    introspection(outcome) {
      if (outcome === 'active' || outcome === 'inactive') logger.debug({ endpoint: 'introspect', outcome }, 'token introspected');
      else logger.info({ endpoint: 'introspect', outcome }, 'introspection refused');
    },
    revocation(outcome) {
      if (outcome === 'revoked' || outcome === 'ignored') logger.debug({ endpoint: 'revoke', outcome }, 'revocation answered');
      else logger.info({ endpoint: 'revoke', outcome }, 'revocation refused');
    },
  };
}
