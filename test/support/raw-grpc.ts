import { connect, constants as http2, type ClientHttp2Session } from 'node:http2';

/**
 * gRPC spoken by hand over node:http2: messages are protobuf bytes built here (so a `string`
 * field can carry bytes that are not UTF-8), metadata values are sent byte for byte (grpc-js
 * only sends ASCII), and the answer is reported as it came off the wire: headers, trailers,
 * messages, or the HTTP/2 reset that ended the stream.
 */

/** A protobuf field: number and value. Buffers and strings are length-delimited, numbers varints, arrays nested messages. */
export type PbField = [number, Buffer | string | number | PbField[]];

function varint(value: number): Buffer {
  const bytes: number[] = [];
  let rest = value;
  while (rest >= 0x80) {
    bytes.push((rest % 0x80) | 0x80);
    rest = Math.floor(rest / 0x80);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

/** Encodes a protobuf message field by field, in the given order. */
export function pb(fields: PbField[]): Buffer {
  const parts: Buffer[] = [];
  for (const [number, value] of fields) {
    if (typeof value === 'number') {
      parts.push(varint(number * 8), varint(value));
      continue;
    }
    const bytes = Buffer.isBuffer(value) ? value : typeof value === 'string' ? Buffer.from(value, 'utf8') : pb(value);
    parts.push(varint(number * 8 + 2), varint(bytes.length), bytes);
  }
  return Buffer.concat(parts);
}

/** The gRPC length-prefixed message (uncompressed). */
export function grpcFrame(message: Buffer): Buffer {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

export interface GrpcWireCall {
  /** host:port */
  address: string;
  /** /package.Service/Method */
  path: string;
  /** One request message; none sends an empty request stream. */
  message?: Buffer;
  /** Several request messages (a client stream), sent in order before the stream is half-closed. */
  messages?: Buffer[];
  /** Metadata: each value's characters are sent as bytes (latin1), so any byte can be sent. */
  metadata?: Record<string, string>;
  timeoutMs?: number;
  /** For server streams: cancel the call once this many messages have arrived. */
  stopAfterMessages?: number;
  /** For server streams: cancel the call once this says the messages so far are enough. */
  stopWhen?: (messages: Buffer[]) => boolean;
  /** An open session to use (and leave open); by default a fresh connection, closed after the call. */
  session?: ClientHttp2Session;
}

export interface GrpcWireResult {
  headers?: Record<string, unknown>;
  trailers?: Record<string, unknown>;
  /** grpc-status, from the trailers (or a trailers-only answer). */
  status?: number;
  /** grpc-message, percent-decoded. */
  statusMessage?: string;
  messages: Buffer[];
  /** The HTTP/2 error code of the RST_STREAM that ended the stream, if not NO_ERROR. */
  rstCode?: number;
  error?: string;
  timedOut: boolean;
  /** The client cancelled after `stopAfterMessages` messages. */
  cancelledByClient: boolean;
  /** node:http2 refused to send the request at all (reason). */
  notSent?: string;
}

export const HTTP2_ERROR_NAMES: Record<number, string> = {
  0: 'NO_ERROR',
  1: 'PROTOCOL_ERROR',
  2: 'INTERNAL_ERROR',
  3: 'FLOW_CONTROL_ERROR',
  4: 'SETTINGS_TIMEOUT',
  5: 'STREAM_CLOSED',
  6: 'FRAME_SIZE_ERROR',
  7: 'REFUSED_STREAM',
  8: 'CANCEL',
  9: 'COMPRESSION_ERROR',
  10: 'CONNECT_ERROR',
  11: 'ENHANCE_YOUR_CALM',
  12: 'INADEQUATE_SECURITY',
  13: 'HTTP_1_1_REQUIRED',
};

function decodeGrpcMessage(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** One call on a fresh HTTP/2 connection; always resolves. */
export function grpcWire(call: GrpcWireCall): Promise<GrpcWireResult> {
  const result: GrpcWireResult = { messages: [], timedOut: false, cancelledByClient: false };
  return new Promise((resolve) => {
    const session = call.session ?? connect(`http://${call.address}`);
    const onSessionError = (error: Error) => (result.error ??= `session: ${error.message}`);
    session.on('error', onSessionError);
    // A fresh session keeps its error listener: destroying one that is still connecting can
    // emit the connection's error afterwards, and an 'error' without a listener would throw.
    const release = () => (call.session ? session.removeListener('error', onSessionError) : session.destroy());
    let stream: ReturnType<typeof session.request>;
    try {
      stream = session.request({
        [http2.HTTP2_HEADER_METHOD]: 'POST',
        [http2.HTTP2_HEADER_PATH]: call.path,
        'content-type': 'application/grpc',
        te: 'trailers',
        ...call.metadata,
      });
    } catch (error) {
      result.notSent = (error as Error).message;
      release();
      resolve(result);
      return;
    }
    let pending = Buffer.alloc(0);
    const timer = setTimeout(() => {
      result.timedOut = true;
      stream.close(http2.NGHTTP2_CANCEL);
    }, call.timeoutMs ?? 5000);
    stream.on('response', (headers) => {
      result.headers = { ...headers };
      if (headers['grpc-status'] !== undefined) {
        result.status = Number(headers['grpc-status']);
        result.statusMessage = decodeGrpcMessage(headers['grpc-message']);
      }
    });
    stream.on('trailers', (trailers) => {
      result.trailers = { ...trailers };
      result.status = Number(trailers['grpc-status']);
      result.statusMessage = decodeGrpcMessage(trailers['grpc-message']);
    });
    stream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
        const length = pending.readUInt32BE(1);
        result.messages.push(pending.subarray(5, 5 + length));
        pending = pending.subarray(5 + length);
      }
      const enough =
        call.stopAfterMessages !== undefined
          ? result.messages.length >= call.stopAfterMessages
          : result.messages.length > 0 && call.stopWhen?.(result.messages) === true;
      if (enough && !result.cancelledByClient) {
        result.cancelledByClient = true;
        stream.close(http2.NGHTTP2_CANCEL);
      }
    });
    stream.on('error', (error: Error) => (result.error ??= `stream: ${error.message}`));
    stream.on('close', () => {
      clearTimeout(timer);
      if (stream.rstCode && stream.rstCode !== http2.NGHTTP2_NO_ERROR && !(result.cancelledByClient || result.timedOut))
        result.rstCode = stream.rstCode;
      release();
      resolve(result);
    });
    const frames = call.messages ?? (call.message === undefined ? [] : [call.message]);
    if (frames.length === 0) stream.end();
    else stream.end(Buffer.concat(frames.map(grpcFrame)));
  });
}

/**
 * Header and trailer fields that no gRPC peer should have to accept: a value with a byte other
 * than visible ASCII and space (node:http2 hands values over as latin1, one character per byte),
 * or a `-bin` value that is not base64.
 */
export function illegalGrpcHeaders(...blocks: (Record<string, unknown> | undefined)[]): string[] {
  const problems: string[] = [];
  for (const block of blocks) {
    for (const [name, raw] of Object.entries(block ?? {})) {
      if (name.startsWith(':')) continue;
      for (const value of Array.isArray(raw) ? raw : [raw]) {
        const text = String(value);
        const legal = name.endsWith('-bin') ? /^[A-Za-z0-9+/]*={0,2}$/.test(text) : /^[\x20-\x7e]*$/.test(text);
        if (!legal) problems.push(`${name}: ${JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}…` : text)}`);
      }
    }
  }
  return problems;
}

/** Short description of an outcome, for assertion messages. */
export function describeGrpcResult(result: GrpcWireResult): string {
  const parts: string[] = [];
  if (result.notSent) parts.push(`not sent: ${result.notSent}`);
  if (result.status !== undefined) parts.push(`grpc-status ${result.status} ${JSON.stringify((result.statusMessage ?? '').slice(0, 200))}`);
  else parts.push('no grpc-status');
  if (result.rstCode !== undefined) parts.push(`RST_STREAM ${HTTP2_ERROR_NAMES[result.rstCode] ?? result.rstCode}`);
  if (result.messages.length) parts.push(`${result.messages.length} message(s)`);
  if (result.cancelledByClient) parts.push('cancelled by the client after the messages it wanted');
  if (result.timedOut) parts.push('TIMED OUT');
  if (result.error) parts.push(result.error);
  return parts.join(', ');
}
