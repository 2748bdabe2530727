/** Methods Node's HTTP parser accepts that a label may name; any other is counted as OTHER. */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** A route the router did not match (404s, whatever URL they asked for): one label value. */
export const UNMATCHED_ROUTE = '(unmatched)';

export interface HttpObserver {
  /** `route` is the route template ('/api/apikeys/:clientId'), never the URL; status is a class ('2xx'). */
  request(method: string, route: string, statusClass: string, seconds: number): void;
}

interface ResponseHookTarget {
  addHook(
    name: 'onResponse',
    hook: (
      request: { method: string; routeOptions?: { url?: string } },
      reply: { statusCode: number; elapsedTime: number },
      done: () => void,
    ) => void,
  ): unknown;
}

/**
 * Fastify: one observation per answered request, labelled so that no client can mint label
 * values: the matched route's template, a known method, and the status class.
 */
export function instrumentHttpServer(fastify: ResponseHookTarget, observer: HttpObserver): void {
  fastify.addHook('onResponse', (request, reply, done) => {
    const method = KNOWN_METHODS.has(request.method) ? request.method : 'OTHER';
    const route = request.routeOptions?.url ?? UNMATCHED_ROUTE;
    observer.request(method, route, `${Math.floor(reply.statusCode / 100)}xx`, reply.elapsedTime / 1000);
    done();
  });
}
