/** Nest injection token of the authority's RouteTable. */
export const ROUTES = Symbol('ROUTES');

/**
 * The HTTP routes the app registered (method and Fastify URL, as Fastify's onRoute hook sees
 * them): what a path answers to, so a known path asked with another method gets 405 and Allow
 * (RFC 9110 §15.5.6) rather than Fastify's 404, and what the OpenAPI test compares.
 */
export class RouteTable {
  readonly entries: { method: string; url: string }[] = [];
  private readonly patterns: { method: string; pattern: RegExp; wildcard: boolean }[] = [];

  add(method: string, url: string): void {
    this.entries.push({ method, url });
    const source = url
      .split(/(:[A-Za-z0-9_]+|\*)/)
      .map((part) => (part === '*' ? '.*' : part.startsWith(':') ? '[^/]+' : part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')))
      .join('');
    this.patterns.push({ method, pattern: new RegExp(`^${source}$`), wildcard: url.includes('*') });
  }

  /** The methods an endpoint at `path` (no query) answers to, sorted; empty for an unknown path. Catch-all routes (`*`) are no endpoint. */
  allowedMethods(path: string): string[] {
    const methods = this.patterns.filter(({ wildcard, pattern }) => !wildcard && pattern.test(path)).map(({ method }) => method);
    return [...new Set(methods)].sort();
  }
}
