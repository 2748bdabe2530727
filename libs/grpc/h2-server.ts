import { EventEmitter } from 'node:events';
import { constants, createServer, type Http2Server, type Http2Session, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo, Server as NetServer } from 'node:net';

/**
 * A small gRPC server on node:http2 for unary and server-streaming methods, with the
 * `addService(definition, implementation)` shape of grpc-js's Server, so grpc-js-style handlers
 * (Envoy's Check, grpc-health-check's Health) plug in unchanged. It exists for the hot path:
 * grpc-js costs more per call than the whole decision (issue 16). What it does, as grpc-js does:
 * length-prefixed messages, `grpc-status`/`grpc-message` trailers (trailers-only for errors),
 * `grpc-timeout` (DEADLINE_EXCEEDED), messages over `maxReceiveMessageLength` (RESOURCE_EXHAUSTED,
 * without buffering them), unknown methods (UNIMPLEMENTED), compressed messages it cannot read
 * (UNIMPLEMENTED), client RST_STREAM (the call is cancelled), keepalive pings both ways, GOAWAY on
 * shutdown. Flow control is node's. Loopback or wherever it is bound; no TLS.
 */

export interface MethodDefinition {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestDeserialize: (bytes: Buffer) => unknown;
  responseSerialize: (value: never) => Buffer;
}

export interface ServiceError {
  code: number;
  details?: string;
}

/** A call as handlers see it, whichever server carries it. */
export interface GrpcCall extends EventEmitter {
  request: unknown;
  cancelled: boolean;
  readonly metadata: Readonly<Record<string, string | string[] | undefined>>;
  write(value: unknown): boolean;
  end(): void;
}

export type UnaryHandler = (call: GrpcCall, callback: (error: ServiceError | null, value?: unknown) => void) => void;
export type StreamHandler = (call: GrpcCall) => void;

export interface H2ServerOptions {
  maxReceiveMessageLength: number;
  maxConcurrentStreams: number;
  /** Server pings an idle connection this often (grpc.keepalive_time_ms) ... */
  keepaliveTimeMs: number;
  /** ... and closes it when the ack takes longer (grpc.keepalive_timeout_ms). */
  keepaliveTimeoutMs: number;
}

export const STATUS = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;

/** A call as handlers see it: the request, write() for streams, 'cancelled' when the client goes. */
export class H2Call extends EventEmitter implements GrpcCall {
  request: unknown;
  cancelled = false;
  constructor(
    private readonly stream: ServerHttp2Stream,
    private readonly serialize: (value: never) => Buffer,
    readonly metadata: IncomingHttpHeaders,
  ) {
    super();
  }

  /** One message of a server stream. */
  write(value: unknown): boolean {
    if (this.cancelled || this.stream.destroyed) return false;
    startResponse(this.stream);
    return this.stream.write(frame(this.serialize(value as never)));
  }

  /** Ends a server stream with OK. */
  end(): void {
    finish(this.stream, STATUS.OK);
  }
}

function frame(message: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

const RESPONSE_HEADERS = { ':status': 200, 'content-type': 'application/grpc' };
const RESPONDED = Symbol('responded');

function startResponse(stream: ServerHttp2Stream): void {
  const marked = stream as ServerHttp2Stream & { [RESPONDED]?: boolean };
  if (marked[RESPONDED] || stream.headersSent) return;
  marked[RESPONDED] = true;
  stream.respond(RESPONSE_HEADERS, { waitForTrailers: true });
}

/** grpc-message: percent-encoded as the spec says (only printable ASCII but '%' as is). */
export function encodeMessage(message: string): string {
  return message.replace(/[^\x20-\x24\x26-\x7e]/gu, (character) =>
    [...Buffer.from(character, 'utf8')].map((byte) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`).join(''),
  );
}

const OK_TRAILERS = { 'grpc-status': '0' };
export const MAX_DETAILS = 1024;

/** Ends the call with a status: trailers after a response (and its last message), or a trailers-only response. */
function finish(stream: ServerHttp2Stream, code: number, details?: string, last?: Buffer): void {
  if (stream.destroyed || stream.closed) return;
  const trailers: Record<string, string> = code === STATUS.OK && !details ? OK_TRAILERS : { 'grpc-status': String(code) };
  // Cut: a message that echoes a huge request field must still fit in one header block.
  if (details) trailers['grpc-message'] = encodeMessage(details.length > MAX_DETAILS ? `${details.slice(0, MAX_DETAILS)}…` : details);
  const marked = stream as ServerHttp2Stream & { [RESPONDED]?: boolean };
  if (last || marked[RESPONDED] || stream.headersSent) {
    startResponse(stream);
    stream.once('wantTrailers', () => stream.sendTrailers(trailers));
    if (last) stream.end(last);
    else stream.end();
    return;
  }
  marked[RESPONDED] = true;
  stream.respond({ ...RESPONSE_HEADERS, ...trailers }, { endStream: true });
}

/** grpc-timeout: "<digits><unit>" (at most 8 digits); undefined for none or a malformed one. */
export function timeoutMs(header: string | string[] | undefined): number | undefined {
  // Every call from one client names the same timeout (Envoy: its grpc_service timeout).
  if (header === lastTimeout.header) return lastTimeout.ms;
  const ms = parseTimeout(header);
  if (typeof header === 'string') lastTimeout = { header, ms };
  return ms;
}
let lastTimeout: { header: string | undefined; ms: number | undefined } = { header: undefined, ms: undefined };

function parseTimeout(header: string | string[] | undefined): number | undefined {
  const match = typeof header === 'string' ? /^(\d{1,8})([HMSmun])$/.exec(header) : null;
  if (!match) return undefined;
  const value = Number(match[1]);
  const scale = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }[match[2] as 'H'];
  const ms = value * scale;
  // Past setTimeout's range (about 24.8 days) is no deadline at all (node would fire it at once).
  return ms > 2 ** 31 - 1 ? undefined : ms;
}

export interface Route {
  method: MethodDefinition;
  unary?: UnaryHandler;
  stream?: StreamHandler;
}

/** Listens on host:port; resolves with the port bound (0 picks one), rejects when it cannot listen. */
export function listenOn(server: NetServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/** grpc-js's Server.addService into `routes`: every method by its path; implementations by name or originalName. */
export function addRoutes(
  routes: Map<string, Route>,
  service: Record<string, MethodDefinition & { originalName?: string }>,
  implementation: Record<string, unknown>,
): void {
  for (const [name, method] of Object.entries(service)) {
    const handler = (implementation[name] ?? (method.originalName ? implementation[method.originalName] : undefined)) as
      | UnaryHandler
      | StreamHandler
      | undefined;
    if (!handler) continue;
    if (method.requestStream) throw new Error(`${method.path}: client streaming is not supported`);
    routes.set(
      method.path,
      method.responseStream ? { method, stream: handler as StreamHandler } : { method, unary: handler as UnaryHandler },
    );
  }
}

export class H2GrpcServer {
  private readonly routes = new Map<string, Route>();
  private readonly server: Http2Server;
  private readonly sessions = new Set<Http2Session>();

  constructor(private readonly options: H2ServerOptions) {
    this.server = createServer({
      settings: { maxConcurrentStreams: options.maxConcurrentStreams },
      // A gRPC client sends nothing but gRPC; HTTP/1.1 is refused by node (no allowHTTP1).
    });
    this.server.on('session', (session) => this.track(session));
    this.server.on('stream', (stream, headers) => this.serve(stream, headers));
    // A broken connection is that connection's problem only.
    this.server.on('sessionError', () => undefined);
  }

  /** grpc-js's Server.addService: every method by its path; implementations by name or originalName. */
  addService(service: Record<string, MethodDefinition & { originalName?: string }>, implementation: Record<string, unknown>): void {
    addRoutes(this.routes, service, implementation);
  }

  listen(port: number, host: string): Promise<number> {
    return listenOn(this.server, port, host);
  }

  /** GOAWAY to every connection, calls in progress finish; after graceMs whatever is left is cut. */
  close(graceMs: number): Promise<void> {
    return new Promise((resolve) => {
      let done = false;
      const finished = () => {
        if (done) return;
        done = true;
        clearTimeout(force);
        resolve();
      };
      const force = setTimeout(() => {
        for (const session of this.sessions) session.destroy();
        finished();
      }, graceMs);
      this.server.close(() => finished());
      for (const session of this.sessions) session.close();
    });
  }

  private track(session: Http2Session): void {
    this.sessions.add(session);
    session.on('error', () => undefined);
    let awaitingAck = false;
    const keepalive = setInterval(() => {
      if (awaitingAck || session.destroyed) return;
      awaitingAck = true;
      const timeout = setTimeout(() => session.destroy(), this.options.keepaliveTimeoutMs);
      timeout.unref();
      const sent = session.ping((error) => {
        clearTimeout(timeout);
        awaitingAck = false;
        if (error) session.destroy();
      });
      if (!sent) clearTimeout(timeout);
    }, this.options.keepaliveTimeMs);
    keepalive.unref();
    session.once('close', () => {
      clearInterval(keepalive);
      this.sessions.delete(session);
    });
  }

  private serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', () => undefined);
    const path = headers[constants.HTTP2_HEADER_PATH];
    const contentType = headers[constants.HTTP2_HEADER_CONTENT_TYPE];
    if (
      headers[constants.HTTP2_HEADER_METHOD] !== 'POST' ||
      typeof contentType !== 'string' ||
      !/^application\/grpc(?:[+;]|$)/.test(contentType)
    ) {
      // Not gRPC (the spec's answer: 415 for a wrong content-type).
      stream.respond(
        { ':status': typeof contentType === 'string' && contentType.startsWith('application/grpc') ? 405 : 415 },
        { endStream: true },
      );
      return;
    }
    const route = typeof path === 'string' ? this.routes.get(path) : undefined;
    if (!route) {
      stream.resume();
      finish(stream, STATUS.UNIMPLEMENTED, `The server does not implement the method ${String(path)}`);
      return;
    }
    const call = new H2Call(stream, route.method.responseSerialize, headers);
    let answered = false;
    const deadline = timeoutMs(headers['grpc-timeout']);
    const timer =
      deadline === undefined
        ? undefined
        : setTimeout(() => {
            if (answered) return;
            answered = true;
            call.cancelled = true;
            finish(stream, STATUS.DEADLINE_EXCEEDED, 'Deadline exceeded');
            call.emit('cancelled');
          }, deadline);
    stream.once('close', () => {
      if (timer) clearTimeout(timer);
      if (!answered || route.stream) {
        answered = true;
        if (!call.cancelled) {
          call.cancelled = true;
          call.emit('cancelled');
        }
      }
    });
    const fail = (code: number, details: string) => {
      if (answered) return;
      answered = true;
      finish(stream, code, details);
    };

    // The one request message: 5-byte prefix (compressed flag, length), then the message.
    const limit = this.options.maxReceiveMessageLength;
    let chunks: Buffer[] = [];
    let received = 0;
    let message: Buffer | undefined;
    stream.on('data', (chunk: Buffer) => {
      if (answered) return;
      chunks.push(chunk);
      received += chunk.length;
      if (message !== undefined) {
        fail(STATUS.UNIMPLEMENTED, 'Received a second request message for a unary or server-streaming method');
        return;
      }
      if (received < 5) return;
      const head = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      chunks = [head];
      const length = head.readUInt32BE(1);
      if (head[0] !== 0) {
        fail(head[0] === 1 ? STATUS.UNIMPLEMENTED : STATUS.INTERNAL, 'Compressed or malformed message flag not supported');
        return;
      }
      if (length > limit) {
        fail(STATUS.RESOURCE_EXHAUSTED, `Received message larger than max (${length} vs. ${limit})`);
        return;
      }
      if (received < 5 + length) return;
      if (received > 5 + length) {
        fail(STATUS.UNIMPLEMENTED, 'Received a second request message for a unary or server-streaming method');
        return;
      }
      message = head.subarray(5, 5 + length);
      chunks = [];
    });
    stream.on('end', () => {
      if (answered) return;
      if (message === undefined) {
        fail(received === 0 ? STATUS.UNIMPLEMENTED : STATUS.INTERNAL, received === 0 ? 'No message received' : 'Truncated message');
        return;
      }
      try {
        call.request = route.method.requestDeserialize(message);
      } catch (error) {
        fail(STATUS.INTERNAL, `Error deserializing request: ${(error as Error).message}`);
        return;
      }
      if (route.stream) {
        try {
          route.stream(call);
        } catch {
          fail(STATUS.UNKNOWN, 'Server method handler threw');
        }
        return;
      }
      const unary = route.unary as UnaryHandler;
      try {
        unary(call, (error, value) => {
          if (answered) return;
          if (error) {
            fail(error.code ?? STATUS.UNKNOWN, error.details ?? 'Unknown error');
            return;
          }
          let bytes: Buffer;
          try {
            bytes = route.method.responseSerialize(value as never);
          } catch (serializeError) {
            fail(STATUS.INTERNAL, `Error serializing response: ${(serializeError as Error).message}`);
            return;
          }
          answered = true;
          finish(stream, STATUS.OK, undefined, frame(bytes));
        });
      } catch {
        fail(STATUS.UNKNOWN, 'Server method handler threw');
      }
    });
  }
}
