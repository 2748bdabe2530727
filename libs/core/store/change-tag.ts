import { randomBytes } from 'node:crypto';

/**
 * Tags of change-log entries (StoreChange.tag): a random prefix per process and a counter, so no
 * two changes get the same tag, here or in another process, without a random draw per change.
 */
const prefix = randomBytes(6).toString('base64url');
let counter = 0;

export function nextChangeTag(): string {
  counter += 1;
  return `${prefix}${counter.toString(36)}`;
}
