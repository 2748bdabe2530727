import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/): the caller's `traceparent`, read so
 * that every log line of a request carries `trace_id` and `span_id` (the caller's parent-id) and
 * an operator can follow one request from Envoy through ext-authz and the authority. These
 * services start no spans of their own and forward nothing: they only log the caller's ids.
 */
export interface TraceContext {
  traceId: string;
  /** The caller's span (the header's parent-id). */
  parentId: string;
  flags: string;
}

const VERSION_00_LENGTH = 55;
/** version-traceid-parentid-flags, lower-case hex; a later version may go on with '-' and more (§4.3). */
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/s;
const ALL_ZERO = /^0+$/;

/**
 * The `traceparent` header parsed per the spec, or undefined when it must be ignored: not
 * version 00's format (exactly 55 characters), upper-case or non-hex characters, an all-zero
 * trace-id or parent-id, version ff, or a repeated header (joined with commas, so never in the
 * format). A later version is read as 00 when it starts with 00's fields and, if longer, goes
 * on with '-' (§4.3: what follows is for that version to define).
 */
export function parseTraceparent(value: unknown): TraceContext | undefined {
  // 512: more than any version needs; a huge header costs no regex work.
  if (typeof value !== 'string' || value.length < VERSION_00_LENGTH || value.length > 512) return undefined;
  const match = TRACEPARENT.exec(value);
  if (!match) return undefined;
  const [, version, traceId, parentId, flags] = match;
  if (version === 'ff' || (version === '00' && value.length !== VERSION_00_LENGTH)) return undefined;
  if (ALL_ZERO.test(traceId) || ALL_ZERO.test(parentId)) return undefined;
  return { traceId, parentId, flags };
}

/** The log fields of a trace context. */
export function traceFields(trace: TraceContext | undefined): { trace_id?: string; span_id?: string } {
  return trace ? { trace_id: trace.traceId, span_id: trace.parentId } : {};
}

/** The trace context of the request being served, for log lines written deep in the code. */
export const traceStore = new AsyncLocalStorage<TraceContext | undefined>();

/** Runs `work` (and everything it awaits) with the caller's trace context, when it sent a valid one. */
export function withTraceparent<T>(traceparent: unknown, work: () => T): T {
  // No trace to give and none to hide (a Check without traceparent): no context to enter.
  if (traceparent === undefined && traceStore.getStore() === undefined) return work();
  return traceStore.run(parseTraceparent(traceparent), work);
}

/** Marks loggers that already carry the trace fields as bindings (Fastify's request loggers). */
export const TRACE_BOUND = Symbol('traceBound');

/** Pino mixin: the trace fields of the current request, unless the logger is bound to them already. */
export function traceLogMixin(_merge: object, _level: number, logger?: object): object {
  if (logger && (logger as { [TRACE_BOUND]?: boolean })[TRACE_BOUND]) return {};
  return traceFields(traceStore.getStore());
}

const REQUEST_TRACE = Symbol('requestTrace');

interface TracedRequest {
  headers: Record<string, unknown>;
  [REQUEST_TRACE]?: TraceContext;
}

interface TraceHookTarget {
  addHook(name: 'onRequest' | 'preValidation', hook: (request: TracedRequest, reply: unknown, done: () => void) => void): unknown;
}

/**
 * Fastify: every request's handlers run in its trace context. Entered twice, as
 * @fastify/request-context does: body parsing continues in the socket's async context, so the
 * context set on request would be lost by the time the route handler runs.
 */
export function installTraceContext(fastify: TraceHookTarget): void {
  fastify.addHook('onRequest', (request, _reply, done) => {
    request[REQUEST_TRACE] = parseTraceparent(request.headers.traceparent);
    traceStore.run(request[REQUEST_TRACE], done);
  });
  fastify.addHook('preValidation', (request, _reply, done) => traceStore.run(request[REQUEST_TRACE], done));
}

interface PinoLike {
  child(bindings: object, options?: object): object;
}

/** Fastify's `childLoggerFactory`: its request log lines ("incoming request", "request completed") carry the trace fields too. */
export function traceChildLoggerFactory(
  logger: PinoLike,
  bindings: object,
  options: object,
  rawRequest: { headers: Record<string, unknown> },
): object {
  const trace = parseTraceparent(rawRequest.headers.traceparent);
  if (!trace) return logger.child(bindings, options);
  const child = logger.child({ ...bindings, ...traceFields(trace) }, options);
  (child as { [TRACE_BOUND]?: boolean })[TRACE_BOUND] = true;
  return child;
}
