import { EventEmitter } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import hpack from 'hpack.js';
import {
  addRoutes,
  encodeMessage,
  type GrpcCall,
  type H2ServerOptions,
  listenOn,
  MAX_DETAILS,
  type MethodDefinition,
  type Route,
  STATUS,
  type UnaryHandler,
  timeoutMs,
} from './h2-server';

/**
 * The gRPC server of the Check port on HTTP/2 frames read straight from the socket (RFC 9113,
 * cleartext with prior knowledge, as Envoy and gRPC clients speak it), with the addService /
 * listen / close shape of H2GrpcServer and the same gRPC behaviour: length-prefixed messages,
 * grpc-status trailers (trailers-only for errors), grpc-timeout, RESOURCE_EXHAUSTED past
 * maxReceiveMessageLength, UNIMPLEMENTED methods, unary and server-streaming calls (Health.Watch).
 *
 * Why not node:http2: each of its streams leaves 1-2 KB that outlives V8's young-generation GC
 * (bench/h2-gc.ts), so under load ext-authz spent about 10 % of its time in GC with 1-10 ms pauses,
 * which made the gRPC Check's tail behind Envoy (issue 16). Here a call allocates a few small
 * objects that die young. HPACK decoding (Huffman, dynamic table) is hpack.js's; responses use
 * literal fields only, so no encoder state is kept.
 *
 * Limits (each breach closes the connection with GOAWAY, as nghttp2 does for its own): frames over
 * 16 KiB, header blocks over 64 KiB (compressed or decoded), more request messages
 * buffered on a connection (32 MiB), more than 16 MiB of replies it does not read, a flood of control
 * frames (PING, SETTINGS, RST_STREAM, PRIORITY, empty DATA: over 10,000 a second), no preface
 * within 10 s. Streams past maxConcurrentStreams are refused (REFUSED_STREAM).
 */

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

const FRAME = {
  DATA: 0,
  HEADERS: 1,
  PRIORITY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PUSH_PROMISE: 5,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
};
const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 };
const H2_ERROR = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  STREAM_CLOSED: 5,
  FRAME_SIZE_ERROR: 6,
  REFUSED_STREAM: 7,
  CANCEL: 8,
  COMPRESSION_ERROR: 9,
  ENHANCE_YOUR_CALM: 11,
};

const MAX_FRAME_SIZE = 16_384;
const MAX_HEADER_BLOCK = 65_536;
const HEADER_TABLE_SIZE = 4096;
/** Our receive windows: each stream's (SETTINGS_INITIAL_WINDOW_SIZE) and the connection's. */
const STREAM_WINDOW = 1 << 20;
const CONNECTION_WINDOW = 1 << 24;
/** Credit given back once this much of a window is used. */
const WINDOW_REFILL = 1 << 16;
const MAX_BUFFERED_REQUESTS = 32 << 20;
const MAX_UNREAD_REPLIES = 16 << 20;
const MAX_CONTROL_FRAMES_PER_SECOND = 10_000;
const PREFACE_TIMEOUT_MS = 10_000;
const MAX_WINDOW = 2 ** 31 - 1;

function frameHeader(out: Buffer, at: number, length: number, type: number, flags: number, streamId: number): void {
  out.writeUIntBE(length, at, 3);
  out[at + 3] = type;
  out[at + 4] = flags;
  out.writeUInt32BE(streamId, at + 5);
}

function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(9 + payload.length);
  frameHeader(out, 0, payload.length, type, flags, streamId);
  payload.copy(out, 9);
  return out;
}

function u32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeUInt32BE(value);
  return out;
}

/** An HPACK string literal, not Huffman coded (RFC 7541 §5.2): a 7-bit-prefix length, then the octets. */
function hpackString(value: string): Buffer {
  const octets = Buffer.from(value, 'latin1');
  const length: number[] = [];
  if (octets.length < 127) length.push(octets.length);
  else {
    length.push(127);
    let rest = octets.length - 127;
    while (rest >= 128) {
      length.push((rest & 0x7f) | 0x80);
      rest >>>= 7;
    }
    length.push(rest);
  }
  return Buffer.concat([Buffer.from(length), octets]);
}

/** A literal field without indexing (§6.2.2): a new name, or a static table name index under 15. */
function literal(name: string | number, value: string): Buffer {
  const head = typeof name === 'number' ? Buffer.from([name]) : Buffer.concat([Buffer.from([0]), hpackString(name)]);
  return Buffer.concat([head, hpackString(value)]);
}

/** ":status: 200" (static index 8) and "content-type: application/grpc" (static name 31: 0x0f 0x10). */
const RESPONSE_BLOCK = Buffer.concat([Buffer.from([0x88, 0x0f, 0x10]), hpackString('application/grpc')]);
const OK_TRAILERS_BLOCK = literal('grpc-status', '0');

function statusBlock(code: number, details?: string): Buffer {
  const parts = [literal('grpc-status', String(code))];
  if (details)
    parts.push(literal('grpc-message', encodeMessage(details.length > MAX_DETAILS ? `${details.slice(0, MAX_DETAILS)}…` : details)));
  return Buffer.concat(parts);
}

/** An HTTP status alone (":status" is static index 8 as a name), for what is not gRPC at all. */
function httpStatusBlock(status: number): Buffer {
  return literal(8, String(status));
}

/** RFC 7541 decoding of one complete header block, through hpack.js's decoder and table. */
class HeaderDecoder {
  private readonly decoder = hpack.decoder.create();
  private readonly table = hpack.table.create({ maxSize: HEADER_TABLE_SIZE });

  /** Throws on a malformed block, or one that decodes to more than `maxListSize` (RFC 9113 §6.5.2's measure). */
  decode(block: Buffer, maxListSize: number): [string, string][] {
    const fields: [string, string][] = [];
    let listSize = 0;
    this.decoder.push(block);
    while (!this.decoder.isEmpty()) {
      let name: string;
      let value: string;
      let nameSize: number;
      let valueSize: number;
      if (this.decoder.decodeBit()) {
        const entry = this.table.lookup(this.decoder.decodeInt());
        ({ name, value, nameSize, valueSize } = entry);
      } else {
        const incremental = this.decoder.decodeBit();
        if (!incremental && this.decoder.decodeBit()) {
          this.table.updateSize(this.decoder.decodeInt()); // a dynamic table size update (§6.3)
          continue;
        }
        if (!incremental) this.decoder.decodeBit(); // never-indexed or not: the same to a receiver
        const index = this.decoder.decodeInt();
        if (index === 0) {
          const octets = this.decoder.decodeStr();
          name = String.fromCharCode(...octets);
          nameSize = octets.length;
        } else {
          const entry = this.table.lookup(index);
          name = entry.name;
          nameSize = entry.nameSize;
        }
        const octets = this.decoder.decodeStr();
        value = octets.length < 4096 ? String.fromCharCode(...octets) : Buffer.from(octets).toString('latin1');
        valueSize = octets.length;
        if (incremental) this.table.add(name, value, nameSize, valueSize);
      }
      listSize += nameSize + valueSize + 32;
      if (listSize > maxListSize) throw new Error('header list too large');
      fields.push([name, value]);
    }
    return fields;
  }
}

/** A call as handlers see it (GrpcCall), over one stream of a WireConnection. */
class WireCall extends EventEmitter implements GrpcCall {
  request: unknown;
  cancelled = false;
  constructor(
    private readonly stream: WireStream,
    readonly metadata: Record<string, string | string[] | undefined>,
  ) {
    super();
  }

  write(value: unknown): boolean {
    if (this.cancelled || this.stream.ended) return false;
    this.stream.sendMessage(this.stream.route!.method.responseSerialize(value as never));
    return true;
  }

  end(): void {
    this.stream.finish(STATUS.OK);
  }
}

class WireStream {
  route: Route | undefined;
  call: WireCall | undefined;
  /** The client sent END_STREAM. */
  remoteEnded = false;
  /** We sent END_STREAM (or reset the stream). */
  ended = false;
  headersSent = false;
  timer: NodeJS.Timeout | undefined;
  chunks: Buffer[] = [];
  received = 0;
  message: Buffer | undefined;
  /** What we may still receive before crediting (our window for it) and send (the peer's). */
  receiveWindow = STREAM_WINDOW;
  sendWindow: number;
  /** DATA and trailers waiting for the peer's window, in order. */
  pending: { data?: Buffer; trailers?: Buffer }[] = [];

  constructor(
    readonly id: number,
    private readonly connection: WireConnection,
    sendWindow: number,
  ) {
    this.sendWindow = sendWindow;
  }

  private startResponse(): void {
    if (this.headersSent) return;
    this.headersSent = true;
    this.connection.send(frame(FRAME.HEADERS, FLAG.END_HEADERS, this.id, RESPONSE_BLOCK));
  }

  sendMessage(message: Buffer): void {
    this.startResponse();
    const data = Buffer.allocUnsafe(5 + message.length);
    data[0] = 0;
    data.writeUInt32BE(message.length, 1);
    message.copy(data, 5);
    this.pending.push({ data });
    this.connection.flushStream(this);
  }

  /** Ends the call with a status: trailers after a response, or a trailers-only response. */
  finish(code: number, details?: string, last?: Buffer): void {
    if (this.ended) return;
    this.ended = true;
    if (this.timer) clearTimeout(this.timer);
    const block = code === STATUS.OK && !details ? OK_TRAILERS_BLOCK : statusBlock(code, details);
    if (!last && !this.headersSent && !this.pending.length) {
      this.headersSent = true;
      this.connection.send(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, this.id, Buffer.concat([RESPONSE_BLOCK, block])));
      this.connection.closed(this);
      return;
    }
    if (last) this.sendMessage(last);
    else this.startResponse();
    this.pending.push({ trailers: block });
    this.connection.flushStream(this);
  }

  /** A reply that is not gRPC (415, 405): an HTTP status and END_STREAM. */
  refuse(status: number): void {
    this.ended = true;
    this.headersSent = true;
    this.connection.send(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, this.id, httpStatusBlock(status)));
    this.connection.closed(this);
  }

  /** The client is gone (RST_STREAM, or the connection closed): the call is cancelled. */
  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    const call = this.call;
    const wasAnswered = this.ended;
    this.ended = true;
    this.pending = [];
    if (call && !call.cancelled && (!wasAnswered || this.route?.stream)) {
      call.cancelled = true;
      call.emit('cancelled');
    }
  }
}

class ConnectionError extends Error {
  constructor(readonly code: number) {
    super(`HTTP/2 connection error ${code}`);
  }
}

class WireConnection {
  private leftover: Buffer | undefined;
  private prefaceSeen = false;
  private settingsSeen = false;
  private readonly decoder = new HeaderDecoder();
  readonly streams = new Map<number, WireStream>();
  private lastStreamId = 0;
  /** A header block arriving in CONTINUATION frames. */
  private headerBlock: { streamId: number; endStream: boolean; chunks: Buffer[]; size: number } | undefined;
  private sendWindow = 65_535;
  private peerInitialWindow = 65_535;
  private peerMaxFrame = 16_384;
  private receiveWindow = CONNECTION_WINDOW;
  private buffered = 0;
  private goingAway = false;
  private dead = false;
  private output: Buffer[] = [];
  private flushQueued = false;
  private inData = false;
  private controlFrames = 0;
  private controlWindowStart = Date.now();
  private readonly blocked = new Set<WireStream>();
  private readonly keepalive: NodeJS.Timeout;
  private pingOutstanding: NodeJS.Timeout | undefined;
  private readonly prefaceTimer: NodeJS.Timeout;

  constructor(
    private readonly socket: Socket,
    private readonly server: H2WireGrpcServer,
    private readonly routes: ReadonlyMap<string, Route>,
    private readonly options: H2ServerOptions,
  ) {
    socket.setNoDelay(true);
    // Our settings: MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE; then the connection window.
    const settings = Buffer.allocUnsafe(18);
    settings.writeUInt16BE(0x3, 0);
    settings.writeUInt32BE(options.maxConcurrentStreams, 2);
    settings.writeUInt16BE(0x4, 6);
    settings.writeUInt32BE(STREAM_WINDOW, 8);
    settings.writeUInt16BE(0x6, 12);
    settings.writeUInt32BE(MAX_HEADER_BLOCK, 14);
    this.send(frame(FRAME.SETTINGS, 0, 0, settings));
    this.send(frame(FRAME.WINDOW_UPDATE, 0, 0, u32(CONNECTION_WINDOW - 65_535)));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.onClose());
    socket.on('drain', () => this.flushBlocked());
    this.prefaceTimer = setTimeout(() => {
      if (!this.settingsSeen) this.socket.destroy();
    }, PREFACE_TIMEOUT_MS);
    this.prefaceTimer.unref();
    this.keepalive = setInterval(() => this.ping(), options.keepaliveTimeMs);
    this.keepalive.unref();
  }

  /** Queues bytes for the socket; written at the end of the current read, or on the next tick. */
  send(bytes: Buffer): void {
    if (this.dead) return;
    this.output.push(bytes);
    if (!this.inData && !this.flushQueued) {
      this.flushQueued = true;
      process.nextTick(() => this.flush());
    }
  }

  private flush(): void {
    this.flushQueued = false;
    if (this.dead || !this.output.length) return;
    const bytes = this.output.length === 1 ? this.output[0] : Buffer.concat(this.output);
    this.output = [];
    this.socket.write(bytes);
    if (this.socket.writableLength > MAX_UNREAD_REPLIES) this.socket.destroy(); // a client that does not read
  }

  private onData(chunk: Buffer): void {
    if (this.dead) return;
    this.inData = true;
    try {
      this.read(this.leftover ? Buffer.concat([this.leftover, chunk]) : chunk);
    } catch (error) {
      this.fail(error instanceof ConnectionError ? error.code : H2_ERROR.INTERNAL_ERROR);
    } finally {
      this.inData = false;
      this.flush();
    }
  }

  private read(bytes: Buffer): void {
    let at = 0;
    if (!this.prefaceSeen) {
      const seen = Math.min(bytes.length, PREFACE.length);
      if (!bytes.subarray(0, seen).equals(PREFACE.subarray(0, seen))) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      if (bytes.length < PREFACE.length) {
        this.leftover = bytes;
        return;
      }
      this.prefaceSeen = true;
      at = PREFACE.length;
    }
    while (bytes.length - at >= 9 && !this.dead) {
      const length = bytes.readUIntBE(at, 3);
      if (length > MAX_FRAME_SIZE) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
      if (bytes.length - at < 9 + length) break;
      const type = bytes[at + 3];
      const flags = bytes[at + 4];
      const streamId = bytes.readUInt32BE(at + 5) & 0x7fffffff;
      const payload = bytes.subarray(at + 9, at + 9 + length);
      at += 9 + length;
      this.onFrame(type, flags, streamId, payload);
    }
    // What is left is less than one frame (at most 16 KiB + 9): kept, copied off the read buffer.
    this.leftover = at < bytes.length ? Buffer.from(bytes.subarray(at)) : undefined;
  }

  private countControlFrame(): void {
    const now = Date.now();
    if (now - this.controlWindowStart >= 1000) {
      this.controlWindowStart = now;
      this.controlFrames = 0;
    }
    if (++this.controlFrames > MAX_CONTROL_FRAMES_PER_SECOND) throw new ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM);
  }

  private onFrame(type: number, flags: number, streamId: number, payload: Buffer): void {
    if (!this.settingsSeen && type !== FRAME.SETTINGS) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
    if (this.headerBlock && (type !== FRAME.CONTINUATION || streamId !== this.headerBlock.streamId)) {
      throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
    }
    switch (type) {
      case FRAME.DATA:
        this.onDataFrame(flags, streamId, payload);
        return;
      case FRAME.HEADERS:
        this.onHeaders(flags, streamId, payload);
        return;
      case FRAME.CONTINUATION:
        if (!this.headerBlock) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
        this.addHeaderFragment(payload, flags);
        return;
      case FRAME.PRIORITY:
        if (streamId === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
        if (payload.length !== 5) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
        this.countControlFrame();
        return;
      case FRAME.RST_STREAM:
        this.onReset(streamId, payload);
        return;
      case FRAME.SETTINGS:
        this.onSettings(flags, streamId, payload);
        return;
      case FRAME.PUSH_PROMISE:
        throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      case FRAME.PING:
        if (streamId !== 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
        if (payload.length !== 8) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
        if (flags & FLAG.ACK) {
          if (this.pingOutstanding) clearTimeout(this.pingOutstanding);
          this.pingOutstanding = undefined;
          return;
        }
        this.countControlFrame();
        this.send(frame(FRAME.PING, FLAG.ACK, 0, payload));
        return;
      case FRAME.GOAWAY:
        if (streamId !== 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
        this.goingAway = true;
        this.endIfIdle();
        return;
      case FRAME.WINDOW_UPDATE:
        this.onWindowUpdate(streamId, payload);
        return;
      default:
        return; // unknown frame types are ignored (RFC 9113 §4.1)
    }
  }

  private onSettings(flags: number, streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
    if (flags & FLAG.ACK) {
      if (payload.length) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
      return;
    }
    if (payload.length % 6) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
    if (this.settingsSeen) this.countControlFrame();
    this.settingsSeen = true;
    clearTimeout(this.prefaceTimer);
    for (let at = 0; at < payload.length; at += 6) {
      const id = payload.readUInt16BE(at);
      const value = payload.readUInt32BE(at + 2);
      if (id === 0x2 && value > 1) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      if (id === 0x4) {
        if (value > MAX_WINDOW) throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR);
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        for (const stream of this.streams.values()) {
          stream.sendWindow += delta;
          if (stream.sendWindow > MAX_WINDOW) throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR);
        }
      }
      if (id === 0x5) {
        if (value < 16_384 || value > 16_777_215) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
        this.peerMaxFrame = value;
      }
    }
    this.send(frame(FRAME.SETTINGS, FLAG.ACK, 0, Buffer.alloc(0)));
    this.flushBlocked();
  }

  private onWindowUpdate(streamId: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
    const increment = payload.readUInt32BE(0) & 0x7fffffff;
    if (streamId === 0) {
      if (increment === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      this.sendWindow += increment;
      if (this.sendWindow > MAX_WINDOW) throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR);
      this.flushBlocked();
      return;
    }
    const stream = this.streams.get(streamId);
    if (!stream) {
      if (streamId > this.lastStreamId) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR); // an idle stream
      return; // a stream closed a moment ago
    }
    if (increment === 0 || stream.sendWindow + increment > MAX_WINDOW) {
      this.resetStream(stream, increment === 0 ? H2_ERROR.PROTOCOL_ERROR : H2_ERROR.FLOW_CONTROL_ERROR);
      return;
    }
    stream.sendWindow += increment;
    this.flushStream(stream);
  }

  private onReset(streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
    if (payload.length !== 4) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
    if (streamId > this.lastStreamId) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
    this.countControlFrame();
    const stream = this.streams.get(streamId);
    if (!stream) return;
    stream.cancel();
    this.forget(stream);
  }

  private onHeaders(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0 || streamId % 2 === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
    let fragment = payload;
    if (flags & FLAG.PADDED) {
      if (!fragment.length || fragment[0] >= fragment.length) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      fragment = fragment.subarray(1, fragment.length - fragment[0]);
    }
    if (flags & FLAG.PRIORITY) {
      if (fragment.length < 5) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR);
      fragment = fragment.subarray(5);
    }
    this.headerBlock = { streamId, endStream: (flags & FLAG.END_STREAM) !== 0, chunks: [], size: 0 };
    this.addHeaderFragment(fragment, flags);
  }

  private addHeaderFragment(fragment: Buffer, flags: number): void {
    const block = this.headerBlock!;
    block.size += fragment.length;
    if (block.size > MAX_HEADER_BLOCK) throw new ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM);
    block.chunks.push(fragment);
    if (!(flags & FLAG.END_HEADERS)) {
      // A fragment points into the read buffer: keep a copy while the block is incomplete.
      block.chunks[block.chunks.length - 1] = Buffer.from(fragment);
      return;
    }
    this.headerBlock = undefined;
    let fields: [string, string][];
    try {
      fields = this.decoder.decode(block.chunks.length === 1 ? block.chunks[0] : Buffer.concat(block.chunks), MAX_HEADER_BLOCK);
    } catch {
      // The decoder's table may now differ from the client's: nothing more on this connection can be read.
      throw new ConnectionError(H2_ERROR.COMPRESSION_ERROR);
    }
    const existing = this.streams.get(block.streamId);
    if (existing) {
      // Trailers from the client: they must end the stream; gRPC has no use for their content.
      if (!block.endStream || existing.remoteEnded) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      this.remoteEnd(existing);
      return;
    }
    // Trailers of a stream already answered and forgotten: decoded (the table must follow), then dropped.
    if (block.streamId <= this.lastStreamId) return;
    this.lastStreamId = block.streamId;
    if (this.goingAway || this.streams.size >= this.options.maxConcurrentStreams) {
      this.send(frame(FRAME.RST_STREAM, 0, block.streamId, u32(H2_ERROR.REFUSED_STREAM)));
      return;
    }
    const stream = new WireStream(block.streamId, this, this.peerInitialWindow);
    this.streams.set(stream.id, stream);
    // Known before start: a stream answered at once (UNIMPLEMENTED, 415) then closes without a reset.
    stream.remoteEnded = block.endStream;
    this.start(stream, fields);
    if (block.endStream && !stream.ended) this.runCall(stream);
  }

  private start(stream: WireStream, fields: [string, string][]): void {
    const headers: Record<string, string> = {};
    for (const [name, value] of fields) headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    const contentType = headers['content-type'];
    if (headers[':method'] !== 'POST' || contentType === undefined || !/^application\/grpc(?:[+;]|$)/.test(contentType)) {
      stream.refuse(contentType?.startsWith('application/grpc') ? 405 : 415);
      return;
    }
    const route = this.routes.get(headers[':path']);
    if (!route) {
      stream.finish(STATUS.UNIMPLEMENTED, `The server does not implement the method ${String(headers[':path'])}`);
      return;
    }
    stream.route = route;
    stream.call = new WireCall(stream, headers);
    const deadline = timeoutMs(headers['grpc-timeout']);
    if (deadline !== undefined) {
      stream.timer = setTimeout(() => {
        if (stream.ended) return;
        stream.finish(STATUS.DEADLINE_EXCEEDED, 'Deadline exceeded');
        stream.call!.cancelled = true;
        stream.call!.emit('cancelled');
      }, deadline);
    }
  }

  private onDataFrame(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
    let data = payload;
    if (flags & FLAG.PADDED) {
      if (!data.length || data[0] >= data.length) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      data = data.subarray(1, data.length - data[0]);
    }
    if (!payload.length && !(flags & FLAG.END_STREAM)) this.countControlFrame();
    this.receiveWindow -= payload.length;
    if (this.receiveWindow < 0) throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR);
    if (CONNECTION_WINDOW - this.receiveWindow >= WINDOW_REFILL) {
      this.send(frame(FRAME.WINDOW_UPDATE, 0, 0, u32(CONNECTION_WINDOW - this.receiveWindow)));
      this.receiveWindow = CONNECTION_WINDOW;
    }
    const stream = this.streams.get(streamId);
    if (!stream || stream.remoteEnded) {
      if (streamId > this.lastStreamId) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR);
      if (stream) this.resetStream(stream, H2_ERROR.STREAM_CLOSED);
      return; // a stream we ended or reset: its data is dropped (the connection window was credited)
    }
    stream.receiveWindow -= payload.length;
    if (stream.receiveWindow < 0) {
      this.resetStream(stream, H2_ERROR.FLOW_CONTROL_ERROR);
      return;
    }
    if (!(flags & FLAG.END_STREAM) && STREAM_WINDOW - stream.receiveWindow >= WINDOW_REFILL) {
      this.send(frame(FRAME.WINDOW_UPDATE, 0, stream.id, u32(STREAM_WINDOW - stream.receiveWindow)));
      stream.receiveWindow = STREAM_WINDOW;
    }
    if (data.length && !stream.ended) this.addMessageBytes(stream, data);
    if (flags & FLAG.END_STREAM) this.remoteEnd(stream);
  }

  /** The one request message: 5-byte prefix (compressed flag, length), then the message. */
  private addMessageBytes(stream: WireStream, data: Buffer): void {
    const limit = this.options.maxReceiveMessageLength;
    if (stream.message !== undefined) {
      stream.finish(STATUS.UNIMPLEMENTED, 'Received a second request message for a unary or server-streaming method');
      return;
    }
    stream.chunks.push(Buffer.from(data)); // copied: the read buffer is reused
    stream.received += data.length;
    this.buffered += data.length;
    if (stream.received < 5) return;
    const head = stream.chunks.length === 1 ? stream.chunks[0] : Buffer.concat(stream.chunks);
    stream.chunks = [head];
    const length = head.readUInt32BE(1);
    if (head[0] !== 0) {
      this.dropMessage(stream);
      stream.finish(head[0] === 1 ? STATUS.UNIMPLEMENTED : STATUS.INTERNAL, 'Compressed or malformed message flag not supported');
      return;
    }
    if (length > limit) {
      this.dropMessage(stream);
      stream.finish(STATUS.RESOURCE_EXHAUSTED, `Received message larger than max (${length} vs. ${limit})`);
      return;
    }
    if (this.buffered > MAX_BUFFERED_REQUESTS) throw new ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM);
    if (stream.received < 5 + length) return;
    if (stream.received > 5 + length) {
      this.dropMessage(stream);
      stream.finish(STATUS.UNIMPLEMENTED, 'Received a second request message for a unary or server-streaming method');
      return;
    }
    stream.message = head.subarray(5, 5 + length);
    this.dropMessage(stream);
  }

  private dropMessage(stream: WireStream): void {
    this.buffered -= stream.received;
    stream.received = 0;
    stream.chunks = [];
  }

  /** The client finished sending: the call runs (or, answered already, the stream can close). */
  private remoteEnd(stream: WireStream): void {
    stream.remoteEnded = true;
    if (stream.ended) {
      if (!stream.pending.length) this.forget(stream);
      return;
    }
    this.runCall(stream);
  }

  private runCall(stream: WireStream): void {
    const route = stream.route!;
    const call = stream.call!;
    if (stream.message === undefined) {
      const none = stream.received === 0;
      this.dropMessage(stream);
      stream.finish(none ? STATUS.UNIMPLEMENTED : STATUS.INTERNAL, none ? 'No message received' : 'Truncated message');
      return;
    }
    try {
      call.request = route.method.requestDeserialize(stream.message);
    } catch (error) {
      stream.finish(STATUS.INTERNAL, `Error deserializing request: ${(error as Error).message}`);
      return;
    }
    stream.message = undefined;
    if (route.stream) {
      try {
        route.stream(call);
      } catch {
        stream.finish(STATUS.UNKNOWN, 'Server method handler threw');
      }
      return;
    }
    const unary = route.unary as UnaryHandler;
    try {
      unary(call, (error, value) => {
        if (stream.ended) return;
        if (error) {
          stream.finish(error.code ?? STATUS.UNKNOWN, error.details ?? 'Unknown error');
          return;
        }
        let bytes: Buffer;
        try {
          bytes = route.method.responseSerialize(value as never);
        } catch (serializeError) {
          stream.finish(STATUS.INTERNAL, `Error serializing response: ${(serializeError as Error).message}`);
          return;
        }
        stream.finish(STATUS.OK, undefined, bytes);
      });
    } catch {
      stream.finish(STATUS.UNKNOWN, 'Server method handler threw');
    }
  }

  /** Sends what the windows allow of a stream's pending DATA, then its trailers. */
  flushStream(stream: WireStream): void {
    while (stream.pending.length && !this.dead) {
      const next = stream.pending[0];
      if (next.trailers) {
        stream.pending.shift();
        this.send(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, stream.id, next.trailers));
        this.blocked.delete(stream);
        this.closed(stream);
        return;
      }
      const data = next.data!;
      const room = Math.min(this.sendWindow, stream.sendWindow, this.peerMaxFrame);
      if (room <= 0) {
        this.blocked.add(stream);
        return;
      }
      const size = Math.min(room, data.length);
      const out = Buffer.allocUnsafe(9 + size);
      frameHeader(out, 0, size, FRAME.DATA, 0, stream.id);
      data.copy(out, 9, 0, size);
      this.send(out);
      this.sendWindow -= size;
      stream.sendWindow -= size;
      if (size === data.length) stream.pending.shift();
      else next.data = data.subarray(size);
    }
    if (!stream.pending.length) this.blocked.delete(stream);
  }

  private flushBlocked(): void {
    for (const stream of [...this.blocked]) {
      if (this.sendWindow <= 0) return;
      this.flushStream(stream);
    }
  }

  /**
   * We sent END_STREAM: the stream closes once the client has finished too. Until then what it
   * sends is credited and dropped. (RFC 9113 §8.1 allows a RST_STREAM(NO_ERROR) to make it stop,
   * but node's own client then loses the response that came just before.)
   */
  closed(stream: WireStream): void {
    if (stream.timer) clearTimeout(stream.timer);
    this.dropMessage(stream);
    if (stream.remoteEnded) this.forget(stream);
  }

  private resetStream(stream: WireStream, code: number): void {
    this.send(frame(FRAME.RST_STREAM, 0, stream.id, u32(code)));
    stream.cancel();
    this.forget(stream);
  }

  private forget(stream: WireStream): void {
    this.dropMessage(stream);
    this.blocked.delete(stream);
    this.streams.delete(stream.id);
    this.endIfIdle();
  }

  private ping(): void {
    if (this.dead || this.pingOutstanding) return;
    this.send(frame(FRAME.PING, 0, 0, Buffer.alloc(8)));
    this.pingOutstanding = setTimeout(() => this.socket.destroy(), this.options.keepaliveTimeoutMs);
    this.pingOutstanding.unref();
  }

  /** GOAWAY: no new streams; the connection ends when its calls have. */
  goAway(): void {
    if (this.dead) return;
    if (!this.goingAway) {
      this.goingAway = true;
      this.send(frame(FRAME.GOAWAY, 0, 0, Buffer.concat([u32(this.lastStreamId), u32(H2_ERROR.NO_ERROR)])));
    }
    this.endIfIdle();
  }

  private endIfIdle(): void {
    if (!this.goingAway || this.streams.size || this.dead) return;
    this.flush();
    this.socket.end();
  }

  private fail(code: number): void {
    if (this.dead) return;
    this.output.push(frame(FRAME.GOAWAY, 0, 0, Buffer.concat([u32(this.lastStreamId), u32(code)])));
    this.flush();
    this.dead = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onClose();
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onClose(): void {
    this.dead = true;
    clearInterval(this.keepalive);
    clearTimeout(this.prefaceTimer);
    if (this.pingOutstanding) clearTimeout(this.pingOutstanding);
    for (const stream of this.streams.values()) stream.cancel();
    this.streams.clear();
    this.blocked.clear();
    this.server.untrack(this);
  }
}

export class H2WireGrpcServer {
  private readonly routes = new Map<string, Route>();
  private readonly server: Server;
  private readonly connections = new Set<WireConnection>();
  private closing: (() => void) | undefined;

  constructor(options: H2ServerOptions) {
    this.server = createServer({ noDelay: true }, (socket) => {
      if (this.closing) {
        socket.destroy();
        return;
      }
      this.connections.add(new WireConnection(socket, this, this.routes, options));
    });
  }

  /** grpc-js's Server.addService: every method by its path; implementations by name or originalName. */
  addService(service: Record<string, MethodDefinition & { originalName?: string }>, implementation: Record<string, unknown>): void {
    addRoutes(this.routes, service, implementation);
  }

  listen(port: number, host: string): Promise<number> {
    return listenOn(this.server, port, host);
  }

  /** @internal a connection that closed. */
  untrack(connection: WireConnection): void {
    this.connections.delete(connection);
    if (!this.connections.size) this.closing?.();
  }

  /** GOAWAY to every connection, calls in progress finish; after graceMs whatever is left is cut. */
  close(graceMs: number): Promise<void> {
    return new Promise((resolve) => {
      let serverClosed = false;
      const force = setTimeout(() => {
        for (const connection of [...this.connections]) connection.destroy();
        resolve();
      }, graceMs);
      const finished = () => {
        if (!serverClosed || this.connections.size) return;
        clearTimeout(force);
        resolve();
      };
      this.closing = finished;
      this.server.close(() => {
        serverClosed = true;
        finished();
      });
      for (const connection of [...this.connections]) connection.goAway();
    });
  }
}
