#!/system/bin/sh
# Put the device in a steady state for timing, or undo it.
#   prepare.sh apply [STATE_FILE]   fixed-performance mode where Android offers it; governor
#                                   `performance` on cores whose governor file is writable (root)
#   prepare.sh undo  [STATE_FILE]   restore exactly what `apply` changed, then delete STATE_FILE
# STATE_FILE defaults to /data/local/tmp/hwnas-prepare.state. Output: key=value lines between
# HWNAS-PREPARE-BEGIN/END. Exit 0 even when nothing could be changed (an unrooted phone): the
# record says what was changed and what was kept, and the harness records that.
# HWNAS_SYSROOT (default empty) prefixes /sys, for tests.
R=${HWNAS_SYSROOT:-}
action=${1:-apply}
state=${2:-/data/local/tmp/hwnas-prepare.state}

rd() {
  [ -r "$1" ] || return 0
  { IFS= read -r _v < "$1"; } 2>/dev/null && printf '%s' "$_v"
  return 0
}

case $action in
apply)
  if [ -e "$state" ]; then
    # a second apply would save `performance` as the state to restore
    echo "prepare.sh: $state exists: run 'prepare.sh undo $state' first" >&2
    exit 2
  fi
  : > "$state" || { echo "prepare.sh: cannot write $state" >&2; exit 2; }
  echo "HWNAS-PREPARE-BEGIN v1 apply"
  fp=unavailable
  if command -v cmd >/dev/null 2>&1; then
    # Android 12+ (power HAL permitting); older releases print an error and exit non-zero
    if out=$(cmd power set-fixed-performance-mode-enabled true 2>&1); then
      case $out in
        *rror*|*nknown*|*xception*) fp=unavailable ;;
        *) fp=on; echo "fixed_perf 1" >> "$state" ;;
      esac
    fi
  fi
  echo "fixed_perf=$fp"
  for d in "$R"/sys/devices/system/cpu/cpu[0-9]*; do
    g="$d/cpufreq/scaling_governor"
    [ -f "$g" ] || continue
    i=${d##*/cpu}
    old=$(rd "$g")
    if [ "$old" = performance ]; then
      echo "governor.cpu$i=performance:kept"
    elif [ -w "$g" ] && echo performance 2>/dev/null > "$g" && [ "$(rd "$g")" = performance ]; then
      echo "gov $g $old" >> "$state"
      echo "governor.cpu$i=performance:changed:$old"
    else
      echo "governor.cpu$i=$old:kept"
    fi
  done
  echo "state=$state"
  echo "HWNAS-PREPARE-END"
  ;;
undo)
  echo "HWNAS-PREPARE-BEGIN v1 undo"
  if [ -f "$state" ]; then
    while read -r kind path old; do
      case $kind in
        gov)
          i=${path%/cpufreq/scaling_governor}; i=${i##*/cpu}
          if echo "$old" 2>/dev/null > "$path"; then
            echo "governor.cpu$i=$old:restored"
          else
            echo "governor.cpu$i=$(rd "$path"):failed"
          fi
          ;;
        fixed_perf)
          if cmd power set-fixed-performance-mode-enabled false >/dev/null 2>&1; then
            echo "fixed_perf=off"
          else
            echo "fixed_perf=failed"
          fi
          ;;
      esac
    done < "$state"
    rm -f "$state"
  else
    echo "state=missing"
  fi
  echo "HWNAS-PREPARE-END"
  ;;
*)
  echo "usage: prepare.sh apply|undo [STATE_FILE]" >&2
  exit 2
  ;;
esac
