#!/system/bin/sh
# Print one record describing the device: `key=value` lines between HWNAS-INFO-BEGIN/END.
# POSIX sh: runs under Android's mksh + toybox and under dash. Missing files and properties are
# left out (the parser treats absent keys as unknown), never reported as empty numbers.
# HWNAS_SYSROOT (default empty) prefixes /sys and /proc, so tests can point it at a fake tree.
R=${HWNAS_SYSROOT:-}

rd() {  # first line of a file, or nothing (sysfs files may be absent, unreadable, or EINVAL)
  [ -r "$1" ] || return 0
  { IFS= read -r _v < "$1"; } 2>/dev/null && printf '%s' "$_v"
  return 0
}

kv() {  # key=value, only when the value is known; newlines would break the record
  [ -n "$2" ] || return 0
  printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ')"
}

prop() {
  command -v getprop >/dev/null 2>&1 || return 0
  getprop "$1" 2>/dev/null
}

echo "HWNAS-INFO-BEGIN v1"
kv model "$(prop ro.product.model)"
kv manufacturer "$(prop ro.product.manufacturer)"
kv device "$(prop ro.product.device)"
# ro.soc.model exists from Android 12; older devices only name the board platform
soc=$(prop ro.soc.model)
[ -n "$soc" ] || soc=$(prop ro.board.platform)
[ -n "$soc" ] || soc=$(prop ro.hardware)
kv soc "$soc"
kv soc_manufacturer "$(prop ro.soc.manufacturer)"
abi=$(prop ro.product.cpu.abi)
[ -n "$abi" ] || abi=$(uname -m 2>/dev/null)
kv abi "$abi"
kv android_release "$(prop ro.build.version.release)"
kv sdk "$(prop ro.build.version.sdk)"
kv build_fingerprint "$(prop ro.build.fingerprint)"
kv kernel "$(uname -r 2>/dev/null)"
kv serialno "$(prop ro.serialno)"
# GPU: the EGL driver names the vendor (adreno, mali, ...); OpenCL and Vulkan are usable only where
# the vendor ships their libraries (TVM's opencl target and ExecuTorch's Vulkan backend need them)
kv gpu "$(prop ro.hardware.egl)"
for f in "$R"/vendor/lib64/libOpenCL.so "$R"/system/vendor/lib64/libOpenCL.so "$R"/system/lib64/libOpenCL.so; do
  if [ -e "$f" ]; then kv gpu_opencl "${f#$R}"; break; fi
done
vk=$(prop ro.hardware.vulkan)
if [ -z "$vk" ]; then
  for f in "$R"/vendor/lib64/hw/vulkan.*.so; do
    [ -e "$f" ] || continue
    vk=${f##*/vulkan.}; vk=${vk%.so}; break
  done
fi
kv gpu_vulkan "$vk"

n=0
for d in "$R"/sys/devices/system/cpu/cpu[0-9]*; do
  [ -d "$d" ] || continue
  i=${d##*/cpu}
  case $i in *[!0-9]*) continue ;; esac
  n=$((n + 1))
  # cpu0 usually has no `online` file: it cannot be taken offline
  on=$(rd "$d/online"); [ -n "$on" ] || on=1
  kv "cpu$i.online" "$on"
  kv "cpu$i.max_khz" "$(rd "$d/cpufreq/cpuinfo_max_freq")"
  kv "cpu$i.min_khz" "$(rd "$d/cpufreq/cpuinfo_min_freq")"
  kv "cpu$i.cur_khz" "$(rd "$d/cpufreq/scaling_cur_freq")"
  kv "cpu$i.scaling_max_khz" "$(rd "$d/cpufreq/scaling_max_freq")"
  kv "cpu$i.governor" "$(rd "$d/cpufreq/scaling_governor")"
done
kv cpu_count "$n"

for z in "$R"/sys/class/thermal/thermal_zone[0-9]*; do
  [ -d "$z" ] || continue
  i=${z##*/thermal_zone}
  kv "thermal$i.type" "$(rd "$z/type")"
  # raw value: usually millidegrees C, a few old kernels report degrees (the parser decides)
  kv "thermal$i.temp" "$(rd "$z/temp")"
done

b="$R/sys/class/power_supply/battery"
kv battery.level "$(rd "$b/capacity")"
kv battery.status "$(rd "$b/status")"
kv battery.temp_decic "$(rd "$b/temp")"
echo "HWNAS-INFO-END"
