#!/usr/bin/env bash
# GPU smoke test, for any box with an NVIDIA GPU, Docker and the NVIDIA container
# toolkit (a DGX, a GPU CI runner). From the repository root, after `npm ci`:
#   bash scripts/gpu-smoke.sh
# 1. builds Dockerfile.gpu;
# 2. `docker run --gpus device=N IMAGE selftest --gpu`: non-root, writable /tmp on a
#    read-only root fs, and nvidia-smi sees the pinned GPU from inside the container;
# 3. one job end to end in a GPU container: an import_assets_jsonl job queued on a real
#    PostgreSQL (HD_DATABASE_URL, or an embedded one started here) is run by
#    `docker run --gpus device=N … IMAGE --job-id ID` and must end `completed`.
# Knobs: HD_SMOKE_IMAGE (hd-runner-gpu:smoke), HD_SMOKE_GPU (0), BASE_IMAGE and
# NODE_IMAGE (build arguments, default: Dockerfile.gpu's), HD_SMOKE_SKIP_BUILD=1,
# DOCKER (docker), HD_DATABASE_URL (a database on this host's 127.0.0.1 works: the job
# container uses --network host).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

IMAGE=${HD_SMOKE_IMAGE:-hd-runner-gpu:smoke}
GPU=${HD_SMOKE_GPU:-0}
DOCKER=${DOCKER:-docker}
ACCOUNT=5a0c0e00-0000-4000-8000-00000000c0de
log() { printf 'gpu-smoke: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this is not a GPU box (or the driver is missing)"
log "host GPUs:"
nvidia-smi -L >&2 || die "nvidia-smi -L failed"
[ -d node_modules ] || die "run npm ci first (the script uses the hd-runner CLI on the host)"

# --- 1. image
if [ "${HD_SMOKE_SKIP_BUILD:-0}" != 1 ]; then
  build_args=()
  [ -n "${BASE_IMAGE:-}" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [ -n "${NODE_IMAGE:-}" ] && build_args+=(--build-arg "NODE_IMAGE=$NODE_IMAGE")
  log "building $IMAGE from Dockerfile.gpu"
  "$DOCKER" build -q -f Dockerfile.gpu "${build_args[@]}" -t "$IMAGE" . >/dev/null
fi

# The hardening the scheduler applies to every runner container (scheduler/launchers/docker.ts).
hardened=(--read-only --tmpfs /tmp:rw,noexec,nosuid,nodev,size=256m --cap-drop ALL
  --security-opt no-new-privileges --pids-limit 256 --user 1000:1000)

# --- 2. selftest with the GPU
log "selftest --gpu in a container pinned to GPU $GPU"
"$DOCKER" run --rm --gpus "device=$GPU" "${hardened[@]}" "$IMAGE" selftest --gpu ||
  die "selftest --gpu failed in the container"

# --- 3. one job end to end
work=$(mktemp -d)
chmod 0755 "$work" # the embedded PostgreSQL runs as its own user when we are root
pg_pid=""
cleanup() {
  if [ -n "$pg_pid" ]; then kill "$pg_pid" 2>/dev/null && wait "$pg_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${HD_DATABASE_URL:-}" ]; then
  log "starting an embedded PostgreSQL in $work/pg"
  node --input-type=module -e "
    import { startEmbeddedPostgres } from './control-plane/embedded-postgres.ts';
    const db = await startEmbeddedPostgres({ dir: process.argv[1], persistent: false });
    console.log(db.connectionString());
    const stop = () => db.stop().then(() => process.exit(0));
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    setInterval(() => {}, 1 << 30);
  " "$work/pg" >"$work/pg.url" &
  pg_pid=$!
  for _ in $(seq 1 120); do
    [ -s "$work/pg.url" ] && break
    kill -0 "$pg_pid" 2>/dev/null || die "the embedded PostgreSQL did not start"
    sleep 0.5
  done
  [ -s "$work/pg.url" ] || die "the embedded PostgreSQL did not start within 60 s"
  HD_DATABASE_URL=$(head -n1 "$work/pg.url")
fi
export HD_DATABASE_URL
export HD_STORAGE_ROOT="$work/storage"
export HD_LOG_LEVEL=warn
mkdir -p "$HD_STORAGE_ROOT"
node cli/main.ts migrate >/dev/null
job=$(node cli/main.ts enqueue --account "$ACCOUNT" --file examples/acme-assets.jsonl)
chmod -R a+rX "$HD_STORAGE_ROOT" # the container reads it as uid 1000
log "running job $job in a container pinned to GPU $GPU"
"$DOCKER" run --rm --gpus "device=$GPU" "${hardened[@]}" --network host \
  -e HD_DATABASE_URL -e HD_STORAGE_ROOT=/hd-storage -e HD_WORKER_ID="gpu-smoke" \
  -e HD_LOG_LEVEL=info -v "$HD_STORAGE_ROOT:/hd-storage:ro" "$IMAGE" --job-id "$job" ||
  die "the runner container exited with $?"
status=$(node cli/main.ts jobs show "$job" --json | node -e '
  let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).status));')
[ "$status" = completed ] || die "job $job ended $status, not completed"
log "OK: selftest --gpu passed and job $job completed in $IMAGE on GPU $GPU"
