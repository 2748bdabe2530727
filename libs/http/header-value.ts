/**
 * Header and gRPC metadata values must be visible ASCII and spaces (grpc-js throws on anything
 * else, Node's HTTP stack refuses it, and CR/LF would split headers). Every value we build from
 * data a client or an admin chose goes through here. A legal value passes unchanged; otherwise
 * each other character (and `%`, so decodeURIComponent gives the text back) is percent-encoded
 * as UTF-8. Lone surrogates become U+FFFD first: encodeURIComponent throws on them.
 */
export function legalHeaderValue(value: string): string {
  if (/^[\x20-\x7e]*$/.test(value)) return value;
  return value.toWellFormed().replace(/[^\x20-\x24\x26-\x7e]+/g, (run) => encodeURIComponent(run));
}
