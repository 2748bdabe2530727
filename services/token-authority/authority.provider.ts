/** Nest injection token of the wired core (libs/core/authority.ts). */
export const AUTHORITY = 'AUTHORITY';
/** The Prometheus registry of the authority. */
export const METRICS = Symbol('METRICS');
