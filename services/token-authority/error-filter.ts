import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Inject, Logger, Optional } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { throwError, type Observable } from 'rxjs';
import { AdminError, OAuthError } from '../../libs/core/errors';
import { countUnexpectedError } from '../../libs/observability/unexpected-errors';
import { toGrpcError } from './grpc-errors';
import { type RouteTable, ROUTES } from './route-table';

const ADMIN_ERROR_CODES = {
  400: 'invalid_request',
  404: 'not_found',
  409: 'conflict',
  412: 'precondition_failed',
} as const;

/** Body parse failures from Fastify, in words a client can act on. */
const FASTIFY_MESSAGES: Record<string, string> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported content type; use application/x-www-form-urlencoded or application/json',
  FST_ERR_CTP_BODY_TOO_LARGE: 'request body is too large',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'the JSON body is empty',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'content-length does not match the body',
  FST_ERR_CTP_INVALID_JSON_BODY: 'the body is not valid JSON',
};

/**
 * The one place errors leave the token authority. Over HTTP: OAuth2 errors as RFC 6749 §5.2
 * JSON, admin errors with details, anything else as a JSON 4xx (framework) or a logged 500 that
 * reveals nothing. Over gRPC: the status mapping of grpc-errors.ts.
 */
@Catch()
export class ErrorFilter implements ExceptionFilter {
  private readonly logger = new Logger('Errors');

  constructor(@Optional() @Inject(ROUTES) private readonly routes?: RouteTable) {}

  catch(exception: unknown, host: ArgumentsHost): undefined | Observable<never> {
    if (host.getType() === 'rpc') {
      const grpcError = toGrpcError(exception);
      if (grpcError.details === 'internal error') this.unexpected('grpc', exception);
      return throwError(() => grpcError);
    }
    const reply = host.switchToHttp().getResponse<FastifyReply>();
    reply.header('cache-control', 'no-store');
    // Whatever failed (Fastify's 404, its body checks, the OAuth catch-all), a method the path has no route for is the answer.
    if (this.methodNotAllowed(host.switchToHttp().getRequest<FastifyRequest>(), reply)) return;
    if (exception instanceof OAuthError) {
      if (exception.wwwAuthenticate) reply.header('www-authenticate', exception.wwwAuthenticate);
      if (exception.retryAfter !== undefined) reply.header('retry-after', String(exception.retryAfter));
      for (const [name, value] of Object.entries(exception.headers ?? {})) reply.header(name, value);
      void reply.status(exception.status).send(exception.toJSON());
      return;
    }
    if (exception instanceof AdminError) {
      const body: Record<string, unknown> = { error: ADMIN_ERROR_CODES[exception.status], error_description: exception.message };
      if (exception.details !== undefined) body.details = exception.details;
      void reply.status(exception.status).send(body);
      return;
    }
    if (exception instanceof HttpException && exception.getStatus() < 500) {
      const status = exception.getStatus();
      const cause = exception.cause as { code?: string; message?: string } | undefined;
      const description =
        (cause?.code && FASTIFY_MESSAGES[cause.code]) ||
        (status === 404 ? 'not found' : status === 413 ? 'request body is too large' : exception.message);
      const code = status === 404 ? 'not_found' : status === 401 ? 'unauthorized' : 'invalid_request';
      void reply.status(status === 415 ? 400 : status).send({ error: code, error_description: description });
      return;
    }
    this.unexpected('rest', exception);
    void reply.status(500).send({ error: 'server_error', error_description: 'internal error' });
  }

  /** No route for this method, but the path has others: 405 with Allow (RFC 9110 §15.5.6), not 404. */
  private methodNotAllowed(request: FastifyRequest, reply: FastifyReply): boolean {
    const allowed = this.routes?.allowedMethods(request.url.split('?')[0]) ?? [];
    if (allowed.length === 0 || allowed.includes(request.method)) return false;
    void reply
      .status(405)
      .header('allow', allowed.join(', '))
      .send({ error: 'method_not_allowed', error_description: `use ${allowed.join(', ')}` });
    return true;
  }

  /** Logged with its stack and counted; the client learns nothing (see unexpected-errors.ts). */
  private unexpected(where: 'rest' | 'grpc', exception: unknown): void {
    countUnexpectedError(where);
    this.logger.error(exception instanceof Error ? (exception.stack ?? exception.message) : String(exception));
  }
}
