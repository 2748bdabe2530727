import proxyAddr from '@fastify/proxy-addr';
import { xfccCertificate } from '../core/mtls';
import { z } from 'zod';

/**
 * Which peers' X-Forwarded-For / X-Forwarded-Proto / X-Forwarded-Host are believed (TRUST_PROXY):
 * - `false`: none; the client address is the TCP peer, the scheme the socket's.
 * - a hop count 1..10: that many proxies in front; the address is the one the outermost of them
 *   saw (with 1: the last X-Forwarded-For entry, the one the proxy appended).
 * - a list of proxy addresses / CIDRs (IPv4 as dotted quads, or IPv6, or proxy-addr's names
 *   `loopback`, `linklocal`, `uniquelocal`): a hop is believed while it is one of them. A client that
 *   connects from one of these addresses can therefore write its own address: do not list an
 *   address clients use too (on a loopback-only stack, that is why the hop count is used).
 *
 * `true` ("trust every hop") is refused: with it the address is the leftmost X-Forwarded-For
 * entry, the one the client wrote, and the failure limits follow a header (issue 22).
 */
export type TrustProxy = false | { hops: number } | { addresses: string[] };

export const MAX_TRUSTED_HOPS = 10;

export const TRUST_PROXY_FORMS =
  'false (or 0: trust no proxy), a hop count 1-10 (e.g. 1: the one proxy in front), or a comma-separated list of proxy addresses/CIDRs (e.g. 10.0.0.5,10.1.0.0/16,fd00::/8)';

/** Parses a TRUST_PROXY value (env string, or YAML boolean / number / string / list); throws with the accepted forms. */
export function parseTrustProxy(value: unknown): TrustProxy {
  if (value === false || value === 0) return false;
  if (value === true)
    throw new Error(`"true" (trust every hop) is refused: clients could pick their own address; use ${TRUST_PROXY_FORMS}`);
  if (typeof value === 'number') return hops(value, String(value));
  const entries = (Array.isArray(value) ? value : typeof value === 'string' ? value.split(',') : undefined)?.map((entry) =>
    typeof entry === 'string' ? entry.trim() : entry,
  );
  if (!entries || entries.some((entry) => typeof entry !== 'string')) throw new Error(`expected ${TRUST_PROXY_FORMS}`);
  const list = (entries as string[]).filter((entry) => entry !== '');
  if (list.length === 1) {
    const [only] = list;
    const lowered = only.toLowerCase();
    if (['false', 'no', 'off', 'none', '0'].includes(lowered)) return false;
    if (['true', 'yes', 'on', 'all', '*'].includes(lowered))
      throw new Error(`"${only}" (trust every hop) is refused: clients could pick their own address; use ${TRUST_PROXY_FORMS}`);
    if (/^\d+$/.test(only)) return Number(only) === 0 ? false : hops(Number(only), only);
  }
  if (list.length === 0) throw new Error(`empty; expected ${TRUST_PROXY_FORMS}`);
  for (const entry of list) checkIpv4Form(entry);
  try {
    // Validates every entry (addresses, prefix lengths, names) the way it will be matched.
    proxyAddr.compile(list);
  } catch (error) {
    throw new Error(`${(error as Error).message}; expected ${TRUST_PROXY_FORMS}`);
  }
  return { addresses: list };
}

/** proxy-addr's names for address ranges. */
const RANGE_NAMES = new Set(['loopback', 'linklocal', 'uniquelocal']);
const OCTET = String.raw`(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)`;
const DOTTED_QUAD = new RegExp(String.raw`^${OCTET}(\.${OCTET}){3}$`);

/**
 * IPv4 entries (and a CIDR's address and netmask) must be dotted quads: proxy-addr reads the
 * inet_aton shorthands too, so `1,2` (a hop count mistyped) would trust 0.0.0.1 and 0.0.0.2, and
 * `0x1` or `010.0.0.1` addresses nobody meant. IPv6 entries are left to proxy-addr.
 */
function checkIpv4Form(entry: string): void {
  const [address, mask] = entry.split('/', 2);
  if (address.includes(':') || (mask === undefined && RANGE_NAMES.has(address))) return;
  const maskOk = mask === undefined || /^\d{1,2}$/.test(mask) || DOTTED_QUAD.test(mask);
  if (!DOTTED_QUAD.test(address) || !maskOk)
    throw new Error(
      `"${entry}" is not an IPv4 address in dotted-quad form (a.b.c.d, each 0-255 without leading zeros, ` +
        `optionally /prefix-length or /a.b.c.d netmask), an IPv6 address or a range name (${[...RANGE_NAMES].join(', ')}); ` +
        `expected ${TRUST_PROXY_FORMS}`,
    );
}

function hops(count: number, written: string): TrustProxy {
  if (!Number.isInteger(count) || count < 0 || count > MAX_TRUSTED_HOPS)
    throw new Error(`hop count ${written} is out of range; expected ${TRUST_PROXY_FORMS}`);
  return count === 0 ? false : { hops: count };
}

/** The zod setting: any accepted form in, a TrustProxy out; an invalid value fails validation with the accepted forms. */
export const trustProxySetting = z.unknown().transform((value, context): TrustProxy => {
  try {
    return parseTrustProxy(value);
  } catch (error) {
    context.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});

/**
 * Fastify's `trustProxy` option for a setting: a function (hop index -> believed) from
 * @fastify/proxy-addr. A function also for a hop count: Fastify 5's numeric form trusts nothing.
 */
export function fastifyTrustProxy(trust: TrustProxy): false | ((address: string, hop: number) => boolean) {
  if (trust === false) return false;
  if ('hops' in trust) {
    const count = trust.hops;
    return (_address, hop) => hop < count;
  }
  return proxyAddr.compile(trust.addresses);
}

/**
 * The client address for a peer and its X-Forwarded-For header under a setting (what Fastify's
 * `request.ip` answers): the nearest address not vouched for by a trusted hop.
 */
export function clientAddressOf(trust: TrustProxy, peer: string, forwardedFor?: string | string[]): string {
  const fn = fastifyTrustProxy(trust);
  if (!fn) return peer;
  const header = Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor;
  const request = { socket: { remoteAddress: peer }, headers: header === undefined ? {} : { 'x-forwarded-for': header } };
  const addresses = proxyAddr.all(request as never, fn);
  return addresses[addresses.length - 1] ?? peer;
}

/**
 * The client address behind a hop that may also say X-Real-IP (nginx's `proxy_set_header
 * X-Real-IP $remote_addr`, as ext-authz's HTTP mode gets it from the shipped template): that
 * header counts as the hop's own entry at the end of X-Forwarded-For (once, when the hop also
 * appended it there), so it is believed exactly when the peer is a trusted proxy, and hops
 * beyond it are read from X-Forwarded-For as clientAddressOf does.
 */
export function proxiedClientAddress(
  trust: TrustProxy,
  peer: string,
  headers: { realIp?: string | string[]; forwardedFor?: string | string[] },
): string {
  const join = (value: string | string[] | undefined) => (Array.isArray(value) ? value.join(',') : (value ?? ''));
  const entries = join(headers.forwardedFor)
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
  const realIp = join(headers.realIp)
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
  if (realIp.length && entries.at(-1) !== realIp.at(-1)) entries.push(...realIp);
  return clientAddressOf(trust, peer, entries.length ? entries.join(',') : undefined);
}

/** For logs and docs: the setting as TRUST_PROXY would be written. */
export function describeTrustProxy(trust: TrustProxy): string {
  if (trust === false) return 'false';
  return 'hops' in trust ? String(trust.hops) : trust.addresses.join(',');
}

/**
 * RFC 8705 behind a proxy that terminates TLS: the client certificate it forwards in
 * x-forwarded-client-cert (Envoy's XFCC, the last element's `Cert`), believed only when the TCP
 * peer is a trusted proxy under the setting (with a hop count, the peer is the first trusted hop;
 * TRUST_PROXY false: never). Returns a reader made once per setting.
 */
export function forwardedClientCertificate(
  trust: TrustProxy,
): (peer: string | undefined, header: string | string[] | undefined) => string | undefined {
  const trusted = fastifyTrustProxy(trust);
  return (peer, header) => {
    if (header === undefined || !trusted || !peer || !trusted(peer, 0)) return undefined;
    return xfccCertificate(header);
  };
}
