/** Nest injection token of the wired core (libs/core/authority.ts). */
export const AUTHORITY = 'AUTHORITY';
/** The Prometheus registry of the authority. */
export const METRICS = Symbol('METRICS');
/** The xDS control plane as the admin API reads it (route status), set once ADS runs (xds.enabled). */
export const XDS_STATUS = Symbol('XDS_STATUS');
