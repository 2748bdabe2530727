import { sign } from 'node:crypto';
import type { TestAuthority } from './authority';

/** Claims of an access token as the authority issues them, for a client, valid for ten minutes. */
export function accessTokenClaims(authority: TestAuthority, clientId: string): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: authority.config.issuer,
    sub: clientId,
    client_id: clientId,
    cid: clientId,
    aud: 'otoroshi',
    iat: now,
    nbf: now,
    exp: now + 600,
    jti: `t-${Math.random()}`,
  };
}

/**
 * Signs with the authority's own default RS256 key, with node:crypto so that any header, even
 * one jose refuses to write, can be sent: tokens that differ from a real one in one point only.
 */
export async function signWithAuthorityKey(
  authority: TestAuthority,
  payload: Record<string, unknown>,
  header: Record<string, unknown> = {},
): Promise<string> {
  const keyPair = await authority.authority.store.keyPairs.get('otoroshi-jwt-signing');
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${encode({ alg: 'RS256', typ: 'at+jwt', kid: 'otoroshi-jwt-signing', ...header })}.${encode(payload)}`;
  return `${input}.${sign('sha256', Buffer.from(input), keyPair!.versions[0].privateKeyPem!).toString('base64url')}`;
}
