import { createHash } from 'node:crypto';
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';

/** A DPoP client: its key pair (ES256, made by jose, an independent implementation) and the proofs it signs (RFC 9449 §4). */
export interface DpopProver {
  jwk: JWK;
  /** A proof with a new jti, iat now, and these claims (htm, htu, ath, nonce...). */
  proof(claims: Record<string, unknown>): Promise<string>;
}

export async function dpopProver(): Promise<DpopProver> {
  const key = await generateKeyPair('ES256');
  const jwk = await exportJWK(key.publicKey);
  return {
    jwk,
    proof: (claims) =>
      new SignJWT({ jti: crypto.randomUUID(), ...claims })
        .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk })
        .setIssuedAt()
        .sign(key.privateKey),
  };
}

/** A proof's ath: the base64url SHA-256 of the access token it goes with (RFC 9449 §4.2). */
export const accessTokenHash = (token: string): string => createHash('sha256').update(token).digest('base64url');
