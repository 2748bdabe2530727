import { CheckRequestDecoder, CheckResponseEncoder } from '../libs/authz/check-wire';
import { deny, type Allow } from '../libs/authz/decision';
import { type CheckRequest, loadAuthorizationService, toAuthzRequest, toCheckResponse } from '../services/ext-authz/envoy-check';
import { envoyCheckRequest } from './support';

/**
 * The CPU cost of reading a CheckRequest and writing a CheckResponse, in one process, no
 * network: proto-loader's full decoding and encoding (what Check used before) against the wire
 * decoder and encoder of libs/authz/check-wire.ts. The request is the one bench/envoy-path.ts's
 * Envoy sends (9 headers, a 731-character token); a header_map variant too.
 *
 *   npm run build && node dist/bench/check-wire.js        (BENCH_CALLS, 200000 by default)
 */

const CALLS = Math.min(Number(process.env.BENCH_CALLS ?? 200_000), 2_000_000);
const TOKEN = `eyJ${'a'.repeat(300)}.eyJ${'b'.repeat(300)}.${'c'.repeat(122)}`;
const CHECK = loadAuthorizationService().Check;
const request = envoyCheckRequest(TOKEN).subarray(5);
const decoded = CHECK.requestDeserialize(request) as CheckRequest;
const headers = decoded.attributes?.request?.http?.headers ?? {};
const rawRequest = CHECK.requestSerialize({
  attributes: {
    ...decoded.attributes,
    request: {
      http: {
        ...decoded.attributes?.request?.http,
        headers: undefined,
        header_map: { headers: Object.entries(headers).map(([key, value]) => ({ key, raw_value: Buffer.from(value) })) },
      },
    },
  },
});
const decoder = new CheckRequestDecoder(['authorization', 'traceparent', 'otoroshi-client-id', 'otoroshi-client-secret']);
const encoder = new CheckResponseEncoder();
const allow: Allow = {
  allowed: true,
  clientId: 'bench-envoy',
  headersToSet: { 'x-client-id': 'bench-envoy', 'x-client-name': 'bench envoy', 'x-client-scopes': 'read write' },
  headersToRemove: [],
  responseHeaders: {},
};
const denial = deny('no_credential', 'Bearer realm="foo"');

function measure(name: string, run: () => unknown): number {
  for (let i = 0; i < Math.min(CALLS, 20_000); i++) run();
  const start = process.hrtime.bigint();
  let sink = 0;
  for (let i = 0; i < CALLS; i++) sink += run() ? 1 : 0;
  const micros = Number(process.hrtime.bigint() - start) / 1000 / CALLS;
  if (sink !== CALLS) throw new Error(`${name}: a call returned nothing`);
  console.log(`${name.padEnd(58)} ${micros.toFixed(2).padStart(7)} µs/call`);
  return micros;
}

console.log(`CheckRequest ${request.length} bytes (header_map variant ${rawRequest.length}); ${CALLS} calls per row, one core`);
const full = measure('decode, proto-loader + toAuthzRequest (headers map)', () => toAuthzRequest(CHECK.requestDeserialize(request)));
const wire = measure('decode, CheckRequestDecoder (headers map)', () => decoder.decode(request));
const fullRaw = measure('decode, proto-loader + toAuthzRequest (header_map raw)', () =>
  toAuthzRequest(CHECK.requestDeserialize(rawRequest)),
);
const wireRaw = measure('decode, CheckRequestDecoder (header_map raw)', () => decoder.decode(rawRequest));
const encodeFull = measure('encode allow, toCheckResponse + proto-loader', () => CHECK.responseSerialize(toCheckResponse(allow)));
const encodeWire = measure('encode allow, CheckResponseEncoder', () => encoder.encode(allow));
measure('encode denial, toCheckResponse + proto-loader', () => CHECK.responseSerialize(toCheckResponse(denial)));
measure('encode denial, CheckResponseEncoder (cached bytes)', () => encoder.encode(denial));
console.log(
  `decode: ${(full / wire).toFixed(1)}x faster (header_map ${(fullRaw / wireRaw).toFixed(1)}x); encode allow: ${(encodeFull / encodeWire).toFixed(1)}x`,
);
