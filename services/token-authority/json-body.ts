import type { FastifyInstance } from 'fastify';
import { invalidRequest } from '../../libs/core/errors';
import { firstDuplicateKey } from '../../libs/http/json-duplicate-keys';

/**
 * Fastify's own JSON parser (secure-json-parse: `__proto__` and `constructor` refused), then a
 * refusal of repeated keys, which JSON.parse would silently resolve to the last one.
 */
export function refuseDuplicateJsonKeys(fastify: FastifyInstance): void {
  const parseJson = fastify.getDefaultJsonParser('error', 'error');
  fastify.removeContentTypeParser('application/json');
  // application/json-patch+json: RFC 6902 bodies of PATCH /api/apikeys/:clientId and /api/routes/:id;
  // application/merge-patch+json: RFC 7396 bodies of PATCH /api/routes/:id.
  const types = ['application/json', 'application/json-patch+json', 'application/merge-patch+json'];
  fastify.addContentTypeParser(types, { parseAs: 'string' }, (request, body, done) => {
    void parseJson(request, body as string, (error: Error | null, value?: unknown) => {
      if (error) return done(error, undefined);
      const duplicate = firstDuplicateKey(body as string);
      if (duplicate !== undefined) return done(invalidRequest(`the JSON body repeats the key '${duplicate}'`), undefined);
      done(null, value);
    });
  });
}
