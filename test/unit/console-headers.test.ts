import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isTrustworthyOrigin } from '../../services/token-authority/console';

/* COOP is sent only where browsers honour it (else chromium logs an error on every page load). */
describe('isTrustworthyOrigin', () => {
  it('trusts HTTPS on any host, and loopback hosts over plain HTTP', () => {
    for (const host of ['oauth.oto.tools:8443', 'example.com', undefined])
      assert.equal(isTrustworthyOrigin('https', host), true, String(host));
    for (const host of [
      'localhost',
      'localhost:8080',
      'LOCALHOST.',
      'console.localhost:3000',
      '127.0.0.1:8080',
      '127.12.0.9',
      '[::1]:8080',
      '[::1]',
    ])
      assert.equal(isTrustworthyOrigin('http', host), true, host);
  });

  it('does not trust plain HTTP on any other name or address', () => {
    for (const host of [
      'oauth.oto.tools:8080',
      'oauth.oto.tools',
      '10.0.0.5:8080',
      '[::2]:8080',
      '127.0.0.1.evil.example',
      'localhost.evil.example',
      '127.0.0.256',
      '128.0.0.1',
      'notlocalhost',
      '',
      undefined,
    ])
      assert.equal(isTrustworthyOrigin('http', host), false, String(host));
  });
});
