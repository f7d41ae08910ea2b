#!/bin/sh
# restic-manager agent installer.
#
# Served by the restic-manager server at __SERVER_URL__/agent/install.sh; the
# server writes its public URL in place of the __SERVER_URL__ placeholder.
#
#   curl -fsSL __SERVER_URL__/agent/install.sh | sudo sh -s -- --token TOKEN [--prefix DIR] [--no-systemd]
#
# Steps: detect os/arch; download the agent binary with the enrollment token;
# verify its SHA-256 against the X-Agent-Sha256 header; install it to
# PREFIX/bin/restic-manager-agent; enroll (writes the config); install and
# start the systemd service (unless --no-systemd).
#
# The whole script is one function called on the last line, so a truncated
# download runs nothing. The token is never printed and never put on a
# command line other processes could read (ps, /proc/PID/cmdline): curl reads
# its Authorization header from a 0600 file, wget from a 0600 wgetrc, and
# the agent takes it from RM_AGENT_TOKEN. It may also be passed to this
# script as RM_AGENT_TOKEN instead of --token.
set -eu

SERVER_URL="__SERVER_URL__"
AGENT_NAME=restic-manager-agent
UNIT_NAME=restic-manager-agent.service
UNIT_PATH=/etc/systemd/system/restic-manager-agent.service

say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
# die MESSAGE [HINT...]: print what failed and what to do, then exit 1.
die() {
  printf 'error: %s\n' "$1" >&2
  shift
  for hint_line in "$@"; do
    printf '       %s\n' "$hint_line" >&2
  done
  exit 1
}

usage() {
  cat <<USAGE
Install the restic-manager agent on this host and enroll it with the server.

Usage:
  curl -fsSL $SERVER_URL/agent/install.sh | sudo sh -s -- --token TOKEN [options]

Options:
  --token TOKEN   one-time enrollment token from the server (required; or set
                  RM_AGENT_TOKEN)
  --prefix DIR    install to DIR/bin and keep the config in
                  DIR/etc/restic-manager-agent/config.toml
                  (default: /usr/local/bin, config in /etc/restic-manager-agent/)
  --no-systemd    do not install or start the systemd service; run
                  'restic-manager-agent run --config CONFIG' under your own supervisor
  --server URL    server to download from and enroll with
                  (default: the server that served this script)
  -h, --help      show this help
USAGE
}

# Temporary files, removed on exit whatever happens.
tmp_dir=""
tmp_bin=""
tmp_unit=""
cleanup() {
  if [ -n "$tmp_bin" ]; then rm -f "$tmp_bin"; fi
  if [ -n "$tmp_unit" ]; then rm -f "$tmp_unit"; fi
  if [ -n "$tmp_dir" ]; then rm -rf "$tmp_dir"; fi
}

# header_value NAME FILE: value of the last NAME header in FILE (case-insensitive
# name; FILE may hold several responses after redirects, or wget's indented output).
header_value() {
  awk -v want="$1" '
    BEGIN { want = tolower(want) }
    {
      line = $0
      sub(/\r$/, "", line)
      sub(/^[ \t]+/, "", line)
      i = index(line, ":")
      if (i > 1 && tolower(substr(line, 1, i - 1)) == want) {
        v = substr(line, i + 1)
        sub(/^[ \t]+/, "", v)
        sub(/[ \t]+$/, "", v)
        last = v
      }
    }
    END { print last }
  ' "$2"
}

# http_status FILE: the status code of the last response in a headers file.
http_status() {
  awk '
    {
      line = $0
      sub(/\r$/, "", line)
      sub(/^[ \t]+/, "", line)
      if (line ~ /^HTTP\/[0-9.]+ [0-9][0-9][0-9]/) { split(line, f, " "); code = f[2] }
    }
    END { print code }
  ' "$1"
}

# sha256_of FILE: lowercase hex SHA-256 of FILE.
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | awk '{ print tolower($1) }'
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | awk '{ print tolower($1) }'
  elif command -v sha256 >/dev/null 2>&1; then
    sha256 -q "$1" | tr 'A-F' 'a-f'
  else
    openssl dgst -sha256 "$1" | awk '{ print tolower($NF) }'
  fi
}

# agent_unit BIN_PATH CONFIG_PATH BIN_DIR CONFIG_DIR: the systemd unit.
# Same text as dist/systemd/restic-manager-agent.service (CI diffs the two
# with the default paths filled in).
agent_unit() {
  unit_bin_path=$1
  unit_config_path=$2
  cat <<UNIT_EOF
# restic-manager agent. Installed by the server's /agent/install.sh, which
# embeds this same text (keep the two in step; .ci/run checks they match).
[Unit]
Description=restic-manager agent
After=network-online.target
Wants=network-online.target
# Never stop restarting: the self-update exits 0 to be restarted on the new
# binary, and the boot watchdog needs several restarts of a crash-looping new
# build to roll back to the old one. systemd's default start limit (5 starts
# in 10 s) could otherwise give up on the host for good.
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=${unit_bin_path} run --config ${unit_config_path}
Restart=always
RestartSec=2
# Runs as root: restic must read every file of the host and restore to any
# place, with owners, modes (setuid bits too) and device nodes as they were.
User=root
# So no sandboxing that hides, fakes or freezes part of the file system:
# not ProtectSystem (/usr, /etc read-only: no restore there), ProtectHome,
# PrivateTmp (a backup of /tmp would read, and a restore to it would land in,
# a private empty /tmp), ProtectKernelModules (hides /usr/lib/modules),
# RestrictSUIDSGID (refuses to restore setuid files), PrivateDevices or
# DevicePolicy (no device nodes), ReadOnlyPaths or InaccessiblePaths. The
# agent rewrites its own binary and config on updates, which these would
# also block.
# What is kept costs restic nothing: no privilege gained through exec, the
# kernel's tunables and cgroup tree (not files anyone backs up) read-only,
# no realtime scheduling, personality changes, namespaces or foreign
# system call ABIs.
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
# Stop the agent and any restic it started together.
KillMode=control-group
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
UNIT_EOF
}

main() {
  token=${RM_AGENT_TOKEN:-}
  prefix=""
  no_systemd=0
  while [ $# -gt 0 ]; do
    case $1 in
      --token)
        [ $# -ge 2 ] || die "--token needs a value" "Usage: ... | sh -s -- --token TOKEN"
        token=$2
        shift 2
        ;;
      --token=*) token=${1#--token=}; shift ;;
      --prefix)
        [ $# -ge 2 ] || die "--prefix needs a directory"
        prefix=$2
        shift 2
        ;;
      --prefix=*) prefix=${1#--prefix=}; shift ;;
      --server)
        [ $# -ge 2 ] || die "--server needs a URL"
        SERVER_URL=$2
        shift 2
        ;;
      --server=*) SERVER_URL=${1#--server=}; shift ;;
      --no-systemd) no_systemd=1; shift ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown option: ${1%%=*}" "Run with --help to see the options." ;;
      # Not echoed: a stray argument may well be the token itself.
      *) die "unexpected argument (not shown, it may be a secret)" "Pass the token as: --token TOKEN" ;;
    esac
  done

  # ---- Check the inputs before touching anything ----------------------------
  case $SERVER_URL in
    *"__SERVER""_URL__"*)
      die "this copy of install.sh has no server URL filled in" \
        "Download it from your server: curl -fsSL https://YOUR-SERVER/agent/install.sh | sh -s -- --token TOKEN" \
        "or pass --server URL." ;;
    https://*) ;;
    http://*) warn "the server URL is plain http: the token and the binary travel unencrypted." ;;
    *) die "the server URL must start with https:// or http:// (got: $SERVER_URL)" ;;
  esac
  SERVER_URL=${SERVER_URL%/}

  [ -n "$token" ] || die "no enrollment token given" \
    "Create a host on the server (Hosts > Add host, or: restic-manager host add NAME)," \
    "then run: curl -fsSL $SERVER_URL/agent/install.sh | sudo sh -s -- --token TOKEN"
  case $token in
    *[!A-Za-z0-9._~+/=-]*) die "the token contains unexpected characters (spaces or quotes?)" \
      "Copy the enrollment token exactly as the server showed it." ;;
  esac

  if [ -n "$prefix" ]; then
    case $prefix in
      /*) ;;
      *) die "--prefix must be an absolute path (got: $prefix)" ;;
    esac
    case $prefix in
      *[!A-Za-z0-9._/-]*) die "--prefix may only contain letters, digits and . _ - / (got: $prefix)" ;;
    esac
    prefix=${prefix%/}
    [ -n "$prefix" ] || die "--prefix / is not allowed; use --prefix /usr/local or leave it out"
    bin_dir="$prefix/bin"
    config_dir="$prefix/etc/restic-manager-agent"
  else
    bin_dir=/usr/local/bin
    config_dir=/etc/restic-manager-agent
  fi
  bin_path="$bin_dir/$AGENT_NAME"
  config_path="$config_dir/config.toml"

  os_raw=$(uname -s)
  case $os_raw in
    Linux) os=linux ;;
    Darwin) os=macos ;;
    FreeBSD) os=freebsd ;;
    *) die "unsupported operating system: $os_raw" \
      "restic-manager-agent is built for Linux, macOS and FreeBSD." ;;
  esac
  arch_raw=$(uname -m)
  case $arch_raw in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) die "unsupported CPU architecture: $arch_raw" \
      "restic-manager-agent is built for x86_64 and aarch64." ;;
  esac
  say "This host: $os/$arch; server: $SERVER_URL"

  if [ "$no_systemd" -eq 0 ]; then
    if ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
      die "systemd is not running on this host, so the agent cannot be installed as a service" \
        "Re-run with --no-systemd, then keep '$bin_path run --config $config_path'" \
        "running under your own supervisor, restarted whenever it exits (self-update relies on that)."
    fi
    if [ "$(id -u)" -ne 0 ]; then
      die "installing the systemd service needs root" \
        "Run: curl -fsSL $SERVER_URL/agent/install.sh | sudo sh -s -- --token TOKEN ..."
    fi
  fi

  if command -v curl >/dev/null 2>&1; then
    downloader=curl
  elif command -v wget >/dev/null 2>&1; then
    downloader=wget
  else
    die "neither curl nor wget is installed" "Install curl (e.g. apt-get install curl) and run this again."
  fi
  if ! command -v sha256sum >/dev/null 2>&1 && ! command -v shasum >/dev/null 2>&1 \
    && ! command -v sha256 >/dev/null 2>&1 && ! command -v openssl >/dev/null 2>&1; then
    die "no SHA-256 tool found (sha256sum, shasum, sha256 or openssl)" \
      "Install coreutils or openssl so the download can be verified, and run this again."
  fi

  if ! mkdir -p "$bin_dir" 2>/dev/null || [ ! -w "$bin_dir" ]; then
    die "cannot write to $bin_dir" \
      "Run as root (... | sudo sh -s -- ...), or choose a writable --prefix DIR."
  fi

  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # ---- Download -------------------------------------------------------------
  tmp_dir=$(mktemp -d 2>/dev/null || mktemp -d -t restic-manager-agent) \
    || die "cannot create a temporary directory" "Check that \$TMPDIR (or /tmp) is writable."
  headers="$tmp_dir/headers"
  # The new binary is written beside its final place, so the closing mv is an
  # atomic rename on one filesystem, and so /tmp mounted noexec cannot stop the
  # --version check below.
  tmp_bin="$bin_dir/.$AGENT_NAME.install.$$"
  url="$SERVER_URL/agent/binary?os=$os&arch=$arch"
  say "Downloading the agent for $os/$arch from $SERVER_URL/agent/binary (with $downloader)"
  : >"$headers"
  # The token goes in files only this user can read, never in an argument.
  auth_header="$tmp_dir/auth-header"
  (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$auth_header") \
    || die "cannot write $auth_header" "Check that \$TMPDIR (or /tmp) is writable."
  if [ "$downloader" = curl ]; then
    if ! status=$(curl -sS -L --retry 2 -o "$tmp_bin" -D "$headers" -w '%{http_code}' \
      -H @"$auth_header" "$url" </dev/null); then
      die "the download failed (curl could not reach $SERVER_URL)" \
        "Check that this host can reach the server (DNS, firewall, proxy, TLS certificate) and run this again."
    fi
  else
    wgetrc="$tmp_dir/wgetrc"
    (umask 077 && printf 'header = Authorization: Bearer %s\n' "$token" >"$wgetrc") \
      || die "cannot write $wgetrc"
    if WGETRC="$wgetrc" wget -q -S -O "$tmp_bin" "$url" 2>"$headers" </dev/null; then
      status=$(http_status "$headers")
      [ -n "$status" ] || status=200
    else
      status=$(http_status "$headers")
      if [ -z "$status" ] || [ "$status" = 200 ]; then
        die "the download failed (wget could not reach $SERVER_URL)" \
          "Check that this host can reach the server (DNS, firewall, proxy, TLS certificate) and run this again."
      fi
    fi
  fi
  rm -f "$auth_header" "$tmp_dir/wgetrc"

  if [ "$status" != 200 ]; then
    server_says=""
    if [ -s "$tmp_bin" ]; then
      server_says=$(head -c 600 "$tmp_bin" | tr -d '\r' | tr '\n' ' ' \
        | sed -n 's/.*"message"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
    fi
    [ -z "$server_says" ] || info "server says: $server_says"
    case $status in
      401 | 403)
        die "the server refused the enrollment token (HTTP $status)" \
          "The token is wrong, expired or already used. Create a new one on the server" \
          "(Hosts > Add host, or: restic-manager host add NAME) and run this again." ;;
      404)
        die "the server has no agent binary for $os/$arch (HTTP 404)" \
          "On the server, stage one: restic-manager agent-binary add PATH --os $os --arch $arch" \
          "then run this again (the token is still valid: downloading does not use it up)." ;;
      400)
        die "the server does not accept os=$os arch=$arch (HTTP 400)" \
          "This platform is not supported by the server's agent builds." ;;
      *)
        die "the download failed: the server answered HTTP $status" \
          "Check the server's log, then run this again." ;;
    esac
  fi

  [ -s "$tmp_bin" ] || die "the server sent an empty file" "Check the staged agent binary on the server, then run this again."

  # ---- Verify ---------------------------------------------------------------
  expected_sha=$(header_value X-Agent-Sha256 "$headers" | tr 'A-F' 'a-f')
  agent_version=$(header_value X-Agent-Version "$headers")
  if [ -z "$expected_sha" ]; then
    die "the server sent no X-Agent-Sha256 header, so the download cannot be verified; nothing was installed" \
      "Is $SERVER_URL a restic-manager server, and is a proxy in between stripping response headers?"
  fi
  case $expected_sha in
    *[!0-9a-f]*) die "the X-Agent-Sha256 header is not a hex SHA-256; nothing was installed" ;;
  esac
  [ "${#expected_sha}" -eq 64 ] || die "the X-Agent-Sha256 header is not a SHA-256 (wrong length); nothing was installed"

  actual_sha=$(sha256_of "$tmp_bin")
  if [ "$actual_sha" != "$expected_sha" ]; then
    die "checksum mismatch: the download is not the binary the server announced; nothing was installed" \
      "expected sha256 $expected_sha" \
      "got      sha256 ${actual_sha:-(none)}" \
      "The file was damaged or altered on the way (a proxy?). Run this again; if it persists," \
      "check the staged binary on the server (restic-manager agent-binary add)."
  fi
  say "Verified SHA-256 $actual_sha"

  chmod 0755 "$tmp_bin"
  if ! reported=$("$tmp_bin" --version </dev/null 2>&1 | head -n 1); then
    reported=""
  fi
  if [ -n "$agent_version" ]; then
    if [ "$reported" != "$AGENT_NAME $agent_version" ]; then
      die "the downloaded agent does not run as version $agent_version; nothing was installed" \
        "It printed: ${reported:-(nothing)}" \
        "If it could not run at all, $bin_dir may be on a noexec filesystem, or the binary is for another platform."
    fi
  else
    warn "the server sent no X-Agent-Version header; the binary reports: ${reported:-(nothing)}"
    case $reported in
      "$AGENT_NAME "*) ;;
      *) die "the downloaded file does not run as restic-manager-agent; nothing was installed" \
        "It printed: ${reported:-(nothing)}" ;;
    esac
  fi

  # ---- Install --------------------------------------------------------------
  mv -f "$tmp_bin" "$bin_path" || die "could not move the new agent into $bin_path" \
    "Check free space and permissions of $bin_dir."
  tmp_bin=""
  say "Installed $bin_path (${agent_version:-$reported}, mode 0755)"

  # ---- Enroll ---------------------------------------------------------------
  if ! (umask 077 && mkdir -p "$config_dir"); then
    die "cannot create $config_dir" "Run as root, or choose a writable --prefix DIR."
  fi
  say "Enrolling with $SERVER_URL (config: $config_path)"
  # The token in the environment, not the command line (which any local
  # user can read); this also keeps a token that begins with "-" (issued
  # before the rme_ prefix) from ever being read as an option.
  if ! RM_AGENT_TOKEN=$token "$bin_path" enroll --server="$SERVER_URL" --config="$config_path" </dev/null; then
    die "enrollment failed (the agent's message is above)" \
      "The agent is installed at $bin_path but not enrolled. Enrollment tokens are single-use" \
      "and expire: if this one was used or is too old, create a new one on the server, then run this again."
  fi
  say "Enrolled; the host's secret is in $config_path (mode 0600)"

  # ---- Service --------------------------------------------------------------
  if [ "$no_systemd" -eq 1 ]; then
    say "Skipping systemd (--no-systemd). Start the agent under your own supervisor:"
    info "$bin_path run --config $config_path"
    info "It must be restarted whenever it exits: that is how a self-update takes effect."
    say "Done."
    return 0
  fi

  say "Installing systemd unit $UNIT_PATH"
  tmp_unit="$UNIT_PATH.tmp.$$"
  agent_unit "$bin_path" "$config_path" >"$tmp_unit" \
    || die "could not write $tmp_unit"
  chmod 0644 "$tmp_unit"
  mv -f "$tmp_unit" "$UNIT_PATH" || die "could not install $UNIT_PATH"
  tmp_unit=""

  was_active=0
  if systemctl is-active --quiet "$UNIT_NAME" </dev/null 2>&1; then
    was_active=1
  fi
  say "Starting the service: systemctl daemon-reload && systemctl enable --now $UNIT_NAME"
  if ! systemctl daemon-reload </dev/null; then
    die "systemctl daemon-reload failed" "Check the unit with: systemd-analyze verify $UNIT_PATH"
  fi
  if ! systemctl enable --now "$UNIT_NAME" </dev/null; then
    die "could not enable and start $UNIT_NAME" \
      "See: systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME"
  fi
  if [ "$was_active" -eq 1 ]; then
    say "The agent was already running; restarting it on the new binary and config"
    systemctl restart "$UNIT_NAME" </dev/null || die "could not restart $UNIT_NAME" \
      "See: systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME"
  fi

  sleep 2
  if systemctl is-active --quiet "$UNIT_NAME" </dev/null; then
    say "Done. The agent is running; this host should show as online on $SERVER_URL shortly."
    info "Logs: journalctl -u $UNIT_NAME -f"
  else
    warn "$UNIT_NAME is not active yet."
    info "Check: systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME"
  fi
}

main "$@"
