import type { LoggerService } from '@nestjs/common';
import pino, { type Logger } from 'pino';
import { traceLogMixin } from './observability/trace-context';

/** Query parameters that carry credentials (OAuth2, RFC 6750 §2.3, Otoroshi's headers as parameters). */
const SECRET_PARAMETERS =
  /^(client_secret|access_token|refresh_token|token|id_token|code|password|api_key|apikey|otoroshi-client-secret)$/i;

/** A URL as it may be logged: the value of every credential-bearing query parameter replaced. */
export function redactUrl(url: string): string {
  const query = url.indexOf('?');
  if (query < 0) return url;
  const parameters = url
    .slice(query + 1)
    .split('&')
    .map((pair) => {
      const name = pair.split('=', 1)[0];
      let decoded = name;
      try {
        decoded = decodeURIComponent(name.replace(/\+/g, ' '));
      } catch {
        // a malformed name is logged as it came
      }
      return SECRET_PARAMETERS.test(decoded) ? `${name}=[redacted]` : pair;
    });
  return `${url.slice(0, query)}?${parameters.join('&')}`;
}

/**
 * JSON logs (pino). Credentials are redacted wherever they could appear, query strings
 * included; the code never logs request bodies. Lines written while serving a request that came
 * with a valid W3C `traceparent` carry its `trace_id` and `span_id` (trace-context.ts).
 */
export function createLogger(service: string, level: string): Logger {
  return pino({
    level,
    base: { service },
    mixin: traceLogMixin,
    serializers: {
      // Fastify's request log line, with the URL's credentials redacted.
      req: (request: {
        method?: string;
        url?: string;
        headers?: Record<string, unknown>;
        socket?: { remoteAddress?: string; remotePort?: number };
      }) => ({
        method: request.method,
        url: redactUrl(request.url ?? ''),
        host: request.headers?.host,
        remoteAddress: request.socket?.remoteAddress,
        remotePort: request.socket?.remotePort,
      }),
    },
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers["otoroshi-client-secret"]',
        'clientSecret',
        'client_secret',
        'token',
        'access_token',
      ],
      censor: '[redacted]',
    },
  });
}

/** Nest's own messages (bootstrap, errors) through the same pino logger. */
export class NestPinoLogger implements LoggerService {
  constructor(private readonly logger: Logger) {}
  log(message: unknown, context?: string) {
    this.logger.info({ context }, String(message));
  }
  error(message: unknown, trace?: string, context?: string) {
    this.logger.error({ context, trace }, String(message));
  }
  warn(message: unknown, context?: string) {
    this.logger.warn({ context }, String(message));
  }
  debug(message: unknown, context?: string) {
    this.logger.debug({ context }, String(message));
  }
  verbose(message: unknown, context?: string) {
    this.logger.trace({ context }, String(message));
  }
}
