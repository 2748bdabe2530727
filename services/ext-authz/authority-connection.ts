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

/** How long to wait before reconnecting after `failures` broken attempts: exponential, capped, with jitter. */
export function reconnectDelay(authority: ExtAuthzConfig['authority'], failures: number): number {
  return Math.min(authority.maxBackoff, authority.initialBackoff * 2 ** failures) * (0.5 + Math.random() / 2);
}
