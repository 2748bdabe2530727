import path from 'node:path';

/**
 * Envoy's API protos, as shipped by the npm package `@grpc/grpc-js-xds` in its `deps/` folder
 * (snapshots of envoyproxy/data-plane-api, cncf/xds, googleapis and protoc-gen-validate).
 * Resolved through the package, never by an absolute path, so it works from any checkout and in
 * the Docker image.
 */
const XDS_DEPS = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');

/**
 * Include directories for @grpc/proto-loader (`includeDirs`) or a protobufjs resolver, in the
 * order protoc would be given them. The last one is protobufjs's own folder: the xDS snapshot
 * does not ship `google/protobuf/descriptor.proto`, which every file with custom options imports;
 * protobufjs does (proto-loader registers the same file internally, protobufjs alone does not).
 */
export const ENVOY_PROTO_INCLUDE_DIRS: readonly string[] = [
  path.join(XDS_DEPS, 'envoy-api'),
  path.join(XDS_DEPS, 'xds'),
  path.join(XDS_DEPS, 'googleapis'),
  path.join(XDS_DEPS, 'protoc-gen-validate'),
  path.dirname(require.resolve('protobufjs/package.json')),
];

/** The ext_authz gRPC service (`envoy.service.auth.v3.Authorization/Check`). */
export const EXT_AUTHZ_PROTO = 'envoy/service/auth/v3/external_auth.proto';
