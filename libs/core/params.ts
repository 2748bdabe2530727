import { echo, invalidRequest } from './errors';

/** OAuth2 request parameters after transport decoding: one string each. */
export type OAuthParams = Readonly<Record<string, string>>;

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;
const MAX_PARAM_LENGTH = 8192;

/**
 * Normalizes a decoded body (form or JSON) into string parameters.
 * RFC 6749 §3.2: parameters MUST NOT be repeated (a form parser gives arrays for those);
 * JSON values must be strings. Control characters and lone surrogates are refused: no id,
 * secret, scope or token of ours contains one.
 */
export function normalizeParams(body: unknown): OAuthParams {
  if (body === undefined || body === null || body === '') return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw invalidRequest('the request body must be an object of parameters');
  const params: Record<string, string> = Object.create(null);
  for (const [name, value] of Object.entries(body as Record<string, unknown>)) {
    const quoted = `'${echo(name.toWellFormed())}'`;
    if (!name.isWellFormed()) throw invalidRequest(`parameter name ${quoted} is not well-formed Unicode`);
    if (Array.isArray(value)) throw invalidRequest(`parameter ${quoted} is repeated`);
    if (value === undefined || value === null) continue;
    if (typeof value !== 'string') throw invalidRequest(`parameter ${quoted} must be a string`);
    if (value.length > MAX_PARAM_LENGTH) throw invalidRequest(`parameter ${quoted} is too long`);
    if (CONTROL_CHARACTERS.test(value)) throw invalidRequest(`parameter ${quoted} contains control characters`);
    // A lone surrogate has no UTF-8 form: it could not be echoed or stored faithfully.
    if (!value.isWellFormed()) throw invalidRequest(`parameter ${quoted} is not well-formed Unicode`);
    params[name] = value;
  }
  return params;
}

/** A parameter that must be present and non-empty. */
export function requireParam(params: OAuthParams, name: string): string {
  const value = params[name];
  if (value === undefined || value === '') throw invalidRequest(`missing parameter '${echo(name)}'`);
  return value;
}
