import { createPrivateKey, createPublicKey, generateKeyPairSync, KeyObject } from 'node:crypto';
import type { SigningAlgorithm } from '../config';

/** The PEM halves of a key pair, as the store keeps them. */
export interface KeyMaterial {
  publicKeyPem: string;
  privateKeyPem: string;
}

export class KeyMaterialError extends Error {}

const SPKI_PEM = { type: 'spki', format: 'pem' } as const;
const PKCS8_PEM = { type: 'pkcs8', format: 'pem' } as const;

export function generateKeyMaterial(algorithm: SigningAlgorithm): KeyMaterial {
  switch (algorithm) {
    case 'RS256':
    case 'PS256': {
      const { publicKey, privateKey } = generateKeyPairSync('rsa', {
        modulusLength: 2048,
        publicKeyEncoding: SPKI_PEM,
        privateKeyEncoding: PKCS8_PEM,
      });
      return { publicKeyPem: publicKey, privateKeyPem: privateKey };
    }
    case 'ES256': {
      const { publicKey, privateKey } = generateKeyPairSync('ec', {
        namedCurve: 'P-256',
        publicKeyEncoding: SPKI_PEM,
        privateKeyEncoding: PKCS8_PEM,
      });
      return { publicKeyPem: publicKey, privateKeyPem: privateKey };
    }
    case 'EdDSA': {
      const { publicKey, privateKey } = generateKeyPairSync('ed25519', { publicKeyEncoding: SPKI_PEM, privateKeyEncoding: PKCS8_PEM });
      return { publicKeyPem: publicKey, privateKeyPem: privateKey };
    }
  }
}

/** Checks that a key suits the algorithm (RFC 7518 §3: RSA keys of 2048 bits or more, P-256 for ES256). */
function assertKeyFits(key: KeyObject, algorithm: SigningAlgorithm): void {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  const fits =
    ((algorithm === 'RS256' || algorithm === 'PS256') && type === 'rsa' && (details.modulusLength ?? 0) >= 2048) ||
    (algorithm === 'ES256' && type === 'ec' && details.namedCurve === 'prime256v1') ||
    (algorithm === 'EdDSA' && type === 'ed25519');
  if (!fits) {
    throw new KeyMaterialError(
      `a ${type}${details.modulusLength ? ` ${details.modulusLength}-bit` : ''}${details.namedCurve ? ` ${details.namedCurve}` : ''} key cannot sign ${algorithm}`,
    );
  }
}

/** Imports a PEM private key (PKCS#8, PKCS#1 or SEC1); the public half is derived and must match if given. */
export function importKeyMaterial(algorithm: SigningAlgorithm, privateKeyPem: string, publicKeyPem?: string): KeyMaterial {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: privateKeyPem, format: 'pem' });
  } catch {
    throw new KeyMaterialError('privateKey is not a readable PEM private key');
  }
  assertKeyFits(privateKey, algorithm);
  const derivedPublic = createPublicKey(privateKey);
  if (publicKeyPem !== undefined) {
    let given: KeyObject;
    try {
      given = createPublicKey({ key: publicKeyPem, format: 'pem' });
    } catch {
      throw new KeyMaterialError('publicKey is not a readable PEM public key');
    }
    if (!given.equals(derivedPublic)) throw new KeyMaterialError('publicKey does not match privateKey');
  }
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: derivedPublic.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

export interface PublicJwk {
  kty: string;
  kid: string;
  alg: SigningAlgorithm;
  use: 'sig';
  [member: string]: string;
}

/** The public JWK of a key: only public members, whatever the key object holds. */
export function publicJwk(publicKey: KeyObject, kid: string, algorithm: SigningAlgorithm): PublicJwk {
  const { kty, n, e, crv, x, y } = publicKey.export({ format: 'jwk' });
  const members = Object.fromEntries(Object.entries({ n, e, crv, x, y }).filter(([, value]) => value !== undefined));
  return { kty: kty as string, kid, alg: algorithm, use: 'sig', ...(members as Record<string, string>) };
}
