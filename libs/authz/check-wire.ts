import { Reader, Writer } from 'protobufjs/minimal';
import type { AuthzRequest } from './authorizer';
import { denialBody, type Allow, type Decision, type Deny } from './decision';
import { POLICY_EXTENSION, ROUTE_EXTENSION } from './route-policy';

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
 *   Peer.address = 1 (Address), Peer.certificate = 5 (URL-encoded PEM, with include_peer_certificate);
 *   Address.socket_address = 1; SocketAddress.address = 2
 *   Request.http = 2 (HttpRequest); HttpRequest: headers = 3 (map), header_map = 13 (HeaderMap)
 *   HeaderMap.headers = 1 (repeated HeaderValue); HeaderValue: key = 1, value = 2, raw_value = 3
 *
 * Where the full decoding (protobufjs) and this one meet the same field twice they agree: a
 * repeated singular message replaces the earlier one (it is not merged), a repeated scalar or map
 * key keeps the last value.
 */

/** The request's bytes are not a CheckRequest (truncated, a length past the end, a wrong wire type). */
export class MalformedCheckRequest extends Error {}

/** The context_extensions keys of the route's policy: its name (envoy.yaml, xDS) and its inline JSON (xDS); see route-policy.ts. */
export { POLICY_EXTENSION as INLINE_POLICY_EXTENSION, ROUTE_EXTENSION as POLICY_EXTENSION } from './route-policy';

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

/** Buffer's own UTF-8 decoder without toString's argument handling (what protobufjs's BufferReader calls too). */
type NodeBuffer = Buffer & { utf8Slice(start: number, end: number): string };
const slice = (reader: Reader, start: number, end: number) => (reader.buf as NodeBuffer).utf8Slice(start, end);

/** A string (proto `string` or `bytes`) decoded as UTF-8, as protobufjs does on a Buffer (U+FFFD for bad bytes). */
function utf8(reader: Reader, wireType: number): string {
  const end = fieldEnd(reader, wireType);
  const text = slice(reader, reader.pos, end);
  reader.pos = end;
  return text;
}

/**
 * Names to look for (lower case), matched on a key's bytes: no string is made for a key nobody
 * reads. Both ways agree with comparing the decoded strings: a name is ASCII, and a key decodes to
 * an ASCII string only from those same bytes (bad bytes decode to U+FFFD).
 */
class NameSet {
  private readonly byLength = new Map<number, { name: string; bytes: Buffer }[]>();
  readonly names: ReadonlySet<string>;
  /** A name that is not ASCII (no HTTP header has one, but the config allows it): keys are compared as strings. */
  private readonly asStrings: boolean;

  constructor(names: Iterable<string>) {
    this.names = new Set([...names].map((name) => name.toLowerCase()));
    this.asStrings = [...this.names].some((name) => Buffer.byteLength(name) !== name.length);
    for (const name of this.names) {
      const list = this.byLength.get(name.length) ?? [];
      list.push({ name, bytes: Buffer.from(name, 'latin1') });
      this.byLength.set(name.length, list);
    }
  }

  /** The name whose bytes are exactly buf[start, end). */
  exact(buf: Uint8Array, start: number, end: number): string | undefined {
    if (this.asStrings) {
      const key = (buf as NodeBuffer).utf8Slice(start, end);
      return this.names.has(key) ? key : undefined;
    }
    const candidates = this.byLength.get(end - start);
    if (!candidates) return undefined;
    next: for (const { name, bytes } of candidates) {
      for (let i = 0; i < bytes.length; i++) if (buf[start + i] !== bytes[i]) continue next;
      return name;
    }
    return undefined;
  }

  /** The name equal to the key at buf[start, end) once lower-cased (String.prototype.toLowerCase, as the full path does). */
  lowerCased(buf: Uint8Array, start: number, end: number): string | undefined {
    for (let i = start; i < end; i++) {
      if (buf[i] >= 0x80 || this.asStrings) {
        // Non-ASCII may lower-case into ASCII (U+212A KELVIN SIGN is "k"): the string way.
        const name = (buf as NodeBuffer).utf8Slice(start, end).toLowerCase();
        return this.names.has(name) ? name : undefined;
      }
    }
    const candidates = this.byLength.get(end - start);
    if (!candidates) return undefined;
    next: for (const { name, bytes } of candidates) {
      for (let i = 0; i < bytes.length; i++) {
        const byte = buf[start + i];
        if ((byte >= 0x41 && byte <= 0x5a ? byte + 32 : byte) !== bytes[i]) continue next;
      }
      return name;
    }
    return undefined;
  }
}

/**
 * A map<string, string> entry (key = 1, value = 2, each "" when absent, the last of a repeated
 * one): the name and value when `names` holds the key, else undefined (its value never decoded).
 */
function mapEntry(reader: Reader, end: number, names: NameSet): [string, string] | undefined {
  let keyStart = 0;
  let keyEnd = 0;
  let valueStart = -1;
  let valueEnd = -1;
  while (reader.pos < end) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    if (field === 1) {
      keyEnd = fieldEnd(reader, tag & 7);
      keyStart = reader.pos;
      reader.pos = keyEnd;
    } else if (field === 2) {
      valueEnd = fieldEnd(reader, tag & 7);
      valueStart = reader.pos;
      reader.pos = valueEnd;
    } else skipField(reader, tag & 7);
  }
  expectEnd(reader, end);
  const name = names.exact(reader.buf, keyStart, keyEnd);
  if (name === undefined) return undefined;
  return [name, valueStart < 0 ? '' : slice(reader, valueStart, valueEnd)];
}

const POLICY_KEYS = new NameSet([ROUTE_EXTENSION, POLICY_EXTENSION]);

/** Reads CheckRequests for a fixed set of header names (printable ASCII, matched in lower case). */
export class CheckRequestDecoder {
  private readonly wanted: NameSet;
  /** A headers object with every wanted name present (undefined until read): one shape, fast to fill. */
  private readonly blank: Record<string, string | undefined>;

  constructor(headerNames: Iterable<string>) {
    this.wanted = new NameSet(headerNames);
    this.blank = Object.fromEntries([...this.wanted.names].map((name) => [name, undefined]));
  }

  /** The header names it reads (lower case). */
  get headerNames(): ReadonlySet<string> {
    return this.wanted.names;
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
    const state: DecodeState = {
      policy: undefined,
      inlinePolicy: undefined,
      sourceAddress: undefined,
      clientCertificate: undefined,
      headers: undefined,
      headerMap: undefined,
      method: undefined,
      path: undefined,
      host: undefined,
      scheme: undefined,
    };
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      if (tag >>> 3 === 1) {
        // A later attributes replaces the earlier one whole.
        state.policy = undefined;
        state.inlinePolicy = undefined;
        state.sourceAddress = undefined;
        state.clientCertificate = undefined;
        state.headers = undefined;
        state.headerMap = undefined;
        state.method = state.path = state.host = state.scheme = undefined;
        this.attributes(reader, fieldEnd(reader, tag & 7), state);
      } else skipField(reader, tag & 7);
    }
    expectEnd(reader, reader.len);
    const headers = state.headerMap?.count ? state.headerMap.headers : (state.headers ?? { ...this.blank });
    const request: AuthzRequest = { policy: state.policy, headers, sourceAddress: state.sourceAddress };
    if (state.inlinePolicy !== undefined) request.inlinePolicy = state.inlinePolicy;
    if (state.clientCertificate) request.clientCertificate = state.clientCertificate;
    if (state.method) request.method = state.method;
    const url = requestUrl(state.scheme, state.host, state.path);
    if (url !== undefined) request.url = url;
    return request;
  }

  private attributes(reader: Reader, end: number, state: DecodeState): void {
    while (reader.pos < end) {
      const tag = reader.uint32();
      switch (tag >>> 3) {
        case 1: {
          // A later source replaces the earlier whole.
          const peer = readPeer(reader, fieldEnd(reader, tag & 7));
          state.sourceAddress = peer.address;
          state.clientCertificate = peer.certificate;
          break;
        }
        case 4:
          state.headers = undefined;
          state.headerMap = undefined;
          state.method = state.path = state.host = state.scheme = undefined;
          this.request(reader, fieldEnd(reader, tag & 7), state);
          break;
        case 10: {
          const entry = mapEntry(reader, fieldEnd(reader, tag & 7), POLICY_KEYS);
          if (entry?.[0] === ROUTE_EXTENSION) state.policy = entry[1];
          else if (entry) state.inlinePolicy = entry[1];
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
        state.method = state.path = state.host = state.scheme = undefined;
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
        const header = mapEntry(reader, fieldEnd(reader, tag & 7), this.wanted);
        state.headers ??= { ...this.blank };
        if (header) state.headers[header[0]] = header[1];
      } else if (field === 13) {
        // A later header_map replaces the earlier one.
        state.headerMap = { count: 0, headers: { ...this.blank } };
        this.headerMap(reader, fieldEnd(reader, tag & 7), state.headerMap);
      } else if (field >= 4 && field <= 6 && (tag & 7) === 2) {
        // path (with its query), host, scheme: what a DPoP proof's htu names. method is field 2.
        const fieldEndAt = fieldEnd(reader, 2);
        const text = slice(reader, reader.pos, fieldEndAt);
        reader.pos = fieldEndAt;
        if (field === 4) state.path = text;
        else if (field === 5) state.host = text;
        else state.scheme = text;
      } else if (field === 2 && (tag & 7) === 2) {
        const fieldEndAt = fieldEnd(reader, 2);
        state.method = slice(reader, reader.pos, fieldEndAt);
        reader.pos = fieldEndAt;
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
      let keyStart = 0;
      let keyEnd = 0;
      // Where value (2) and raw_value (3) are: decoded only for a wanted name.
      let value = -1;
      let valueEnd = -1;
      let raw = -1;
      let rawEnd = -1;
      while (reader.pos < entryEnd) {
        const entryTag = reader.uint32();
        const field = entryTag >>> 3;
        if (field === 1) {
          keyEnd = fieldEnd(reader, entryTag & 7);
          keyStart = reader.pos;
          reader.pos = keyEnd;
        } else if (field === 2) {
          valueEnd = fieldEnd(reader, entryTag & 7);
          value = reader.pos;
          reader.pos = valueEnd;
        } else if (field === 3) {
          rawEnd = fieldEnd(reader, entryTag & 7);
          raw = reader.pos;
          reader.pos = rawEnd;
        } else skipField(reader, entryTag & 7);
      }
      expectEnd(reader, entryEnd);
      const name = this.wanted.lowerCased(reader.buf, keyStart, keyEnd);
      if (name === undefined) continue;
      const text = raw >= 0 ? slice(reader, raw, rawEnd) : value >= 0 ? slice(reader, value, valueEnd) : '';
      const earlier = into.headers[name];
      into.headers[name] = earlier === undefined ? text : `${earlier},${text}`;
    }
    expectEnd(reader, end);
  }
}

interface HeaderMapState {
  /** Entries seen, wanted or not: an empty header_map leaves the `headers` map in force. */
  count: number;
  headers: Record<string, string | undefined>;
}

interface DecodeState {
  policy: string | undefined;
  inlinePolicy: string | undefined;
  sourceAddress: string | undefined;
  clientCertificate: string | undefined;
  headers: Record<string, string | undefined> | undefined;
  headerMap: HeaderMapState | undefined;
  method: string | undefined;
  path: string | undefined;
  host: string | undefined;
  scheme: string | undefined;
}

/** The URL a DPoP proof's htu must name, from Envoy's request attributes (query and fragment dropped). */
export function requestUrl(scheme: string | undefined, host: string | undefined, path: string | undefined): string | undefined {
  if (!scheme || !host || !path) return undefined;
  const end = path.search(/[?#]/);
  return `${scheme}://${host}${end < 0 ? path : path.slice(0, end)}`;
}

/** Peer → Address → SocketAddress → address, and Peer.certificate; each later message replaces the earlier, a later string the earlier. */
function readPeer(reader: Reader, end: number): { address: string | undefined; certificate: string | undefined } {
  let address: string | undefined;
  let certificate: string | undefined;
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1) address = socketAddressOf(reader, fieldEnd(reader, tag & 7));
    else if (tag >>> 3 === 5) certificate = utf8(reader, tag & 7);
    else skipField(reader, tag & 7);
  }
  expectEnd(reader, end);
  return { address, certificate };
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

/** Bytes of a varint: the lengths below are under 2^32. */
const varintSize = (value: number) => (value < 0x80 ? 1 : value < 0x4000 ? 2 : value < 0x200000 ? 3 : value < 0x10000000 ? 4 : 5);

function writeVarint(buffer: Buffer, at: number, value: number): number {
  let rest = value;
  while (rest > 0x7f) {
    buffer[at++] = (rest & 0x7f) | 0x80;
    rest >>>= 7;
  }
  buffer[at++] = rest;
  return at;
}

type Utf8Buffer = Buffer & { utf8Write(text: string, offset: number, length: number): number };

/** A length-delimited UTF-8 string field: tag, length, bytes. */
function writeText(buffer: Buffer, at: number, tag: number, text: string, bytes: number): number {
  buffer[at++] = tag;
  const start = writeVarint(buffer, at, bytes);
  return start + (buffer as Utf8Buffer).utf8Write(text, start, bytes);
}

/** Scratch for the sizes of one allow's parts, measured once then written (one thread, no reentry). */
const sizes: number[] = [];

/** Size of a HeaderValueOption { header { key, value }, append_action } without its own tag and length; records the parts' sizes. */
function headerOptionSize(key: string, value: string): number {
  const keyBytes = Buffer.byteLength(key);
  const valueBytes = Buffer.byteLength(value);
  const header = 1 + varintSize(keyBytes) + keyBytes + 1 + varintSize(valueBytes) + valueBytes;
  const option = 1 + varintSize(header) + header + 2;
  sizes.push(keyBytes, valueBytes, header, option);
  return option;
}

function writeHeaderOptionAt(buffer: Buffer, at: number, tag: number, key: string, value: string, part: number): number {
  buffer[at++] = tag;
  at = writeVarint(buffer, at, sizes[part + 3]);
  buffer[at++] = 10;
  at = writeVarint(buffer, at, sizes[part + 2]);
  at = writeText(buffer, at, 10, key, sizes[part]);
  at = writeText(buffer, at, 18, value, sizes[part + 1]);
  buffer[at++] = 24;
  buffer[at++] = OVERWRITE;
  return at;
}

/**
 * CheckResponse bytes for an allow: the identity headers, the headers to remove, the response
 * headers. Written straight into buffers, sizes first (the same bytes protobufjs's Writer
 * makes, without its dozens of objects a call: this is every allowed Check).
 */
export function encodeAllow(decision: Allow): Buffer {
  return encodeAllowFrom(allowFixedPart(decision), decision.responseHeaders);
}

/** The inside of an allow's ok_response up to its response headers: the identity headers and the headers to remove. */
function allowFixedPart(decision: Pick<Allow, 'headersToSet' | 'headersToRemove'>): Buffer {
  sizes.length = 0;
  let length = 0;
  for (const key in decision.headersToSet) {
    const option = headerOptionSize(key, decision.headersToSet[key]);
    length += 1 + varintSize(option) + option;
  }
  for (const name of decision.headersToRemove) {
    const bytes = Buffer.byteLength(name);
    sizes.push(bytes);
    length += 1 + varintSize(bytes) + bytes;
  }
  const buffer = Buffer.allocUnsafe(length);
  let at = 0;
  let part = 0;
  for (const key in decision.headersToSet) {
    at = writeHeaderOptionAt(buffer, at, 18, key, decision.headersToSet[key], part);
    part += 4;
  }
  for (const name of decision.headersToRemove) at = writeText(buffer, at, 42, name, sizes[part++]);
  if (at !== buffer.length) throw new Error(`CheckResponse: wrote ${at} bytes of ${buffer.length}`);
  return buffer;
}

/** encodeAllow's bytes from the fixed part (allowFixedPart) and this call's response headers. */
function encodeAllowFrom(fixed: Buffer, responseHeaders: Record<string, string>): Buffer {
  sizes.length = 0;
  let ok = fixed.length;
  for (const key in responseHeaders) {
    const option = headerOptionSize(key, responseHeaders[key]);
    ok += 1 + varintSize(option) + option;
  }
  // status { code: 0 }, the zero written explicitly as proto-loader does; then ok_response.
  const buffer = Buffer.allocUnsafe(4 + 1 + varintSize(ok) + ok);
  buffer[0] = 10;
  buffer[1] = 2;
  buffer[2] = 8;
  buffer[3] = RPC_OK;
  buffer[4] = 26;
  let at = writeVarint(buffer, 5, ok);
  at += fixed.copy(buffer, at);
  let part = 0;
  for (const key in responseHeaders) {
    at = writeHeaderOptionAt(buffer, at, 50, key, responseHeaders[key], part);
    part += 4;
  }
  if (at !== buffer.length) throw new Error(`CheckResponse: wrote ${at} bytes of ${buffer.length}`);
  return buffer;
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
  if (decision.dpopNonce !== undefined) writeHeaderOption(writer, 2, 'dpop-nonce', decision.dpopNonce);
  writer.uint32(26).string(denialBody(decision));
  writer.ldelim();
  return writer.finish() as Buffer;
}

/** Denials repeat (a few reasons × policies × retry values): their bytes are kept, up to this many. */
const DENIAL_CACHE_MAX = 1024;

/** Encodes CheckResponses, keeping the bytes of denials already seen. */
export class CheckResponseEncoder {
  private readonly denials = new Map<string, Buffer>();
  /** Bytes of the allows the authorizer shares (frozen: made once per key, policy and scopes), as long as it keeps them. */
  private readonly allows = new WeakMap<Allow, Buffer>();

  /** The identity headers' and headers to remove's bytes of shared allows, by their (frozen) headersToSet. */
  private readonly fixedParts = new WeakMap<object, { headersToRemove: readonly string[]; bytes: Buffer }>();

  encode(decision: Decision): Buffer {
    if (decision.allowed) {
      if (Object.isFrozen(decision)) {
        let bytes = this.allows.get(decision);
        if (!bytes) {
          bytes = encodeAllow(decision);
          this.allows.set(decision, bytes);
        }
        return bytes;
      }
      // A shared allow's parts with this call's remaining-calls headers (quotas).
      if (Object.isFrozen(decision.headersToSet) && Object.isFrozen(decision.headersToRemove)) {
        let fixed = this.fixedParts.get(decision.headersToSet);
        if (fixed?.headersToRemove !== decision.headersToRemove) {
          fixed = { headersToRemove: decision.headersToRemove, bytes: allowFixedPart(decision) };
          this.fixedParts.set(decision.headersToSet, fixed);
        }
        return encodeAllowFrom(fixed.bytes, decision.responseHeaders);
      }
      return encodeAllow(decision);
    }
    const key = `${decision.reason}\n${decision.wwwAuthenticate ?? ''}\n${decision.retryAfter ?? ''}\n${decision.dpopNonce ?? ''}`;
    let bytes = this.denials.get(key);
    if (!bytes) {
      bytes = encodeDeny(decision);
      if (this.denials.size >= DENIAL_CACHE_MAX) this.denials.clear();
      this.denials.set(key, bytes);
    }
    return bytes;
  }
}
