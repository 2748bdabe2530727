import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { H2WireGrpcServer } from '../libs/grpc/h2-wire-server';
import { grpcFrame } from './support/raw-grpc';

/*
 * libs/grpc/h2-wire-server.ts frame by frame, from a client written here over a raw TCP socket
 * on 127.0.0.1: what grpc-js and node clients never send (h2-server.test.ts covers those), and
 * what an RFC 9113 server must do with it: connection errors answered by GOAWAY with the right
 * code and the connection closed, stream errors by RST_STREAM with the connection kept, flow
 * control in both directions, CONTINUATION, padding, the HPACK dynamic table, and floods cut.
 */

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const T = {
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
const ERR = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  FLOW_CONTROL_ERROR: 3,
  FRAME_SIZE_ERROR: 6,
  REFUSED_STREAM: 7,
  COMPRESSION_ERROR: 9,
  ENHANCE_YOUR_CALM: 11,
};

interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0), length = payload.length): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

const u32 = (value: number) => {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value);
  return out;
};

/** HPACK literals without indexing, new names, no Huffman: the simplest valid header block. */
function hpackLiteral(name: string, value: string, firstByte = 0x00): Buffer {
  const string = (text: string) => {
    const bytes = Buffer.from(text, 'latin1');
    assert.ok(bytes.length < 127);
    return Buffer.concat([Buffer.from([bytes.length]), bytes]);
  };
  return Buffer.concat([Buffer.from([firstByte]), string(name), string(value)]);
}

function requestBlock(path = '/test.Echo/Echo', extra: Buffer[] = []): Buffer {
  return Buffer.concat([
    hpackLiteral(':method', 'POST'),
    hpackLiteral(':scheme', 'http'),
    hpackLiteral(':path', path),
    hpackLiteral(':authority', 'localhost'),
    hpackLiteral('content-type', 'application/grpc'),
    hpackLiteral('te', 'trailers'),
    ...extra,
  ]);
}

/** The response's literal fields (the server sends only static-indexed and literal-without-indexing ones). */
function responseFields(block: Buffer): Record<string, string> {
  const fields: Record<string, string> = {};
  let at = 0;
  const string = () => {
    const length = block[at] & 0x7f;
    assert.ok(length < 127 && !(block[at] & 0x80), 'short, not Huffman coded');
    const text = block.subarray(at + 1, at + 1 + length).toString('latin1');
    at += 1 + length;
    return text;
  };
  while (at < block.length) {
    const byte = block[at];
    if (byte === 0x88) {
      fields[':status'] = '200';
      at += 1;
    } else if (byte === 0x0f && block[at + 1] === 0x10) {
      at += 2;
      fields['content-type'] = string();
    } else if (byte === 0x08) {
      at += 1;
      fields[':status'] = string();
    } else if (byte === 0x00) {
      at += 1;
      const name = string();
      fields[name] = string();
    } else assert.fail(`unexpected field byte ${byte}`);
  }
  return fields;
}

/** A raw HTTP/2 client connection: frames out as given, frames in as parsed. */
class RawClient {
  readonly frames: Frame[] = [];
  closed = false;
  private buffer = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      while (this.buffer.length >= 9 && this.buffer.length >= 9 + this.buffer.readUIntBE(0, 3)) {
        const length = this.buffer.readUIntBE(0, 3);
        this.frames.push({
          type: this.buffer[3],
          flags: this.buffer[4],
          streamId: this.buffer.readUInt32BE(5) & 0x7fffffff,
          payload: Buffer.from(this.buffer.subarray(9, 9 + length)),
        });
        this.buffer = this.buffer.subarray(9 + length);
      }
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  static async open(port: number, settings: Buffer = Buffer.alloc(0), preface: Buffer = PREFACE): Promise<RawClient> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((done, fail) => socket.once('connect', done).once('error', fail));
    const client = new RawClient(socket);
    client.write(Buffer.concat([preface, frame(T.SETTINGS, 0, 0, settings)]));
    return client;
  }

  write(bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** Resolves with the first frame received (or already there) for which `match` holds. */
  async next(match: (frame: Frame) => boolean, what: string, timeoutMs = 3000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(match);
      if (found) return found;
      if (this.closed) assert.fail(`connection closed before ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`no ${what} within ${timeoutMs} ms`);
      await new Promise<void>((done) => {
        const timer = setTimeout(done, left);
        this.waiters.push(() => (clearTimeout(timer), done()));
      });
    }
  }

  /** The GOAWAY's error code, once the server has closed the connection. */
  async goAway(): Promise<number> {
    const goAway = await this.next((f) => f.type === T.GOAWAY, 'GOAWAY');
    const deadline = Date.now() + 3000;
    while (!this.closed && Date.now() < deadline) await new Promise((done) => setTimeout(done, 10));
    assert.ok(this.closed, 'the server closes the connection after GOAWAY');
    return goAway.payload.readUInt32BE(4);
  }

  /** A whole call on `streamId`: response headers, messages, trailers. */
  async response(streamId: number): Promise<{ headers: Record<string, string>; data: Buffer; trailers: Record<string, string> }> {
    const end = await this.next(
      (f) => f.streamId === streamId && f.type === T.HEADERS && (f.flags & 0x1) !== 0,
      `the end of stream ${streamId}`,
    );
    const ofStream = this.frames.filter((f) => f.streamId === streamId);
    const headers = responseFields(ofStream.find((f) => f.type === T.HEADERS)!.payload);
    const data = Buffer.concat(ofStream.filter((f) => f.type === T.DATA).map((f) => f.payload));
    return { headers, data, trailers: end === ofStream[0] ? headers : responseFields(end.payload) };
  }

  close(): void {
    this.socket.destroy();
  }
}

const passThrough = (bytes: Buffer) => bytes;
const method = (path: string) => ({
  path,
  requestStream: false,
  responseStream: false,
  requestSerialize: passThrough,
  requestDeserialize: passThrough,
  responseSerialize: passThrough,
  responseDeserialize: passThrough,
});

describe('H2WireGrpcServer, frame by frame', () => {
  let server: H2WireGrpcServer;
  let port: number;
  const clients: RawClient[] = [];
  const open = async (settings?: Buffer, preface?: Buffer) => {
    const client = await RawClient.open(port, settings, preface);
    clients.push(client);
    return client;
  };

  before(async () => {
    server = new H2WireGrpcServer({
      maxReceiveMessageLength: 1024,
      maxConcurrentStreams: 4,
      keepaliveTimeMs: 60_000,
      keepaliveTimeoutMs: 20_000,
    });
    server.addService({ Echo: method('/test.Echo/Echo'), Hold: method('/test.Echo/Hold') } as never, {
      Echo(call: { request: Buffer }, callback: (error: null, value: Buffer) => void) {
        callback(null, Buffer.concat([Buffer.from('echo:'), call.request]));
      },
      Hold() {}, // never answers: streams stay open
    });
    port = await server.listen(0, '127.0.0.1');
  });
  after(async () => {
    for (const client of clients) client.close();
    await server.close(100);
  });

  /** The server still serves a fresh connection (one bad client harms only itself). */
  async function stillServes(): Promise<void> {
    const client = await open();
    client.write(frame(T.HEADERS, 0x4, 1, requestBlock()));
    client.write(frame(T.DATA, 0x1, 1, grpcFrame(Buffer.from('ok'))));
    const { data, trailers } = await client.response(1);
    assert.equal(data.subarray(5).toString(), 'echo:ok');
    assert.equal(trailers['grpc-status'], '0');
    client.close();
  }

  it('answers a call sent as HEADERS + CONTINUATION, padded, with priority, the message in two DATA frames', async () => {
    const client = await open();
    const settings = await client.next((f) => f.type === T.SETTINGS && !(f.flags & 0x1), "the server's SETTINGS");
    assert.equal(settings.payload.length % 6, 0);
    const block = requestBlock();
    const padded = Buffer.concat([Buffer.from([3]), Buffer.alloc(5), block.subarray(0, 10), Buffer.alloc(3)]);
    client.write(frame(T.HEADERS, 0x8 | 0x20, 1, padded)); // PADDED | PRIORITY, no END_HEADERS
    client.write(frame(T.CONTINUATION, 0, 1, block.subarray(10, 20)));
    client.write(frame(T.CONTINUATION, 0x4, 1, block.subarray(20)));
    const message = grpcFrame(Buffer.from('hello'));
    client.write(frame(T.DATA, 0, 1, message.subarray(0, 3)));
    client.write(frame(T.DATA, 0x1 | 0x8, 1, Buffer.concat([Buffer.from([2]), message.subarray(3), Buffer.alloc(2)])));
    const { headers, data, trailers } = await client.response(1);
    assert.deepEqual(headers, { ':status': '200', 'content-type': 'application/grpc' });
    assert.equal(data.subarray(5).toString(), 'echo:hello');
    assert.deepEqual(trailers, { 'grpc-status': '0' });
    assert.ok(
      client.frames.some((f) => f.type === T.SETTINGS && f.flags & 0x1),
      'our SETTINGS acknowledged',
    );
  });

  it('keeps to the client window: a 10-byte window gets the reply 10 bytes at a time, trailers after the last', async () => {
    const client = await open(Buffer.from([0, 4, 0, 0, 0, 10])); // SETTINGS_INITIAL_WINDOW_SIZE = 10
    client.write(frame(T.HEADERS, 0x4, 1, requestBlock()));
    client.write(frame(T.DATA, 0x1, 1, grpcFrame(Buffer.alloc(40, 0x61))));
    await client.next((f) => f.type === T.DATA && f.streamId === 1, 'the first DATA');
    await new Promise((done) => setTimeout(done, 50));
    const data = () => client.frames.filter((f) => f.type === T.DATA && f.streamId === 1);
    assert.deepEqual(
      data().map((f) => f.payload.length),
      [10],
      'no more than the window',
    );
    assert.ok(!client.frames.some((f) => f.type === T.HEADERS && f.flags & 0x1), 'no trailers while data waits');
    for (let credit = 0; credit < 4; credit++) client.write(frame(T.WINDOW_UPDATE, 0, 1, u32(10)));
    const { data: reply, trailers } = await client.response(1);
    assert.equal(reply.length, 5 + 45);
    assert.ok(
      data().every((f) => f.payload.length <= 10),
      data()
        .map((f) => f.payload.length)
        .join(' '),
    );
    assert.equal(trailers['grpc-status'], '0');
  });

  it('keeps the HPACK dynamic table across calls: a field indexed in one request is referenced by the next', async () => {
    const client = await open();
    client.write(frame(T.HEADERS, 0x4, 1, requestBlock('/test.Echo/Echo', [hpackLiteral('x-path-alias', '/test.Echo/Echo', 0x40)])));
    client.write(frame(T.DATA, 0x1, 1, grpcFrame(Buffer.from('1'))));
    assert.equal((await client.response(1)).trailers['grpc-status'], '0');
    // Index 62 is the first dynamic entry; a table size update to 0 and back empties it, then a bad reference.
    client.write(frame(T.HEADERS, 0x4, 3, Buffer.concat([requestBlock(), Buffer.from([0xbe])])));
    client.write(frame(T.DATA, 0x1, 3, grpcFrame(Buffer.from('2'))));
    assert.equal((await client.response(3)).data.subarray(5).toString(), 'echo:2');
    client.write(frame(T.HEADERS, 0x4, 5, Buffer.concat([Buffer.from([0x20, 0x3f, 0xe1, 0x1f]), requestBlock(), Buffer.from([0xbe])])));
    assert.equal(await client.goAway(), ERR.COMPRESSION_ERROR, 'a reference to an evicted entry');
  });

  it('answers PING with its payload, refuses streams past SETTINGS_MAX_CONCURRENT_STREAMS, resets a stream on a zero WINDOW_UPDATE', async () => {
    const client = await open();
    client.write(frame(T.PING, 0, 0, Buffer.from('12345678')));
    const pong = await client.next((f) => f.type === T.PING, 'the PING ack');
    assert.equal(pong.flags & 0x1, 1);
    assert.equal(pong.payload.toString(), '12345678');
    for (const id of [1, 3, 5, 7, 9]) {
      client.write(frame(T.HEADERS, 0x4, id, requestBlock('/test.Echo/Hold')));
      client.write(frame(T.DATA, 0x1, id, grpcFrame(Buffer.from('x'))));
    }
    const refused = await client.next((f) => f.type === T.RST_STREAM && f.streamId === 9, 'the fifth stream refused');
    assert.equal(refused.payload.readUInt32BE(0), ERR.REFUSED_STREAM);
    client.write(frame(T.WINDOW_UPDATE, 0, 1, u32(0)));
    const reset = await client.next((f) => f.type === T.RST_STREAM && f.streamId === 1, 'stream 1 reset');
    assert.equal(reset.payload.readUInt32BE(0), ERR.PROTOCOL_ERROR);
    client.write(frame(T.PING, 0, 0, Buffer.from('abcdefgh')));
    await client.next((f) => f.type === T.PING && f.payload.toString() === 'abcdefgh', 'a PING ack after the stream error');
    assert.ok(!client.closed);
  });

  it('answers a message over the limit with RESOURCE_EXHAUSTED without buffering it, and drops what follows', async () => {
    const client = await open();
    client.write(frame(T.HEADERS, 0x4, 1, requestBlock()));
    const big = grpcFrame(Buffer.alloc(100_000));
    for (let at = 0; at < big.length; at += 16_384)
      client.write(frame(T.DATA, at + 16_384 >= big.length ? 0x1 : 0, 1, big.subarray(at, at + 16_384)));
    const { trailers } = await client.response(1);
    assert.equal(trailers['grpc-status'], '8');
    await client.next((f) => f.type === T.WINDOW_UPDATE && f.streamId === 0, 'the connection window credited for the dropped bytes');
    client.write(frame(T.HEADERS, 0x4, 3, requestBlock()));
    client.write(frame(T.DATA, 0x1, 3, grpcFrame(Buffer.from('after'))));
    assert.equal((await client.response(3)).data.subarray(5).toString(), 'echo:after');
  });

  const CONNECTION_ERRORS: [string, () => Buffer, number, Buffer?][] = [
    ['a wrong preface', () => Buffer.alloc(0), ERR.PROTOCOL_ERROR, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['a frame past SETTINGS_MAX_FRAME_SIZE (20,000 bytes)', () => frame(T.DATA, 0, 1, Buffer.alloc(20_000)), ERR.FRAME_SIZE_ERROR],
    ['HEADERS on an even (server) stream id', () => frame(T.HEADERS, 0x4, 2, requestBlock()), ERR.PROTOCOL_ERROR],
    ['HEADERS on stream 0', () => frame(T.HEADERS, 0x4, 0, requestBlock()), ERR.PROTOCOL_ERROR],
    ['an HPACK index past the table (200)', () => frame(T.HEADERS, 0x4, 1, Buffer.from([0x80 | 0x7f, 200 - 127])), ERR.COMPRESSION_ERROR],
    ['an HPACK string longer than the block', () => frame(T.HEADERS, 0x4, 1, Buffer.from([0x00, 0x7e, 0x61])), ERR.COMPRESSION_ERROR],
    [
      'a table size update past SETTINGS_HEADER_TABLE_SIZE',
      () => frame(T.HEADERS, 0x4, 1, Buffer.from([0x3f, 0xe1, 0x3f])),
      ERR.COMPRESSION_ERROR,
    ],
    [
      'CONTINUATION frames past 64 KiB of header block',
      () =>
        Buffer.concat([
          frame(T.HEADERS, 0, 1, requestBlock()),
          ...Array.from({ length: 5 }, () => frame(T.CONTINUATION, 0, 1, Buffer.alloc(16_000, 0x80 | 0x02))),
        ]),
      ERR.ENHANCE_YOUR_CALM,
    ],
    [
      'another frame between HEADERS and its CONTINUATION',
      () => Buffer.concat([frame(T.HEADERS, 0, 1, requestBlock()), frame(T.PING, 0, 0, Buffer.alloc(8))]),
      ERR.PROTOCOL_ERROR,
    ],
    ['a CONTINUATION with no HEADERS before it', () => frame(T.CONTINUATION, 0x4, 1, requestBlock()), ERR.PROTOCOL_ERROR],
    ['DATA on an idle stream', () => frame(T.DATA, 0x1, 7, Buffer.from('x')), ERR.PROTOCOL_ERROR],
    ['a connection WINDOW_UPDATE past 2^31-1', () => frame(T.WINDOW_UPDATE, 0, 0, u32(0x7fffffff)), ERR.FLOW_CONTROL_ERROR],
    ['a zero connection WINDOW_UPDATE', () => frame(T.WINDOW_UPDATE, 0, 0, u32(0)), ERR.PROTOCOL_ERROR],
    ['PUSH_PROMISE from a client', () => frame(T.PUSH_PROMISE, 0x4, 1, Buffer.alloc(4)), ERR.PROTOCOL_ERROR],
    ['SETTINGS of 5 bytes', () => frame(T.SETTINGS, 0, 0, Buffer.alloc(5)), ERR.FRAME_SIZE_ERROR],
    ['SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1', () => frame(T.SETTINGS, 0, 0, Buffer.from([0, 4, 0x80, 0, 0, 0])), ERR.FLOW_CONTROL_ERROR],
    ['a PING of 7 bytes', () => frame(T.PING, 0, 0, Buffer.alloc(7)), ERR.FRAME_SIZE_ERROR],
    ['RST_STREAM on an idle stream', () => frame(T.RST_STREAM, 0, 9, u32(8)), ERR.PROTOCOL_ERROR],
    [
      '10,001 PINGs in a second',
      () => Buffer.concat(Array.from({ length: 10_001 }, () => frame(T.PING, 0, 0, Buffer.alloc(8)))),
      ERR.ENHANCE_YOUR_CALM,
    ],
  ];
  for (const [name, bytes, code, preface] of CONNECTION_ERRORS) {
    it(`${name}: GOAWAY ${Object.entries(ERR).find(([, value]) => value === code)?.[0]}, the connection closed, the server serving`, async () => {
      const client = await open(undefined, preface);
      client.write(bytes());
      assert.equal(await client.goAway(), code);
      await stillServes();
    });
  }

  it('a first frame that is not SETTINGS: GOAWAY PROTOCOL_ERROR', async () => {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((done) => socket.once('connect', done));
    let received = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => (received = Buffer.concat([received, chunk])));
    const closed = new Promise((done) => socket.once('close', done));
    socket.on('error', () => undefined);
    socket.write(Buffer.concat([PREFACE, frame(T.PING, 0, 0, Buffer.alloc(8))]));
    await closed;
    const goAway = received.indexOf(Buffer.from([0, 0, 8, T.GOAWAY]));
    assert.ok(goAway >= 0, 'a GOAWAY');
    assert.equal(received.readUInt32BE(goAway + 9 + 4), ERR.PROTOCOL_ERROR);
  });

  it('close(): GOAWAY NO_ERROR naming the last stream, then the connection ends once its calls have', async () => {
    const client = await open();
    client.write(frame(T.HEADERS, 0x4, 1, requestBlock()));
    client.write(frame(T.DATA, 0x1, 1, grpcFrame(Buffer.from('last'))));
    await client.response(1);
    const closing = server.close(2000);
    const goAway = await client.next((f) => f.type === T.GOAWAY, 'GOAWAY');
    assert.equal(goAway.payload.readUInt32BE(0), 1, 'last stream id');
    assert.equal(goAway.payload.readUInt32BE(4), ERR.NO_ERROR);
    await closing;
    assert.ok(client.closed);
  });
});
