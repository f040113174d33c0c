#!/usr/bin/env bash
# Package test: build the .deb with cargo-deb, lint it, install it on this machine, check what it
# installed and what its maintainer scripts did to a daemon.json, remove and purge it, and check
# that nothing is left.
#
# Needs root on a Debian or Ubuntu machine where labgpu is not installed (CI: a fresh one).
# Installs cargo-deb (cargo install, a few minutes), lintian and jq when missing.
#
# The machine's Docker is never touched: the maintainer scripts edit the file named by
# LABGPU_DOCKER_CONFIG (a scratch file here), every dpkg call runs with stand-in `systemctl` and
# `deb-systemd-invoke` first on PATH, and the check that a change makes postinst/prerm reload
# Docker runs in a private mount namespace where /run/systemd/system exists.
#
# Prints one line per check and "N passed, N failed"; exits 1 when a check failed, 2 when the
# test could not run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PATH="$HOME/.cargo/bin:$PATH" # rustup's cargo, also under sudo or a bare shell
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
exec 3>&1 # the dpkg helpers print the maintainer scripts' messages here, past check's redirect

pass=0 fail=0
ok() {
  pass=$((pass + 1))
  printf 'ok    %s\n' "$*"
}
bad() {
  fail=$((fail + 1))
  printf 'FAIL  %s\n' "$*"
}
skip() { printf 'skip  %s\n' "$*"; }
# check DESCRIPTION COMMAND...: a check passes when the command succeeds.
check() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}
die() {
  echo "deb-test: $*" >&2
  exit 2
}
step() { printf '\n== %s\n' "$*"; }
indent() { sed 's/^/   | /'; }

pkg_status() { dpkg-query -W -f='${db:Status-Status}' labgpu 2>/dev/null || true; }
not_installed() { case "$(pkg_status)" in "" | not-installed) return 0 ;; *) return 1 ;; esac }

# --- preflight: never overwrite a labgpu that is not this test's ---------------------------
[ "$(id -u)" -eq 0 ] || die "run as root: it installs the package on this machine"
command -v dpkg >/dev/null || die "dpkg not found: this test needs Debian or Ubuntu"
not_installed || die "package labgpu is on this machine ($(pkg_status)); purge it first: dpkg --purge labgpu"
[ ! -e /usr/bin/labgpu ] || die "/usr/bin/labgpu exists and is not from the package; remove it first"
[ ! -e /usr/bin/labgpu-shell ] || die "/usr/bin/labgpu-shell exists and is not from the package; remove it first"
! grep -qx /usr/bin/labgpu-shell /etc/shells 2>/dev/null || die "/etc/shells lists /usr/bin/labgpu-shell, but labgpu is not installed; take the line out first"
[ ! -e /etc/labgpu ] || die "/etc/labgpu exists and is not from the package; move it away first"

tmp=$(mktemp -d /tmp/labgpu-deb-test.XXXXXX)
cleanup() {
  if ! not_installed; then
    echo "deb-test: purging the package left installed" >&2
    LABGPU_DOCKER_CONFIG="$tmp/cleanup/daemon.json" PATH="$tmp/fakebin:$PATH" \
      dpkg --purge labgpu >/dev/null 2>&1
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# The machine's own Docker configuration, to compare at the end.
host_state() { ls -lA --time-style=+%s /etc/docker 2>/dev/null; sha256sum /etc/docker/daemon.json 2>/dev/null; }
host_before=$(host_state)

# --- tools ---------------------------------------------------------------------------------
step "tools"
need=()
command -v lintian >/dev/null || need+=(lintian)
command -v jq >/dev/null || need+=(jq)
command -v man >/dev/null || need+=(man-db)
dpkg -s runc >/dev/null 2>&1 || dpkg -s containerd.io >/dev/null 2>&1 || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
  t0=$SECONDS
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$tmp/apt.log" 2>&1 ||
    { indent <"$tmp/apt.log"; die "apt-get install ${need[*]} failed"; }
  echo "apt-get install ${need[*]}: $((SECONDS - t0)) s"
fi
if ! command -v cargo-deb >/dev/null; then
  t0=$SECONDS
  cargo install cargo-deb --locked || die "cargo install cargo-deb failed"
  echo "cargo install cargo-deb: $((SECONDS - t0)) s"
fi
echo "$(cargo deb --version), $(lintian --version)"

# --- build ---------------------------------------------------------------------------------
step "build"
t0=$SECONDS
deb=$(cargo deb 2>"$tmp/cargo-deb.log" | tail -n1)
if [ ! -f "$deb" ]; then
  tail -n 40 "$tmp/cargo-deb.log" | indent
  die "cargo deb failed"
fi
echo "$deb ($(du -k "$deb" | cut -f1) KiB) in $((SECONDS - t0)) s"
dpkg-deb -c "$deb" | awk '{print $6}' | indent

# --- lintian -------------------------------------------------------------------------------
step "lintian"
# Errors fail the test; warnings and the tags overridden in debian/lintian-overrides are printed.
# --show-overrides counts overridden errors towards --fail-on, so the listing and the verdict
# are two runs.
lintian --pedantic -I --show-overrides "$deb" >"$tmp/lintian.log" 2>&1
lintian --pedantic --fail-on error "$deb" >/dev/null 2>&1
lintian_rc=$?
grep -v '^running with root privileges' "$tmp/lintian.log" | indent
check "lintian: no errors" test "$lintian_rc" -eq 0
if grep -q '^W: ' "$tmp/lintian.log"; then
  echo "lintian: $(grep -c '^W: ' "$tmp/lintian.log") warnings (printed above, not fatal)"
fi

# --- helpers for the install phases --------------------------------------------------------
# Stand-ins for systemd's tools: they log their calls; `systemctl is-active` answers with the
# status in $tmp/proxy-active for labgpu-proxy.service and in $tmp/docker-active for anything
# else (0 active, 3 inactive).
mkdir -p "$tmp/fakebin"
echo 3 >"$tmp/docker-active"
echo 3 >"$tmp/proxy-active"
cat >"$tmp/fakebin/systemctl" <<EOF
#!/bin/sh
echo "systemctl \$*" >>"$tmp/systemd.log"
if [ "\$1" = is-active ]; then
  case "\$*" in
    *labgpu-proxy.service*) exit "\$(cat "$tmp/proxy-active")" ;;
    *) exit "\$(cat "$tmp/docker-active")" ;;
  esac
fi
exit 0
EOF
cat >"$tmp/fakebin/deb-systemd-invoke" <<EOF
#!/bin/sh
echo "deb-systemd-invoke \$*" >>"$tmp/systemd.log"
EOF
chmod 755 "$tmp/fakebin/systemctl" "$tmp/fakebin/deb-systemd-invoke"
: >"$tmp/systemd.log"

# dpkg CFG ARGS...: dpkg with the maintainer scripts pointed at CFG. --path-include undoes a
# minimal image's path-exclude of /usr/share/man and /usr/share/doc. Output in $tmp/dpkg.out.
dpkg_cfg() {
  local cfg=$1
  shift
  LABGPU_DOCKER_CONFIG="$cfg" PATH="$tmp/fakebin:$PATH" \
    dpkg --path-include='*' "$@" >"$tmp/dpkg.out" 2>&1
  local rc=$?
  grep -E 'labgpu|warning|error' "$tmp/dpkg.out" | indent >&3
  return $rc
}
# The same on a "booted systemd": /run/systemd/system exists, in a private mount namespace only.
dpkg_cfg_systemd() {
  local cfg=$1
  shift
  LABGPU_DOCKER_CONFIG="$cfg" PATH="$tmp/fakebin:$PATH" \
    unshare --mount --propagation private sh -c \
    'mount -t tmpfs labgpu-test /run && mkdir -p /run/systemd/system && exec dpkg --path-include="*" "$@"' \
    sh "$@" >"$tmp/dpkg.out" 2>&1
  local rc=$?
  grep -E 'labgpu|warning|error' "$tmp/dpkg.out" | indent >&3
  return $rc
}
jqt() { jq -e "$@" >/dev/null 2>&1; }
same_json() { [ "$(jq -S . "$1")" = "$(jq -S . "$2")" ]; }
backups() { find "$(dirname "$1")" -maxdepth 1 -name "$(basename "$1").labgpu-backup-*" | wc -l; }
mode() { stat -c %a "$1"; }
man_clean() { [ -z "$(man --warnings -l "$1" 2>&1 >/dev/null)" ]; }

man_pages=(labgpu labgpu-verify labgpu-gpus labgpu-policy labgpu-policy-check labgpu-proxy labgpu-setup labgpu-setup-docker)
bash_comp=/usr/share/bash-completion/completions/labgpu
zsh_comp=/usr/share/zsh/vendor-completions/_labgpu
fish_comp=/usr/share/fish/vendor_completions.d/labgpu.fish

# --- 1. install next to an existing configuration ------------------------------------------
step "install: daemon.json with an nvidia runtime, features, default-runtime nvidia"
cfg=$tmp/docker/daemon.json
mkdir -p "$tmp/docker"
cat >"$cfg" <<'EOF'
{
  "default-runtime": "nvidia",
  "runtimes": {
    "nvidia": {
      "args": [],
      "path": "nvidia-container-runtime"
    }
  },
  "features": {
    "buildkit": true,
    "containerd-snapshotter": false
  },
  "log-opts": { "max-size": "10m", "max-file": "3" },
  "max-concurrent-downloads": 3
}
EOF
chmod 640 "$cfg"
cp -p "$cfg" "$tmp/seed.json"

check "dpkg -i succeeds" dpkg_cfg "$cfg" -i "$deb"
check "package is installed" test "$(pkg_status)" = installed
check "/usr/bin/labgpu is an executable" test -x /usr/bin/labgpu
check "labgpu --help runs" /usr/bin/labgpu --help
check "labgpu setup docker --help runs" /usr/bin/labgpu setup docker --help
check "/usr/bin/labgpu-shell is a symlink to labgpu" test "$(readlink /usr/bin/labgpu-shell)" = labgpu
check "postinst listed /usr/bin/labgpu-shell in /etc/shells" grep -qx /usr/bin/labgpu-shell /etc/shells
check "labgpu-shell answers root with one sentence and exit 1, no shell" \
  sh -c 'out=$(/usr/bin/labgpu-shell -c "echo SHELL-RAN" 2>&1); [ $? = 1 ] && [ "$out" = "labgpu-shell: root is the administrator, not a lab user: labgpu-shell is for the users in the policy" ]'
check "labgpu user list reads the shipped policy" /usr/bin/labgpu user list --docker "$tmp/no-docker.sock"
check "conffile /etc/labgpu/policy.toml registered with dpkg" \
  sh -c "dpkg-query -W -f='\${Conffiles}' labgpu | grep -q '^ /etc/labgpu/policy.toml '"
check "policy.toml is config/policy.toml, mode 644" \
  sh -c "cmp -s /etc/labgpu/policy.toml config/policy.toml && [ \$(stat -c %a /etc/labgpu/policy.toml) = 644 ]"
check "shipped policy passes labgpu policy check" /usr/bin/labgpu policy check /etc/labgpu/policy.toml
for page in "${man_pages[@]}"; do
  check "man page $page(1) installed and renders without warnings" man_clean "/usr/share/man/man1/$page.1.gz"
done
check "man labgpu finds the page" sh -c "man -w labgpu | grep -q /usr/share/man/man1/labgpu.1.gz"
check "bash completion installed, valid bash" bash -n "$bash_comp"
check "zsh completion installed (#compdef labgpu)" sh -c "head -n1 '$zsh_comp' | grep -q '^#compdef labgpu'"
check "fish completion installed" grep -q 'complete -c labgpu' "$fish_comp"
check "labgpu-proxy.service installed, not enabled" \
  sh -c "test -f /lib/systemd/system/labgpu-proxy.service && ! test -e /etc/systemd/system/multi-user.target.wants/labgpu-proxy.service"
if command -v systemd-analyze >/dev/null; then
  check "labgpu-proxy.service passes systemd-analyze verify" \
    systemd-analyze verify --man=no /lib/systemd/system/labgpu-proxy.service
fi
check "README, copyright and changelog in /usr/share/doc/labgpu" \
  test -f /usr/share/doc/labgpu/README.md -a -f /usr/share/doc/labgpu/docs/policy.md -a -f /usr/share/doc/labgpu/copyright -a -f /usr/share/doc/labgpu/changelog.Debian.gz
check "postinst registered runtimes.labgpu.path = /usr/bin/labgpu" \
  jqt '.runtimes.labgpu == {"path": "/usr/bin/labgpu"}' "$cfg"
check "every other key and value kept (features, nvidia, default-runtime nvidia)" \
  sh -c "[ \"\$(jq -S 'del(.runtimes.labgpu)' '$cfg')\" = \"\$(jq -S . '$tmp/seed.json')\" ]"
check "key order kept" \
  jqt 'keys_unsorted == ["default-runtime","runtimes","features","log-opts","max-concurrent-downloads"] and (.runtimes | keys_unsorted) == ["nvidia","labgpu"]' "$cfg"
check "daemon.json mode 640 kept" test "$(mode "$cfg")" = 640
check "one backup, identical to the old file" \
  sh -c "[ $(backups "$cfg") = 1 ] && cmp -s '$tmp/seed.json' $(dirname "$cfg")/daemon.json.labgpu-backup-*"
check "no Docker reload without a booted systemd" test ! -s "$tmp/systemd.log"

# --- 1b. the installed binary as Docker's runtime -----------------------------------------
step "e2e through /usr/bin/labgpu (private dockerd, the device cases)"
if command -v dockerd >/dev/null; then
  LABGPU_E2E_BIN=/usr/bin/labgpu LABGPU_E2E_SKIP_BUILD=1 LABGPU_E2E_ONLY=devices \
    timeout 300 bash integration/e2e.sh >"$tmp/e2e.log" 2>&1
  e2e_rc=$?
  indent <"$tmp/e2e.log"
  check "alice, bob and carol see only their GPUs through the installed labgpu" test "$e2e_rc" -eq 0
else
  skip "dockerd not installed (apt-get install docker.io): the e2e container is not run"
fi

# --- 2. reinstall: idempotent, conffile edits kept -----------------------------------------
step "reinstall the same .deb"
echo "# local edit" >>/etc/labgpu/policy.toml
cp -p "$cfg" "$tmp/after-install.json"
check "dpkg -i again succeeds" dpkg_cfg "$cfg" -i "$deb"
check "daemon.json unchanged, byte for byte" cmp -s "$cfg" "$tmp/after-install.json"
check "no second backup" test "$(backups "$cfg")" = 1
check "admin's edit of policy.toml kept" grep -q '^# local edit$' /etc/labgpu/policy.toml
check "/etc/shells lists labgpu-shell once" test "$(grep -cx /usr/bin/labgpu-shell /etc/shells)" = 1

check "setup docker --dry-run --default prints the result" \
  sh -c "/usr/bin/labgpu setup docker --config '$cfg' --dry-run --default | jq -e '.\"default-runtime\" == \"labgpu\"'"
check "... and writes nothing" cmp -s "$cfg" "$tmp/after-install.json"

# --- 3. remove: binary and runtime entry go, policy stays ----------------------------------
step "remove (dpkg -r)"
check "dpkg -r succeeds" dpkg_cfg "$cfg" -r labgpu
check "package state is config-files" test "$(pkg_status)" = config-files
check "/usr/bin/labgpu removed" test ! -e /usr/bin/labgpu
check "/usr/bin/labgpu-shell removed, and from /etc/shells" \
  sh -c '! test -e /usr/bin/labgpu-shell && ! test -L /usr/bin/labgpu-shell && ! grep -qx /usr/bin/labgpu-shell /etc/shells'
check "man page and completions removed" \
  test ! -e /usr/share/man/man1/labgpu.1.gz -a ! -e "$bash_comp" -a ! -e "$zsh_comp" -a ! -e "$fish_comp"
check "policy.toml kept, with the admin's edit" grep -q '^# local edit$' /etc/labgpu/policy.toml
check "prerm took runtimes.labgpu out" jqt '.runtimes | has("labgpu") | not' "$cfg"
check "default-runtime nvidia (not ours) kept, rest as before install" same_json "$cfg" "$tmp/seed.json"

# --- 4. install again, make it the default, purge ------------------------------------------
step "install again, labgpu setup docker --default, purge"
touch_log=0
if [ ! -e /var/log/labgpu.log ]; then touch_log=1; fi
check "dpkg -i from config-files state succeeds" dpkg_cfg "$cfg" -i "$deb"
check "policy.toml edit survived remove + install" grep -q '^# local edit$' /etc/labgpu/policy.toml
check "runtime registered again" jqt '.runtimes.labgpu.path == "/usr/bin/labgpu"' "$cfg"
check "labgpu setup docker --default succeeds" /usr/bin/labgpu setup docker --config "$cfg" --default
check "default-runtime is labgpu" jqt '."default-runtime" == "labgpu"' "$cfg"
check "labgpu user add edits the installed policy (leaving its lock file)" \
  sh -c '/usr/bin/labgpu user add deb-test-user --uid 65533 --gid 65533 && grep -qx "\[users.deb-test-user\]" /etc/labgpu/policy.toml && test -e /etc/labgpu/.policy.toml.lock'
[ "$touch_log" = 1 ] && echo "create allowed (test line)" >/var/log/labgpu.log
state_made=0
if [ ! -e /var/lib/labgpu ]; then
  state_made=1
  mkdir -p /var/lib/labgpu/containers && echo '{"owner":"x"}' >/var/lib/labgpu/containers/abc
fi
check "dpkg --purge succeeds" dpkg_cfg "$cfg" --purge labgpu
check "package is gone from dpkg" not_installed
check "/usr/bin/labgpu removed" test ! -e /usr/bin/labgpu
check "/etc/labgpu removed (user edits' lock file too)" test ! -e /etc/labgpu
check "/etc/shells does not list labgpu-shell" sh -c '! grep -qx /usr/bin/labgpu-shell /etc/shells'
check "no runtimes.labgpu left in daemon.json" jqt '(.runtimes // {}) | has("labgpu") | not' "$cfg"
check "default-runtime labgpu (ours) reset to runc (a reload applies only keys the file sets)" jqt '."default-runtime" == "runc"' "$cfg"
check "nvidia runtime and features still there" \
  jqt '.runtimes.nvidia.path == "nvidia-container-runtime" and .features.buildkit == true' "$cfg"
if [ "$touch_log" = 1 ]; then
  check "decision log /var/log/labgpu.log removed" test ! -e /var/log/labgpu.log
else
  skip "decision log removal: /var/log/labgpu.log existed before the test"
fi
if [ "$state_made" = 1 ]; then
  check "the proxy's records /var/lib/labgpu removed" test ! -e /var/lib/labgpu
else
  skip "records removal: /var/lib/labgpu existed before the test"
fi
check "dpkg lists no labgpu files" sh -c '! dpkg -L labgpu >/dev/null 2>&1'

# --- 5. no daemon.json (no Docker yet) -----------------------------------------------------
step "install with no daemon.json and no directory"
cfg=$tmp/missing/docker/daemon.json
check "dpkg -i succeeds" dpkg_cfg "$cfg" -i "$deb"
check "daemon.json created with only the runtime" jqt '. == {"runtimes": {"labgpu": {"path": "/usr/bin/labgpu"}}}' "$cfg"
check "created with mode 644" test "$(mode "$cfg")" = 644
check "no backup of a file that did not exist" test "$(backups "$cfg")" = 0
check "dpkg --purge succeeds" dpkg_cfg "$cfg" --purge labgpu
check "runtime entry gone" jqt '(.runtimes // {}) | has("labgpu") | not' "$cfg"

# --- 6. a malformed daemon.json is left alone, and does not fail the install ---------------
step "install with a daemon.json that is not JSON (a comment)"
cfg=$tmp/bad/daemon.json
mkdir -p "$tmp/bad"
printf '{\n  // added by hand\n  "debug": true\n}\n' >"$cfg"
cp -p "$cfg" "$tmp/bad.json"
check "dpkg -i succeeds anyway" dpkg_cfg "$cfg" -i "$deb"
check "postinst says why" grep -q 'is not valid JSON' "$tmp/dpkg.out"
check "file unchanged, no backup" sh -c "cmp -s '$cfg' '$tmp/bad.json' && [ $(backups "$cfg") = 0 ]"
check "dpkg --purge succeeds anyway" dpkg_cfg "$cfg" --purge labgpu
check "file still unchanged" cmp -s "$cfg" "$tmp/bad.json"

# --- 7. Docker reload on a booted systemd --------------------------------------------------
step "systemd: reload Docker only when daemon.json changed and Docker is active"
cfg=$tmp/sd/daemon.json
mkdir -p "$tmp/sd"
echo '{}' >"$cfg"
reloads() { grep -c '^deb-systemd-invoke reload docker.service$' "$tmp/systemd.log"; }
if unshare --mount --propagation private sh -c 'mount -t tmpfs t /run' 2>/dev/null; then
  : >"$tmp/systemd.log"
  echo 0 >"$tmp/docker-active"
  check "install (Docker active) succeeds" dpkg_cfg_systemd "$cfg" -i "$deb"
  check "postinst reloaded Docker once" test "$(reloads)" = 1
  check "reinstall succeeds" dpkg_cfg_systemd "$cfg" -i "$deb"
  check "no reload when nothing changed" test "$(reloads)" = 1
  check "remove (Docker active) succeeds" dpkg_cfg_systemd "$cfg" -r labgpu
  check "prerm reloaded Docker" test "$(reloads)" = 2
  echo 3 >"$tmp/docker-active"
  check "install (Docker inactive) succeeds" dpkg_cfg_systemd "$cfg" -i "$deb"
  check "no reload of an inactive Docker" test "$(reloads)" = 2
  check "Docker never restarted" sh -c "! grep -q 'restart docker' '$tmp/systemd.log'"
  check "an inactive labgpu-proxy is neither started nor restarted" \
    sh -c "! grep -q 'invoke .* labgpu-proxy' '$tmp/systemd.log'"
  echo 0 >"$tmp/proxy-active"
  check "reinstall (labgpu-proxy running) succeeds" dpkg_cfg_systemd "$cfg" -i "$deb"
  check "postinst restarted labgpu-proxy onto the new binary" \
    grep -q '^deb-systemd-invoke restart labgpu-proxy.service$' "$tmp/systemd.log"
  check "purge (labgpu-proxy running) succeeds" dpkg_cfg_systemd "$cfg" --purge labgpu
  check "prerm stopped labgpu-proxy before the binary went" \
    grep -q '^deb-systemd-invoke stop labgpu-proxy.service$' "$tmp/systemd.log"
  echo 3 >"$tmp/proxy-active"
else
  skip "unshare --mount is not permitted here: reload checks not run"
fi

# --- the machine's own Docker configuration ------------------------------------------------
step "host"
check "/etc/docker and /etc/docker/daemon.json untouched" test "$(host_state)" = "$host_before"
check "labgpu not installed at the end" not_installed

printf '\n%d passed, %d failed (%d s)\n' "$pass" "$fail" "$((SECONDS - start))"
[ "$fail" -eq 0 ]
