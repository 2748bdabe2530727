import { Metadata, status as GrpcStatus } from '@grpc/grpc-js';
import path from 'node:path';
import { Root, type Type } from 'protobufjs';
import { legalHeaderValue } from '../http/header-value';

/**
 * google.rpc.Status with a google.rpc.ErrorInfo detail, in `grpc-status-details-bin`: the rich
 * error model that grpc clients in every language can decode. The protos come from googleapis as
 * shipped in @grpc/grpc-js-xds.
 */
const GOOGLEAPIS = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps', 'googleapis');
const root = new Root();
root.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(GOOGLEAPIS, target));
root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const StatusType = root.lookupType('google.rpc.Status') as Type;
const ErrorInfoType = root.lookupType('google.rpc.ErrorInfo') as Type;

export interface RichError {
  code: GrpcStatus;
  details: string;
  metadata: Metadata;
}

/**
 * Builds a grpc-js service error whose status carries an ErrorInfo (reason, domain, metadata).
 * Every gRPC error of ours is built here, so this is where trailer values echoing a client's
 * input are made legal: grpc-js throws on a non-ASCII metadata value, outside any handler.
 * The ErrorInfo (protobuf strings) keeps the text as it is.
 */
export function richError(
  code: GrpcStatus,
  message: string,
  reason: string,
  domain: string,
  trailers: Record<string, string> = {},
): RichError {
  const metadata = new Metadata();
  for (const [key, value] of Object.entries(trailers)) metadata.set(key, legalHeaderValue(value));
  const errorInfo = ErrorInfoType.encode(ErrorInfoType.create({ reason, domain, metadata: trailers })).finish();
  const statusMessage = StatusType.create({
    code,
    message,
    details: [{ type_url: 'type.googleapis.com/google.rpc.ErrorInfo', value: errorInfo }],
  });
  metadata.set('grpc-status-details-bin', Buffer.from(StatusType.encode(statusMessage).finish()));
  return { code, details: message, metadata };
}

/** Decodes `grpc-status-details-bin` into its ErrorInfo (for tests and Node clients). */
export function decodeErrorInfo(metadata: Metadata): { reason: string; domain: string; metadata: Record<string, string> } | undefined {
  const [raw] = metadata.get('grpc-status-details-bin');
  if (!Buffer.isBuffer(raw)) return undefined;
  const decoded = StatusType.toObject(StatusType.decode(raw)) as { details?: { type_url: string; value: Uint8Array }[] };
  const detail = decoded.details?.find((entry) => entry.type_url.endsWith('google.rpc.ErrorInfo'));
  if (!detail) return undefined;
  return ErrorInfoType.toObject(ErrorInfoType.decode(detail.value), { defaults: true }) as {
    reason: string;
    domain: string;
    metadata: Record<string, string>;
  };
}
