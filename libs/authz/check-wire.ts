import { Reader, Writer } from 'protobufjs/minimal';
import type { AuthzRequest } from './authorizer';
import { denialBody, type Allow, type Decision, type Deny } from './decision';

/**
 * envoy.service.auth.v3.CheckRequest and CheckResponse on the wire, for the hot path of Envoy's
 * gRPC Check. The decoder reads only what the authorizer uses (a few named headers, the
 * `context_extensions` entry naming the route policy, the source address) and skips every other
 * field unread; proto-loader turns the whole request (every header, every attribute) into
 * objects. Its answers equal those of the full decoding (test/unit/check-wire.test.ts compares
 * them on every shape Envoy sends and on random messages). Framework-free: bytes in, bytes out.
 *
 * Field numbers, from envoy/service/auth/v3/{external_auth,attribute_context}.proto and
 * envoy/config/core/v3/{base,address}.proto:
 *   CheckRequest.attributes = 1
 *   AttributeContext: source = 1 (Peer), request = 4 (Request), context_extensions = 10 (map)
 *   Peer.address = 1 (Address); Address.socket_address = 1; SocketAddress.address = 2
 *   Request.http = 2 (HttpRequest); HttpRequest: headers = 3 (map), header_map = 13 (HeaderMap)
 *   HeaderMap.headers = 1 (repeated HeaderValue); HeaderValue: key = 1, value = 2, raw_value = 3
 *
 * Where the full decoding (protobufjs) and this one meet the same field twice they agree: a
 * repeated singular message replaces the earlier one (it is not merged), a repeated scalar or map
 * key keeps the last value.
 */

/** The request's bytes are not a CheckRequest (truncated, a length past the end, a wrong wire type). */
export class MalformedCheckRequest extends Error {}

/** The context_extensions key that names the route policy (set per route in envoy.yaml). */
export const POLICY_EXTENSION = 'route';

const LENGTH_DELIMITED = 2;
const MAX_GROUP_DEPTH = 64;

/** Skips one field of the given wire type, groups included (iteratively, depth-bounded). */
function skipField(reader: Reader, wireType: number): void {
  switch (wireType) {
    case 0:
      reader.skip();
      return;
    case 1:
      reader.skip(8);
      return;
    case 2:
      reader.skip(reader.uint32());
      return;
    case 5:
      reader.skip(4);
      return;
    case 3: {
      let depth = 1;
      while (depth > 0) {
        const type = reader.uint32() & 7;
        if (type === 4) depth--;
        else if (type === 3) {
          if (++depth > MAX_GROUP_DEPTH) throw new MalformedCheckRequest('groups nested too deep');
        } else skipField(reader, type);
      }
      return;
    }
    default:
      throw new MalformedCheckRequest(`invalid wire type ${wireType}`);
  }
}

/** The end offset of the length-delimited field at the reader, checked against the buffer. */
function fieldEnd(reader: Reader, wireType: number): number {
  if (wireType !== LENGTH_DELIMITED) throw new MalformedCheckRequest(`wire type ${wireType} for a length-delimited field`);
  const length = reader.uint32();
  const end = reader.pos + length;
  if (end > reader.len) throw new MalformedCheckRequest('a length past the end of the message');
  return end;
}

function expectEnd(reader: Reader, end: number): void {
  if (reader.pos !== end) throw new MalformedCheckRequest('a field runs past the end of its message');
}

/** A string (proto `string` or `bytes`) decoded as UTF-8, as protobufjs does on a Buffer (U+FFFD for bad bytes). */
function utf8(reader: Reader, wireType: number): string {
  const end = fieldEnd(reader, wireType);
  const text = (reader.buf as Buffer).toString('utf8', reader.pos, end);
  reader.pos = end;
  return text;
}

/** A map<string, string> entry: key = 1, value = 2, each "" when absent. */
function mapEntry(reader: Reader, end: number): [string, string] {
  let key = '';
  let value = '';
  while (reader.pos < end) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    if (field === 1) key = utf8(reader, tag & 7);
    else if (field === 2) value = utf8(reader, tag & 7);
    else skipField(reader, tag & 7);
  }
  expectEnd(reader, end);
  return [key, value];
}

/** Reads CheckRequests for a fixed set of header names (lower case). */
export class CheckRequestDecoder {
  private readonly wanted: ReadonlySet<string>;

  constructor(headerNames: Iterable<string>) {
    this.wanted = new Set([...headerNames].map((name) => name.toLowerCase()));
  }

  /**
   * The request's policy, wanted headers and source address. Headers keep Envoy's semantics as
   * ext-authz always read them: the `headers` map as sent (the last of a repeated key), or, when
   * `header_map` has entries (encode_raw_headers), its entries with names in lower case, values
   * from `raw_value` when present (else `value`), a repeated name joined with ",".
   * Throws MalformedCheckRequest (or protobufjs's RangeError on a truncated varint) on bytes that are
   * not a CheckRequest.
   */
  decode(bytes: Buffer): AuthzRequest {
    const reader = Reader.create(bytes);
    const state: DecodeState = { policy: undefined, sourceAddress: undefined, headers: undefined, headerMap: undefined };
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      if (tag >>> 3 === 1) {
        // A later attributes replaces the earlier one whole.
        state.policy = undefined;
        state.sourceAddress = undefined;
        state.headers = undefined;
        state.headerMap = undefined;
        this.attributes(reader, fieldEnd(reader, tag & 7), state);
      } else skipField(reader, tag & 7);
    }
    expectEnd(reader, reader.len);
    const headers = state.headerMap?.count ? state.headerMap.headers : (state.headers ?? Object.create(null));
    return { policy: state.policy, headers, sourceAddress: state.sourceAddress };
  }

  private attributes(reader: Reader, end: number, state: DecodeState): void {
    while (reader.pos < end) {
      const tag = reader.uint32();
      switch (tag >>> 3) {
        case 1:
          state.sourceAddress = peerAddress(reader, fieldEnd(reader, tag & 7));
          break;
        case 4:
          state.headers = undefined;
          state.headerMap = undefined;
          this.request(reader, fieldEnd(reader, tag & 7), state);
          break;
        case 10: {
          const [key, value] = mapEntry(reader, fieldEnd(reader, tag & 7));
          if (key === POLICY_EXTENSION) state.policy = value;
          break;
        }
        default:
          skipField(reader, tag & 7);
      }
    }
    expectEnd(reader, end);
  }

  /** AttributeContext.Request: only http = 2 (a later one replaces the earlier). */
  private request(reader: Reader, end: number, state: DecodeState): void {
    while (reader.pos < end) {
      const tag = reader.uint32();
      if (tag >>> 3 === 2) {
        state.headers = undefined;
        state.headerMap = undefined;
        this.http(reader, fieldEnd(reader, tag & 7), state);
      } else skipField(reader, tag & 7);
    }
    expectEnd(reader, end);
  }

  private http(reader: Reader, end: number, state: DecodeState): void {
    while (reader.pos < end) {
      const tag = reader.uint32();
      const field = tag >>> 3;
      if (field === 3) {
        const [key, value] = mapEntry(reader, fieldEnd(reader, tag & 7));
        state.headers ??= Object.create(null) as Record<string, string>;
        if (this.wanted.has(key)) state.headers[key] = value;
      } else if (field === 13) {
        // A later header_map replaces the earlier one.
        state.headerMap = { count: 0, headers: Object.create(null) };
        this.headerMap(reader, fieldEnd(reader, tag & 7), state.headerMap);
      } else skipField(reader, tag & 7);
    }
    expectEnd(reader, end);
  }

  private headerMap(reader: Reader, end: number, into: HeaderMapState): void {
    while (reader.pos < end) {
      const tag = reader.uint32();
      if (tag >>> 3 !== 1) {
        skipField(reader, tag & 7);
        continue;
      }
      const entryEnd = fieldEnd(reader, tag & 7);
      into.count++;
      let key = '';
      let value: string | undefined;
      let raw: string | undefined;
      while (reader.pos < entryEnd) {
        const entryTag = reader.uint32();
        const field = entryTag >>> 3;
        if (field === 1) key = utf8(reader, entryTag & 7);
        else if (field === 2) value = utf8(reader, entryTag & 7);
        else if (field === 3) raw = utf8(reader, entryTag & 7);
        else skipField(reader, entryTag & 7);
      }
      expectEnd(reader, entryEnd);
      const name = key.toLowerCase();
      if (!this.wanted.has(name)) continue;
      const text = raw ?? value ?? '';
      const earlier = into.headers[name];
      into.headers[name] = earlier === undefined ? text : `${earlier},${text}`;
    }
    expectEnd(reader, end);
  }
}

interface HeaderMapState {
  /** Entries seen, wanted or not: an empty header_map leaves the `headers` map in force. */
  count: number;
  headers: Record<string, string>;
}

interface DecodeState {
  policy: string | undefined;
  sourceAddress: string | undefined;
  headers: Record<string, string> | undefined;
  headerMap: HeaderMapState | undefined;
}

/** Peer → Address → SocketAddress → address; each later message replaces the earlier. */
function peerAddress(reader: Reader, end: number): string | undefined {
  let address: string | undefined;
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1) address = socketAddressOf(reader, fieldEnd(reader, tag & 7));
    else skipField(reader, tag & 7);
  }
  expectEnd(reader, end);
  return address;
}

function socketAddressOf(reader: Reader, end: number): string | undefined {
  let address: string | undefined;
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1) {
      const socketEnd = fieldEnd(reader, tag & 7);
      address = undefined;
      while (reader.pos < socketEnd) {
        const socketTag = reader.uint32();
        if (socketTag >>> 3 === 2) address = utf8(reader, socketTag & 7);
        else skipField(reader, socketTag & 7);
      }
      expectEnd(reader, socketEnd);
    } else skipField(reader, tag & 7);
  }
  expectEnd(reader, end);
  return address;
}

// ---------------------------------------------------------------------------------------------
// CheckResponse

/** google.rpc.Code values of the answers (status.code). */
const RPC_OK = 0;
const RPC_CODE_BY_STATUS = { 401: 16, 403: 7, 429: 8, 503: 14 } as const;
/** HeaderValueOption.append_action OVERWRITE_IF_EXISTS_OR_ADD. */
const OVERWRITE = 2;

/** A HeaderValueOption { header { key, value }, append_action: OVERWRITE_IF_EXISTS_OR_ADD } at field `field`. */
function writeHeaderOption(writer: Writer, field: number, key: string, value: string): void {
  writer
    .uint32((field << 3) | 2)
    .fork()
    .uint32(10)
    .fork()
    .uint32(10)
    .string(key)
    .uint32(18)
    .string(value)
    .ldelim()
    .uint32(24)
    .int32(OVERWRITE)
    .ldelim();
}

/** CheckResponse bytes for an allow: the identity headers, the headers to remove, the response headers. */
export function encodeAllow(decision: Allow): Buffer {
  const writer = Writer.create();
  // status { code: 0 }, the zero written explicitly as proto-loader does.
  writer.uint32(10).fork().uint32(8).int32(RPC_OK).ldelim();
  writer.uint32(26).fork();
  for (const key in decision.headersToSet) writeHeaderOption(writer, 2, key, decision.headersToSet[key]);
  for (const name of decision.headersToRemove) writer.uint32(42).string(name);
  for (const key in decision.responseHeaders) writeHeaderOption(writer, 6, key, decision.responseHeaders[key]);
  writer.ldelim();
  return writer.finish() as Buffer;
}

/** CheckResponse bytes for a denial: status with Envoy's code and message, the HTTP answer with its headers and body. */
export function encodeDeny(decision: Deny): Buffer {
  const writer = Writer.create();
  writer.uint32(10).fork().uint32(8).int32(RPC_CODE_BY_STATUS[decision.status]).uint32(18).string(decision.message).ldelim();
  writer.uint32(18).fork();
  writer.uint32(10).fork().uint32(8).int32(decision.status).ldelim();
  writeHeaderOption(writer, 2, 'content-type', 'application/json');
  if (decision.wwwAuthenticate) writeHeaderOption(writer, 2, 'www-authenticate', decision.wwwAuthenticate);
  if (decision.retryAfter !== undefined) writeHeaderOption(writer, 2, 'retry-after', String(decision.retryAfter));
  writer.uint32(26).string(denialBody(decision));
  writer.ldelim();
  return writer.finish() as Buffer;
}

/** Denials repeat (a few reasons × policies × retry values): their bytes are kept, up to this many. */
const DENIAL_CACHE_MAX = 1024;

/** Encodes CheckResponses, keeping the bytes of denials already seen. */
export class CheckResponseEncoder {
  private readonly denials = new Map<string, Buffer>();

  encode(decision: Decision): Buffer {
    if (decision.allowed) return encodeAllow(decision);
    const key = `${decision.reason}\n${decision.wwwAuthenticate ?? ''}\n${decision.retryAfter ?? ''}`;
    let bytes = this.denials.get(key);
    if (!bytes) {
      bytes = encodeDeny(decision);
      if (this.denials.size >= DENIAL_CACHE_MAX) this.denials.clear();
      this.denials.set(key, bytes);
    }
    return bytes;
  }
}
