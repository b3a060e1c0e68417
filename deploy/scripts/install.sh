# install.sh is sourced by the test and demo scripts. It installs what is
# missing and says so; it fails loudly when it cannot.

SHOPFLOOR_CACHE=${SHOPFLOOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shopfloor}
INFLUXD_VERSION=v1.8.10

find_bin() { # name: print its path, looking in sbin too (Debian puts mosquitto there)
  command -v "$1" 2>/dev/null && return 0
  for d in /usr/sbin /usr/local/sbin /sbin; do
    [ -x "$d/$1" ] && { echo "$d/$1"; return 0; }
  done
  return 1
}

apt_updated=
ensure_apt() { # binary package...: apt-get install the packages when binary is missing
  local bin=$1; shift
  find_bin "$bin" >/dev/null && return 0
  echo "install: $bin not found; installing Debian packages: $*" >&2
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq || { echo "install: apt-get update failed; install $* by hand" >&2; return 1; }
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { echo "install: apt-get install $* failed; install them by hand and run again" >&2; return 1; }
  # The Debian package starts a system-wide broker on 1883; our scripts
  # start their own on free ports, so leave the system one as it was found.
  find_bin "$bin" >/dev/null || { echo "install: $bin still missing after installing $*" >&2; return 1; }
}

ensure_influxd() { # sets INFLUXD to an influxd 1.8 binary, building it once into the cache
  INFLUXD="$SHOPFLOOR_CACHE/bin/influxd"
  if [ -x "$INFLUXD" ]; then return 0; fi
  echo "install: building influxd $INFLUXD_VERSION into $SHOPFLOOR_CACHE/bin (first run only, about a minute)..." >&2
  mkdir -p "$SHOPFLOOR_CACHE/bin"
  local start=$SECONDS rc=0
  # go install is silent for a minute: say that it is still at work.
  ( while sleep 10; do echo "install: still building influxd ($((SECONDS - start)) s)..." >&2; done ) &
  local ticker=$!
  (cd "$SHOPFLOOR_CACHE" && GOFLAGS=-buildvcs=false GOBIN="$SHOPFLOOR_CACHE/bin" \
    go install "github.com/influxdata/influxdb/cmd/influxd@$INFLUXD_VERSION") || rc=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    echo "install: go install influxd failed; check that the Go module proxy is reachable" >&2
    return 1
  fi
  echo "install: influxd ready after $((SECONDS - start)) s" >&2
}

ensure_npm_deps() { # install the npm packages of every interop test harness
  # Each adapter that tests against an independent implementation (node-opcua,
  # sparkplug-payload) keeps a package.json under its testdata/; the
  # packages go into that folder's node_modules, which git ignores.
  ensure_apt node nodejs npm || return 1
  local dir
  for dir in $(find "$1" -path '*/node_modules' -prune -o -name package.json -path '*/testdata/*' -print | xargs -r -n1 dirname | sort); do
    if [ -d "$dir/node_modules" ] && [ "$dir/node_modules" -nt "$dir/package.json" ] &&
       { [ ! -f "$dir/package-lock.json" ] || [ "$dir/node_modules" -nt "$dir/package-lock.json" ]; }; then
      continue
    fi
    echo "install: npm packages for $dir" >&2
    if [ -f "$dir/package-lock.json" ]; then
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) ||
        { echo "install: npm ci in $dir failed; check that the npm registry is reachable" >&2; return 1; }
    else
      (cd "$dir" && npm install --no-audit --no-fund --loglevel=error) ||
        { echo "install: npm install in $dir failed; check that the npm registry is reachable" >&2; return 1; }
    fi
    touch "$dir/node_modules"
  done
}
