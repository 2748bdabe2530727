import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CLIENT_TEXT_MAX, clientText } from '../../libs/core/client-text';

describe('clientText (a name a client gave itself, as logged and shown)', () => {
  it('keeps a usual name as it is', () => {
    assert.equal(clientText('ext-authz@host-1:4242'), 'ext-authz@host-1:4242');
    assert.equal(clientText('envoy-é-日本'), 'envoy-é-日本');
  });

  it('writes control characters, C1 codes and line separators as \\uXXXX', () => {
    assert.equal(clientText('a\nb\r\u001b[31mc\u0000\u0085\u2028'), 'a\\u000ab\\u000d\\u001b[31mc\\u0000\\u0085\\u2028');
  });

  it('cuts a long name at CLIENT_TEXT_MAX characters, saying how long it was, and never inside a surrogate pair', () => {
    const long = 'x'.repeat(1_000_000);
    assert.equal(clientText(long), `${'x'.repeat(CLIENT_TEXT_MAX)}…(1000000 characters)`);
    const emoji = `${'x'.repeat(CLIENT_TEXT_MAX - 1)}😀tail`;
    assert.equal(clientText(emoji), `${'x'.repeat(CLIENT_TEXT_MAX - 1)}…(${emoji.length} characters)`);
    assert.equal(clientText('x'.repeat(CLIENT_TEXT_MAX)), 'x'.repeat(CLIENT_TEXT_MAX));
  });
});
