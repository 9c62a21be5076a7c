#!/system/bin/sh
# Time a runner on the device.
#   bench.sh RUNNER ARTIFACT [WARMUP=3] [RUNS=10] [MASK=auto] [MAX_TEMP_C=45] [WAIT_S=120]
# Each run is one invocation `taskset MASK RUNNER ARTIFACT`, pinned to MASK (hex; `auto`: the big
# cores, i.e. those whose cpuinfo_max_freq is at least 80% of the fastest core's).
# Refuses to start while the hottest thermal zone is above MAX_TEMP_C: waits up to WAIT_S seconds,
# then prints `hot ...` and exits 5.
#
# Timing (see README.md): around each invocation the script prints the clock `date +%s%N` (ns)
# before and after; the subtraction happens in the parser because mksh, Android's sh, computes with
# 32-bit integers. If the runner prints a line `hwnas_time_ms=<number>` (its own in-process time,
# without process start-up and library loading), that number is passed on as well and preferred.
# HWNAS_TIME=runner makes that line mandatory (a run without it fails).
#
# HWNAS_STYLE=executor_runner calls ExecuTorch's `executor_runner` the way it is built:
# `RUNNER --model_path ARTIFACT --num_executions HWNAS_INNER` (default 1); its own log line
# `Model executed successfully N time(s) in T ms.` gives RUNNER_MS = T for all N executions (the
# parser divides by N, printed as `inner=N`); that line is mandatory in this style.
#
# Output: key=value header lines and one `run I START_NS END_NS [RUNNER_MS]` line per timed run,
# between HWNAS-BENCH-BEGIN and `HWNAS-BENCH-END status=ok|fail|hot`. A failing run prints
# `fail I REASON` and its output as `out I LINE` lines, then stops (exit 4).
# HWNAS_SYSROOT (default empty) prefixes /sys, for tests.
R=${HWNAS_SYSROOT:-}
runner=$1
artifact=$2
warmup=${3:-3}
runs=${4:-10}
mask=${5:-auto}
max_temp=${6:-45}
wait_s=${7:-120}
time_mode=${HWNAS_TIME:-auto}
style=${HWNAS_STYLE:-plain}
inner=${HWNAS_INNER:-1}

if [ -z "$runner" ] || [ -z "$artifact" ]; then
  echo "usage: bench.sh RUNNER ARTIFACT [WARMUP] [RUNS] [MASK|auto] [MAX_TEMP_C] [WAIT_S]" >&2
  exit 2
fi
case $style in
  plain) inner=1 ;;
  executor_runner) time_mode=runner ;;
  *) echo "bench.sh: HWNAS_STYLE '$style' is not plain or executor_runner" >&2; exit 2 ;;
esac
for v in "$warmup" "$runs" "$max_temp" "$wait_s" "$inner"; do
  case $v in ''|*[!0-9]*) echo "bench.sh: '$v' is not a non-negative integer" >&2; exit 2 ;; esac
done
[ "$inner" -ge 1 ] || { echo "bench.sh: HWNAS_INNER must be at least 1" >&2; exit 2; }

rd() {
  [ -r "$1" ] || return 0
  { IFS= read -r _v < "$1"; } 2>/dev/null && printf '%s' "$_v"
  return 0
}

hottest() {  # hottest plausible zone in whole degrees C; empty when there are no zones
  _h=
  for _z in "$R"/sys/class/thermal/thermal_zone[0-9]*; do
    _t=$(rd "$_z/temp")
    case $_t in ''|*[!0-9-]*) continue ;; esac
    # millidegrees on almost every kernel; a few report whole degrees
    if [ "$_t" -ge 1000 ] || [ "$_t" -le -1000 ]; then _t=$((_t / 1000)); fi
    # ignore sensors that report nonsense (-273, 0x7fff...) rather than refusing forever
    [ "$_t" -gt -40 ] && [ "$_t" -lt 150 ] || continue
    if [ -z "$_h" ] || [ "$_t" -gt "$_h" ]; then _h=$_t; fi
  done
  printf '%s' "$_h"
}

freqs() {  # `freq_<tag> cpuI KHZ` for each core in the mask
  for _d in "$R"/sys/devices/system/cpu/cpu[0-9]*; do
    _i=${_d##*/cpu}
    case $_i in *[!0-9]*) continue ;; esac
    [ $(( (0x$hexmask >> _i) & 1 )) -eq 1 ] || continue
    _f=$(rd "$_d/cpufreq/scaling_cur_freq")
    [ -n "$_f" ] && echo "freq_$1 cpu$_i $_f"
  done
  return 0
}

# --- clock: must give nanoseconds (toybox and GNU date do; old busybox prints a literal N)
c=$(date +%s%N 2>/dev/null)
case $c in ''|*[!0-9]*) clock_ok=0 ;; *) clock_ok=1 ;; esac
if [ "$clock_ok" = 0 ] && [ "$time_mode" != runner ]; then
  echo "bench.sh: 'date +%s%N' gives '$c', not nanoseconds; use a runner that prints hwnas_time_ms= and HWNAS_TIME=runner" >&2
  exit 3
fi

# --- core mask
mask_source=arg
if [ "$mask" = auto ]; then
  top=0
  for d in "$R"/sys/devices/system/cpu/cpu[0-9]*; do
    f=$(rd "$d/cpufreq/cpuinfo_max_freq")
    case $f in ''|*[!0-9]*) continue ;; esac
    [ "$f" -gt "$top" ] && top=$f
  done
  m=0
  for d in "$R"/sys/devices/system/cpu/cpu[0-9]*; do
    i=${d##*/cpu}
    case $i in *[!0-9]*) continue ;; esac
    f=$(rd "$d/cpufreq/cpuinfo_max_freq")
    case $f in ''|*[!0-9]*) f=0 ;; esac
    on=$(rd "$d/online"); [ -n "$on" ] || on=1
    [ "$on" = 1 ] || continue
    # kHz * 5 stays far below 2^31 (mksh's integer width)
    if [ "$top" -eq 0 ] || [ $((f * 5)) -ge $((top * 4)) ]; then m=$((m | (1 << i))); fi
  done
  if [ "$m" -eq 0 ]; then
    mask_source=none
    hexmask=
  else
    mask_source=max_freq
    [ "$top" -eq 0 ] && mask_source=all
    hexmask=$(printf '%x' "$m")
  fi
else
  hexmask=${mask#0x}
  case $hexmask in ''|*[!0-9a-fA-F]*) echo "bench.sh: mask '$mask' is not hex" >&2; exit 2 ;; esac
fi

pin=
if [ -n "$hexmask" ]; then
  if command -v taskset >/dev/null 2>&1; then pin="taskset $hexmask"; else mask_source=unpinned; fi
fi

echo "HWNAS-BENCH-BEGIN v1"
echo "runner=$runner"
echo "artifact=$artifact"
echo "warmup=$warmup"
echo "runs=$runs"
echo "mask=${hexmask:+0x$hexmask}"
echo "mask_source=$mask_source"
echo "time_mode=$time_mode"
echo "style=$style"
echo "inner=$inner"
echo "max_temp_c=$max_temp"

# --- wait while hot
waited=0
while :; do
  t=$(hottest)
  if [ -z "$t" ] || [ "$t" -le "$max_temp" ]; then break; fi
  if [ "$waited" -ge "$wait_s" ]; then
    echo "hot $t $max_temp $waited"
    echo "HWNAS-BENCH-END status=hot"
    echo "bench.sh: hottest zone at ${t} C stayed above ${max_temp} C for ${waited} s; let the phone cool (screen off, no charging) or raise the bound" >&2
    exit 5
  fi
  sleep 1
  waited=$((waited + 1))
done
echo "waited_s=$waited"
echo "temp_before_c=$t"
[ -n "$hexmask" ] && freqs before

fail() {  # fail I REASON OUTPUT
  echo "fail $1 $2"
  printf '%s\n' "$3" | while IFS= read -r _l; do echo "out $1 $_l"; done
  echo "HWNAS-BENCH-END status=fail"
  exit 4
}

runner_ms() {  # the runner's own time for this invocation (ms), or nothing
  if [ "$style" = executor_runner ]; then
    printf '%s\n' "$1" | sed -n 's/.*Model executed successfully [0-9]* time(s) in \([^ ]*\) ms\..*/\1/p' | tail -n 1
  else
    printf '%s\n' "$1" | sed -n 's/^hwnas_time_ms=//p' | tail -n 1
  fi
}

invoke() {  # one invocation of the runner on the artifact, pinned
  if [ "$style" = executor_runner ]; then
    $pin "$runner" --model_path "$artifact" --num_executions "$inner" 2>&1
  else
    $pin "$runner" "$artifact" 2>&1
  fi
}

i=0
while [ "$i" -lt "$warmup" ]; do
  i=$((i + 1))
  out=$(invoke); rc=$?
  [ "$rc" -eq 0 ] || fail "w$i" "exit=$rc" "$out"
done

i=0
while [ "$i" -lt "$runs" ]; do
  i=$((i + 1))
  s=$(date +%s%N)
  out=$(invoke); rc=$?
  e=$(date +%s%N)
  [ "$rc" -eq 0 ] || fail "$i" "exit=$rc" "$out"
  ms=$(runner_ms "$out")
  if [ -n "$ms" ]; then
    case $ms in *[!0-9.]*|.*|*.|*.*.*) fail "$i" "bad-time" "$out" ;; esac
  elif [ "$time_mode" = runner ]; then
    fail "$i" "no-time" "$out"
  fi
  [ "$clock_ok" = 1 ] || { s=-; e=-; }
  echo "run $i $s $e${ms:+ $ms}"
done

[ -n "$hexmask" ] && freqs after
echo "temp_after_c=$(hottest)"
echo "HWNAS-BENCH-END status=ok"
