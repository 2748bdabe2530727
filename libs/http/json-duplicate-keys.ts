/**
 * The first key that appears twice in one object of a JSON text, or undefined. JSON.parse
 * silently keeps the last one, so `{"client_id":"nope","client_id":"my-id"}` would read as
 * "my-id"; RFC 6749 §3.2 forbids repeated parameters, and forms already refuse them.
 * The text must be valid JSON (call after parsing it). Keys are compared decoded, so
 * "a" and "\u0061" are the same key.
 */
export function firstDuplicateKey(text: string): string | undefined {
  const objects: (Set<string> | undefined)[] = [];
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (char === '{') objects.push(new Set());
    else if (char === '[') objects.push(undefined);
    else if (char === '}' || char === ']') objects.pop();
    else if (char === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === '\\') i++;
      let next = i + 1;
      while (text[next] === ' ' || text[next] === '\t' || text[next] === '\n' || text[next] === '\r') next++;
      const keys = objects[objects.length - 1];
      // In valid JSON a string followed by ':' is always an object key.
      if (text[next] === ':' && keys) {
        const key = JSON.parse(text.slice(start, i + 1)) as string;
        if (keys.has(key)) return key;
        keys.add(key);
      }
    }
  }
  return undefined;
}
