import { Server, ServerCredentials, status } from '@grpc/grpc-js';
import { loadAuthorizationService } from '../services/ext-authz/envoy-check';

/**
 * The reference: a bare grpc-js envoy.service.auth.v3.Authorization server that answers every
 * Check with OK, on the same protos and loader as ext-authz. Nothing is faster in grpc-js.
 */
const server = new Server();
server.addService(loadAuthorizationService(), {
  Check(_call: unknown, callback: (error: null, response: object) => void) {
    callback(null, { status: { code: status.OK }, ok_response: {} });
  },
});
server.bindAsync(`127.0.0.1:${process.env.PORT}`, ServerCredentials.createInsecure(), (error) => {
  if (error) throw error;
  process.stdout.write('ready\n');
});
