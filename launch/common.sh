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
