import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DENIALS, deny, denialBody } from '../../libs/authz/decision';

/* The status table of ext-authz's denials: one place sets each reason's status and message. */
describe('deny', () => {
  it('takes status and message from the table, for every reason', () => {
    for (const [reason, { status, message }] of Object.entries(DENIALS)) {
      const decision = deny(reason as keyof typeof DENIALS);
      assert.equal(decision.allowed, false);
      assert.equal(decision.status, status);
      assert.equal(decision.message, message);
      assert.equal(decision.wwwAuthenticate, undefined);
      assert.equal('retryAfter' in decision, false);
    }
  });

  it('makes a challenge naming a hostile policy a legal header value', () => {
    const decision = deny('no_credential', 'Bearer realm="fö\r\no"');
    assert.match(decision.wwwAuthenticate ?? '', /^[\x20-\x7e]*$/);
    assert.equal(decodeURIComponent(decision.wwwAuthenticate ?? ''), 'Bearer realm="fö\r\no"');
  });

  it('carries Retry-After seconds when given, and Otoroshi body shape', () => {
    const decision = deny('quota_exceeded', undefined, 3);
    assert.equal(decision.retryAfter, 3);
    assert.deepEqual(JSON.parse(denialBody(decision)), { 'Otoroshi-Error': 'You performed too much requests' });
  });
});
