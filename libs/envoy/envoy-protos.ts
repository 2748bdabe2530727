import { existsSync, readdirSync, readFileSync } from 'node:fs';
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

/** Absolute path of an import such as `envoy/config/core/v3/base.proto`, or undefined. */
export function resolveEnvoyProto(relativePath: string): string | undefined {
  for (const dir of ENVOY_PROTO_INCLUDE_DIRS) {
    const candidate = path.join(dir, relativePath);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

const IMPORT_LINE = /^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;/gm;

/** Well-known types protobufjs carries built in (no file on disk, nothing to resolve). */
const BUILT_IN_IMPORTS = new Set(
  ['any', 'duration', 'empty', 'field_mask', 'struct', 'timestamp', 'wrappers'].map((name) => `google/protobuf/${name}.proto`),
);

/**
 * Every v3 proto of Envoy and xDS whose imports are all shipped, relative to the include dirs:
 * the set of message types an Envoy v3 config can name in a `google.protobuf.Any`.
 *
 * v2 files are left out (their `envoy/api/v2` dependencies are not shipped), and so are the few
 * v3 files that import protos the snapshot lacks (OpenCensus, OpenTelemetry, Prometheus): loading
 * one of them would fail the whole load.
 */
export function envoyV3ProtoFiles(): string[] {
  // protoc forbids import cycles, so this recursion ends.
  const complete = new Map<string, boolean>();
  const isComplete = (file: string): boolean => {
    if (BUILT_IN_IMPORTS.has(file)) return true;
    let result = complete.get(file);
    if (result === undefined) {
      const absolute = resolveEnvoyProto(file);
      result = absolute !== undefined && [...readFileSync(absolute, 'utf8').matchAll(IMPORT_LINE)].every((match) => isComplete(match[1]));
      complete.set(file, result);
    }
    return result;
  };
  const roots = [path.join(XDS_DEPS, 'envoy-api'), path.join(XDS_DEPS, 'xds')];
  const candidates = roots.flatMap((root) => listProtos(root, '')).filter((file) => file.includes('/v3/') || file.startsWith('udpa/type/v1/'));
  return candidates.filter(isComplete).sort();
}

function listProtos(dir: string, prefix: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    if (entry.isDirectory()) return listProtos(path.join(dir, entry.name), `${prefix}${entry.name}/`);
    return entry.name.endsWith('.proto') ? [`${prefix}${entry.name}`] : [];
  });
}
