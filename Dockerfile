# syntax=docker/dockerfile:1
# One image for every ShopStream process: the container command picks the service, e.g.
#   node dist/services/orders/main.js        (the default)
#   node dist/services/audit/main.js
#   node dist/services/console/main.js       (the operations console; its web UI is bundled into dist/console-ui)
#   node dist/simulators/payment-gateway/main.js
#   node dist/tools/dlq.js list               (the DLQ tool, with NATS_URL set)
# Build: docker build -t shopstream:<version> .

ARG NODE_IMAGE=node:22-bookworm-slim

# 1. Compile TypeScript (src/ → dist/) and bundle the console's web UI (web/console → dist/console-ui, esbuild: lit and
#    uPlot inside, nothing fetched at run time) with the dev dependencies.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY web ./web
COPY scripts/build-console-ui.ts ./scripts/
RUN npm run build

# 2. Production dependencies only.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# 3. Runtime: node, production node_modules, dist/ and package.json ("type": "module"); no npm cache, no sources.
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# The image's "node" user, by number, so Kubernetes can verify runAsNonRoot. Nothing under /app is writable by
# it: the root filesystem can be mounted read-only (audit's PGlite DATA_DIR, when used, must be a volume).
USER 1000:1000
EXPOSE 8080 8081 8082 8083 8084 8085
# Node is PID 1 and handles SIGTERM itself: readiness false, stop pulling, hand back, drain, exit.
STOPSIGNAL SIGTERM
CMD ["node", "dist/services/orders/main.js"]
