# Shared helpers for the launch scripts. `--dry-run` (or DRY_RUN=1) prints each command instead of
# running it, so a launch can be checked before it spends accelerator time.
DRY_RUN="${DRY_RUN:-0}"
ARGS=()
for a in "$@"; do
  if [[ "$a" == "--dry-run" ]]; then DRY_RUN=1; else ARGS+=("$a"); fi
done

run() {
  if [[ "$DRY_RUN" == "1" ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

need() {  # need NAME VALUE: refuse to launch with a missing setting
  if [[ -z "$2" ]]; then echo "error: $1 is not set (see the header of $0)" >&2; exit 2; fi
}

# A persistent XLA compilation cache in the run's workdir: a requeued or preempted job loads its
# compiled programs instead of compiling them again (minutes for the paper configs). The cache holds
# code that JAX runs, so it belongs in a directory only you can write, like the workdir.
# JAX_COMPILATION_CACHE_DIR=DIR puts it elsewhere; JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
cache_env() {  # cache_env WORKDIR: sets CACHE_ENV to the env assignment for the training command
  local dir="${JAX_COMPILATION_CACHE_DIR-$1/jax_cache}"
  CACHE_ENV=()
  if [[ -n "$dir" ]]; then CACHE_ENV=("JAX_COMPILATION_CACHE_DIR=$dir"); fi
}
