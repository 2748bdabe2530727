import type { Logger } from 'pino';
import type { Decision } from '../../libs/authz/decision';

/**
 * One log line per authorization decision, carrying the caller's trace ids (trace-context.ts):
 * denials at `info`, allowed requests at `debug` (the hot path). The reason and the client id,
 * never the credential.
 */
export function logDecision(logger: Logger, mode: 'grpc' | 'http', policy: string | undefined, decision: Decision): void {
  if (decision.allowed) {
    if (logger.isLevelEnabled('debug')) logger.debug({ mode, policy, decision: 'allow', client_id: decision.clientId }, 'request allowed');
    return;
  }
  logger.info({ mode, policy, decision: 'deny', reason: decision.reason, status: decision.status }, 'request denied');
}
