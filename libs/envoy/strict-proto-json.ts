import path from 'node:path';
import { Enum, type Field, MapField, Root, Type } from 'protobufjs';
import { parseDocument } from 'yaml';
import { envoyV3ProtoFiles, resolveEnvoyProto } from './envoy-protos';

export interface StrictProtoJsonOptions {
  /** Report fields and enum values marked `deprecated` (Envoy only warns, then removes them). */
  rejectDeprecated?: boolean;
}

const TYPE_URL_PREFIX = 'type.googleapis.com/';
const ANY = '.google.protobuf.Any';
const VALUE = '.google.protobuf.Value';

/** Wrapper messages: their JSON form is the wrapped scalar. */
const WRAPPERS = new Set(
  ['Double', 'Float', 'Int64', 'UInt64', 'Int32', 'UInt32', 'Bool', 'String', 'Bytes'].map((name) => `.google.protobuf.${name}Value`),
);

/** protoc-gen-validate rules that mean "this field must be set". */
const REQUIRED_RULES = ['message', 'duration', 'timestamp', 'any'].map((kind) => `(validate.rules).${kind}.required`);

const INTEGER_RANGES: Record<string, readonly [bigint, bigint]> = {
  int32: [-(2n ** 31n), 2n ** 31n - 1n],
  sint32: [-(2n ** 31n), 2n ** 31n - 1n],
  sfixed32: [-(2n ** 31n), 2n ** 31n - 1n],
  uint32: [0n, 2n ** 32n - 1n],
  fixed32: [0n, 2n ** 32n - 1n],
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  sint64: [-(2n ** 63n), 2n ** 63n - 1n],
  sfixed64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n],
  fixed64: [0n, 2n ** 64n - 1n],
};
const FLOAT_MAX = 3.4028234663852886e38;
const DECIMAL = /^-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
const BASE64 = /^(?:[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9\-_]*={0,2})$/;
/** Duration: seconds with up to 9 fractional digits and the `s` suffix; at most 10,000 years. */
const DURATION = /^-?(\d+)(?:\.\d{1,9})?s$/;
const MAX_DURATION_SECONDS = 315_576_000_000n;
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$/;

/** The other well-known types whose JSON form is not an object of fields. */
const WELL_KNOWN: Record<string, { expected: string; accepts: (value: unknown) => boolean }> = {
  '.google.protobuf.Duration': { expected: 'a string of seconds such as "0.25s" (at most 9 decimals, 10,000 years)', accepts: isDuration },
  '.google.protobuf.Timestamp': { expected: 'an RFC 3339 timestamp', accepts: (value) => typeof value === 'string' && TIMESTAMP.test(value) && !Number.isNaN(Date.parse(value)) },
  '.google.protobuf.FieldMask': { expected: 'a comma-separated string of field paths', accepts: (value) => typeof value === 'string' },
  '.google.protobuf.Struct': { expected: 'an object', accepts: isObject },
  '.google.protobuf.ListValue': { expected: 'an array', accepts: Array.isArray },
  [VALUE]: { expected: 'any JSON value', accepts: () => true },
};

/** Types whose JSON form is not an object of fields: packed in an Any, they sit under "value". */
const SPECIAL_JSON = new Set([ANY, ...WRAPPERS, ...Object.keys(WELL_KNOWN)]);

/**
 * A strict checker of JSON values (parsed YAML) against protobuf message types, following the
 * proto3 JSON mapping (https://protobuf.dev/programming-guides/json/) the way Envoy applies it to
 * its configuration: unknown fields are errors, both the proto field name and its JSON name are
 * accepted, and the protoc-gen-validate rules that catch the usual mistakes are honoured.
 *
 * Every error starts with the path of the offending value, written with the keys the input used:
 * `static_resources.clusters[0].load_assignment.endpoints[0]...`, map entries as `["key"]`.
 * The fields of a message packed in a `google.protobuf.Any` sit directly under the Any's path,
 * as they do in the JSON.
 */
export class StrictProtoJsonValidator {
  private readonly fieldsByKey = new WeakMap<Type, Map<string, Field>>();

  constructor(
    private readonly root: Root,
    private readonly options: StrictProtoJsonOptions = {},
  ) {}

  /** Errors of `value` as the JSON form of message `typeName` (e.g. `envoy.config.bootstrap.v3.Bootstrap`). */
  validate(typeName: string, value: unknown): string[] {
    const errors: string[] = [];
    this.messageValue(this.lookupType(typeName), value, '', errors);
    return errors;
  }

  private lookupType(name: string): Type {
    const type = this.root.lookup(name.startsWith('.') ? name : `.${name}`);
    if (!(type instanceof Type)) throw new Error(`no message type ${name} in the loaded protos`);
    return type;
  }

  /** Any message-typed value: the well-known types first, then an ordinary message. */
  private messageValue(type: Type, value: unknown, at: string, errors: string[]): void {
    if (type.fullName === ANY) return this.any(value, at, errors);
    if (WRAPPERS.has(type.fullName)) return this.scalar(type.fields.value.type, value, at, errors);
    const wellKnown = WELL_KNOWN[type.fullName];
    if (!wellKnown) return this.message(type, value, at, errors, false);
    if (!wellKnown.accepts(value)) errors.push(`${label(at)}: expected ${wellKnown.expected} for ${type.fullName.slice(1)}, got ${describe(value)}`);
  }

  /** `{"@type": "type.googleapis.com/<message>", ...fields}`, or `{"@type", "value"}` for a type with special JSON. */
  private any(value: unknown, at: string, errors: string[]): void {
    if (!isObject(value)) return void errors.push(`${label(at)}: expected an object with "@type" for google.protobuf.Any, got ${describe(value)}`);
    const typeUrl = value['@type'];
    if (typeof typeUrl !== 'string') return void errors.push(`${label(join(at, '@type'))}: google.protobuf.Any needs a "@type" string, got ${describe(typeUrl)}`);
    // Envoy resolves type URLs against "type.googleapis.com" only.
    const packed = typeUrl.startsWith(TYPE_URL_PREFIX) ? this.root.lookup(`.${typeUrl.slice(TYPE_URL_PREFIX.length)}`) : null;
    if (!(packed instanceof Type)) {
      return void errors.push(`${label(join(at, '@type'))}: unknown type "${typeUrl}" (expected ${TYPE_URL_PREFIX}<a message of Envoy's v3 API>)`);
    }
    if (!SPECIAL_JSON.has(packed.fullName)) return this.message(packed, value, at, errors, true);
    for (const key of Object.keys(value)) {
      if (key !== '@type' && key !== 'value') errors.push(`${label(join(at, key))}: unknown field "${key}" (an Any of ${packed.fullName.slice(1)} has only "@type" and "value")`);
    }
    this.messageValue(packed, value.value, join(at, 'value'), errors);
  }

  private message(type: Type, value: unknown, at: string, errors: string[], inAny: boolean): void {
    const typeName = type.fullName.slice(1);
    if (!isObject(value)) return void errors.push(`${label(at)}: expected an object for ${typeName}, got ${describe(value)}`);
    const keys = new Map<Field, string>();
    const given = new Map<Field, { key: string; value: unknown }>();
    for (const [key, fieldValue] of Object.entries(value)) {
      if (inAny && key === '@type') continue;
      const keyPath = join(at, key);
      const field = this.fieldByKey(type, key);
      if (!field) {
        errors.push(`${label(keyPath)}: unknown field "${key}" in ${typeName}`);
        continue;
      }
      const previous = keys.get(field);
      if (previous !== undefined) {
        errors.push(`${label(keyPath)}: field "${field.name}" given twice (as "${previous}" and "${key}")`);
        continue;
      }
      keys.set(field, key);
      // In proto3 JSON, null means "not set", except for a google.protobuf.Value (NULL_VALUE).
      if (fieldValue === null && !(field.resolvedType?.fullName === VALUE && !field.repeated && !(field instanceof MapField))) continue;
      given.set(field, { key, value: fieldValue });
      this.checkUsage(field, `field "${key}" of ${typeName}`, keyPath, errors);
      this.field(field, fieldValue, keyPath, errors);
    }
    this.checkOneofs(type, given, at, errors);
    this.checkRules(type, given, at, errors);
  }

  /** Field by its proto name (`port_value`) or JSON name (`portValue`); Envoy accepts both. */
  private fieldByKey(type: Type, key: string): Field | undefined {
    let byKey = this.fieldsByKey.get(type);
    if (!byKey) {
      byKey = new Map();
      for (const field of type.fieldsArray) {
        byKey.set(field.name, field);
        byKey.set(jsonName(field), field);
      }
      this.fieldsByKey.set(type, byKey);
    }
    return byKey.get(key);
  }

  private field(field: Field, value: unknown, at: string, errors: string[]): void {
    if (field instanceof MapField) {
      if (!isObject(value)) return void errors.push(`${label(at)}: expected an object (map<${field.keyType}, ${field.type}>), got ${describe(value)}`);
      for (const [key, entry] of Object.entries(value)) {
        const entryPath = `${at}[${JSON.stringify(key)}]`;
        const keyProblem = mapKeyProblem(field.keyType, key);
        if (keyProblem) errors.push(`${label(entryPath)}: invalid map key (${keyProblem})`);
        else this.element(field, entry, entryPath, errors);
      }
    } else if (field.repeated) {
      if (!Array.isArray(value)) return void errors.push(`${label(at)}: expected an array (repeated ${field.type}), got ${describe(value)}`);
      value.forEach((entry, index) => this.element(field, entry, `${at}[${index}]`, errors));
    } else {
      this.element(field, value, at, errors);
    }
  }

  /** One value of a field: a singular field's value, a repeated field's element, a map's value. */
  private element(field: Field, value: unknown, at: string, errors: string[]): void {
    const resolved = field.resolvedType;
    if (value === null && resolved?.fullName !== VALUE) return void errors.push(`${label(at)}: null is not a valid ${field.type}`);
    if (resolved instanceof Type) return this.messageValue(resolved, value, at, errors);
    if (resolved instanceof Enum) return this.enumValue(resolved, value, at, errors);
    this.scalar(field.type, value, at, errors);
  }

  private enumValue(type: Enum, value: unknown, at: string, errors: string[]): void {
    const name =
      typeof value === 'string' ? (value in type.values ? value : undefined) : Number.isInteger(value) ? type.valuesById[value as number] : undefined;
    if (name === undefined) {
      const known = Object.keys(type.values).join(', ');
      return void errors.push(`${label(at)}: expected one of ${known} (enum ${type.fullName.slice(1)}) or its number, got ${describe(value)}`);
    }
    const options = type.valuesOptions?.[name] ?? {};
    if (options['(envoy.annotations.disallowed_by_default_enum)'] === true) {
      errors.push(`${label(at)}: ${type.fullName.slice(1)}.${name} is disallowed by default in Envoy`);
    } else if (this.options.rejectDeprecated && options.deprecated === true) {
      errors.push(`${label(at)}: ${type.fullName.slice(1)}.${name} is deprecated`);
    }
  }

  private scalar(protoType: string, value: unknown, at: string, errors: string[]): void {
    const problem = scalarProblem(protoType, value);
    if (problem) errors.push(`${label(at)}: expected ${problem}, got ${describe(value)}`);
  }

  /** Fields Envoy refuses outright, and (optionally) deprecated ones. */
  private checkUsage(field: Field, what: string, at: string, errors: string[]): void {
    const options = field.options ?? {};
    if (options['(envoy.annotations.disallowed_by_default)'] === true) errors.push(`${label(at)}: ${what} is disallowed by default in Envoy`);
    else if (this.options.rejectDeprecated && options.deprecated === true) errors.push(`${label(at)}: ${what} is deprecated`);
  }

  /** At most one member of a oneof; exactly one when protoc-gen-validate says `(validate.required)`. */
  private checkOneofs(type: Type, given: Map<Field, { key: string }>, at: string, errors: string[]): void {
    for (const oneof of type.oneofsArray) {
      const set = oneof.fieldsArray.filter((field) => given.has(field)).map((field) => `"${given.get(field)?.key}"`);
      const members = oneof.fieldsArray.map((field) => field.name).join(', ');
      if (set.length > 1) {
        errors.push(`${label(at)}: ${set.join(' and ')} are members of oneof "${oneof.name}" in ${type.fullName.slice(1)}; set only one of ${members}`);
      } else if (set.length === 0 && oneof.options?.['(validate.required)'] === true) {
        errors.push(`${label(at)}: one of ${members} is required (oneof "${oneof.name}" of ${type.fullName.slice(1)})`);
      }
    }
  }

  /**
   * The cheap protoc-gen-validate rules: required fields, `string.min_len`, `repeated.min_items`.
   * As in PGV, a rule on a oneof member applies only when that member is set, and other fields are
   * checked with their default value when absent (an absent string is "", a repeated field []).
   */
  private checkRules(type: Type, given: Map<Field, { key: string; value: unknown }>, at: string, errors: string[]): void {
    for (const field of type.fieldsArray) {
      const options = field.options ?? {};
      const entry = given.get(field);
      if (field.partOf && !entry) continue;
      const where = label(entry ? join(at, entry.key) : join(at, field.name));
      const typeName = type.fullName.slice(1);
      if (!entry && REQUIRED_RULES.some((rule) => options[rule] === true)) {
        errors.push(`${where}: required field "${field.name}" of ${typeName} is missing`);
      }
      const minLength = options['(validate.rules).string.min_len'];
      if (typeof minLength === 'number' && field.type === 'string' && !field.repeated) {
        const text = entry?.value ?? '';
        const ignored = text === '' && options['(validate.rules).string.ignore_empty'] === true;
        if (typeof text === 'string' && !ignored && [...text].length < minLength) {
          errors.push(`${where}: "${field.name}" of ${typeName} needs at least ${minLength} character(s)`);
        }
      }
      const minItems = options['(validate.rules).repeated.min_items'];
      if (typeof minItems === 'number' && field.repeated) {
        const items = entry?.value ?? [];
        const ignored = Array.isArray(items) && items.length === 0 && options['(validate.rules).repeated.ignore_empty'] === true;
        if (Array.isArray(items) && !ignored && items.length < minItems) {
          errors.push(`${where}: "${field.name}" of ${typeName} needs at least ${minItems} item(s)`);
        }
      }
    }
  }
}

/** protoc's json_name: `port_value` becomes `portValue`, unless the field sets `json_name`. */
function jsonName(field: Field): string {
  const explicit = field.options?.json_name;
  if (typeof explicit === 'string') return explicit;
  return field.name.replace(/_([a-z0-9])?/g, (_match, next: string | undefined) => (next ? next.toUpperCase() : ''));
}

/** What is wrong with `value` as a proto3 JSON scalar of `protoType`, or undefined. */
function scalarProblem(protoType: string, value: unknown): string | undefined {
  const range = INTEGER_RANGES[protoType];
  if (range) {
    // Integers may be numbers or decimal strings (64-bit ones usually are strings).
    const integer = typeof value === 'number' && Number.isInteger(value) ? BigInt(value) : typeof value === 'string' && /^-?\d+$/.test(value) ? BigInt(value) : undefined;
    const [min, max] = range;
    return integer !== undefined && integer >= min && integer <= max ? undefined : `an integer (${protoType}) in [${min}, ${max}]`;
  }
  switch (protoType) {
    case 'double':
    case 'float': {
      const number = typeof value === 'number' ? value : typeof value === 'string' && (DECIMAL.test(value) || ['NaN', 'Infinity', '-Infinity'].includes(value)) ? Number(value) : undefined;
      const inRange = number !== undefined && (protoType === 'double' || !Number.isFinite(number) || Math.abs(number) <= FLOAT_MAX);
      return inRange ? undefined : `a number (${protoType})`;
    }
    case 'bool':
      return typeof value === 'boolean' ? undefined : 'true or false';
    case 'string':
      return typeof value === 'string' ? undefined : 'a string';
    case 'bytes':
      return typeof value === 'string' && BASE64.test(value) ? undefined : 'a base64 string (bytes)';
    default:
      throw new Error(`unexpected scalar type ${protoType}`);
  }
}

/** Map keys are strings in JSON; integer and bool keys must spell a valid key. */
function mapKeyProblem(keyType: string, key: string): string | undefined {
  if (keyType === 'string') return undefined;
  if (keyType === 'bool') return key === 'true' || key === 'false' ? undefined : 'expected "true" or "false"';
  return scalarProblem(keyType, key);
}

function isDuration(value: unknown): boolean {
  const match = typeof value === 'string' ? DURATION.exec(value) : null;
  return match !== null && BigInt(match[1]) <= MAX_DURATION_SECONDS;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function join(at: string, key: string): string {
  return at === '' ? key : `${at}.${key}`;
}

function label(at: string): string {
  return at === '' ? '(root)' : at;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value)}`;
  return `${typeof value} ${String(value)}`;
}

let envoyRoot: Root | undefined;

/**
 * Envoy's v3 API as protobufjs reflection, loaded once (about half a second): every message an
 * Envoy config can name, with the original field names (`keepCase`) and their options (the
 * protoc-gen-validate rules, `deprecated`).
 */
export function loadEnvoyApi(): Root {
  if (!envoyRoot) {
    const root = new Root();
    root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : (resolveEnvoyProto(target) ?? target));
    root.loadSync(envoyV3ProtoFiles(), { keepCase: true });
    root.resolveAll();
    envoyRoot = root;
  }
  return envoyRoot;
}

/**
 * Errors of an Envoy bootstrap file (YAML) against `envoy.config.bootstrap.v3.Bootstrap`; empty
 * means valid. Stricter than Envoy in one way: deprecated fields and enum values are errors, since
 * Envoy only warns about them until a release removes them.
 *
 * The YAML is read with the 1.2 core schema. Envoy's reader (yaml-cpp) also takes yes/no/on/off
 * as booleans: quote such strings.
 */
export function validateEnvoyBootstrap(yamlText: string): string[] {
  const document = parseDocument(yamlText);
  if (document.errors.length > 0) return document.errors.map((error) => `(yaml): ${error.message}`);
  const validator = new StrictProtoJsonValidator(loadEnvoyApi(), { rejectDeprecated: true });
  return validator.validate('envoy.config.bootstrap.v3.Bootstrap', document.toJS());
}
