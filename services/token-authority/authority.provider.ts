/** Nest injection token of the wired core (libs/core/authority.ts). */
export const AUTHORITY = 'AUTHORITY';
