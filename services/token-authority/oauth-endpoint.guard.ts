import { CanActivate, ExecutionContext, Inject, Injectable } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import type { Authority } from '../../libs/core/authority';
import { invalidRequest, notFound } from '../../libs/core/errors';
import { AUTHORITY } from './authority.provider';

/** `*`, an exact host, or a glob such as `*.oto.tools`, matched case-insensitively without the port. */
export function domainMatcher(domain: string): (host: string) => boolean {
  if (domain === '*') return () => true;
  const pattern = new RegExp(
    `^${domain
      .split('*')
      .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
      .join('[^.]*')}$`,
    'i',
  );
  return (host) => pattern.test(host);
}

/**
 * Otoroshi's `domain` and `secure` settings: the endpoints exist only on the configured host,
 * and with `secure` only over HTTPS (X-Forwarded-Proto counts only with trustProxy).
 */
@Injectable()
export class OAuthEndpointGuard implements CanActivate {
  private readonly hostMatches: (host: string) => boolean;

  constructor(@Inject(AUTHORITY) private readonly authority: Authority) {
    this.hostMatches = domainMatcher(authority.config.domain);
  }

  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<FastifyRequest>();
    // The Host header itself: with trustProxy Fastify's hostname would follow X-Forwarded-Host,
    // which proxies such as Envoy pass on from the client unchecked.
    const host = (request.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
    if (!this.hostMatches(host)) throw notFound('no OAuth endpoint on this host');
    if (this.authority.config.secure && request.protocol !== 'https') throw invalidRequest('use a secure channel');
    return true;
  }
}
