import { parseDocument, type YAMLMap, type YAMLSeq } from 'yaml';

export interface SocketAddress {
  address: string;
  port: number;
}

/** What differs between docker-compose and a local run: where Envoy listens, and where each cluster's one endpoint is. */
export interface EnvoyPlacement {
  listener?: SocketAddress;
  admin?: SocketAddress;
  /** Cluster name (as in the config) to its endpoint, or to each of its endpoints in order (a balanced cluster). */
  clusters?: Record<string, SocketAddress | SocketAddress[]>;
  /**
   * An HTTPS listener beside the first one, with the same routes and filters: the certificate
   * and key files are the caller's (generated for a local run or a test; never in the repo).
   */
  tls?: SocketAddress & {
    certificateFile: string;
    privateKeyFile: string;
    /**
     * RFC 8705: ask TLS clients for a certificate, verified against these CA certificates (a PEM
     * bundle: CAs for tls_client_auth, or the self-signed certificates themselves); `required`
     * refuses a handshake without one. Envoy forwards it per the config's forward_client_cert_details.
     */
    clientCertificates?: { caFile: string; required: boolean };
  };
  /** The data plane token Envoy presents to its control plane (envoy/envoy-xds.yaml's ADS `initial_metadata`). */
  xdsToken?: string;
}

/**
 * The repo's Envoy configs name docker-compose hosts (`token-authority`, `ext-authz`, `echo`).
 * This renders the same file for another placement (a local run, the tests) by setting those
 * few addresses, keeping everything else (and the comments) as written: one source of truth.
 */
export function renderEnvoyConfig(source: string, placement: EnvoyPlacement): string {
  const document = parseDocument(source);
  const set = (path: (string | number)[], { address, port }: SocketAddress) => {
    document.setIn([...path, 'socket_address', 'address'], address);
    document.setIn([...path, 'socket_address', 'port_value'], port);
  };
  if (placement.admin) set(['admin', 'address'], placement.admin);
  if (placement.listener) set(['static_resources', 'listeners', 0, 'address'], placement.listener);
  const clusters = document.getIn(['static_resources', 'clusters']) as YAMLSeq<YAMLMap> | undefined;
  for (const [name, endpoint] of Object.entries(placement.clusters ?? {})) {
    const index = clusters?.items.findIndex((cluster) => cluster.get('name') === name) ?? -1;
    if (index < 0) throw new Error(`the Envoy config has no cluster '${name}'`);
    const endpoints = Array.isArray(endpoint) ? endpoint : [endpoint];
    const listed = document.getIn(['static_resources', 'clusters', index, 'load_assignment', 'endpoints', 0, 'lb_endpoints']) as YAMLSeq;
    if (endpoints.length > (listed?.items.length ?? 0)) throw new Error(`cluster '${name}' lists fewer endpoints than given`);
    endpoints.forEach((each, at) =>
      set(['static_resources', 'clusters', index, 'load_assignment', 'endpoints', 0, 'lb_endpoints', at, 'endpoint', 'address'], each),
    );
  }
  if (placement.xdsToken !== undefined) {
    const path = ['dynamic_resources', 'ads_config', 'grpc_services', 0, 'initial_metadata', 0, 'value'];
    if (!document.hasIn(path)) throw new Error('the Envoy config has no ADS initial_metadata to put the token in');
    document.setIn(path, `Bearer ${placement.xdsToken}`);
  }
  if (placement.tls) {
    const { address, port, certificateFile, privateKeyFile, clientCertificates } = placement.tls;
    const plain = document.getIn(['static_resources', 'listeners', 0]) as YAMLMap;
    const secure = plain.clone() as YAMLMap;
    secure.set('name', 'ingress_https');
    secure.setIn(['address', 'socket_address', 'address'], address);
    secure.setIn(['address', 'socket_address', 'port_value'], port);
    secure.setIn(['filter_chains', 0, 'filters', 0, 'typed_config', 'stat_prefix'], 'ingress_https');
    secure.setIn(
      ['filter_chains', 0, 'transport_socket'],
      document.createNode({
        name: 'envoy.transport_sockets.tls',
        typed_config: {
          '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext',
          common_tls_context: {
            tls_certificates: [{ certificate_chain: { filename: certificateFile }, private_key: { filename: privateKeyFile } }],
            ...(clientCertificates && { validation_context: { trusted_ca: { filename: clientCertificates.caFile } } }),
          },
          ...(clientCertificates && { require_client_certificate: clientCertificates.required }),
        },
      }),
    );
    (document.getIn(['static_resources', 'listeners']) as YAMLSeq).add(secure);
  }
  return document.toString();
}
