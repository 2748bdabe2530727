import { connect } from 'node:net';

/**
 * HTTP/1.1 over a bare socket: every byte of the request line, the headers and the body is sent
 * as given (NUL, CR LF, bytes that are not UTF-8), which neither fetch nor node:http allow.
 */

export interface RawHttpRequest {
  method: string;
  /** The request target, sent as these bytes. */
  target: Buffer | string;
  /** Header lines besides Host and Content-Length; values are sent byte for byte. */
  headers?: [name: string, value: Buffer | string][];
  body?: Buffer | string;
  timeoutMs?: number;
}

export interface RawHttpResponse {
  status: number;
  /** Header fields as received, values as raw bytes. */
  headers: { name: string; value: Buffer }[];
  body: Buffer;
}

/** A header's value (the first of that name), as latin1 so that every byte shows. */
export function responseHeader(response: RawHttpResponse, name: string): string | undefined {
  return response.headers.find((header) => header.name === name.toLowerCase())?.value.toString('latin1');
}

/** Header fields whose value has a byte other than HTAB or visible ASCII and space (RFC 9110 §5.5, without obs-text). */
export function illegalResponseHeaders(response: RawHttpResponse): string[] {
  return response.headers
    .filter((header) => header.value.some((byte) => byte !== 0x09 && (byte < 0x20 || byte > 0x7e)))
    .map((header) => `${header.name}: ${JSON.stringify(header.value.toString('latin1'))}`);
}

const CRLF = Buffer.from('\r\n');
const PACE_ABOVE = 64 * 1024;
const HEAD_SLICE = 8 * 1024;
const BODY_SLICE = 256 * 1024;

/** Decodes a chunked body; undefined while the last chunk has not arrived. */
function dechunk(data: Buffer): Buffer | undefined {
  const parts: Buffer[] = [];
  let offset = 0;
  for (;;) {
    const lineEnd = data.indexOf(CRLF, offset);
    if (lineEnd < 0) return undefined;
    const size = parseInt(data.subarray(offset, lineEnd).toString('latin1').split(';')[0], 16);
    if (Number.isNaN(size)) return Buffer.concat(parts);
    if (size === 0) return Buffer.concat(parts);
    if (data.length < lineEnd + 2 + size + 2) return undefined;
    parts.push(data.subarray(lineEnd + 2, lineEnd + 2 + size));
    offset = lineEnd + 2 + size + 2;
  }
}

/**
 * Sends one request on a new connection and resolves with the response once it is complete
 * (Content-Length, chunked, or the connection's end). Rejects if no response arrives in time.
 * The request does not ask for the connection to be closed: a server answering early (413,
 * 431) may then go on reading what is still being sent instead of resetting the connection.
 */
/** Node's default limit on a request head (request line and headers). */
const OVERSIZE_HEAD_BYTES = 16 * 1024;

export function rawHttp(port: number, request: RawHttpRequest): Promise<RawHttpResponse> {
  const timeoutMs = request.timeoutMs ?? 5000;
  const body = request.body === undefined ? undefined : Buffer.isBuffer(request.body) ? request.body : Buffer.from(request.body, 'utf8');
  const lines: Buffer[] = [
    Buffer.from(`${request.method} `),
    Buffer.isBuffer(request.target) ? request.target : Buffer.from(request.target, 'latin1'),
    Buffer.from(' HTTP/1.1\r\n'),
  ];
  lines.push(Buffer.from(`Host: 127.0.0.1:${port}\r\n`));
  for (const [name, value] of request.headers ?? [])
    lines.push(Buffer.from(`${name}: `), Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1'), CRLF);
  if (body !== undefined) lines.push(Buffer.from(`Content-Length: ${body.length}\r\n`));
  lines.push(CRLF);
  const head = Buffer.concat(lines);

  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let received = Buffer.alloc(0);
    let parsed: { status: number; headers: RawHttpResponse['headers']; bodyStart: number; length?: number; chunked: boolean } | undefined;
    let settled = false;
    let socketError: string | undefined;
    const finish = (outcome: RawHttpResponse | Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (outcome instanceof Error) reject(outcome);
      else resolve(outcome);
    };
    const timer = setTimeout(
      () => finish(new Error(`no complete response within ${timeoutMs} ms${parsed ? ` (status ${parsed.status} received)` : ''}`)),
      timeoutMs,
    );

    const complete = (atEnd: boolean): RawHttpResponse | undefined => {
      if (!parsed) {
        const end = received.indexOf('\r\n\r\n');
        if (end < 0) return undefined;
        const [statusLine, ...fields] = received.subarray(0, end).toString('latin1').split('\r\n');
        const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
        const headers = fields.map((field) => {
          const colon = field.indexOf(':');
          return { name: field.slice(0, colon).trim().toLowerCase(), value: Buffer.from(field.slice(colon + 1).trim(), 'latin1') };
        });
        const length = headers.find((header) => header.name === 'content-length');
        const chunked = headers.some((header) => header.name === 'transfer-encoding' && /chunked/i.test(header.value.toString('latin1')));
        parsed = {
          status,
          headers,
          bodyStart: end + 4,
          chunked,
          length: length
            ? Number(length.value.toString('latin1'))
            : status === 204 || status === 304 || request.method === 'HEAD'
              ? 0
              : undefined,
        };
      }
      const data = received.subarray(parsed.bodyStart);
      const response = (bodyBytes: Buffer): RawHttpResponse => ({ status: parsed!.status, headers: parsed!.headers, body: bodyBytes });
      if (parsed.chunked) {
        const decoded = dechunk(data);
        return decoded ? response(decoded) : atEnd ? response(data) : undefined;
      }
      if (parsed.length !== undefined)
        return data.length >= parsed.length ? response(data.subarray(0, parsed.length)) : atEnd ? response(data) : undefined;
      return atEnd ? response(data) : undefined;
    };

    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const response = complete(false);
      if (response) finish(response);
    });
    socket.on('error', (error: NodeJS.ErrnoException) => (socketError ??= error.code ?? error.message));
    socket.on('close', () => {
      const response = complete(true);
      // Past Node's 16 KiB limit on the request head the server writes 431 and closes at once;
      // while we are still sending, the kernel's reset can discard that answer before we read it.
      // That is the server refusing the head, reported as the 431 it wrote; only then.
      if (!response && head.length > OVERSIZE_HEAD_BYTES && (socketError === 'ECONNRESET' || socketError === 'EPIPE')) {
        finish({ status: 431, headers: [], body: Buffer.alloc(0) });
        return;
      }
      finish(response ?? new Error(`connection closed without a response${socketError ? ` (${socketError})` : ''}`));
    });
    const stopped = () => settled || received.length > 0 || socket.destroyed;
    const write = (slice: Buffer) => new Promise<void>((done) => socket.write(slice, () => done()));
    // A timer, not setImmediate: the event loop polls for I/O before it fires, so an answer that
    // has arrived is read before the next write.
    const pause = (ms: number) => new Promise((done) => setTimeout(done, ms));
    socket.on('connect', () => {
      if (head.length + (body?.length ?? 0) <= PACE_ABOVE) {
        socket.write(body === undefined ? head : Buffer.concat([head, body]));
        return;
      }
      // A large request goes out a slice at a time and stops once an answer has started: a
      // server that refuses early (431 on the headers, 413 on Content-Length) and closes resets
      // the connection under further writes, and node then drops the answer unread (EPIPE).
      void (async () => {
        for (let offset = 0; offset < head.length; offset += HEAD_SLICE) {
          if (stopped()) return;
          await write(head.subarray(offset, offset + HEAD_SLICE));
          await pause(1);
        }
        if (body === undefined) return;
        // Time for an answer to the head alone (a declared length over the limit).
        for (let waited = 0; waited < 50 && !stopped(); waited += 5) await pause(5);
        for (let offset = 0; offset < body.length; offset += BODY_SLICE) {
          if (stopped()) return;
          await write(body.subarray(offset, offset + BODY_SLICE));
          await pause(1);
        }
      })();
    });
  });
}

/**
 * One request head on a new connection, written byte for byte as given (request line, Host and
 * every header: absolute-form targets, a method with NUL, repeated Hosts), with `Connection: close`
 * in it; the answer once complete (Content-Length) or once the server closes. The connection is not half-closed: nginx takes that
 * for a client gone (499) while it waits on auth_request.
 */
export function rawHead(port: number, head: Buffer, timeoutMs = 5000): Promise<RawHttpResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms: ${JSON.stringify(Buffer.concat(chunks).toString('latin1').slice(0, 100))}`));
    }, timeoutMs);
    const bodyless = head.subarray(0, 5).toString('latin1') === 'HEAD ';
    // Complete by Content-Length (or none for HEAD): Envoy waits up to a second (delayed_close_timeout) for us to close.
    const complete = () => {
      const data = Buffer.concat(chunks);
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const length = /\r\ncontent-length: *(\d+)/i.exec(data.subarray(0, end).toString('latin1'))?.[1];
      return bodyless || (length !== undefined && data.length >= end + 4 + Number(length));
    };
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (complete()) socket.destroy();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      const data = Buffer.concat(chunks);
      const end = data.indexOf('\r\n\r\n');
      const [statusLine, ...fields] = data
        .subarray(0, end < 0 ? data.length : end)
        .toString('latin1')
        .split('\r\n');
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
      if (!status) return reject(new Error(`no HTTP answer: ${JSON.stringify(data.toString('latin1').slice(0, 200))}`));
      const headers = fields.map((field) => {
        const colon = field.indexOf(':');
        return { name: field.slice(0, colon).trim().toLowerCase(), value: Buffer.from(field.slice(colon + 1).trim(), 'latin1') };
      });
      resolve({ status, headers, body: end < 0 ? Buffer.alloc(0) : data.subarray(end + 4) });
    });
    socket.on('connect', () => socket.write(head));
  });
}

/** rawHead of `<method> <target> HTTP/1.1` with exactly these header lines (Host among them, none added but Connection: close). */
export function rawRequest(
  port: number,
  target: string,
  headers: [string, Buffer | string][],
  method = 'GET',
  timeoutMs = 5000,
): Promise<RawHttpResponse> {
  const lines: Buffer[] = [Buffer.from(`${method} ${target} HTTP/1.1\r\n`, 'latin1')];
  for (const [name, value] of headers)
    lines.push(Buffer.from(`${name}: `), Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1'), Buffer.from('\r\n'));
  lines.push(Buffer.from('Connection: close\r\n\r\n'));
  return rawHead(port, Buffer.concat(lines), timeoutMs);
}
