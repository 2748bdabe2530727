import type { Logger } from 'pino';
import type { ExtAuthzConfig } from '../../libs/authz/config';
import { readSecretFile } from '../../libs/core/secret-file';

/**
 * The token ext-authz presents to the authority on each stream it opens: AUTHORITY_TOKEN, or the
 * one in AUTHORITY_TOKEN_FILE as it is now. Read at every connection, because the authority may
 * create that file after ext-authz started (docker-compose), and a refused stream retries.
 */
export function currentAuthorityToken(authority: ExtAuthzConfig['authority'], logger: Logger): string | undefined {
  const { token, tokenFile } = authority;
  if (token || !tokenFile) return token;
  try {
    return readSecretFile(tokenFile) || undefined;
  } catch (error) {
    logger.warn({ err: error }, `cannot read ${tokenFile}`);
    return undefined;
  }
}

/**
 * Channel options both authority streams share. Keepalive notices a silently dead authority (no
 * FIN, no RST) within about 30 s. No TXT lookup for a gRPC service config (grpc-js asks for one
 * beside every address lookup): none is published, and where the DNS forwards questions to an
 * upstream that does not answer (Docker's embedded DNS without outside access) each one hung for
 * seconds, and `docker stop` of ext-authz with it (2 s instead of 0.1 s), waiting for the
 * forwarded question to time out.
 */
export const AUTHORITY_CHANNEL_OPTIONS = {
  'grpc.keepalive_time_ms': 20_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.service_config_disable_resolution': 1,
} as const;

/** How long to wait before reconnecting after `failures` broken attempts: exponential, capped, with jitter. */
export function reconnectDelay(authority: ExtAuthzConfig['authority'], failures: number): number {
  return Math.min(authority.maxBackoff, authority.initialBackoff * 2 ** failures) * (0.5 + Math.random() / 2);
}
