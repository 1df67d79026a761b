# Sourced by the launch scripts: preload tcmalloc for the Python processes they start, and
# print one line saying which allocator the job runs with.
#
# Why: on CPU, XLA's runtime mallocs and frees its ~500 MB of temporaries every train step.
# glibc's malloc hands them back to the kernel each time and the next step faults them in
# again: ~130,000 minor page faults and ~0.23 s of system time per step of the default
# config. tcmalloc keeps them (4 faults and ~0.003 s per step), with bit-identical results;
# see benchmarks/bench_allocator.py and BENCHMARKS.md.
#
# tcmalloc comes from the system (Debian/Ubuntu: libtcmalloc-minimal4). When it is missing
# and this runs as root with apt-get, it is installed once (a failed try is remembered in
# .venv/.tcmalloc-apt-failed and not repeated). Otherwise the job runs on glibc's malloc,
# with the same results, and the notice says how to get tcmalloc.
#
#   CMAH_ALLOCATOR=auto    (default) as above
#   CMAH_ALLOCATOR=system  glibc's malloc: nothing preloaded or installed (the old behaviour)
# An allocator already in LD_PRELOAD is left as it is. tcmalloc runs with
# TCMALLOC_RELEASE_RATE=0 (keep freed memory rather than hand it back) unless that is set:
# with its default rate some runs still faulted (up to ~5,700 per step); with 0, 3 runs had
# 3-4 per step, for ~0.5 GB more peak RSS (2.7 GB; glibc 1.9 GB).

_cmah_tcmalloc_find() {
  local lib
  for lib in $( { /sbin/ldconfig -p || ldconfig -p; } 2>/dev/null \
                | awk '/libtcmalloc_minimal\.so\.4 /{print $NF}') \
             /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
             /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 \
             /usr/lib64/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4; do
    # Usable when the dynamic loader preloads it without a word.
    if [ -f "$lib" ] && [ -z "$(LD_PRELOAD="$lib" /usr/bin/env true 2>&1)" ]; then
      echo "$lib"; return 0
    fi
  done
  return 1
}

_cmah_tcmalloc_apt() {  # root + apt-get, not tried before: install libtcmalloc-minimal4
  local failed=.venv/.tcmalloc-apt-failed
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ ! -e "$failed" ] || return 1
  echo "[launch] installing libtcmalloc-minimal4 with apt-get (faster CPU training;" \
       "CMAH_ALLOCATOR=system skips this)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=120 \
           libtcmalloc-minimal4 \
         || { apt-get update -qq -o DPkg::Lock::Timeout=120 \
              && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                   -o DPkg::Lock::Timeout=120 libtcmalloc-minimal4; }; } \
       >/tmp/cmah_tcmalloc_apt.$$.log 2>&1; then
    mkdir -p .venv && cp /tmp/cmah_tcmalloc_apt.$$.log "$failed" 2>/dev/null || touch "$failed"
    rm -f /tmp/cmah_tcmalloc_apt.$$.log
    return 1
  fi
  rm -f /tmp/cmah_tcmalloc_apt.$$.log
}

_cmah_allocator() {
  local lib how=""
  case "${LD_PRELOAD:-}" in
    *malloc*) echo "[launch] allocator: as preloaded (LD_PRELOAD=$LD_PRELOAD)"; return 0 ;;
  esac
  case "${CMAH_ALLOCATOR:-auto}" in
    system) echo "[launch] allocator: glibc malloc (CMAH_ALLOCATOR=system)"; return 0 ;;
    auto) ;;
    *) echo "[launch] allocator: glibc malloc (CMAH_ALLOCATOR=${CMAH_ALLOCATOR} unknown:" \
            "use auto or system)"; return 0 ;;
  esac
  if [ "$(uname -s)" = Linux ]; then
    lib=$(_cmah_tcmalloc_find) \
      || { _cmah_tcmalloc_apt && lib=$(_cmah_tcmalloc_find) && how=", installed now"; } \
      || lib=""
  fi
  if [ -z "${lib:-}" ]; then
    echo "[launch] allocator: glibc malloc (tcmalloc not found; 'apt-get install" \
         "libtcmalloc-minimal4' or your system's gperftools package makes CPU training" \
         "~1.4x faster, same results)"
    return 0
  fi
  export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
  export TCMALLOC_RELEASE_RATE=${TCMALLOC_RELEASE_RATE:-0}
  echo "[launch] allocator: tcmalloc ($lib$how, TCMALLOC_RELEASE_RATE=$TCMALLOC_RELEASE_RATE;" \
       "CMAH_ALLOCATOR=system for glibc's malloc)"
}

_cmah_allocator
unset -f _cmah_tcmalloc_find _cmah_tcmalloc_apt _cmah_allocator
