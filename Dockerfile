# syntax=docker/dockerfile:1
# One image for the project's three Node services: the token authority (default command), ext-authz
# (`node dist/services/ext-authz/main.js`) and the echo backend (`node dist/services/echo-backend/main.js`).
# See docker-compose.yml.

FROM node:24.21-bookworm-slim AS base
WORKDIR /app

# Production dependencies. better-sqlite3 is native: npm fetches a prebuilt binary or compiles it
# with the tools installed here; they stay in this stage, out of the runtime image.
FROM base AS prod-deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

# All dependencies (the TypeScript compiler, buf for the reflection descriptor sets) to build dist/.
FROM prod-deps AS build
RUN npm ci --no-audit --no-fund
COPY . .
# proto/ and config/ may be absent from a checkout (git keeps no empty folders); the runtime stage
# copies them from here, so make sure they exist.
RUN npm run build && mkdir -p proto config

FROM base AS runtime
ENV NODE_ENV=production
COPY package.json package-lock.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/proto ./proto
COPY --from=build /app/config ./config
# The SQLite store and the generated admin token go to /app/data (a named volume in
# docker-compose). Created here so a new volume starts owned by the unprivileged user.
RUN mkdir -p data data-plane && chown node:node data data-plane
USER node
# token-authority HTTP and gRPC, ext-authz gRPC and HTTP, echo backend.
EXPOSE 8080 50051 9191 9192 8081
CMD ["node", "dist/services/token-authority/main.js"]
