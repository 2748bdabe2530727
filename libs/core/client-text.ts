/** How many characters of a client's name are kept: enough for a host name and a pid, or a UUID. */
export const CLIENT_TEXT_MAX = 128;

// biome-ignore lint/suspicious/noControlCharactersInRegex: the control characters are what it escapes
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

/**
 * A name a client gave itself (a data plane's node_id, an Envoy's node.id), as it may be logged,
 * kept and shown: control characters written as \uXXXX (no forged log line, no terminal escape),
 * at most CLIENT_TEXT_MAX characters, with how long it really was when cut.
 */
export function clientText(value: string, max = CLIENT_TEXT_MAX): string {
  let kept = value.length > max ? value.slice(0, max) : value;
  // Not half a surrogate pair at the cut.
  if (kept.length < value.length && /[\ud800-\udbff]$/.test(kept)) kept = kept.slice(0, -1);
  const escaped = kept.replace(UNPRINTABLE, (character) => `\\u${character.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return kept.length < value.length ? `${escaped}…(${value.length} characters)` : escaped;
}
