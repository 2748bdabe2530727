import { status as GrpcStatus, type Server, type ServiceDefinition } from '@grpc/grpc-js';
import { withTraceparent } from './trace-context';

export interface GrpcObserver {
  /** A unary call answered: its status code and how long it took. */
  unary(service: string, method: string, code: GrpcStatus, seconds: number): void;
  /**
   * Streams are counted when they open and when they end, with the code they ended with: their
   * length says how long a data plane stayed connected, not how fast the server answered, so a
   * latency histogram would mean nothing.
   */
  streamOpened(service: string, method: string): void;
  streamClosed(service: string, method: string, code: GrpcStatus): void;
}

/** What grpc-js hands a handler: the call (an event emitter with metadata) and, for unary calls, the callback. */
interface Call {
  metadata?: { get(key: string): unknown[] };
  once(event: string, listener: (error?: { code?: number }) => void): unknown;
}
type Handler = (call: Call, callback?: (error: { code?: number } | null, ...rest: unknown[]) => void) => unknown;

/**
 * Wraps `server.addService` so that every method registered afterwards (Nest's controllers,
 * raw grpc-js services, health, reflection) is measured by `observer` and runs in the caller's
 * trace context (its `traceparent` metadata). Only registered methods are measured: a call to
 * an unknown method is answered UNIMPLEMENTED by grpc-js and labels nothing.
 */
export function instrumentGrpcServer(server: Server, observer: GrpcObserver): void {
  const addService = server.addService.bind(server);
  server.addService = (definition: ServiceDefinition, implementation: Record<string, Handler>) => {
    const wrapped: Record<string, Handler> = {};
    for (const [name, handler] of Object.entries(implementation)) {
      const method = definition[name];
      if (!method || typeof handler !== 'function') {
        wrapped[name] = handler;
        continue;
      }
      // '/token_authority.v1.TokenAuthority/IssueToken'
      const [service, methodName] = method.path.slice(1).split('/');
      wrapped[name] =
        method.requestStream || method.responseStream
          ? streaming(handler, service, methodName, observer)
          : unary(handler, service, methodName, observer);
    }
    addService(definition, wrapped);
  };
}

const traceparentOf = (call: Call) => call.metadata?.get('traceparent')[0];

function unary(handler: Handler, service: string, method: string, observer: GrpcObserver): Handler {
  return (call, callback) => {
    const started = process.hrtime.bigint();
    const answer = (error: { code?: number } | null, ...rest: unknown[]) => {
      const code = error ? (typeof error.code === 'number' ? error.code : GrpcStatus.UNKNOWN) : GrpcStatus.OK;
      observer.unary(service, method, code, Number(process.hrtime.bigint() - started) / 1e9);
      callback?.(error, ...rest);
    };
    return withTraceparent(traceparentOf(call), () => handler(call, answer));
  };
}

function streaming(handler: Handler, service: string, method: string, observer: GrpcObserver): Handler {
  return (call, callback) => {
    observer.streamOpened(service, method);
    let closed = false;
    const close = (code: number) => {
      if (closed) return;
      closed = true;
      observer.streamClosed(service, method, code);
    };
    // The server ends a stream with an error (its status), by ending it (OK), or the client goes away.
    call.once('error', (error) => close(typeof error?.code === 'number' ? error.code : GrpcStatus.UNKNOWN));
    call.once('finish', () => close(GrpcStatus.OK));
    call.once('cancelled', () => close(GrpcStatus.CANCELLED));
    call.once('close', () => close(GrpcStatus.CANCELLED));
    return withTraceparent(traceparentOf(call), () => handler(call, callback));
  };
}
