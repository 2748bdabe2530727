import { z } from 'zod';
import { booleanSetting, portSetting } from '../config/load-config';
import type { XdsPlacement } from './resources';

/**
 * The authority as Envoy's control plane (ADS on a gRPC port of its own, `port`): off unless `enabled`. The names
 * are those of envoy/envoy-xds.yaml, the bootstrap that asks for it.
 */
export const xdsSettingsSchema = z
  .object({
    enabled: booleanSetting.default(false),
    /** The ADS port (on grpc.host): a grpc-js server of its own, with room for large Envoy requests. */
    port: portSetting.default(18000),
    /** The HTTP listener Envoy is given (envoy/envoy.yaml's ingress_http). */
    listener: z.object({ address: z.string().min(1).default('0.0.0.0'), port: portSetting.default(8080) }).prefault({}),
    /** The bootstrap's static cluster of ext-authz. */
    extAuthzCluster: z.string().min(1).default('ext_authz'),
    /** The token authority's own host behind Envoy (no ext_authz), on the bootstrap's static clusters; [] for none. */
    authorityDomains: z.array(z.string().min(1)).default(['oauth.oto.tools']),
    authorityCluster: z.string().min(1).default('token_authority'),
    authorityGrpcCluster: z.string().min(1).default('token_authority_grpc'),
    /**
     * An HTTPS listener beside the HTTP one (same routes), off unless set. The certificate chain and
     * private key are absolute paths of PEM files on Envoy's host: Envoy reads them when it takes
     * the listener; the authority never reads them and the key never travels over xDS.
     */
    tls: z
      .object({
        /** Default: the HTTP listener's address. */
        address: z.string().min(1).optional(),
        port: portSetting.default(8443),
        certificateFile: z.string().regex(/^\//, "an absolute path on Envoy's host"),
        privateKeyFile: z.string().regex(/^\//, "an absolute path on Envoy's host"),
        /**
         * RFC 8705: whether the listener asks TLS clients for a certificate. `off` (the default): it
         * does not. `optional`: it asks, a client without one still connects (bearer and secret
         * clients go on as before); `required`: no handshake without one.
         */
        clientCertificate: z.enum(['off', 'optional', 'required']).default('off'),
        /**
         * The CAs (PEM bundle, an absolute path on Envoy's host) client certificates are verified
         * against; self-signed certificates of self_signed_tls_client_auth clients must be pinned in
         * it. Unset: Envoy accepts any certificate (ACCEPT_UNTRUSTED: the handshake still proves the
         * client holds its key, enough for certificate-bound tokens and self_signed_tls_client_auth)
         * and tells the authority it did not verify it, so tls_client_auth is refused.
         */
        clientCaFile: z.string().regex(/^\//, "an absolute path on Envoy's host").optional(),
      })
      .refine((tls) => tls.clientCaFile === undefined || tls.clientCertificate !== 'off', {
        message: "a client CA file needs clientCertificate 'optional' or 'required'",
        path: ['clientCaFile'],
      })
      .optional(),
  })
  .prefault({});

export type XdsSettings = z.infer<typeof xdsSettingsSchema>;

export function xdsPlacement(settings: XdsSettings): XdsPlacement {
  return {
    listener: { address: settings.listener.address, port: settings.listener.port },
    extAuthz: { cluster: settings.extAuthzCluster },
    authority: settings.authorityDomains.length
      ? { domains: settings.authorityDomains, httpCluster: settings.authorityCluster, grpcCluster: settings.authorityGrpcCluster }
      : undefined,
    tls: settings.tls
      ? {
          address: settings.tls.address ?? settings.listener.address,
          port: settings.tls.port,
          certificateFile: settings.tls.certificateFile,
          privateKeyFile: settings.tls.privateKeyFile,
          ...(settings.tls.clientCertificate !== 'off' && {
            clientCertificates: { required: settings.tls.clientCertificate === 'required', caFile: settings.tls.clientCaFile },
          }),
        }
      : undefined,
  };
}
