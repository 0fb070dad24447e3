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

# XLA:CPU allocates every program's temporary buffers afresh on each call, and glibc hands out
# buffers that large as new memory mappings, so each of their 4 KiB pages faults on first touch
# (CIFAR10 discriminator update on 2 CPU cores: 1.7 GiB of temporaries, ~470,000 faults, ~1 s of
# system time per call). glibc's hugetlb tunable maps them with transparent huge pages instead.
# Set GLIBC_TUNABLES yourself to replace this; on accelerators it only touches host memory.
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"

# The training command exits with 75 (EX_TEMPFAIL) when a signal stopped it after saving the step
# it reached (SIGTERM: preemption, `docker stop`, scancel; SIGUSR1: a time limit near; SIGINT): the
# same command resumes it exactly. 0 = finished, 1 = an error it explained, others = a crash.
EXIT_PREEMPTED=75

train() {  # train CMD...: runs the training command; after a stop on a signal, requeues a SLURM
  # job (SLURM_JOB_ID set) or says how to resume, and passes the exit status on otherwise
  local status=0
  run "$@" || status=$?
  if [[ "$status" == "$EXIT_PREEMPTED" ]]; then
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
      echo "training saved its step and stopped on a signal: requeueing job $SLURM_JOB_ID" >&2
      run scontrol requeue "$SLURM_JOB_ID"
      return 0
    fi
    echo "training saved its step and stopped on a signal: run the same command again to" \
      "resume it" >&2
  fi
  return "$status"
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

# ---- a fresh Debian/Ubuntu machine: system packages and the virtualenv ---------------------------
# These helpers call only shell builtins besides the commands they print or run, so that dry runs
# work with nothing but the probes (id, sudo, python3) on PATH.

apt_install() {  # apt_install PKG...: installs Debian/Ubuntu packages, as root directly or via sudo
  local prefix=()
  if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "error: this needs the Debian/Ubuntu package(s) $*, and installing them needs root" \
        "(there is no sudo here). As root, run: apt-get update && apt-get install -y $*" >&2
      exit 1
    fi
    prefix=(sudo)
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: this needs the Debian/Ubuntu package(s) $* and there is no apt-get here:" \
      "install their equivalent with this system's package manager" >&2
    exit 1
  fi
  run "${prefix[@]}" apt-get update
  run "${prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

needs_python_venv() {  # needs_python_venv VENV: true when VENV is missing and python3 cannot make it
  [[ ! -x "$1/bin/python" ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1
}

# setup_venv VENV [EXTRAS]: creates VENV (python3 -m venv) unless it exists, and installs this
# checkout into it (pip install -e ".[EXTRAS]") unless an install through this function left the
# current setup.py in VENV (any install serves when no extras are asked for). Run from the
# repository root.
setup_venv() {
  local venv="$1" extras="${2:-}" spec="." marker="$1/udpm_jax-installed.setup.py" m
  local done_markers=("$venv"/udpm_jax-installed*.setup.py)
  if [[ -n "$extras" ]]; then
    spec=".[$extras]"
    marker="$venv/udpm_jax-installed-$extras.setup.py"
    done_markers=("$marker")
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    run python3 -m venv "$venv"
  else
    for m in "${done_markers[@]}"; do
      if [[ -f "$m" && "$(<"$m")" == "$(<setup.py)" ]]; then return 0; fi
    done
  fi
  run "$venv/bin/python" -m pip install -e "$spec"
  run cp setup.py "$marker"
}

absolute() {  # absolute PATH: PATH from the current directory (URLs such as gs://… unchanged)
  if [[ "$1" == /* || "$1" == *://* ]]; then echo "$1"; else echo "$PWD/$1"; fi
}
