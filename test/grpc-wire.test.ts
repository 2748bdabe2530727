import assert from 'node:assert/strict';
import { Client, credentials, Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { connect, constants as http2 } from 'node:http2';
import { after, before, describe, it } from 'node:test';
import { MAX_MESSAGE_BYTES } from '../services/token-authority/grpc-options';
import { startTestAuthority, type TestAuthority } from './support/authority';
import { tokenAuthorityClient, type TokenAuthorityClient } from './support/grpc';

/** Bytes in, status out: calls that no generated client would make. */
function rawCall(
  address: string,
  method: string,
  payload: Buffer,
  deadline = Date.now() + 5000,
): Promise<{ code: number; details: string }> {
  const client = new Client(address, credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      method,
      (bytes: Buffer) => bytes,
      (bytes: Buffer) => bytes,
      payload,
      new Metadata(),
      { deadline },
      (error: ServiceError | null) => {
        client.close();
        resolve(error ? { code: error.code, details: error.details } : { code: GrpcStatus.OK, details: '' });
      },
    );
  });
}

describe('bad input at the gRPC wire', () => {
  let authority: TestAuthority;
  let grpc: TokenAuthorityClient;
  before(async () => {
    authority = await startTestAuthority();
    grpc = tokenAuthorityClient(authority.grpcAddress);
  });
  after(async () => {
    grpc.close();
    await authority.stop();
  });

  const stillServing = async () => {
    const result = await grpc.call('GetJwks', {});
    assert.ok(result.ok, 'the server keeps serving');
    assert.ok(result.response.keys.length >= 1);
  };

  it("bytes that are not protobuf → INTERNAL (gRPC's code for an unparsable request)", async () => {
    // A tag with no value; a nested message cut short; an endless varint; JSON instead of protobuf.
    // (protobufjs reads known field numbers leniently, so the junk is aimed where it must fail.)
    for (const garbage of [
      Buffer.from([0x0e]),
      Buffer.from([0x12, 0x05, 0x0a, 0x09]),
      Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
      Buffer.from('{"grant_type":"client_credentials"}'),
    ]) {
      const result = await rawCall(authority.grpcAddress, '/token_authority.v1.TokenAuthority/IssueToken', garbage);
      assert.equal(result.code, GrpcStatus.INTERNAL, `${garbage.toString('hex')}: ${result.details}`);
    }
    await stillServing();
  });

  it('a message over the size limit → RESOURCE_EXHAUSTED', async () => {
    const field = Buffer.alloc(MAX_MESSAGE_BYTES + 1024, 0x61);
    // Field 1 (grant_type), length-delimited, varint length.
    const length: number[] = [];
    for (let value = field.length; ; value >>>= 7) {
      if (value < 0x80) {
        length.push(value);
        break;
      }
      length.push((value & 0x7f) | 0x80);
    }
    const message = Buffer.concat([Buffer.from([0x0a, ...length]), field]);
    const result = await rawCall(authority.grpcAddress, '/token_authority.v1.TokenAuthority/IssueToken', message);
    assert.equal(result.code, GrpcStatus.RESOURCE_EXHAUSTED, result.details);
    await stillServing();
  });

  it('an unknown method or service → UNIMPLEMENTED', async () => {
    assert.equal(
      (await rawCall(authority.grpcAddress, '/token_authority.v1.TokenAuthority/MintMoney', Buffer.alloc(0))).code,
      GrpcStatus.UNIMPLEMENTED,
    );
    assert.equal((await rawCall(authority.grpcAddress, '/token_authority.v2.Nothing/Get', Buffer.alloc(0))).code, GrpcStatus.UNIMPLEMENTED);
    await stillServing();
  });

  it('a deadline that has already passed → DEADLINE_EXCEEDED', async () => {
    const result = await grpc.call('IssueToken', { grant_type: 'client_credentials' }, {}, -1000);
    assert.ok(!result.ok);
    assert.equal(result.error.code, GrpcStatus.DEADLINE_EXCEEDED);
    await stillServing();
  });

  it('a deadline that passes on the server (grpc-timeout: 1m) is answered, not left hanging', async () => {
    // Sent by hand so that the client does not enforce the deadline itself: the server must.
    const session = connect(`http://${authority.grpcAddress}`);
    try {
      const stream = session.request({
        [http2.HTTP2_HEADER_METHOD]: 'POST',
        [http2.HTTP2_HEADER_PATH]: '/token_authority.v1.TokenAuthority/GetJwks',
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': '1m',
      });
      // No message and no end of stream: only the deadline can end this call.
      const trailers = await new Promise<Record<string, unknown>>((resolve, reject) => {
        stream.on('trailers', resolve);
        stream.on('response', (headers) => headers['grpc-status'] !== undefined && resolve(headers));
        stream.on('error', reject);
        setTimeout(() => reject(new Error('no answer within 3 s')), 3000);
      });
      assert.equal(Number(trailers['grpc-status']), GrpcStatus.DEADLINE_EXCEEDED);
      stream.close();
    } finally {
      session.close();
    }
    await stillServing();
  });

  it('a wrong content type or a plain HTTP/2 GET is refused and the server keeps serving', async () => {
    const session = connect(`http://${authority.grpcAddress}`);
    try {
      const stream = session.request({
        [http2.HTTP2_HEADER_METHOD]: 'GET',
        [http2.HTTP2_HEADER_PATH]: '/token_authority.v1.TokenAuthority/GetJwks',
      });
      const headers = await new Promise<Record<string, unknown>>((resolve, reject) => {
        stream.on('response', resolve);
        stream.on('error', reject);
      });
      assert.notEqual(headers[':status'], 200);
      stream.close();
    } finally {
      session.close();
    }
    await stillServing();
  });
});

describe('graceful shutdown', () => {
  it('finishes a call in flight, then refuses new calls', async () => {
    const authority = await startTestAuthority();
    // A short secret is checked with scrypt (tens of ms): long enough to be in flight at close.
    await authority.admin('POST', '/api/apikeys', { clientId: 'slow', clientSecret: 'slow-secret' });
    const grpc = tokenAuthorityClient(authority.grpcAddress);
    try {
      assert.ok((await grpc.call('GetJwks', {})).ok, 'connected');
      const inFlight = grpc.call('IssueToken', {
        grant_type: 'client_credentials',
        client: { client_id: 'slow', client_secret: 'slow-secret' },
      });
      await new Promise((done) => setTimeout(done, 5));
      const closing = authority.close();
      const result = await inFlight;
      assert.ok(result.ok, result.ok ? '' : result.error.message);
      await closing;
      const after = await grpc.call('GetJwks', {}, {}, 2000);
      assert.ok(!after.ok);
      assert.ok([GrpcStatus.UNAVAILABLE, GrpcStatus.DEADLINE_EXCEEDED].includes(after.error.code), GrpcStatus[after.error.code]);
    } finally {
      grpc.close();
      await authority.stop();
    }
  });
});
