# Sourced by the bench scripts after they `cd` to the repository: a scratch
# directory ($dir) and the processes they start ($pids), both gone when the
# script exits, on an error or Ctrl-C too.
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
