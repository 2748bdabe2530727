# syntax=docker/dockerfile:1
# One image for the project's three Node services: the token authority (default command), ext-authz
# (`node --max-semi-space-size=2 --heap-growing-percent=100 --expose-gc dist/services/ext-authz/main.js` with
# MALLOC_ARENA_MAX=2 in its environment, the flags and environment of services/ext-authz/node-flags.ts) and the echo backend (`node dist/services/echo-backend/main.js`).
# See docker-compose.yml.

FROM node:24.21-bookworm-slim AS base
WORKDIR /app

# Production dependencies. better-sqlite3 13 is a Node-API module that ships its binary for every
# platform (no compiler needed, nor installed): only this platform's stays, without SQLite's sources
# (about 25 MB less). protobufjs lists @types/node (and through it undici-types) as a dependency of
# its own: type declarations, never loaded at run time (about 3 MB), so they go too.
FROM base AS prod-deps
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/@types node_modules/undici-types \
 && find node_modules/better-sqlite3/prebuilds -type f ! -name "$(node -p 'process.platform + "-" + process.arch').node" -delete \
 && rm -rf node_modules/better-sqlite3/deps node_modules/better-sqlite3/src \
 && node -e "new (require('better-sqlite3'))(':memory:').prepare('select 1').get()"

# All dependencies (the TypeScript compiler, buf for the reflection descriptor sets) to build dist/.
FROM prod-deps AS build
RUN npm ci --no-audit --no-fund
COPY . .
# proto/ and config/ may be absent from a checkout (git keeps no empty folders); the runtime stage
# copies them from here, so make sure they exist.
RUN npm run build && mkdir -p proto config

FROM base AS runtime
ENV NODE_ENV=production
# package.json, package-lock.json and node_modules.
COPY --from=prod-deps /app ./
COPY --from=build /app/dist ./dist
COPY --from=build /app/proto ./proto
COPY --from=build /app/config ./config
# The SQLite store and the generated admin token's hash go to /app/data, the generated data plane
# token to /app/data-plane (named volumes in docker-compose, the second shared with ext-authz).
# Created here so a new volume starts owned by the unprivileged user.
RUN mkdir -p data data-plane && chown node:node data data-plane
USER node
# token-authority HTTP and gRPC, ext-authz gRPC and HTTP, echo backend.
EXPOSE 8080 50051 9191 9192 8081
CMD ["node", "dist/services/token-authority/main.js"]
