import type { Server } from 'node:http';
import { z } from 'zod';

/**
 * Limits every HTTP face of ours takes (the authority's REST, ext-authz's HTTP mode): slow or
 * idle clients must not hold sockets, and no client may open sockets without bound. Values in
 * milliseconds; documented in the README as settings.
 */
export const httpLimitsSchema = z
  .object({
    /** Open connections at most; more are closed at once (the OS backlog still queues briefly). */
    maxConnections: z.coerce.number().int().min(1).default(10_000),
    /** Time to receive a request's headers (slowloris). */
    headersTimeout: z.coerce.number().int().min(100).default(10_000),
    /** Time to receive a whole request, body included. */
    requestTimeout: z.coerce.number().int().min(100).default(30_000),
    /** An idle keep-alive connection is closed after this. */
    keepAliveTimeout: z.coerce.number().int().min(100).default(5_000),
    /** A socket with no traffic at all is closed after this. */
    idleTimeout: z.coerce.number().int().min(100).default(30_000),
    /**
     * Largest request head (request line and headers), bytes: Node's 16 KiB. No OAuth request or
     * credential comes near it; Envoy lets larger heads through (96 KiB) to the backends.
     */
    maxHeaderSize: z.coerce
      .number()
      .int()
      .min(8 * 1024)
      .max(1024 * 1024)
      .default(16 * 1024),
  })
  // Node refuses to start a server otherwise.
  .refine((limits) => limits.headersTimeout <= limits.requestTimeout, {
    message: 'headersTimeout must not exceed requestTimeout',
    path: ['headersTimeout'],
  })
  .prefault({});

export type HttpLimits = z.infer<typeof httpLimitsSchema>;

/** The FastifyAdapter options that carry the limits (Node checks the timeouts every second). */
export function fastifyLimitOptions(limits: HttpLimits) {
  return {
    connectionTimeout: limits.idleTimeout,
    keepAliveTimeout: limits.keepAliveTimeout,
    requestTimeout: limits.requestTimeout,
    http: {
      headersTimeout: limits.headersTimeout,
      requestTimeout: limits.requestTimeout,
      connectionsCheckingInterval: 1_000,
      maxHeaderSize: limits.maxHeaderSize,
    },
  };
}

/** The connection cap, set on the listening server (slow and silent clients get Node's 408 and are closed). */
export function capConnections(server: Server, limits: HttpLimits): void {
  server.maxConnections = limits.maxConnections;
}

/** Environment variables for the limits, under a prefix (`HTTP_` for both services). */
export function httpLimitEnvOverrides(prefix: string, path: string) {
  return {
    [`${prefix}MAX_CONNECTIONS`]: `${path}.maxConnections`,
    [`${prefix}HEADERS_TIMEOUT`]: `${path}.headersTimeout`,
    [`${prefix}REQUEST_TIMEOUT`]: `${path}.requestTimeout`,
    [`${prefix}KEEP_ALIVE_TIMEOUT`]: `${path}.keepAliveTimeout`,
    [`${prefix}IDLE_TIMEOUT`]: `${path}.idleTimeout`,
    [`${prefix}MAX_HEADER_SIZE`]: `${path}.maxHeaderSize`,
  };
}
