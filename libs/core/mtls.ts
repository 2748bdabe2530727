import { createHash, createPublicKey, type JsonWebKey, type KeyObject, X509Certificate } from 'node:crypto';
import type { ApiKeyRecord, PublicJwks } from './model';

/**
 * Mutual TLS for OAuth clients (RFC 8705): the client certificate a proxy in front (Envoy)
 * forwards, client authentication by it (§2: tls_client_auth, self_signed_tls_client_auth), and
 * certificate-bound tokens (§3: cnf.x5t#S256). Framework-free: transports hand over the
 * certificate as the proxy wrote it (PEM, or URL-encoded PEM as Envoy does).
 */

/** A forwarded certificate longer than this is not read (a 4096-bit RSA certificate with a long chain of SANs is ~3 KB). */
const MAX_CERTIFICATE_TEXT = 16 * 1024;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/;

/** The DER bytes of the first certificate in a PEM text, URL-encoded or not; undefined when there is none. */
export function certificateDer(text: string): Buffer | undefined {
  if (text.length > MAX_CERTIFICATE_TEXT) return undefined;
  let pem = text;
  if (pem.includes('%')) {
    try {
      pem = decodeURIComponent(pem);
    } catch {
      return undefined;
    }
  }
  const match = PEM_CERTIFICATE.exec(pem);
  if (!match) return undefined;
  const der = Buffer.from(match[1].replace(/\s+/g, ''), 'base64');
  return der.length ? der : undefined;
}

/** RFC 8705 §3.1: the certificate's SHA-256 thumbprint, base64url of the digest of its DER. */
export function certificateThumbprint(der: Buffer): string {
  return createHash('sha256').update(der).digest('base64url');
}

/** The x5t#S256 of a forwarded certificate (text as certificateDer takes it), or undefined if it holds none. */
export function forwardedThumbprint(text: string | undefined): string | undefined {
  if (!text) return undefined;
  const der = certificateDer(text);
  return der && certificateThumbprint(der);
}

/**
 * Set by the proxy, beside x-forwarded-client-cert, when it took the client's certificate without
 * verifying its chain (the HTTPS listener libs/xds pushes without a client CA: Envoy's
 * ACCEPT_UNTRUSTED). The handshake proved the client holds the certificate's key, so the
 * certificate still binds tokens and serves self_signed_tls_client_auth, but its subject and SANs
 * are the client's word: tls_client_auth refuses it. Believed, like XFCC, from a trusted proxy only;
 * a client that sends it itself only loses tls_client_auth.
 */
export const CERTIFICATE_UNVERIFIED_HEADER = 'x-client-cert-unverified';

/** A forwarded certificate parsed: what client authentication and the token's cnf need. */
export interface ClientCertificate {
  x509: X509Certificate;
  /** x5t#S256 */
  thumbprint: string;
  /** The proxy did not verify its chain (CERTIFICATE_UNVERIFIED_HEADER): not for tls_client_auth. */
  unverified?: boolean;
}

/** Parses a forwarded certificate; undefined when the text is no readable X.509 certificate. */
export function parseClientCertificate(text: string, unverified = false): ClientCertificate | undefined {
  const der = certificateDer(text);
  if (!der) return undefined;
  try {
    return { x509: new X509Certificate(der), thumbprint: certificateThumbprint(der), ...(unverified && { unverified }) };
  } catch {
    return undefined;
  }
}

/**
 * Envoy's x-forwarded-client-cert (XFCC): elements separated by `,`, each `key=value` pairs
 * separated by `;`, a value in double quotes when it holds `,` `;` or `=` (`\"` inside), keys
 * case-insensitive. Returns the elements, keys lower-cased. Bounded by the header's length.
 */
export function parseXfcc(header: string): Record<string, string>[] {
  const elements: Record<string, string>[] = [];
  let element: Record<string, string> = {};
  let i = 0;
  const n = header.length;
  while (i < n) {
    // key
    let key = '';
    while (i < n && header[i] !== '=' && header[i] !== ';' && header[i] !== ',') key += header[i++];
    let value = '';
    if (header[i] === '=') {
      i++;
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === '\\' && i + 1 < n) i++;
          value += header[i++];
        }
        i++; // closing quote
        while (i < n && header[i] !== ';' && header[i] !== ',') i++;
      } else {
        while (i < n && header[i] !== ';' && header[i] !== ',') value += header[i++];
      }
    }
    const name = key.trim().toLowerCase();
    if (name) element[name] = value.trim();
    if (header[i] === ',') {
      elements.push(element);
      element = {};
    }
    i++;
  }
  if (Object.keys(element).length) elements.push(element);
  return elements;
}

/**
 * The certificate in the XFCC element the nearest proxy wrote (the last: Envoy appends its own,
 * or with SANITIZE_SET writes only its own). The caller believes the header only from a trusted
 * proxy; undefined when there is no header or its last element has no `Cert`.
 */
export function xfccCertificate(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  const text = Array.isArray(header) ? header.join(',') : header;
  if (text.length > 4 * MAX_CERTIFICATE_TEXT) return undefined;
  const last = parseXfcc(text).at(-1);
  return last?.cert || undefined;
}

/** RFC 8705 §2.1.2: the one certificate attribute a tls_client_auth client is registered with. */
export const TLS_CLIENT_AUTH_FIELDS = [
  'tls_client_auth_subject_dn',
  'tls_client_auth_san_dns',
  'tls_client_auth_san_uri',
  'tls_client_auth_san_ip',
  'tls_client_auth_san_email',
] as const;
export type TlsClientAuthField = (typeof TLS_CLIENT_AUTH_FIELDS)[number];

/** The tls_client_auth field an API key is registered with, if any. */
export function tlsClientAuthField(apiKey: Pick<ApiKeyRecord, TlsClientAuthField>): TlsClientAuthField | undefined {
  return TLS_CLIENT_AUTH_FIELDS.find((field) => apiKey[field] !== undefined);
}

/**
 * An RFC 4514 distinguished name as its attribute=value pairs in order (types upper-cased,
 * `\` escapes removed). Multi-valued RDNs (`+`) are kept as separate pairs.
 */
export function dnAttributes(dn: string): string[] {
  const pairs: string[] = [];
  let current = '';
  for (let i = 0; i < dn.length; i++) {
    const c = dn[i];
    if (c === '\\' && i + 1 < dn.length) {
      current += `\\${dn[++i]}`;
    } else if (c === ',' || c === '+') {
      pairs.push(current);
      current = '';
    } else current += c;
  }
  pairs.push(current);
  return pairs
    .map((pair) => {
      const equals = pair.indexOf('=');
      if (equals < 0) return pair.trim();
      const type = pair.slice(0, equals).trim().toUpperCase();
      const value = pair
        .slice(equals + 1)
        .trim()
        .replace(/\\(.)/g, '$1');
      return `${type}=${value}`;
    })
    .filter(Boolean);
}

/** The certificate's subject as attribute=value pairs, in the certificate's order (Node writes one per line). */
function subjectAttributes(certificate: X509Certificate): string[] {
  return certificate.subject
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const equals = line.indexOf('=');
      // Node escapes as RFC 4514 does (`O=Example\, Inc.`).
      return equals < 0 ? line : `${line.slice(0, equals).toUpperCase()}=${line.slice(equals + 1).replace(/\\(.)/g, '$1')}`;
    });
}

/**
 * Whether the certificate's subject is the DN (RFC 4514 writes the most specific RDN first, the
 * certificate holds it last: either order is taken). Values compare exactly, types without case.
 */
export function subjectMatches(certificate: X509Certificate, dn: string): boolean {
  const expected = dnAttributes(dn);
  const actual = subjectAttributes(certificate);
  if (expected.length !== actual.length || expected.length === 0) return false;
  const same = (a: string[], b: string[]) => a.every((value, index) => value === b[index]);
  return same(expected, actual) || same([...expected].reverse(), actual);
}

/** Subject alternative names of a type, as Node lists them (`DNS:a, URI:"b,c", IP Address:1.2.3.4, email:d`). */
export function subjectAltNames(certificate: X509Certificate, type: 'DNS' | 'URI' | 'IP Address' | 'email'): string[] {
  const list = certificate.subjectAltName ?? '';
  const names: string[] = [];
  const entry = /(DNS|URI|IP Address|email|[A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g;
  for (const match of list.matchAll(entry)) {
    if (match[1] !== type) continue;
    const raw = match[2];
    names.push(raw.startsWith('"') ? (JSON.parse(raw) as string) : raw);
  }
  return names;
}

/** Canonical text of an IP address (IPv6 compressed, lower case) for comparing SAN IPs. */
function canonicalIp(value: string): string {
  try {
    return new URL(`http://${value.includes(':') ? `[${value}]` : value}/`).hostname.replace(/^\[|\]$/g, '');
  } catch {
    return value.toLowerCase();
  }
}

/** RFC 8705 §2.1.2: the certificate holds the attribute the key is registered with. */
export function tlsClientAuthMatches(apiKey: Pick<ApiKeyRecord, TlsClientAuthField>, certificate: X509Certificate): boolean {
  const field = tlsClientAuthField(apiKey);
  if (!field) return false;
  const expected = apiKey[field] as string;
  switch (field) {
    case 'tls_client_auth_subject_dn':
      return subjectMatches(certificate, expected);
    case 'tls_client_auth_san_dns':
      return subjectAltNames(certificate, 'DNS').some((name) => name.toLowerCase() === expected.toLowerCase());
    case 'tls_client_auth_san_uri':
      return subjectAltNames(certificate, 'URI').includes(expected);
    case 'tls_client_auth_san_ip':
      return subjectAltNames(certificate, 'IP Address').some((ip) => canonicalIp(ip) === canonicalIp(expected));
    case 'tls_client_auth_san_email':
      return subjectAltNames(certificate, 'email').some((email) => email.toLowerCase() === expected.toLowerCase());
  }
}

/** RFC 8705 §2.2: the certificate's public key is one of the client's registered keys. */
export function certificateKeyInJwks(certificate: X509Certificate, jwks: PublicJwks): boolean {
  const key: KeyObject = certificate.publicKey;
  return jwks.keys.some((jwk) => {
    try {
      return createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }).equals(key);
    } catch {
      return false;
    }
  });
}
