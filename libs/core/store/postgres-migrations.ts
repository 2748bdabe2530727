/**
 * The PostgreSQL schema, as versioned migrations applied once each, in order, at start (under an
 * advisory lock; see PostgresStore.migrate). Never edit a released migration: add the next one.
 * `{schema}` is replaced by the quoted schema name. Ids sort bytewise (COLLATE "C"), as on SQLite,
 * so pages come in the same order on both stores.
 */
export const POSTGRES_MIGRATIONS: { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'entities and change log',
    sql: `
      CREATE TABLE {schema}.api_keys (client_id text COLLATE "C" PRIMARY KEY, doc json NOT NULL);
      CREATE TABLE {schema}.key_pairs (id text COLLATE "C" PRIMARY KEY, doc json NOT NULL);
      CREATE TABLE {schema}.revoked_tokens (jti text COLLATE "C" PRIMARY KEY, expires_at bigint NOT NULL);
      CREATE INDEX revoked_tokens_expiry ON {schema}.revoked_tokens (expires_at);
      CREATE TABLE {schema}.changes (seq bigint PRIMARY KEY, entity text NOT NULL, id text NOT NULL);
      CREATE TABLE {schema}.change_head (single boolean PRIMARY KEY DEFAULT true CHECK (single), seq bigint NOT NULL);
      INSERT INTO {schema}.change_head (seq) VALUES (0);
      CREATE TABLE {schema}.meta (name text PRIMARY KEY, value text NOT NULL);
    `,
  },
  {
    version: 2,
    name: 'audit log',
    // Ids from a sequence, taken while the write holds the change-log counter row (PostgresStore
    // appends after logging the change): they increase in commit order, so paging never skips one.
    sql: `
      CREATE TABLE {schema}.audit_log (
        id bigserial PRIMARY KEY, at text NOT NULL, actor text NOT NULL, action text NOT NULL,
        entity text NOT NULL, entity_id text COLLATE "C" NOT NULL, change json NOT NULL
      );
      CREATE INDEX audit_log_entity ON {schema}.audit_log (entity, entity_id, id);
    `,
  },
  {
    version: 3,
    name: 'change tags',
    // StoreChange.tag: tells a position given out again (a restored backup) from the one a data plane saw.
    sql: `ALTER TABLE {schema}.changes ADD COLUMN tag text;`,
  },
  {
    version: 4,
    name: 'routes',
    // route_claims: the (domain, path_prefix) pairs of enabled routes, one owner each (libs/core/routes.ts).
    sql: `
      CREATE TABLE {schema}.routes (id text COLLATE "C" PRIMARY KEY, doc json NOT NULL);
      CREATE TABLE {schema}.route_claims (
        domain text NOT NULL, path_prefix text NOT NULL, route_id text COLLATE "C" NOT NULL, PRIMARY KEY (domain, path_prefix)
      );
      CREATE INDEX route_claims_route ON {schema}.route_claims (route_id);
    `,
  },
  {
    version: 5,
    name: 'used client assertions',
    // AssertionReplayRepository: private_key_jwt jtis, kept until the assertion expires.
    sql: `
      CREATE TABLE {schema}.used_assertions (id text COLLATE "C" PRIMARY KEY, expires_at bigint NOT NULL);
      CREATE INDEX used_assertions_expiry ON {schema}.used_assertions (expires_at);
    `,
  },
];
